// The only code that knows the byte layout of the BPF maps (bpf/lib/maps.h). Addresses and
// ports are network byte order, everything else host (little-endian) order, as maps.h says.
// codec.test.ts checks every size against the compiled object's BTF.

import { formatAddress, parseAddress } from '../ipam/prefix.js';

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

export const SIZES = {
  endpoint_key: 20,
  endpoint_info: 96,
  ct_key: 40,
  ct_entry: 64,
  metric: 16,
  event: 88,
  config: 16,
  ipcache_key: 24,
  ipcache_value: 8,
  policy_key: 12,
  policy_entry: 8,
  policy_counter: 16,
} as const;

/** Size of event records written by builds before policy (they still sit in a ring after an upgrade). */
const EVENT_SIZE_BEFORE_POLICY = 64;

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
};
export const FIRST_DROP_REASON = 64;
export const REASON_COUNT = 128;
export const DIRECTIONS = ['from-container', 'to-container'] as const;

export const CT_STATES = ['new', 'established', 'closing'] as const;

const PROTOCOLS: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6' };

export function protocolName(proto: number): string {
  return PROTOCOLS[proto] ?? String(proto);
}

/** 16 bytes: IPv4 in the first four, the rest zero; IPv6 as is. */
export function encodeAddr(address: string, out: Buffer, offset: number): number {
  const { family, value } = parseAddress(address);
  out.fill(0, offset, offset + 16);
  if (family === 4) {
    out.writeUInt32BE(Number(value), offset);
  } else {
    out.writeBigUInt64BE(value >> 64n, offset);
    out.writeBigUInt64BE(value & 0xffff_ffff_ffff_ffffn, offset + 8);
  }
  return family === 4 ? FAMILY_IPV4 : FAMILY_IPV6;
}

export function decodeAddr(buf: Buffer, offset: number, family: number): string {
  if (family === FAMILY_IPV4) return formatAddress(4, BigInt(buf.readUInt32BE(offset)));
  if (family === FAMILY_IPV6) return formatAddress(6, (buf.readBigUInt64BE(offset) << 64n) | buf.readBigUInt64BE(offset + 8));
  return '';
}

function encodeMac(mac: string, out: Buffer, offset: number): void {
  const bytes = mac.split(':').map((h) => parseInt(h, 16));
  if (bytes.length !== 6 || bytes.some((b) => !(b >= 0 && b <= 255))) throw new TypeError(`not a MAC address: ${mac}`);
  Buffer.from(bytes).copy(out, offset);
}

