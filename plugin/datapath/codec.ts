// The only code that knows the byte layout of the BPF maps (bpf/lib/maps.h). Addresses and
// ports are network byte order, everything else host (little-endian) order, as maps.h says.
// codec.test.ts checks every size against the compiled object's BTF.

import { formatAddress, parseAddress } from '../ipam/prefix.js';

export const FAMILY_IPV4 = 4;
export const FAMILY_IPV6 = 6;

export const ENDPOINT_F_IPV4 = 1 << 0;
export const ENDPOINT_F_IPV6 = 1 << 1;

export const SIZES = {
  endpoint_key: 20,
  endpoint_info: 96,
  ct_key: 40,
  ct_entry: 56,
  metric: 16,
  event: 64,
  config: 8,
} as const;

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
}

export function encodeEndpointInfo(info: EndpointInfo): Buffer {
  const b = Buffer.alloc(SIZES.endpoint_info);
  b.writeUInt32LE(info.ifindex, 0);
  b.writeUInt32LE(info.endpointId, 4);
  b.writeUInt32LE(info.identity, 8);
  b.writeUInt32LE(info.networkId, 12);
  b.writeUInt32LE((info.ipv4 ? ENDPOINT_F_IPV4 : 0) | (info.ipv6 ? ENDPOINT_F_IPV6 : 0), 16);
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
  return b;
}

export function decodeCtEntry(b: Buffer): CtEntry {
  return {
    expiresNs: b.readBigUInt64LE(0), createdNs: b.readBigUInt64LE(8),
    packetsOrig: b.readBigUInt64LE(16), bytesOrig: b.readBigUInt64LE(24),
    packetsReply: b.readBigUInt64LE(32), bytesReply: b.readBigUInt64LE(40),
    endpointId: b.readUInt32LE(48), state: CT_STATES[b[52]!] ?? `state_${b[52]}`,
    tcpFlagsOrig: b[53]!, tcpFlagsReply: b[54]!,
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
  type: 'drop' | 'trace' | string;
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
}

export function decodeEvent(b: Buffer): DatapathEvent {
  if (b.length < SIZES.event) throw new TypeError(`event record is ${b.length} bytes, expected ${SIZES.event}`);
  const family = b[3]!;
  return {
    type: b[0] === 1 ? 'drop' : b[0] === 2 ? 'trace' : `type_${b[0]}`,
    reasonCode: b[1]!, reason: REASONS[b[1]!] ?? `reason_${b[1]}`,
    direction: DIRECTIONS[b[2]!] ?? `direction_${b[2]}`,
    family, ifindex: b.readUInt32LE(4), endpointId: b.readUInt32LE(8), proto: protocolName(b[12]!),
    saddr: decodeAddr(b, 16, family), daddr: decodeAddr(b, 32, family),
    sport: b.readUInt16BE(48), dport: b.readUInt16BE(50), len: b.readUInt32LE(52), tsNs: b.readBigUInt64LE(56),
  };
}

export function encodeConfig(c: { traceSample: number }): Buffer {
  const b = Buffer.alloc(SIZES.config);
  b.writeUInt32LE(c.traceSample, 0);
  return b;
}
