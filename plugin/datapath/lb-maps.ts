// The one writer of the load balancer's maps (mb_lb_*): makes them hold a planned set of
// frontends and backends, as differences against what they hold, in an order in which no packet
// or connect() ever sees a frontend whose table names a backend that is not there yet:
//
//   1. backends that are new or changed;  2. reverse NAT entries;  3. Maglev tables (changed slots
//   in one batch, or a new inner map swapped in whole when the size changes);  4. frontends;
//   then, for what goes away: 5. frontends;  6. their tables and reverse NAT;  7. backends.
//
// The content of every map is cached after the first read (or write), so a change costs map
// writes for what changed only.

import type { BpfAddon } from '../kernel/native.js';
import { InvalidArgumentError } from '../errors.js';
import type { Prefix } from '../ipam/prefix.js';
import type { Datapath } from './loader.js';
import { mapEntries } from './iterate.js';
import { U32_KEY } from './layout.js';
import {
  LB_BACKEND, LB_BACKEND_STATES, LB_CONFIG, LB_CONFIG_F_DNS, LB_CONFIG_F_EVENTS, LB_CONFIG_F_SOCKET, LB_FRONTEND, LB_FRONTEND_KEY, LB_REVNAT,
  MAGLEV_TABLE,
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
  /** Table slots written in place, and tables created (new frontends, or a new size). */
  slotsWritten: number;
  tablesCreated: number;
}

