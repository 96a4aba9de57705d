// What the daemon reads and writes in the BPF maps, in the daemon's terms (flags as booleans,
// prefixes as CIDR text). The byte layouts themselves are declared once, in maps.ts, and checked
// against the object's BTF; this file only maps between those structs and these shapes.

import {
  CONFIG, CT_ENTRY, CT_KEY, CT_STATES, ENDPOINT_INFO, ENDPOINT_KEY, EVENT, IPCACHE_KEY, IPCACHE_VALUE, METRIC, POLICY_COUNTER,
  POLICY_ENTRY, POLICY_KEY,
} from './maps.js';
import { U32_KEY, readAddr, writeAddr } from './layout.js';
import { parseAddress } from '../ipam/prefix.js';

export { CT_STATES } from './maps.js';

export const FAMILY_IPV4 = 4;
export const FAMILY_IPV6 = 6;

export const ENDPOINT_F_IPV4 = 1 << 0;
export const ENDPOINT_F_IPV6 = 1 << 1;
export const ENDPOINT_F_ENFORCE_INGRESS = 1 << 2;
export const ENDPOINT_F_ENFORCE_EGRESS = 1 << 3;
export const ENDPOINT_F_AUDIT = 1 << 4;

export const CONFIG_F_POLICY_VERDICT_EVENTS = 1 << 0;

/** Reserved identities (bpf/lib/common.h ID_*). */
export const ID_ANY = 0;
export const ID_HOST = 1;
export const ID_CLASS_ENDPOINTS = 3;
export const ID_INIT = 5;
export const ID_WORLD_IPV4 = 9;
export const ID_WORLD_IPV6 = 10;
export const ID_CLASS_WORLD_IPV4 = 11;
export const ID_CLASS_WORLD_IPV6 = 12;
export const ID_FIRST_ENDPOINT = 256;
export const ID_FIRST_CIDR = 1 << 24;

export const POLICY_INGRESS = 0;
export const POLICY_EGRESS = 1;
export const POLICY_ALLOW = 1;
export const POLICY_DENY = 2;
export const POLICY_DEFAULT_DENY = 3;
export const VERDICTS: Record<number, string> = { 1: 'allowed', 2: 'denied', 3: 'default-denied' };

/** Struct sizes, from the layouts in maps.ts (checked against BTF). */
export const SIZES = {
  endpoint_key: ENDPOINT_KEY.size,
  endpoint_info: ENDPOINT_INFO.size,
  ct_key: CT_KEY.size,
  ct_entry: CT_ENTRY.size,
  metric: METRIC.size,
  event: EVENT.size,
  config: CONFIG.size,
  ipcache_key: IPCACHE_KEY.size,
  ipcache_value: IPCACHE_VALUE.size,
  policy_key: POLICY_KEY.size,
  policy_entry: POLICY_ENTRY.size,
  policy_counter: POLICY_COUNTER.size,
} as const;

/** Sizes of event records written by older builds (they still sit in a ring after an upgrade). */
const EVENT_SIZE_BEFORE_POLICY = 64;
const EVENT_SIZE_BEFORE_SERVICES = 88;

/** enum reason in bpf/lib/common.h. */
export const REASONS: Record<number, string> = {
  0: 'forward-stack',
  1: 'redirect-peer',
  2: 'arp-reply',
  3: 'ndp-reply',
  4: 'to-container',
  64: 'unknown-endpoint',
  65: 'spoofed-mac',
  66: 'spoofed-ip',
  67: 'invalid-packet',
  68: 'unsupported-l3',
  69: 'cross-network',
  70: 'arp-not-answered',
  71: 'ndp-not-answered',
  72: 'policy-denied',
  73: 'policy-default-denied',
  74: 'service-no-backend',
  75: 'service-backend-gone',
};
export const FIRST_DROP_REASON = 64;
export const REASON_COUNT = 128;
export const DIRECTIONS = ['from-container', 'to-container'] as const;

const PROTOCOLS: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6' };

export function protocolName(proto: number): string {
  return PROTOCOLS[proto] ?? String(proto);
}

/** 16 bytes: IPv4 in the first four, the rest zero; IPv6 as is. Returns FAMILY_IPV4 or FAMILY_IPV6. */
export function encodeAddr(address: string, out: Buffer, offset: number): number {
  return writeAddr(address, out, offset);
}

export function decodeAddr(buf: Buffer, offset: number, family: number): string {
  return readAddr(buf, offset, family);
}

export function encodeEndpointKey(address: string): Buffer {
  return ENDPOINT_KEY.encode({ addr: address });
}

export interface EndpointInfo {
  ifindex: number;
  endpointId: number;
  identity: number;
  networkId: number;
  mac: string;
  hostMac: string;
  ipv4?: string;
  ipv6?: string;
  gateway4?: string;
  gateway6?: string;
  /** Traffic to / from it needs an allow in its policy map. */
  enforceIngress?: boolean;
  enforceEgress?: boolean;
  /** Policy denies are reported, not enforced. */
  audit?: boolean;
}

