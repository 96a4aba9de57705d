// The one writer of the load balancer's maps (mb_lb_*): makes them hold a planned set of
// frontends and backends, as differences against what they hold, in an order in which no packet
// or connect() ever sees a frontend whose table names a backend that is not there yet:
//
//   1. backends that are new or changed;  2. reverse NAT entries;  3. Maglev tables (changed
//   groups of 256 slots in one batch, or, when the size changes, the whole table under the next
//   generation);  4. frontends (which name the table's size and generation);  then, for what goes
//   away: 5. tables of an older generation;  6. frontends;  7. their tables and reverse NAT;
//   8. backends.
//
// The content of every map is cached after the first read (or write), so a change costs map
// writes for what changed only. A change that does not fit the maps is refused before anything
// is written (CapacityError).

import type { BpfAddon } from '../kernel/native.js';
import { CapacityError, InvalidArgumentError } from '../errors.js';
import { prefixMask, type Prefix } from '../ipam/prefix.js';
import type { Datapath } from './loader.js';
import { mapEntries } from './iterate.js';
import { U32_KEY } from './layout.js';
import {
  LB_BACKEND, LB_BACKEND_STATES, LB_CONFIG, LB_CONFIG_F_DNS, LB_CONFIG_F_EVENTS, LB_CONFIG_F_SOCKET, LB_FRONTEND, LB_FRONTEND_KEY,
  LB_MAGLEV_GROUP_SLOTS, LB_MAGLEV_KEY, LB_REVNAT, MAPS,
} from './maps.js';

export type LbProtocol = 'tcp' | 'udp';
const PROTOCOL_NUMBERS: Record<LbProtocol, number> = { tcp: 6, udp: 17 };
const PROTOCOL_NAMES: Record<number, LbProtocol> = { 6: 'tcp', 17: 'udp' };

export interface PlannedFrontend {
  frontendId: number;
  vip: string;
  port: number;
  protocol: LbProtocol;
  networkId: number;
  /** The Maglev table: M backend ids (M prime); all zero when no backend is ready. */
  table: Uint32Array;
  /** Backends with a share of the table. */
  backendCount: number;
}

export interface PlannedBackend {
  backendId: number;
  frontendId: number;
  address: string;
  port: number;
  state: (typeof LB_BACKEND_STATES)[number];
  endpointId: number;
}

export interface LbPlan {
  frontends: PlannedFrontend[];
  backends: PlannedBackend[];
}

export interface LbApplyReport {
  backendsWritten: number;
  backendsDeleted: number;
  frontendsWritten: number;
  frontendsDeleted: number;
  /** Table slots that changed, map entries (groups of 256 slots) written, and tables written whole (new frontends, or a new size). */
  slotsWritten: number;
  groupsWritten: number;
  tablesCreated: number;
}

interface CachedTable {
  generation: number;
  table: Uint32Array;
}

const groupsOf = (size: number) => Math.ceil(size / LB_MAGLEV_GROUP_SLOTS);

const hex = (b: Buffer) => b.toString('hex');

/** A DNS name in wire format, lowercase: `svc.membrane` is \x03svc\x08membrane\x00. At most 64 bytes (the datapath's limit). */
export function dnsWireName(name: string): Buffer {
  const labels = name.toLowerCase().replace(/\.$/, '').split('.');
  const wire = Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')])), Buffer.from([0])]);
  if (wire.length > 64 || labels.some((l) => l.length === 0 || l.length > 63)) {
    throw new InvalidArgumentError(`DNS zone ${JSON.stringify(name)} is too long or has an empty label: at most 62 characters of labels`);
  }
  return wire;
}

export interface LbUpdate {
  /** Frontends to write (new or changed: unchanged ones cost nothing). */
  frontends: PlannedFrontend[];
  backends: PlannedBackend[];
  /** Frontends and backends to remove. */
  removeFrontendIds: number[];
  removeBackendIds: number[];
}

export class LbMaps {
  /** Backend id -> value written (hex). */
  private backends: Map<number, string> | undefined;
  /** Frontend key (hex) -> value written (hex), and frontend id -> its key. */
  private frontends: Map<string, string> | undefined;
  private frontendKeys = new Map<number, string>();
  /** Frontend id -> reverse NAT value written (hex). */
  private revnat: Map<number, string> | undefined;
  /** Frontend id -> its Maglev table as written; and how many mb_lb_maglev entries are in use. */
  private readonly tables = new Map<number, CachedTable>();
  private groupCount = 0;

