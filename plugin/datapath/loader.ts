// Loads Membrane's BPF object with its maps pinned under /sys/fs/bpf/membrane, so state
// (conntrack above all) outlives the daemon, and attaches its programs to endpoints through
// pinned tcx links, so they outlive it too.
//
// Every map is declared once, in maps.ts. A pinned map whose geometry differs from its declaration
// (a new max_entries from the configuration, a grown value) is never simply replaced: its pin is
// moved aside, the new map is created, its content is carried over as the declaration's migration
// rule says (conntrack is copied, never wiped), and only then is the old pin removed.
// Programs are replaced atomically with BPF_LINK_UPDATE: no packet sees an interface without one.
// Loaded programs are pinned too, under progs/<build> (a hash of the object and of the programs
// left out): a start with the same build and every map pin in place takes them from their pins
// instead of running the verifier again (about a second and a half on a busy 2-CPU host).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { BpfAddon, BpfMapInfo, BpfObject, TcDirection } from '../kernel/native.js';
import type { Logger } from '../log.js';
import { NotSupportedError } from '../errors.js';
import { decodeConfig, encodeConfig, encodeIfindexKey } from './codec.js';
import { ALL_MAPS, maxEntriesOverrides, wantedShape, type Geometry, type MapDeclaration, type WantedMap } from './maps.js';
import type { ProbeResult } from '../features.js';
import { mapEntries } from './iterate.js';

export const PIN_DIR = '/sys/fs/bpf/membrane';

export { DEFAULT_GEOMETRY, type Geometry } from './maps.js';

/** What each map must look like under a geometry, from its declaration in maps.ts. */
export function wantedMaps(g: Geometry): Record<string, WantedMap> {
  return Object.fromEntries(ALL_MAPS.map((d) => [d.name, wantedShape(d, g)]));
}

export function compatible(have: BpfMapInfo, want: WantedMap): boolean {
  return have.type === want.type && have.keySize === want.keySize && have.valueSize === want.valueSize &&
    have.maxEntries === want.maxEntries && have.flags === want.flags;
}

export interface MigrationReport {
  map: string;
  from: Pick<BpfMapInfo, 'keySize' | 'valueSize' | 'maxEntries'>;
  to: WantedMap;
  copied: number;
  skipped: number;
}

/** tc handle and priority of Membrane's clsact filters (the clsact fallback). */
const TC_HANDLE = 1;
const TC_PRIORITY = 1;

export type AttachMode = 'tcx' | 'clsact';

/** The socket-level programs' hooks; program `sock_<hook>` goes on hook <hook>. */
export const SOCKET_HOOKS = ['connect4', 'connect6', 'sendmsg4', 'sendmsg6', 'recvmsg4', 'recvmsg6', 'getpeername4', 'getpeername6'] as const;

export class Datapath {
  obj: BpfObject | undefined;
  migrations: MigrationReport[] = [];
  /** Program name -> fd from its pin, when this start reused the last start's programs. */
  private reused: Map<string, number> | undefined;
  /** How programs are attached: chosen by the caller (feature probe or configuration). */
  attachMode: AttachMode = 'tcx';

  constructor(private readonly bpf: BpfAddon, private readonly objectPath: string, private readonly log: Logger,
    private readonly pinDir = PIN_DIR) {}

  map(name: string): number {
    const found = this.obj?.maps.find((m) => m.name === name);
    if (!found) throw new Error(`BPF map ${name} is not loaded`);
    return found.fd;
  }

  /** True when this start took the programs from their pins (same build), false when it loaded them. */
  get programsReused(): boolean {
    return this.reused !== undefined;
  }

  program(name: string): number {
    const pinned = this.reused?.get(name);
    if (pinned !== undefined) return pinned;
    const found = this.obj?.programs.find((p) => p.name === name);
    if (!found) throw new Error(`BPF program ${name} is not loaded`);
    return found.fd;
  }

