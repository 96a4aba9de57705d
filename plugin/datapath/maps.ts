// Every map of Membrane's BPF object, declared once: its key and value layout (the same structs as
// bpf/lib/*.h, checked against the object's BTF by datapath.test.ts), its type and geometry, where
// it is pinned, and what happens to its content when a new build or configuration changes its
// geometry. The loader derives the pins, the max_entries overrides, the compatibility check and
// the migration from these declarations; the codec derives the byte layouts.

import {
  addrOf, be16, bytes, enum8, ipv4Slot, ipv6Slot, mac, pad, struct, u16, u32, u64, u8, U32_KEY, type StructLayout,
} from './layout.js';

export const BPF_MAP_TYPE_HASH = 1;
export const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
export const BPF_MAP_TYPE_LRU_HASH = 9;
export const BPF_MAP_TYPE_LPM_TRIE = 11;
export const BPF_MAP_TYPE_ARRAY_OF_MAPS = 12;
export const BPF_MAP_TYPE_HASH_OF_MAPS = 13;
export const BPF_MAP_TYPE_RINGBUF = 27;

export const BPF_F_NO_PREALLOC = 1 << 0;

export const CT_STATES = ['new', 'established', 'closing'] as const;

// ---- structs (bpf/lib/maps.h) ----------------------------------------------------------------

export const ENDPOINT_KEY = struct('endpoint_key', { addr: addrOf('family'), family: u8, pad: pad(3) });

export const ENDPOINT_INFO = struct('endpoint_info', {
  ifindex: u32, endpoint_id: u32, identity: u32, network_id: u32, flags: u32, mac, host_mac: mac,
  ip4: ipv4Slot, ip6: ipv6Slot, gw4: ipv4Slot, gw6: ipv6Slot,
});

export const CT_KEY = struct('ct_key', {
  saddr: addrOf('family'), daddr: addrOf('family'), sport: be16, dport: be16, proto: u8, family: u8, flags: u8, pad: pad(1),
});

/** ct_key.flags: a service entry (the flow as sent to the VIP) rather than the flow itself. */
export const CT_KEY_F_SERVICE = 1;

export const CT_ENTRY = struct('ct_entry', {
  expires_ns: u64, created_ns: u64, packets_orig: u64, bytes_orig: u64, packets_reply: u64, bytes_reply: u64,
  endpoint_id: u32, state: enum8(CT_STATES), tcp_flags_orig: u8, tcp_flags_reply: u8, lb_flags: u8,
  policy_epoch: u32, frontend_id: u32, backend_id: u32, pad: pad(4),
});

/** ct_entry.lb_flags. */
export const CT_LB_F_TRANSLATED = 1;
export const CT_LB_F_HAIRPIN = 2;

export const METRIC = struct('metric', { packets: u64, bytes: u64 });

export const EVENT = struct('event', {
  type: u8, reason: u8, direction: u8, family: u8, ifindex: u32, endpoint_id: u32, proto: u8, pad: pad(3),
  saddr: addrOf('family'), daddr: addrOf('family'), sport: be16, dport: be16, len: u32, ts_ns: u64,
  src_identity: u32, dst_identity: u32, rule_id: u32, verdict: u8, audit: u8, policy_direction: u8, pad2: pad(1),
  policy_endpoint: u32, pad3: pad(4), frontend_id: u32, backend_id: u32,
});

export const CONFIG = struct('config', { trace_sample: u32, policy_epoch: u32, flags: u32, pad: pad(4) });

export const IPCACHE_KEY = struct('ipcache_key', { prefixlen: u32, family: u8, pad: pad(3), addr: addrOf('family') });
export const IPCACHE_VALUE = struct('ipcache_value', { identity: u32, class_identity: u32 });

export const POLICY_KEY = struct('policy_key', { prefixlen: u32, identity: u32, direction: u8, proto: u8, port: be16 });
export const POLICY_ENTRY = struct('policy_entry', { rule_id: u32, verdict: u8, pad: pad(3) });
export const POLICY_COUNTER = struct('policy_counter', { allowed: u64, denied: u64 });