interface CachedTable {
  fd: number;
  table: Uint32Array;
}

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
  private readonly tables = new Map<number, CachedTable>();

  constructor(private readonly bpf: BpfAddon, private readonly datapath: Datapath) {}

  private load(): void {
    if (this.backends) return;
    this.backends = new Map();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_backends'), 1_000_000)) this.backends.set(U32_KEY.decode(key).value, hex(value));
    this.frontends = new Map();
    this.frontendKeys = new Map();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_frontends'), 1_000_000)) {
      this.frontends.set(hex(key), hex(value));
      this.frontendKeys.set(LB_FRONTEND.decode(value).frontendId, hex(key));
    }
    this.revnat = new Map();
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_revnat'), 1_000_000)) this.revnat.set(U32_KEY.decode(key).value, hex(value));
    this.loadTables();
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
    const report: LbApplyReport = { backendsWritten: 0, backendsDeleted: 0, frontendsWritten: 0, frontendsDeleted: 0, slotsWritten: 0, tablesCreated: 0 };
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
    for (const f of changes.frontends) {
      const { slots, created } = this.writeTable(f.frontendId, f.table);
      report.slotsWritten += slots;
      report.tablesCreated += created ? 1 : 0;
    }
    for (const f of changes.frontends) {
      const key = hex(LB_FRONTEND_KEY.encode({ vip: f.vip, port: f.port, proto: PROTOCOL_NUMBERS[f.protocol] }));
      const value = LB_FRONTEND.encode({ frontendId: f.frontendId, backendCount: f.backendCount, networkId: f.networkId });
      // A frontend whose VIP, port or protocol changed leaves its old key.
      const oldKey = this.frontendKeys.get(f.frontendId);
      if (oldKey !== undefined && oldKey !== key) this.deleteFrontendKey(frontendsFd, oldKey);
      this.frontendKeys.set(f.frontendId, key);
      if (this.frontends!.get(key) === hex(value)) continue;
      this.bpf.bpfMapUpdate(frontendsFd, Buffer.from(key, 'hex'), value, 0);
      this.frontends!.set(key, hex(value));
      report.frontendsWritten++;
    }
    for (const id of changes.removeFrontendIds) {
      const key = this.frontendKeys.get(id);
      if (key !== undefined) {
        this.deleteFrontendKey(frontendsFd, key);
        this.frontendKeys.delete(id);
        report.frontendsDeleted++;
      }
    }
    for (const id of changes.removeFrontendIds) {
      if (this.tables.has(id)) this.removeTable(id);
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

  private deleteFrontendKey(fd: number, key: string): void {
    this.bpf.bpfMapDelete(fd, Buffer.from(key, 'hex'));
    this.frontends!.delete(key);
  }

  private tablesLoaded = false;

  private loadTables(): void {
    if (this.tablesLoaded) return;
    this.tablesLoaded = true;
    for (const [key, value] of mapEntries(this.bpf, this.datapath.map('mb_lb_maglev'), 1_000_000)) {
      const id = U32_KEY.decode(key).value;
      const fd = this.bpf.bpfMapGetFdById(value.readUInt32LE(0));
      this.tables.set(id, { fd, table: this.readTable(fd) });
    }
  }

  private readTable(fd: number): Uint32Array {
    const size = this.bpf.bpfMapLookup(fd, U32_KEY.encode({ value: 0 }))?.readUInt32LE(0) ?? 0;
    const table = new Uint32Array(size);
    if (size === 0) return table;
    const { count, keys, values } = this.bpf.bpfMapLookupBatch(fd, size + 1);
    for (let i = 0; i < count; i++) {
      const index = keys.readUInt32LE(i * 4);
      if (index >= 1 && index <= size) table[index - 1] = values.readUInt32LE(i * 4);
    }
    return table;
  }

  /**
   * Makes a frontend's table hold `table`: the changed slots in one batch, or, when the size
   * changes (or there is none yet), a new inner map filled first and then swapped in, so a packet
   * sees the old table or the new one, never a mix, and never a size that does not fit it.
   */
  private writeTable(frontendId: number, table: Uint32Array): { slots: number; created: boolean } {
    this.loadTables();
    const cached = this.tables.get(frontendId);
    if (cached && cached.table.length === table.length) {
      const changed: number[] = [];
      for (let i = 0; i < table.length; i++) if (cached.table[i] !== table[i]) changed.push(i);
      if (changed.length === 0) return { slots: 0, created: false };
      const keys = Buffer.alloc(changed.length * 4);
      const values = Buffer.alloc(changed.length * 4);
      changed.forEach((slot, i) => {
        keys.writeUInt32LE(slot + 1, i * 4);
        values.writeUInt32LE(table[slot]!, i * 4);
      });
      this.bpf.bpfMapUpdateBatch(cached.fd, keys, values, 0);
      cached.table = table.slice();
      return { slots: changed.length, created: false };
    }
    const fd = this.bpf.bpfMapCreate(MAGLEV_TABLE.type, MAGLEV_TABLE.keySize, MAGLEV_TABLE.valueSize, table.length + 1,
      { flags: MAGLEV_TABLE.flags, name: `mb_lut_${frontendId}`.slice(0, 15) });
    const keys = Buffer.alloc((table.length + 1) * 4);
    const values = Buffer.alloc((table.length + 1) * 4);
    values.writeUInt32LE(table.length, 0);
    for (let i = 0; i <= table.length; i++) keys.writeUInt32LE(i, i * 4);
    for (let i = 0; i < table.length; i++) values.writeUInt32LE(table[i]!, (i + 1) * 4);
    this.bpf.bpfMapUpdateBatch(fd, keys, values, 0);
    const outerValue = Buffer.alloc(4);
    outerValue.writeUInt32LE(fd, 0);
    this.bpf.bpfMapUpdate(this.datapath.map('mb_lb_maglev'), U32_KEY.encode({ value: frontendId }), outerValue, 0);
    if (cached) this.bpf.bpfClose(cached.fd);
    this.tables.set(frontendId, { fd, table: table.slice() });
    return { slots: table.length, created: true };
  }

  private removeTable(frontendId: number): void {
    this.bpf.bpfMapDelete(this.datapath.map('mb_lb_maglev'), U32_KEY.encode({ value: frontendId }));
    const cached = this.tables.get(frontendId);
    if (cached) this.bpf.bpfClose(cached.fd);
    this.tables.delete(frontendId);
  }

  /** The load balancer's switches (mb_lb_config); `dns`: redirect queries for this zone to the responder's port. */
  setConfig(config: { socket: boolean; events: boolean; dns?: { zone: string; port: number }; vipRanges?: { ipv4: Prefix; ipv6: Prefix } }): void {
    const zone = config.dns ? dnsWireName(config.dns.zone) : Buffer.alloc(0);
    // Network and mask in network order; without ranges (tests), a /0: every address may be a VIP.
    const ranges = config.vipRanges ?? { ipv4: { family: 4 as const, network: 0n, length: 0 }, ipv6: { family: 6 as const, network: 0n, length: 0 } };
    const bytesOf = (value: bigint, size: number) => Buffer.from(value.toString(16).padStart(size * 2, '0'), 'hex');
    const bits = (p: Prefix) => BigInt(p.family === 4 ? 32 : 128);
    const mask = (p: Prefix) => ((1n << bits(p)) - 1n) ^ ((1n << (bits(p) - BigInt(p.length))) - 1n);
    const m4 = mask(ranges.ipv4);
    const m6 = mask(ranges.ipv6);
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
      tableSize: number; slotsPerBackend: Record<number, number> }[];
    backends: (PlannedBackend & { family: number })[];
  } {
    this.loadTables();
    const frontends = mapEntries(this.bpf, this.datapath.map('mb_lb_frontends'), 1_000_000).map(([key, value]) => {
      const k = LB_FRONTEND_KEY.decode(key);
      const v = LB_FRONTEND.decode(value);
      const fd = this.tables.get(v.frontendId)?.fd;
      const table = fd === undefined ? new Uint32Array(0) : this.readTable(fd);
      const slotsPerBackend: Record<number, number> = {};
      for (const id of table) if (id) slotsPerBackend[id] = (slotsPerBackend[id] ?? 0) + 1;
      return {
        vip: k.vip, port: k.port, protocol: PROTOCOL_NAMES[k.proto] ?? String(k.proto), frontendId: v.frontendId,
        backendCount: v.backendCount, networkId: v.networkId, tableSize: table.length, slotsPerBackend,
      };
    });
    const backends = mapEntries(this.bpf, this.datapath.map('mb_lb_backends'), 1_000_000).map(([key, value]) => {
      const b = LB_BACKEND.decode(value);
      return {
        backendId: U32_KEY.decode(key).value, frontendId: b.frontendId, address: b.addr, port: b.port,
        state: b.state as PlannedBackend['state'], endpointId: b.endpointId, family: b.family,
      };
    });
    return { frontends, backends };
  }

  close(): void {
    for (const { fd } of this.tables.values()) this.bpf.bpfClose(fd);
    this.tables.clear();
    this.tablesLoaded = false;
    this.backends = undefined;
    this.frontends = undefined;
    this.revnat = undefined;
    this.frontendKeys = new Map();
  }
}