  /**
   * Loads the object (migrating pinned maps to `geometry`), picks how programs attach (a tcx
   * probe unless clsact is configured) and writes mb_config. Returns what it chose, for status.
   */
  start(options: { geometry: Geometry; attachMode: 'auto' | AttachMode; traceSample: number; policyVerdictEvents?: boolean; probeTcx: (tcProgFd: number) => ProbeResult;
    /** Programs to leave out (hooks or helpers the kernel lacks), by name. */
    skipPrograms?: string[] }): { attach: string } {
    this.close();
    this.load(options.geometry, options.skipPrograms);
    const tcx = options.attachMode === 'clsact' ? undefined : options.probeTcx(this.program('from_container'));
    if (options.attachMode === 'tcx' && tcx === 'no') {
      throw new NotSupportedError('tcx', 'attachMode is "tcx" but this kernel has no tcx links (Linux 6.6+); use "auto" or "clsact"');
    }
    this.attachMode = options.attachMode === 'clsact' || tcx === 'no' ? 'clsact' : 'tcx';
    // The policy epoch moves on across restarts: flows are judged again against what this run compiles.
    const previous = this.bpf.bpfMapLookup(this.map('mb_config'), encodeIfindexKey(0));
    const policyEpoch = ((previous ? decodeConfig(previous).policyEpoch : 0) + 1) >>> 0 || 1;
    this.bpf.bpfMapUpdate(this.map('mb_config'), encodeIfindexKey(0), encodeConfig({
      traceSample: options.traceSample, policyEpoch, policyVerdictEvents: options.policyVerdictEvents ?? true,
    }), 0);
    return {
      attach: this.attachMode === 'tcx' ? 'tcx links (probe: yes)' : `clsact (${tcx === undefined ? 'configured' : 'tcx probe: no'})`,
    };
  }

  /** Loads the object, reusing compatible pinned maps and migrating incompatible ones. */
  load(geometry: Geometry, skipPrograms: string[] = []): void {
    fs.mkdirSync(path.join(this.pinDir, 'links'), { recursive: true });
    const wanted = wantedMaps(geometry);
    const pinPaths: Record<string, string> = {};
    const movedAside: { name: string; aside: string; info: BpfMapInfo }[] = [];
    let everyMapPinned = true;
    for (const [name, want] of Object.entries(wanted)) {
      const pin = path.join(this.pinDir, name);
      pinPaths[name] = pin;
      if (!fs.existsSync(pin)) {
        everyMapPinned = false;
        continue;
      }
      const fd = this.bpf.bpfObjGet(pin);
      let info: BpfMapInfo;
      try {
        info = this.bpf.bpfMapInfo(fd);
      } finally {
        this.bpf.bpfClose(fd);
      }
      if (compatible(info, want)) continue;
      // bpffs refuses names with a dot.
      const aside = `${pin}_migrating`;
      fs.rmSync(aside, { force: true });
      fs.renameSync(pin, aside);
      movedAside.push({ name, aside, info });
    }
    // Pinned programs use the maps that were pinned when they were loaded: only with every one of
    // those still in place (none new, none migrated) may they be used again.
    const build = createHash('sha256').update(fs.readFileSync(this.objectPath)).update(`\0${[...skipPrograms].sort().join(',')}`)
      .digest('hex').slice(0, 32);
    const buildDir = path.join(this.pinDir, 'progs', build);
    const reusable = everyMapPinned && movedAside.length === 0 && fs.existsSync(buildDir) ? fs.readdirSync(buildDir) : [];
    const autoload = Object.fromEntries([...skipPrograms, ...reusable].map((name) => [name, false]));
    try {
      this.obj = this.bpf.bpfObjectLoad(this.objectPath, { pinPaths, maxEntries: maxEntriesOverrides(geometry), autoload });
    } catch (err) {
      // Nothing was migrated: put the old maps back where the running programs expect them.
      for (const { name, aside } of movedAside) {
        fs.rmSync(pinPaths[name]!, { force: true });
        fs.renameSync(aside, pinPaths[name]!);
      }
      throw err;
    }
    for (const { name, aside, info } of movedAside) {
      this.migrations.push(this.migrate(ALL_MAPS.find((d) => d.name === name)!, aside, info, wanted[name]!));
    }
    if (reusable.length) {
      this.reused = new Map(reusable.map((name) => [name, this.bpf.bpfObjGet(path.join(buildDir, name))]));
    } else {
      this.pinPrograms(buildDir);
    }
  }