// ---- structs (bpf/lib/lb_maps.h) -------------------------------------------------------------

export const LB_BACKEND_STATES = ['active', 'terminating', 'quarantined'] as const;

export const LB_FRONTEND_KEY = struct('lb_frontend_key', { vip: addrOf('family'), port: be16, proto: u8, family: u8 });
export const LB_FRONTEND = struct('lb_frontend', {
  frontend_id: u32, backend_count: u32, network_id: u32, table_size: u32, table_generation: u16, flags: u16,
});
/** Slots per mb_lb_maglev group (LB_MAGLEV_GROUP_SLOTS). */
export const LB_MAGLEV_GROUP_SLOTS = 256;
export const LB_MAGLEV_KEY = struct('lb_maglev_key', { frontend_id: u32, generation: u16, group: u16 });
export const LB_MAGLEV_GROUP = struct('lb_maglev_group', { slots: bytes(4 * LB_MAGLEV_GROUP_SLOTS) });
export const LB_BACKEND = struct('lb_backend', {
  addr: addrOf('family'), port: be16, family: u8, state: enum8(LB_BACKEND_STATES), frontend_id: u32, endpoint_id: u32,
});
export const LB_REVNAT = struct('lb_revnat', { vip: addrOf('family'), port: be16, family: u8, pad: pad(1) });
export const LB_SOCK_KEY = struct('lb_sock_key', { cookie: u64, addr: addrOf('family'), port: be16, family: u8, pad: pad(5) });
export const LB_SOCK_VALUE = struct('lb_sock_value', { vip: addrOf('family'), port: be16, family: u8, pad: pad(1), frontend_id: u32 });
export const LB_CONFIG = struct('lb_config', {
  flags: u32, dns_port: be16, dns_zone_len: u8, dns_zone_labels: u8, dns_zone: bytes(64),
  vip4_net: bytes(4), vip4_mask: bytes(4), vip6_net: bytes(16), vip6_mask: bytes(16),
});
export const DNS_NAT_KEY = struct('dns_nat_key', { client: addrOf('family'), port: be16, family: u8, pad: pad(1) });
export const DNS_NAT_VALUE = struct('dns_nat_value', { server: addrOf('family'), port: be16, family: u8, pad: pad(1) });
export const LB_DOOMED_KEY = struct('lb_doomed_key', { addr: addrOf('family'), port: be16, proto: u8, family: u8 });

export const LB_CONFIG_F_SOCKET = 1 << 0;
export const LB_CONFIG_F_EVENTS = 1 << 1;
export const LB_CONFIG_F_DNS = 1 << 2;
export const CT_LB_F_DNS = 4;

/** Every struct the object shares with the daemon, for the BTF check. */
export const STRUCTS: StructLayout[] = [
  ENDPOINT_KEY, ENDPOINT_INFO, CT_KEY, CT_ENTRY, METRIC, EVENT, CONFIG, IPCACHE_KEY, IPCACHE_VALUE, POLICY_KEY, POLICY_ENTRY,
  POLICY_COUNTER, LB_FRONTEND_KEY, LB_FRONTEND, LB_MAGLEV_KEY, LB_MAGLEV_GROUP, LB_BACKEND, LB_REVNAT, LB_SOCK_KEY, LB_SOCK_VALUE, LB_CONFIG, LB_DOOMED_KEY,
  DNS_NAT_KEY, DNS_NAT_VALUE,
];

// ---- maps --------------------------------------------------------------------------------------

/** Map sizes that come from the daemon's persisted configuration. */
export interface Geometry {
  conntrackMax: number;
  endpointsMax: number;
}

export const DEFAULT_GEOMETRY: Geometry = { conntrackMax: 262144, endpointsMax: 65536 };