function decodeMac(buf: Buffer, offset: number): string {
  return [...buf.subarray(offset, offset + 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function encodeEndpointKey(address: string): Buffer {
  const key = Buffer.alloc(SIZES.endpoint_key);
  key[16] = encodeAddr(address, key, 0);
  return key;
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
  const b = Buffer.alloc(SIZES.endpoint_info);
  b.writeUInt32LE(info.ifindex, 0);
  b.writeUInt32LE(info.endpointId, 4);
  b.writeUInt32LE(info.identity, 8);
  b.writeUInt32LE(info.networkId, 12);
  b.writeUInt32LE((info.ipv4 ? ENDPOINT_F_IPV4 : 0) | (info.ipv6 ? ENDPOINT_F_IPV6 : 0) |
    (info.enforceIngress ? ENDPOINT_F_ENFORCE_INGRESS : 0) | (info.enforceEgress ? ENDPOINT_F_ENFORCE_EGRESS : 0) |
    (info.audit ? ENDPOINT_F_AUDIT : 0), 16);
  encodeMac(info.mac, b, 20);
  encodeMac(info.hostMac, b, 26);
  if (info.ipv4) encodeAddr(info.ipv4, b, 32);
  if (info.ipv6) encodeAddr(info.ipv6, b, 48);
  if (info.gateway4) encodeAddr(info.gateway4, b, 64);
  if (info.gateway6) encodeAddr(info.gateway6, b, 80);
  return b;
}

export function decodeEndpointInfo(b: Buffer): EndpointInfo {
  const flags = b.readUInt32LE(16);
  return {
    ifindex: b.readUInt32LE(0), endpointId: b.readUInt32LE(4), identity: b.readUInt32LE(8), networkId: b.readUInt32LE(12),
    mac: decodeMac(b, 20), hostMac: decodeMac(b, 26),
    ipv4: flags & ENDPOINT_F_IPV4 ? decodeAddr(b, 32, FAMILY_IPV4) : undefined,
    ipv6: flags & ENDPOINT_F_IPV6 ? decodeAddr(b, 48, FAMILY_IPV6) : undefined,
    gateway4: flags & ENDPOINT_F_IPV4 ? decodeAddr(b, 64, FAMILY_IPV4) : undefined,
    gateway6: flags & ENDPOINT_F_IPV6 ? decodeAddr(b, 80, FAMILY_IPV6) : undefined,
    enforceIngress: (flags & ENDPOINT_F_ENFORCE_INGRESS) !== 0, enforceEgress: (flags & ENDPOINT_F_ENFORCE_EGRESS) !== 0,
    audit: (flags & ENDPOINT_F_AUDIT) !== 0,
  };
}

export function encodeIfindexKey(ifindex: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(ifindex, 0);
  return key;
}

export interface CtKey {
  family: number;
  proto: number;
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
}

export function encodeCtKey(k: CtKey): Buffer {
  const b = Buffer.alloc(SIZES.ct_key);
  encodeAddr(k.saddr, b, 0);
  encodeAddr(k.daddr, b, 16);
  b.writeUInt16BE(k.sport, 32);
  b.writeUInt16BE(k.dport, 34);
  b[36] = k.proto;
  b[37] = k.family;
  return b;
}

export function decodeCtKey(b: Buffer): CtKey {
  const family = b[37]!;
  return {
    family, proto: b[36]!, saddr: decodeAddr(b, 0, family), daddr: decodeAddr(b, 16, family),
    sport: b.readUInt16BE(32), dport: b.readUInt16BE(34),
  };
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
}

export function encodeCtEntry(e: CtEntry): Buffer {
  const b = Buffer.alloc(SIZES.ct_entry);
  b.writeBigUInt64LE(e.expiresNs, 0);
  b.writeBigUInt64LE(e.createdNs, 8);
  b.writeBigUInt64LE(e.packetsOrig, 16);
  b.writeBigUInt64LE(e.bytesOrig, 24);
  b.writeBigUInt64LE(e.packetsReply, 32);
  b.writeBigUInt64LE(e.bytesReply, 40);
  b.writeUInt32LE(e.endpointId, 48);
  const state = CT_STATES.indexOf(e.state as (typeof CT_STATES)[number]);
  b[52] = state < 0 ? 0 : state;
  b[53] = e.tcpFlagsOrig;
  b[54] = e.tcpFlagsReply;
  b.writeUInt32LE(e.policyEpoch ?? 0, 56);
  return b;
}

export function decodeCtEntry(b: Buffer): CtEntry {
  return {
    expiresNs: b.readBigUInt64LE(0), createdNs: b.readBigUInt64LE(8),
    packetsOrig: b.readBigUInt64LE(16), bytesOrig: b.readBigUInt64LE(24),
    packetsReply: b.readBigUInt64LE(32), bytesReply: b.readBigUInt64LE(40),
    endpointId: b.readUInt32LE(48), state: CT_STATES[b[52]!] ?? `state_${b[52]}`,
    tcpFlagsOrig: b[53]!, tcpFlagsReply: b[54]!, policyEpoch: b.length >= 60 ? b.readUInt32LE(56) : 0,
  };
}

export function metricKey(reason: number, direction: 0 | 1): Buffer {
  return encodeIfindexKey(reason * 2 + direction);
}

/** Sums a per-CPU struct metric value (one 16-byte slot per possible CPU). */
export function decodePerCpuMetric(b: Buffer): { packets: bigint; bytes: bigint } {
  let packets = 0n;
  let bytes = 0n;
  for (let offset = 0; offset + SIZES.metric <= b.length; offset += SIZES.metric) {
    packets += b.readBigUInt64LE(offset);
    bytes += b.readBigUInt64LE(offset + 8);
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
}

const EVENT_TYPES: Record<number, string> = { 1: 'drop', 2: 'trace', 3: 'policy' };

export function decodeEvent(b: Buffer): DatapathEvent {
  if (b.length < EVENT_SIZE_BEFORE_POLICY) throw new TypeError(`event record is ${b.length} bytes, expected ${SIZES.event}`);
  const family = b[3]!;
  const event: DatapathEvent = {
    type: EVENT_TYPES[b[0]!] ?? `type_${b[0]}`,
    reasonCode: b[1]!, reason: REASONS[b[1]!] ?? `reason_${b[1]}`,
    direction: DIRECTIONS[b[2]!] ?? `direction_${b[2]}`,
    family, ifindex: b.readUInt32LE(4), endpointId: b.readUInt32LE(8), proto: protocolName(b[12]!),
    saddr: decodeAddr(b, 16, family), daddr: decodeAddr(b, 32, family),
    sport: b.readUInt16BE(48), dport: b.readUInt16BE(50), len: b.readUInt32LE(52), tsNs: b.readBigUInt64LE(56),
  };
  if (b.length >= SIZES.event && b[76] !== 0) {
    event.policy = {
      srcIdentity: b.readUInt32LE(64), dstIdentity: b.readUInt32LE(68), ruleId: b.readUInt32LE(72),
      verdict: VERDICTS[b[76]!] ?? `verdict_${b[76]}`, audit: b[77] === 1,
      direction: b[78] === POLICY_EGRESS ? 'egress' : 'ingress', endpointId: b.readUInt32LE(80),
    };
  }
  return event;
}

export function encodeConfig(c: { traceSample: number; policyEpoch?: number; policyVerdictEvents?: boolean }): Buffer {
  const b = Buffer.alloc(SIZES.config);
  b.writeUInt32LE(c.traceSample, 0);
  b.writeUInt32LE(c.policyEpoch ?? 0, 4);
  b.writeUInt32LE(c.policyVerdictEvents ? CONFIG_F_POLICY_VERDICT_EVENTS : 0, 8);
  return b;
}

export function decodeConfig(b: Buffer): { traceSample: number; policyEpoch: number; policyVerdictEvents: boolean } {
  return { traceSample: b.readUInt32LE(0), policyEpoch: b.readUInt32LE(4), policyVerdictEvents: (b.readUInt32LE(8) & CONFIG_F_POLICY_VERDICT_EVENTS) !== 0 };
}

/** mb_ipcache key for a CIDR (`10.0.0.0/8`) or address (a /32 or /128). */
export function encodeIpcacheKey(cidr: string): Buffer {
  const [address, length] = cidr.split('/') as [string, string | undefined];
  const b = Buffer.alloc(SIZES.ipcache_key);
  const family = encodeAddr(address, b, 8);
  b[4] = family;
  b.writeUInt32LE(32 + (length === undefined ? (family === FAMILY_IPV4 ? 32 : 128) : Number(length)), 0);
  return b;
}

export function decodeIpcacheKey(b: Buffer): string {
  const family = b[4]!;
  return `${decodeAddr(b, 8, family)}/${b.readUInt32LE(0) - 32}`;
}

export interface IpcacheValue {
  identity: number;
  /** Wildcard identity that also covers it (ID_CLASS_*), or 0. */
  classIdentity: number;
}

export function encodeIpcacheValue(v: IpcacheValue): Buffer {
  const b = Buffer.alloc(SIZES.ipcache_value);
  b.writeUInt32LE(v.identity, 0);
  b.writeUInt32LE(v.classIdentity, 4);
  return b;
}

export function decodeIpcacheValue(b: Buffer): IpcacheValue {
  return { identity: b.readUInt32LE(0), classIdentity: b.readUInt32LE(4) };
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
  const b = Buffer.alloc(SIZES.policy_key);
  const anyProtocol = k.protocol === 0;
  b.writeUInt32LE(anyProtocol ? 40 : 48 + k.portBits, 0);
  b.writeUInt32LE(k.identity, 4);
  b[8] = k.direction;
  b[9] = k.protocol;
  b.writeUInt16BE(k.port, 10);
  return b;
}

export function decodePolicyKey(b: Buffer): PolicyKey {
  const prefixlen = b.readUInt32LE(0);
  return {
    identity: b.readUInt32LE(4), direction: b[8] === POLICY_EGRESS ? POLICY_EGRESS : POLICY_INGRESS,
    protocol: prefixlen <= 40 ? 0 : b[9]!, port: b.readUInt16BE(10), portBits: Math.max(0, prefixlen - 48),
  };
}

export interface PolicyEntry {
  ruleId: number;
  verdict: typeof POLICY_ALLOW | typeof POLICY_DENY;
}

export function encodePolicyEntry(e: PolicyEntry): Buffer {
  const b = Buffer.alloc(SIZES.policy_entry);
  b.writeUInt32LE(e.ruleId, 0);
  b[4] = e.verdict;
  return b;
}

export function decodePolicyEntry(b: Buffer): PolicyEntry {
  return { ruleId: b.readUInt32LE(0), verdict: b[4] === POLICY_DENY ? POLICY_DENY : POLICY_ALLOW };
}

/** Sums a per-CPU struct policy_counter value. */
export function decodePerCpuPolicyCounter(b: Buffer): { allowed: bigint; denied: bigint } {
  let allowed = 0n;
  let denied = 0n;
  for (let offset = 0; offset + SIZES.policy_counter <= b.length; offset += SIZES.policy_counter) {
    allowed += b.readBigUInt64LE(offset);
    denied += b.readBigUInt64LE(offset + 8);
  }
  return { allowed, denied };
}