  /**
   * Pins the programs just loaded under `buildDir`, for the next start, and removes other builds'.
   * They are pinned in a side directory renamed into place when complete (bpffs holds no files
   * but pins, so the directory's name is the record): a crash halfway leaves no build to reuse.
   */
  private pinPrograms(buildDir: string): void {
    const dir = path.dirname(buildDir);
    fs.mkdirSync(dir, { recursive: true });
    for (const entry of fs.readdirSync(dir)) fs.rmSync(path.join(dir, entry), { recursive: true, force: true });
    const partial = `${buildDir}-partial`;
    fs.mkdirSync(partial);
    for (const { name, fd } of this.obj!.programs) this.bpf.bpfObjPin(fd, path.join(partial, name));
    fs.renameSync(partial, buildDir);
  }

  /**
   * Carries a map's content over to its new geometry as its declaration says (maps.ts): `copy`
   * copies every entry that fits into the live map, `rewrite` and `reset` copy nothing (the daemon
   * rewrites the first from its state; the second starts empty). Then the old pin goes.
   */
  private migrate(declaration: MapDeclaration, aside: string, info: BpfMapInfo, want: WantedMap): MigrationReport {
    const name = declaration.name;
    const report: MigrationReport = { map: name, from: { keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries }, to: want, copied: 0, skipped: 0 };
    const copyable = declaration.migration === 'copy' && info.type === want.type && info.keySize === want.keySize &&
      info.valueSize <= want.valueSize;
    if (copyable) {
      const oldFd = this.bpf.bpfObjGet(aside);
      try {
        const target = this.map(name);
        const entries = mapEntries(this.bpf, oldFd, info.maxEntries);
        // Values that grew are zero-padded: new fields start at zero.
        const values = entries.map(([, value]) => {
          const grown = Buffer.alloc(want.valueSize);
          value.copy(grown);
          return grown;
        });
        // In batches, so that a full target (a smaller table) still takes what fits.
        for (let i = 0; i < entries.length; i += 4096) {
          const keys = Buffer.concat(entries.slice(i, i + 4096).map(([key]) => key));
          try {
            report.copied += this.bpf.bpfMapUpdateBatch(target, keys, Buffer.concat(values.slice(i, i + 4096)), 0);
          } catch {
            report.skipped += Math.min(4096, entries.length - i);
          }
        }
      } finally {
        this.bpf.bpfClose(oldFd);
      }
    }
    fs.rmSync(aside, { force: true });
    this.log.warn('migrated pinned BPF map to new geometry', { ...report });
    return report;
  }

  private linkPin(ifname: string, direction: TcDirection): string {
    return path.join(this.pinDir, 'links', `${ifname}-${direction}`);
  }

  /**
   * Attaches from_container (ingress) and to_container (egress) to a host-side veth through
   * tcx links pinned in bpffs. An existing pinned link gets the current program atomically.
   */
  attach(ifname: string, ifindex: number): void {
    for (const direction of ['ingress', 'egress'] as const) this.attachDirection(ifname, ifindex, direction);
  }

  /** One direction of attach: each costs an RCU grace period with tcx, so a prepared pair takes them one per idle turn. */
  attachDirection(ifname: string, ifindex: number, direction: TcDirection): void {
    const prog = direction === 'ingress' ? 'from_container' : 'to_container';
    if (this.attachMode === 'clsact') {
      // Replaces what is there atomically (a restart with a new build).
      this.bpf.tcAttach(ifindex, this.program(prog), direction, TC_HANDLE, TC_PRIORITY);
      // A tcx link from an earlier run in tcx mode would run the programs twice: its pin is its last reference.
      fs.rmSync(this.linkPin(ifname, direction), { force: true });
      return;
    }
    const pin = this.linkPin(ifname, direction);
    if (this.updatePinnedLink(pin, this.program(prog))) return;
    let linkFd: number;
    try {
      linkFd = this.bpf.tcxAttach(ifindex, this.program(prog), direction);
    } catch (err) {
      if ((err as { code?: string }).code === 'EINVAL' || (err as { code?: string }).code === 'EOPNOTSUPP') {
        throw new NotSupportedError('tcx', `attaching BPF programs with tcx failed (${(err as Error).message}); ` +
          'Membrane needs Linux 6.6 or newer for tcx links');
      }
      throw err;
    }
    this.pinLink(linkFd, pin);
    // A clsact filter from an earlier run in clsact mode would run the programs twice.
    try {
      this.bpf.tcDetach(ifindex, direction, TC_HANDLE, TC_PRIORITY);
    } catch {
      // none there: the usual case
    }
  }