/**
 * What happens to a pinned map's content when its geometry changes (another max_entries, a value
 * that grew by appended fields):
 *   copy     every entry is copied into the new map (values zero-padded: new fields start at 0);
 *   rewrite  the daemon writes the content again from its own state after the load;
 *   reset    nothing worth keeping (a ring buffer; per-CPU counters restart at zero).
 */
export type MigrationRule = 'copy' | 'rewrite' | 'reset';

export interface MapDeclaration {
  /** The C name in the object, also its pin name. */
  name: string;
  type: number;
  key?: StructLayout;
  value?: StructLayout;
  /** Without a key/value layout (ring buffers 0; maps of maps hold a 4-byte map fd or id). */
  keySize?: number;
  valueSize?: number;
  /** A function when max_entries comes from the geometry: the loader then overrides the compiled size. */
  maxEntries: number | ((g: Geometry) => number);
  /** map_flags (BPF_F_NO_PREALLOC ...): libbpf reuses a pinned map only when they match too. */
  flags?: number;
  migration: MigrationRule;
  /** What it is for, in a few words (shown by `membrane bpf maps`). */
  why: string;
}

export const MAPS = {
  mb_endpoints: {
    name: 'mb_endpoints', type: BPF_MAP_TYPE_HASH, key: ENDPOINT_KEY, value: ENDPOINT_INFO,
    maxEntries: (g) => g.endpointsMax, migration: 'copy', why: 'local endpoints by address',
  },
  mb_endpoints_by_if: {
    name: 'mb_endpoints_by_if', type: BPF_MAP_TYPE_HASH, key: U32_KEY, value: ENDPOINT_INFO,
    maxEntries: (g) => g.endpointsMax, migration: 'copy', why: 'local endpoints by host-side ifindex',
  },
  mb_conntrack: {
    name: 'mb_conntrack', type: BPF_MAP_TYPE_LRU_HASH, key: CT_KEY, value: CT_ENTRY,
    maxEntries: (g) => g.conntrackMax, migration: 'copy', why: 'every flow; never wiped, so connections survive',
  },
  mb_metrics: {
    name: 'mb_metrics', type: BPF_MAP_TYPE_PERCPU_ARRAY, key: U32_KEY, value: METRIC, maxEntries: 256, migration: 'reset',
    why: 'per-CPU packet and byte counts by reason and direction',
  },
  mb_events: {
    name: 'mb_events', type: BPF_MAP_TYPE_RINGBUF, keySize: 0, valueSize: 0, maxEntries: 256 * 1024, migration: 'reset',
    why: 'drops, traces and verdicts for membrane monitor',
  },
  mb_config: {
    name: 'mb_config', type: BPF_MAP_TYPE_ARRAY, key: U32_KEY, value: CONFIG, maxEntries: 1, migration: 'copy',
    why: 'daemon-wide settings and the policy epoch',
  },
  mb_ipcache: {
    name: 'mb_ipcache', type: BPF_MAP_TYPE_LPM_TRIE, key: IPCACHE_KEY, value: IPCACHE_VALUE, maxEntries: 65536, flags: BPF_F_NO_PREALLOC,
    migration: 'rewrite',
    why: 'identities of addresses that are not local endpoints',
  },
  mb_policy: {
    name: 'mb_policy', type: BPF_MAP_TYPE_HASH_OF_MAPS, key: U32_KEY, valueSize: 4, maxEntries: (g) => g.endpointsMax,
    migration: 'rewrite', why: 'each endpoint\'s policy trie (pinned under policy/), by endpoint id',
  },
  mb_policy_verdicts: {
    name: 'mb_policy_verdicts', type: BPF_MAP_TYPE_PERCPU_ARRAY, key: U32_KEY, value: POLICY_COUNTER, maxEntries: 65536,
    migration: 'reset', why: 'flows allowed and denied per rule',
  },
  mb_lb_frontends: {
    name: 'mb_lb_frontends', type: BPF_MAP_TYPE_HASH, key: LB_FRONTEND_KEY, value: LB_FRONTEND, maxEntries: 65536,
    migration: 'rewrite', why: 'service frontends (VIP, port, protocol)',
  },
  mb_lb_backends: {
    name: 'mb_lb_backends', type: BPF_MAP_TYPE_HASH, key: U32_KEY, value: LB_BACKEND, maxEntries: 262144,
    migration: 'copy', why: 'service backends by stable id (draining ones too)',
  },
  mb_lb_revnat: {
    name: 'mb_lb_revnat', type: BPF_MAP_TYPE_HASH, key: U32_KEY, value: LB_REVNAT, maxEntries: 65536,
    migration: 'copy', why: 'frontend id -> the VIP and port replies come from',
  },
  mb_lb_maglev: {
    name: 'mb_lb_maglev', type: BPF_MAP_TYPE_HASH, key: LB_MAGLEV_KEY, value: LB_MAGLEV_GROUP, maxEntries: 262144,
    flags: BPF_F_NO_PREALLOC, migration: 'rewrite', why: 'the frontends\' Maglev tables, 256 slots per entry',
  },
  mb_lb_sock: {
    name: 'mb_lb_sock', type: BPF_MAP_TYPE_LRU_HASH, key: LB_SOCK_KEY, value: LB_SOCK_VALUE, maxEntries: 262144,
    migration: 'copy', why: 'socket cookie and backend -> the VIP getpeername and recvmsg show',
  },
  mb_lb_config: {
    name: 'mb_lb_config', type: BPF_MAP_TYPE_ARRAY, key: U32_KEY, value: LB_CONFIG, maxEntries: 1, migration: 'rewrite',
    why: 'load balancer switches (socket level on, events)',
  },
  mb_dns_nat: {
    name: 'mb_dns_nat', type: BPF_MAP_TYPE_LRU_HASH, key: DNS_NAT_KEY, value: DNS_NAT_VALUE, maxEntries: 65536, migration: 'copy',
    why: 'queries for service names redirected to the responder: where each was going',
  },
  mb_lb_doomed: {
    name: 'mb_lb_doomed', type: BPF_MAP_TYPE_HASH, key: LB_DOOMED_KEY, valueSize: 1, maxEntries: 4096, migration: 'reset',
    why: 'removed backends whose connected sockets the iterators close (filled only during a run)',
  },
  mb_lb_scratch: {
    name: 'mb_lb_scratch', type: BPF_MAP_TYPE_PERCPU_ARRAY, keySize: 4, valueSize: 192, maxEntries: 1, migration: 'reset',
    why: 'per-CPU room to build a refusal (a reset, an ICMP unreachable) off the 512-byte stack',
  },
} as const satisfies Record<string, MapDeclaration>;