export function encodeEndpointInfo(info: EndpointInfo): Buffer {
  return ENDPOINT_INFO.encode({
    ifindex: info.ifindex, endpointId: info.endpointId, identity: info.identity, networkId: info.networkId,
    flags: (info.ipv4 ? ENDPOINT_F_IPV4 : 0) | (info.ipv6 ? ENDPOINT_F_IPV6 : 0) |
      (info.enforceIngress ? ENDPOINT_F_ENFORCE_INGRESS : 0) | (info.enforceEgress ? ENDPOINT_F_ENFORCE_EGRESS : 0) |
      (info.audit ? ENDPOINT_F_AUDIT : 0),
    mac: info.mac, hostMac: info.hostMac, ip4: info.ipv4, ip6: info.ipv6, gw4: info.ipv4 ? info.gateway4 : undefined,
    gw6: info.ipv6 ? info.gateway6 : undefined,
  });
}

export function decodeEndpointInfo(b: Buffer): EndpointInfo {
  const e = ENDPOINT_INFO.decode(b);
  const v4 = (e.flags & ENDPOINT_F_IPV4) !== 0;
  const v6 = (e.flags & ENDPOINT_F_IPV6) !== 0;
  return {
    ifindex: e.ifindex, endpointId: e.endpointId, identity: e.identity, networkId: e.networkId, mac: e.mac, hostMac: e.hostMac,
    ipv4: v4 ? e.ip4 : undefined, ipv6: v6 ? e.ip6 : undefined, gateway4: v4 ? e.gw4 : undefined, gateway6: v6 ? e.gw6 : undefined,
    enforceIngress: (e.flags & ENDPOINT_F_ENFORCE_INGRESS) !== 0, enforceEgress: (e.flags & ENDPOINT_F_ENFORCE_EGRESS) !== 0,
    audit: (e.flags & ENDPOINT_F_AUDIT) !== 0,
  };
}

export function encodeIfindexKey(ifindex: number): Buffer {
  return U32_KEY.encode({ value: ifindex });
}

export interface CtKey {
  family: number;
  proto: number;
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
  /** CT_KEY_F_SERVICE for a service entry. */
  flags?: number;
}

export function encodeCtKey(k: CtKey): Buffer {
  return CT_KEY.encode(k);
}

export function decodeCtKey(b: Buffer): CtKey {
  return CT_KEY.decode(b);
}

export interface CtEntry {
  expiresNs: bigint;
  createdNs: bigint;
  packetsOrig: bigint;
  bytesOrig: bigint;
  packetsReply: bigint;
  bytesReply: bigint;
  endpointId: number;
  state: (typeof CT_STATES)[number] | string;
  tcpFlagsOrig: number;
  tcpFlagsReply: number;
  /** config.policy_epoch when policy last allowed the flow. */
  policyEpoch?: number;
  /** A translated flow (or a service entry): its frontend and backend, CT_LB_F_* flags. */
  frontendId?: number;
  backendId?: number;
  lbFlags?: number;
}

export function encodeCtEntry(e: CtEntry): Buffer {
  const state = CT_STATES.includes(e.state as (typeof CT_STATES)[number]) ? e.state as (typeof CT_STATES)[number] : 'new';
  return CT_ENTRY.encode({ ...e, state, policyEpoch: e.policyEpoch ?? 0 });
}

/** Decodes an entry; an entry of an older, shorter layout decodes with its missing fields zero. */
export function decodeCtEntry(b: Buffer): CtEntry {
  return CT_ENTRY.decode(b);
}

export function metricKey(reason: number, direction: 0 | 1): Buffer {
  return encodeIfindexKey(reason * 2 + direction);
}

/** Sums a per-CPU struct metric value (one slot per possible CPU). */
export function decodePerCpuMetric(b: Buffer): { packets: bigint; bytes: bigint } {
  let packets = 0n;
  let bytes = 0n;
  for (let offset = 0; offset + METRIC.size <= b.length; offset += METRIC.size) {
    const m = METRIC.decode(b, offset);
    packets += m.packets;
    bytes += m.bytes;
  }
  return { packets, bytes };
}

export interface DatapathEvent {
  type: 'drop' | 'trace' | 'policy' | string;
  reason: string;
  reasonCode: number;
  direction: string;
  family: number;
  ifindex: number;
  endpointId: number;
  proto: string;
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
  len: number;
  tsNs: bigint;
  /** Policy verdicts and policy drops only. */
  policy?: {
    srcIdentity: number;
    dstIdentity: number;
    ruleId: number;
    verdict: string;
    audit: boolean;
    /** Whose policy decided, and in which of its directions. */
    endpointId: number;
    direction: 'ingress' | 'egress';
  };
  /** Flows to a service: the frontend, and the backend once chosen. */
  service?: { frontendId: number; backendId: number };
}

const EVENT_TYPES: Record<number, string> = { 1: 'drop', 2: 'trace', 3: 'policy', 4: 'service' };