  /** Moves a veth's link pins to its new name (a prepared pair handed to an endpoint). */
  renameLinkPins(from: string, to: string): void {
    for (const direction of ['ingress', 'egress'] as const) {
      const pin = this.linkPin(from, direction);
      if (fs.existsSync(pin)) fs.renameSync(pin, this.linkPin(to, direction));
    }
  }

  /**
   * Attaches the socket-level load balancer (connect, sendmsg, recvmsg, getpeername; IPv4 and
   * IPv6) at the root of the cgroup-v2 hierarchy through links pinned under <pin dir>/sock/. A
   * link pinned by an earlier run gets this build's program atomically, as endpoint links do.
   */
  attachSockets(cgroupRoot: string): void {
    const dir = path.join(this.pinDir, 'sock');
    fs.mkdirSync(dir, { recursive: true });
    for (const hook of SOCKET_HOOKS) {
      const pin = path.join(dir, hook);
      const prog = this.program(`sock_${hook}`);
      if (this.updatePinnedLink(pin, prog)) continue;
      this.pinLink(this.bpf.cgroupLinkCreate(cgroupRoot, prog, hook), pin);
    }
  }

  /**
   * Gives the link pinned at `pin` (an earlier run's) the program `progFd`, atomically. False when
   * there is no pin, or its link cannot take it (its veth is gone, the ifindex reused): the stale
   * pin is removed, and the caller makes a new link.
   */
  private updatePinnedLink(pin: string, progFd: number): boolean {
    if (!fs.existsSync(pin)) return false;
    const linkFd = this.bpf.bpfObjGet(pin);
    try {
      this.bpf.bpfLinkUpdate(linkFd, progFd);
      return true;
    } catch (err) {
      fs.rmSync(pin, { force: true });
      this.log.debug('stale link pin replaced', { pin, error: (err as Error).message });
      return false;
    } finally {
      this.bpf.bpfClose(linkFd);
    }
  }

  /** Pins a new link and closes the daemon's fd: the pin is then the link's only reference. */
  private pinLink(linkFd: number, pin: string): void {
    try {
      this.bpf.bpfObjPin(linkFd, pin);
    } finally {
      this.bpf.bpfClose(linkFd);
    }
  }

  /** Detaches the socket-level programs (their pins are the links' last references). */
  detachSockets(): void {
    fs.rmSync(path.join(this.pinDir, 'sock'), { recursive: true, force: true });
  }

  /** Removes the pinned links of a veth (deleting the veth already detached them). */
  detach(ifname: string): void {
    for (const direction of ['ingress', 'egress'] as const) fs.rmSync(this.linkPin(ifname, direction), { force: true });
  }

  /** Link pins whose veth no longer exists: left by endpoints deleted while the daemon was down. */
  prunePins(liveIfnames: Set<string>): string[] {
    const removed: string[] = [];
    const dir = path.join(this.pinDir, 'links');
    if (!fs.existsSync(dir)) return removed;
    for (const entry of fs.readdirSync(dir)) {
      const ifname = entry.replace(/-(ingress|egress)$/, '');
      if (!liveIfnames.has(ifname)) {
        fs.rmSync(path.join(dir, entry), { force: true });
        removed.push(entry);
      }
    }
    return removed;
  }

  close(): void {
    for (const fd of this.reused?.values() ?? []) this.bpf.bpfClose(fd);
    this.reused = undefined;
    this.obj?.close();
    this.obj = undefined;
  }
}