  constructor(private readonly bpf: BpfAddon, private readonly datapath: Datapath) {}

  private load(): void {
    if (this.backends) return;
    this.backends = new Map();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_backends'), 1_000_000)) this.backends.set(U32_KEY.decode(key).value, hex(value));
    this.frontends = new Map();
    this.frontendKeys = new Map();
    const generations = new Map<number, { size: number; generation: number }>();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_frontends'), 1_000_000)) {
      this.frontends.set(hex(key), hex(value));
      const v = LB_FRONTEND.decode(value);
      this.frontendKeys.set(v.frontendId, hex(key));
      generations.set(v.frontendId, { size: v.tableSize, generation: v.tableGeneration });
    }
    this.revnat = new Map();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_revnat'), 1_000_000)) this.revnat.set(U32_KEY.decode(key).value, hex(value));
    this.loadTables(generations);
  }

  /**
   * Reads every table the frontends name. Groups no frontend names (a crash between writing a new
   * generation and switching to it, or between removing a frontend and its table) are deleted.
   */
  private loadTables(frontends: Map<number, { size: number; generation: number }>): void {
    this.tables.clear();
    const fd = this.datapath.map('mb_lb_maglev');
    const stale: Buffer[] = [];
    let kept = 0;
    for (const [key, value] of mapEntries(this.bpf, fd, MAPS.mb_lb_maglev.maxEntries)) {
      const k = LB_MAGLEV_KEY.decode(key);
      const named = frontends.get(k.frontendId);
      if (!named || named.generation !== k.generation || k.group >= groupsOf(named.size)) {
        stale.push(key);
        continue;
      }
      let cached = this.tables.get(k.frontendId);
      if (!cached) this.tables.set(k.frontendId, cached = { generation: named.generation, table: new Uint32Array(named.size) });
      const slots = new Uint32Array(value.buffer, value.byteOffset, LB_MAGLEV_GROUP_SLOTS);
      const first = k.group * LB_MAGLEV_GROUP_SLOTS;
      cached.table.set(slots.subarray(0, Math.min(LB_MAGLEV_GROUP_SLOTS, named.size - first)), first);
      kept++;
    }
    for (const key of stale) this.bpf.bpfMapDelete(fd, key);
    this.groupCount = kept;
  }

  /** Makes the maps hold exactly `plan` (at start: whatever the kernel holds that the plan does not, goes). */
  apply(plan: LbPlan): LbApplyReport {
    this.load();
    const frontendIds = new Set(plan.frontends.map((f) => f.frontendId));
    const backendIds = new Set(plan.backends.map((b) => b.backendId));
    const staleFrontends = new Set([...this.frontendKeys.keys(), ...this.revnat!.keys(), ...this.tables.keys()].filter((id) => !frontendIds.has(id)));
    return this.update({
      ...plan, removeFrontendIds: [...staleFrontends], removeBackendIds: [...this.backends!.keys()].filter((id) => !backendIds.has(id)),
    });
  }

  /** Writes and removes what `changes` says, in the order the top of this file gives. */
  update(changes: LbUpdate): LbApplyReport {
    this.load();
    this.checkCapacity(changes);
    const report: LbApplyReport = {
      backendsWritten: 0, backendsDeleted: 0, frontendsWritten: 0, frontendsDeleted: 0, slotsWritten: 0, groupsWritten: 0, tablesCreated: 0,
    };
    const backendsFd = this.datapath.map('mb_lb_backends');
    const frontendsFd = this.datapath.map('mb_lb_frontends');
    const revnatFd = this.datapath.map('mb_lb_revnat');
    for (const b of changes.backends) {
      const value = LB_BACKEND.encode({ addr: b.address, port: b.port, state: b.state, frontendId: b.frontendId, endpointId: b.endpointId });
      if (this.backends!.get(b.backendId) === hex(value)) continue;
      this.bpf.bpfMapUpdate(backendsFd, U32_KEY.encode({ value: b.backendId }), value, 0);
      this.backends!.set(b.backendId, hex(value));
      report.backendsWritten++;
    }
    for (const f of changes.frontends) {
      const value = LB_REVNAT.encode({ vip: f.vip, port: f.port });
      if (this.revnat!.get(f.frontendId) === hex(value)) continue;
      this.bpf.bpfMapUpdate(revnatFd, U32_KEY.encode({ value: f.frontendId }), value, 0);
      this.revnat!.set(f.frontendId, hex(value));
    }
    const replaced: { frontendId: number; generation: number; size: number }[] = [];
    for (const f of changes.frontends) {
      const written = this.writeTable(f.frontendId, f.table);
      report.slotsWritten += written.slots;
      report.groupsWritten += written.groups;
      if (written.replaced) {
        report.tablesCreated++;
        if (written.replaced.size) replaced.push({ frontendId: f.frontendId, ...written.replaced });
      }
    }
    for (const f of changes.frontends) {
      const key = hex(LB_FRONTEND_KEY.encode({ vip: f.vip, port: f.port, proto: PROTOCOL_NUMBERS[f.protocol] }));
      const table = this.tables.get(f.frontendId)!;
      const value = LB_FRONTEND.encode({
        frontendId: f.frontendId, backendCount: f.backendCount, networkId: f.networkId, tableSize: table.table.length, tableGeneration: table.generation,
      });
      // A frontend whose VIP, port or protocol changed leaves its old key.
      const oldKey = this.frontendKeys.get(f.frontendId);
      if (oldKey !== undefined && oldKey !== key) this.deleteFrontendKey(frontendsFd, oldKey);
      this.frontendKeys.set(f.frontendId, key);
      if (this.frontends!.get(key) === hex(value)) continue;
      this.bpf.bpfMapUpdate(frontendsFd, Buffer.from(key, 'hex'), value, 0);
      this.frontends!.set(key, hex(value));
      report.frontendsWritten++;
    }
    // No frontend names these generations any more.
    for (const old of replaced) this.deleteGroups(old.frontendId, old.generation, old.size);
    for (const id of changes.removeFrontendIds) {
      const key = this.frontendKeys.get(id);
      if (key !== undefined) {
        this.deleteFrontendKey(frontendsFd, key);
        this.frontendKeys.delete(id);
        report.frontendsDeleted++;
      }
    }
    for (const id of changes.removeFrontendIds) {
      const cached = this.tables.get(id);
      if (cached) {
        this.deleteGroups(id, cached.generation, cached.table.length);
        this.tables.delete(id);
      }
      if (this.revnat!.has(id)) {
        this.bpf.bpfMapDelete(revnatFd, U32_KEY.encode({ value: id }));
        this.revnat!.delete(id);
      }
    }
    for (const id of changes.removeBackendIds) {
      if (!this.backends!.has(id)) continue;
      this.bpf.bpfMapDelete(backendsFd, U32_KEY.encode({ value: id }));
      this.backends!.delete(id);
      report.backendsDeleted++;
    }
    return report;
  }

  /**
   * Refuses a change the maps cannot hold, before anything is written: frontends (and their
   * reverse NAT entries), backends, and table groups at their peak (a table that changes size has
   * both generations for a moment).
   */
  private checkCapacity(changes: LbUpdate): void {
    // New entries are written before old ones are removed, so the peak is what is held plus what is new.
    const added = <T>(have: Map<T, unknown>, ids: Iterable<T>) => new Set([...ids].filter((id) => !have.has(id))).size;
    const frontendsAdded = added(this.frontendKeys, changes.frontends.map((f) => f.frontendId));
    const backendsAdded = added(this.backends!, changes.backends.map((b) => b.backendId));
    let groupsAdded = 0;
    for (const f of changes.frontends) {
      const cached = this.tables.get(f.frontendId);
      if (!cached || cached.table.length !== f.table.length) groupsAdded += groupsOf(f.table.length);
    }
    const limits = [
      ['mb_lb_frontends', frontendsAdded ? this.frontendKeys.size + frontendsAdded : 0, MAPS.mb_lb_frontends.maxEntries, 'service frontends (one per VIP, port and protocol)'],
      ['mb_lb_backends', backendsAdded ? this.backends!.size + backendsAdded : 0, MAPS.mb_lb_backends.maxEntries, 'service backends (one per frontend and container)'],
      ['mb_lb_maglev', groupsAdded ? this.groupCount + groupsAdded : 0, MAPS.mb_lb_maglev.maxEntries, `Maglev table groups of ${LB_MAGLEV_GROUP_SLOTS} slots`],
    ] as const;
    for (const [map, needed, max, what] of limits) {
      if (needed > max) {
        throw new CapacityError(map, `this change needs ${needed} ${what} and ${map} holds at most ${max}; ` +
          'nothing was written: delete services you no longer use, or create fewer (or smaller) services at once');
      }
    }
  }

  private deleteFrontendKey(fd: number, key: string): void {
    this.bpf.bpfMapDelete(fd, Buffer.from(key, 'hex'));
    this.frontends!.delete(key);
  }

  private groupKeys(frontendId: number, generation: number, groups: Iterable<number>): Buffer {
    const list = [...groups];
    return Buffer.concat(list.map((group) => LB_MAGLEV_KEY.encode({ frontendId, generation, group })));
  }

  private groupValues(table: Uint32Array, groups: Iterable<number>): Buffer {
    const list = [...groups];
    const out = Buffer.alloc(list.length * LB_MAGLEV_GROUP_SLOTS * 4);
    const slots = new Uint32Array(out.buffer, out.byteOffset, list.length * LB_MAGLEV_GROUP_SLOTS);
    list.forEach((group, i) => {
      const first = group * LB_MAGLEV_GROUP_SLOTS;
      slots.set(table.subarray(first, Math.min(table.length, first + LB_MAGLEV_GROUP_SLOTS)), i * LB_MAGLEV_GROUP_SLOTS);
    });
    // Little-endian host: the Uint32Array view wrote native order, which is what the kernel reads.
    return out;
  }

  private deleteGroups(frontendId: number, generation: number, size: number): void {
    const count = groupsOf(size);
    if (count === 0) return;
    const keys = this.groupKeys(frontendId, generation, Array.from({ length: count }, (_, i) => i));
    this.groupCount -= this.bpf.bpfMapDeleteBatch(this.datapath.map('mb_lb_maglev'), keys);
  }

  /**
   * Makes a frontend's table hold `table`. Same size: the groups with changed slots, in one batch
   * (each group is replaced whole, so a packet sees a group before or after, never half of one).
   * A new size (or no table yet): every group under the next generation; the frontend is then
   * switched to it by the caller, and `replaced` says which generation to delete after that.
   */
  private writeTable(frontendId: number, table: Uint32Array): { slots: number; groups: number; replaced?: { generation: number; size: number } } {
    const fd = this.datapath.map('mb_lb_maglev');
    const cached = this.tables.get(frontendId);
    if (cached && cached.table.length === table.length) {
      const changedGroups = new Set<number>();
      let slots = 0;
      for (let i = 0; i < table.length; i++) {
        if (cached.table[i] !== table[i]) {
          changedGroups.add(Math.floor(i / LB_MAGLEV_GROUP_SLOTS));
          slots++;
        }
      }
      if (slots === 0) return { slots: 0, groups: 0 };
      this.bpf.bpfMapUpdateBatch(fd, this.groupKeys(frontendId, cached.generation, changedGroups), this.groupValues(table, changedGroups), 0);
      cached.table = table.slice();
      return { slots, groups: changedGroups.size };
    }
    const generation = cached ? (cached.generation + 1) & 0xffff : 0;
    const all = Array.from({ length: groupsOf(table.length) }, (_, i) => i);
    if (all.length) this.bpf.bpfMapUpdateBatch(fd, this.groupKeys(frontendId, generation, all), this.groupValues(table, all), 0);
    this.groupCount += all.length;
    this.tables.set(frontendId, { generation, table: table.slice() });
    return { slots: table.length, groups: all.length, replaced: { generation: cached?.generation ?? 0, size: cached?.table.length ?? 0 } };
  }

  /** The load balancer's switches (mb_lb_config); `dns`: redirect queries for this zone to the responder's port. */
  setConfig(config: { socket: boolean; events: boolean; dns?: { zone: string; port: number }; vipRanges?: { ipv4: Prefix; ipv6: Prefix } }): void {
    const zone = config.dns ? dnsWireName(config.dns.zone) : Buffer.alloc(0);
    // Network and mask in network order; without ranges (tests), a /0: every address may be a VIP.
    const ranges = config.vipRanges ?? { ipv4: { family: 4 as const, network: 0n, length: 0 }, ipv6: { family: 6 as const, network: 0n, length: 0 } };
    const bytesOf = (value: bigint, size: number) => Buffer.from(value.toString(16).padStart(size * 2, '0'), 'hex');
    const m4 = prefixMask(ranges.ipv4);
    const m6 = prefixMask(ranges.ipv6);
    this.bpf.bpfMapUpdate(this.datapath.map('mb_lb_config'), U32_KEY.encode({ value: 0 }), LB_CONFIG.encode({
      flags: (config.socket ? LB_CONFIG_F_SOCKET : 0) | (config.events ? LB_CONFIG_F_EVENTS : 0) | (config.dns ? LB_CONFIG_F_DNS : 0),
      dnsPort: config.dns?.port ?? 0, dnsZoneLen: zone.length, dnsZoneLabels: config.dns ? config.dns.zone.split('.').length : 0,
      dnsZone: Buffer.concat([zone, Buffer.alloc(64 - zone.length)]),
      vip4Net: bytesOf(ranges.ipv4.network, 4), vip4Mask: bytesOf(m4, 4), vip6Net: bytesOf(ranges.ipv6.network, 16), vip6Mask: bytesOf(m6, 16),
    }), 0);
  }

  /** What the kernel holds, decoded (for `membrane bpf lb list`); tables are summarised per backend. */
  read(): {
    frontends: { vip: string; port: number; protocol: string; frontendId: number; backendCount: number; networkId: number;
      tableSize: number; tableGeneration: number; slotsPerBackend: Record<number, number> }[];
    backends: (PlannedBackend & { family: number })[];
  } {
    const named = new Map<number, { generation: number; size: number; slotsPerBackend: Record<number, number> }>();
    const frontends = mapEntries(this.bpf, this.datapath.map('mb_lb_frontends'), 1_000_000).map(([key, value]) => {
      const k = LB_FRONTEND_KEY.decode(key);
      const v = LB_FRONTEND.decode(value);
      const slotsPerBackend: Record<number, number> = {};
      named.set(v.frontendId, { generation: v.tableGeneration, size: v.tableSize, slotsPerBackend });
      return {
        vip: k.vip, port: k.port, protocol: PROTOCOL_NAMES[k.proto] ?? String(k.proto), frontendId: v.frontendId,
        backendCount: v.backendCount, networkId: v.networkId, tableSize: v.tableSize, tableGeneration: v.tableGeneration, slotsPerBackend,
      };
    });
    // The kernel's tables, not the cache: what packets use.
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_maglev'), MAPS.mb_lb_maglev.maxEntries)) {
      const k = LB_MAGLEV_KEY.decode(key);
      const table = named.get(k.frontendId);
      if (!table || table.generation !== k.generation) continue;
      const inTable = Math.max(0, Math.min(LB_MAGLEV_GROUP_SLOTS, table.size - k.group * LB_MAGLEV_GROUP_SLOTS));
      for (let i = 0; i < inTable; i++) {
        const id = value.readUInt32LE(i * 4);
        if (id) table.slotsPerBackend[id] = (table.slotsPerBackend[id] ?? 0) + 1;
      }
    }
    const backends = mapEntries(this.bpf, this.datapath.map('mb_lb_backends'), 1_000_000).map(([key, value]) => {
      const b = LB_BACKEND.decode(value);
      return {
        backendId: U32_KEY.decode(key).value, frontendId: b.frontendId, address: b.addr, port: b.port,
        state: b.state as PlannedBackend['state'], endpointId: b.endpointId, family: b.family,
      };
    });
    return { frontends, backends };
  }

  /** Forgets the cache (the maps are read again on the next change). */
  close(): void {
    this.tables.clear();
    this.groupCount = 0;
    this.backends = undefined;
    this.frontends = undefined;
    this.revnat = undefined;
    this.frontendKeys = new Map();
  }
}