export type MapName = keyof typeof MAPS;

export const ALL_MAPS: MapDeclaration[] = Object.values(MAPS);

/** The policy trie of one endpoint (created by the daemon, held in mb_policy). */
export const POLICY_TRIE = {
  type: BPF_MAP_TYPE_LPM_TRIE, key: POLICY_KEY, value: POLICY_ENTRY, flags: BPF_F_NO_PREALLOC, maxEntries: 65536,
} as const;

export interface WantedMap {
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** The kernel-visible shape a declaration asks for under `geometry`. */
export function wantedShape(d: MapDeclaration, geometry: Geometry): WantedMap {
  return {
    type: d.type,
    keySize: d.key?.size ?? d.keySize ?? 0,
    valueSize: d.value?.size ?? d.valueSize ?? 0,
    maxEntries: typeof d.maxEntries === 'function' ? d.maxEntries(geometry) : d.maxEntries,
    flags: d.flags ?? 0,
  };
}

/** max_entries overrides for the object load: every map whose size comes from the geometry. */
export function maxEntriesOverrides(geometry: Geometry): Record<string, number> {
  return Object.fromEntries(ALL_MAPS.filter((d) => typeof d.maxEntries === 'function').map((d) => [d.name, wantedShape(d, geometry).maxEntries]));
}