export function decodeEvent(b: Buffer): DatapathEvent {
  if (b.length < EVENT_SIZE_BEFORE_POLICY) throw new TypeError(`event record is ${b.length} bytes, expected ${SIZES.event}`);
  const e = EVENT.decode(b);
  const event: DatapathEvent = {
    type: EVENT_TYPES[e.type] ?? `type_${e.type}`,
    reasonCode: e.reason, reason: REASONS[e.reason] ?? `reason_${e.reason}`,
    direction: DIRECTIONS[e.direction] ?? `direction_${e.direction}`,
    family: e.family, ifindex: e.ifindex, endpointId: e.endpointId, proto: protocolName(e.proto),
    saddr: e.saddr, daddr: e.daddr, sport: e.sport, dport: e.dport, len: e.len, tsNs: e.tsNs,
  };
  if (b.length >= EVENT_SIZE_BEFORE_SERVICES && e.verdict !== 0) {
    event.policy = {
      srcIdentity: e.srcIdentity, dstIdentity: e.dstIdentity, ruleId: e.ruleId,
      verdict: VERDICTS[e.verdict] ?? `verdict_${e.verdict}`, audit: e.audit === 1,
      direction: e.policyDirection === POLICY_EGRESS ? 'egress' : 'ingress', endpointId: e.policyEndpoint,
    };
  }
  if (e.frontendId) event.service = { frontendId: e.frontendId, backendId: e.backendId };
  return event;
}

export function encodeConfig(c: { traceSample: number; policyEpoch?: number; policyVerdictEvents?: boolean }): Buffer {
  return CONFIG.encode({
    traceSample: c.traceSample, policyEpoch: c.policyEpoch ?? 0, flags: c.policyVerdictEvents ? CONFIG_F_POLICY_VERDICT_EVENTS : 0,
  });
}

export function decodeConfig(b: Buffer): { traceSample: number; policyEpoch: number; policyVerdictEvents: boolean } {
  const c = CONFIG.decode(b);
  return { traceSample: c.traceSample, policyEpoch: c.policyEpoch, policyVerdictEvents: (c.flags & CONFIG_F_POLICY_VERDICT_EVENTS) !== 0 };
}

/** mb_ipcache key for a CIDR (`10.0.0.0/8`) or address (a /32 or /128); prefixlen counts family and pad too. */
export function encodeIpcacheKey(cidr: string): Buffer {
  const [address, length] = cidr.split('/') as [string, string | undefined];
  const bits = length === undefined ? (parseAddress(address).family === 4 ? 32 : 128) : Number(length);
  return IPCACHE_KEY.encode({ prefixlen: 32 + bits, addr: address });
}

export function decodeIpcacheKey(b: Buffer): string {
  const k = IPCACHE_KEY.decode(b);
  return `${k.addr}/${k.prefixlen - 32}`;
}

export interface IpcacheValue {
  identity: number;
  /** Wildcard identity that also covers it (ID_CLASS_*), or 0. */
  classIdentity: number;
}

export function encodeIpcacheValue(v: IpcacheValue): Buffer {
  return IPCACHE_VALUE.encode(v);
}

export function decodeIpcacheValue(b: Buffer): IpcacheValue {
  return IPCACHE_VALUE.decode(b);
}

/**
 * A policy map key: remote identity, direction, then protocol and port as a bit prefix.
 * `protocol` 0 with `portBits` 0 = every protocol; `portBits` 0 = every port of `protocol`;
 * `portBits` 16 = exactly `port` (the ICMP type for ICMP).
 */
export interface PolicyKey {
  identity: number;
  direction: typeof POLICY_INGRESS | typeof POLICY_EGRESS;
  protocol: number;
  port: number;
  portBits: number;
}

export function encodePolicyKey(k: PolicyKey): Buffer {
  const anyProtocol = k.protocol === 0;
  return POLICY_KEY.encode({
    prefixlen: anyProtocol ? 40 : 48 + k.portBits, identity: k.identity, direction: k.direction, proto: k.protocol, port: k.port,
  });
}

export function decodePolicyKey(b: Buffer): PolicyKey {
  const k = POLICY_KEY.decode(b);
  return {
    identity: k.identity, direction: k.direction === POLICY_EGRESS ? POLICY_EGRESS : POLICY_INGRESS,
    protocol: k.prefixlen <= 40 ? 0 : k.proto, port: k.port, portBits: Math.max(0, k.prefixlen - 48),
  };
}

export interface PolicyEntry {
  ruleId: number;
  verdict: typeof POLICY_ALLOW | typeof POLICY_DENY;
}

export function encodePolicyEntry(e: PolicyEntry): Buffer {
  return POLICY_ENTRY.encode(e);
}

export function decodePolicyEntry(b: Buffer): PolicyEntry {
  const e = POLICY_ENTRY.decode(b);
  return { ruleId: e.ruleId, verdict: e.verdict === POLICY_DENY ? POLICY_DENY : POLICY_ALLOW };
}

/** Sums a per-CPU struct policy_counter value. */
export function decodePerCpuPolicyCounter(b: Buffer): { allowed: bigint; denied: bigint } {
  let allowed = 0n;
  let denied = 0n;
  for (let offset = 0; offset + POLICY_COUNTER.size <= b.length; offset += POLICY_COUNTER.size) {
    const c = POLICY_COUNTER.decode(b, offset);
    allowed += c.allowed;
    denied += c.denied;
  }
  return { allowed, denied };
}
