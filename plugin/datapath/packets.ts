// A small packet builder for BPF_PROG_TEST_RUN fixtures (and later `membrane trace`): Ethernet,
// ARP, IPv4, IPv6, TCP, UDP, ICMP echo and NDP, with correct checksums.

import { encodeAddr } from './codec.js';
import { formatAddress } from '../ipam/prefix.js';

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

function mac(text: string): Buffer {
  return Buffer.from(text.split(':').map((h) => parseInt(h, 16)));
}

function addr4(ip: string): Buffer {
  const b = Buffer.alloc(16);
  encodeAddr(ip, b, 0);
  return b.subarray(0, 4);
}

function addr6(ip: string): Buffer {
  const b = Buffer.alloc(16);
  encodeAddr(ip, b, 0);
  return b;
}

/** One's-complement sum of 16-bit words, folded. */
export function checksum(...parts: Buffer[]): number {
  let sum = 0;
  for (const part of parts) {
    for (let i = 0; i < part.length; i += 2) sum += (part[i]! << 8) + (i + 1 < part.length ? part[i + 1]! : 0);
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ethernet(dst: string, src: string, type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  mac(dst).copy(h, 0);
  mac(src).copy(h, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

export function arpRequest(senderMac: string, senderIp: string, targetIp: string): Buffer {
  return arp(1, senderMac, senderIp, '00:00:00:00:00:00', targetIp, 'ff:ff:ff:ff:ff:ff');
}

export function arpReply(senderMac: string, senderIp: string, targetMac: string, targetIp: string): Buffer {
  return arp(2, senderMac, senderIp, targetMac, targetIp, targetMac);
}

function arp(op: number, senderMac: string, senderIp: string, targetMac: string, targetIp: string, ethDst: string): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0); // Ethernet
  a.writeUInt16BE(ETH_P_IP, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(op, 6);
  mac(senderMac).copy(a, 8);
  addr4(senderIp).copy(a, 14);
  mac(targetMac).copy(a, 18);
  addr4(targetIp).copy(a, 24);
  return ethernet(ethDst, senderMac, ETH_P_ARP, a);
}

export interface L4 {
  proto: number;
  /** Builds the L4 bytes; gets the pseudo-header for its checksum. */
  build(pseudo: Buffer): Buffer;
}

export function tcp(sport: number, dport: number, flags: number, payload: Buffer = Buffer.alloc(0)): L4 {
  return {
    proto: 6,
    build(pseudo) {
      const h = Buffer.alloc(20);
      h.writeUInt16BE(sport, 0);
      h.writeUInt16BE(dport, 2);
      h.writeUInt32BE(1000, 4);
      h.writeUInt32BE(flags & TCP_ACK ? 2000 : 0, 8);
      h[12] = 5 << 4;
      h[13] = flags;
      h.writeUInt16BE(65535, 14);
      const seg = Buffer.concat([h, payload]);
      seg.writeUInt16BE(checksum(pseudo, seg), 16);
      return seg;
    },
  };
}

export function udp(sport: number, dport: number, payload: Buffer = Buffer.from('membrane')): L4 {
  return {
    proto: 17,
    build(pseudo) {
      const h = Buffer.alloc(8);
      h.writeUInt16BE(sport, 0);
      h.writeUInt16BE(dport, 2);
      h.writeUInt16BE(8 + payload.length, 4);
      const seg = Buffer.concat([h, payload]);
      seg.writeUInt16BE(checksum(pseudo, seg) || 0xffff, 6);
      return seg;
    },
  };
}

/** ICMP (IPv4) or ICMPv6 echo: type 8/0 or 128/129. */
export function icmpEcho(v6: boolean, reply: boolean, id: number, seq = 1): L4 {
  return {
    proto: v6 ? 58 : 1,
    build(pseudo) {
      const m = Buffer.alloc(16);
      m[0] = v6 ? (reply ? 129 : 128) : (reply ? 0 : 8);
      m.writeUInt16BE(id, 4);
      m.writeUInt16BE(seq, 6);
      m.writeUInt16BE(v6 ? checksum(pseudo, m) : checksum(m), 2);
      return m;
    },
  };
}

export function ipv4(src: string, dst: string, l4: L4, ttl = 64): Buffer {
  const pseudo = Buffer.alloc(12);
  addr4(src).copy(pseudo, 0);
  addr4(dst).copy(pseudo, 4);
  pseudo[9] = l4.proto;
  // The L4 length goes in the pseudo-header; build once to learn it, then with it.
  const probe = l4.build(pseudo);
  pseudo.writeUInt16BE(probe.length, 10);
  const body = l4.build(pseudo);
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + body.length, 2);
  h.writeUInt16BE(0x4000, 6); // don't fragment
  h[8] = ttl;
  h[9] = l4.proto;
  addr4(src).copy(h, 12);
  addr4(dst).copy(h, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, body]);
}

function pseudo6(src: string, dst: string, length: number, next: number): Buffer {
  const p = Buffer.alloc(40);
  addr6(src).copy(p, 0);
  addr6(dst).copy(p, 16);
  p.writeUInt32BE(length, 32);
  p[39] = next;
  return p;
}

export function ipv6(src: string, dst: string, l4: L4, hopLimit = 64): Buffer {
  const probe = l4.build(pseudo6(src, dst, 0, l4.proto));
  const body = l4.build(pseudo6(src, dst, probe.length, l4.proto));
  return ipv6Raw(src, dst, l4.proto, body, hopLimit);
}

export function ipv6Raw(src: string, dst: string, next: number, body: Buffer, hopLimit = 64): Buffer {
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(body.length, 4);
  h[6] = next;
  h[7] = hopLimit;
  addr6(src).copy(h, 8);
  addr6(dst).copy(h, 24);
  return Buffer.concat([h, body]);
}

/** A neighbour solicitation from `src` (with its source link-layer option) for `target`. */
export function neighbourSolicitation(srcMac: string, src: string, target: string): Buffer {
  const t = addr6(target);
  const dst = `ff02::1:ff${t[13]!.toString(16).padStart(2, '0')}:${t.readUInt16BE(14).toString(16)}`;
  const m = Buffer.alloc(32);
  m[0] = 135;
  t.copy(m, 8);
  m[24] = 1;
  m[25] = 1;
  mac(srcMac).copy(m, 26);
  m.writeUInt16BE(checksum(pseudo6(src, dst, m.length, 58), m), 2);
  const dstMac = `33:33:ff:${[...t.subarray(13, 16)].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
  return ethernet(dstMac, srcMac, ETH_P_IPV6, ipv6Raw(src, dst, 58, m, 255));
}

/** Verifies an ICMPv6 message's checksum inside an Ethernet+IPv6 frame. */
export function icmpv6ChecksumOk(frame: Buffer): boolean {
  const ip = frame.subarray(14);
  const length = ip.readUInt16BE(4);
  const body = ip.subarray(40, 40 + length);
  const p = Buffer.concat([ip.subarray(8, 40), Buffer.from([0, 0, length >> 8, length & 0xff, 0, 0, 0, 58])]);
  return checksum(p, body) === 0;
}

/** Verifies an IPv4 header checksum inside an Ethernet frame. */
export function ipv4ChecksumOk(frame: Buffer): boolean {
  return checksum(frame.subarray(14, 34)) === 0;
}

/** What a test needs to know of an Ethernet + IPv4/IPv6 + TCP/UDP/ICMP frame the program produced. */
export interface ParsedFrame {
  dstMac: string;
  srcMac: string;
  family: 4 | 6;
  saddr: string;
  daddr: string;
  proto: number;
  ttl: number;
  sport: number;
  dport: number;
  tcpFlags: number;
  seq: number;
  ack: number;
  /** ICMP/ICMPv6 type and code, and the quoted packet of an error. */
  icmpType: number;
  icmpCode: number;
  quoted: Buffer;
  /** The IPv4 header checksum (true for IPv6, which has none) and the L4 checksum verify. */
  ipChecksumOk: boolean;
  l4ChecksumOk: boolean;
  length: number;
}

function formatMac(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function text4(b: Buffer): string {
  return [...b].join('.');
}

function text6(b: Buffer): string {
  return formatAddress(6, (b.readBigUInt64BE(0) << 64n) | b.readBigUInt64BE(8));
}

export function parseFrame(frame: Buffer): ParsedFrame {
  const type = frame.readUInt16BE(12);
  const ip = frame.subarray(14);
  const v4 = type === ETH_P_IP;
  const headerLength = v4 ? (ip[0]! & 0x0f) * 4 : 40;
  const totalL4 = v4 ? ip.readUInt16BE(2) - headerLength : ip.readUInt16BE(4);
  const proto = v4 ? ip[9]! : ip[6]!;
  const l4 = ip.subarray(headerLength, headerLength + totalL4);
  const src = v4 ? ip.subarray(12, 16) : ip.subarray(8, 24);
  const dst = v4 ? ip.subarray(16, 20) : ip.subarray(24, 40);
  const pseudo = v4
    ? Buffer.concat([src, dst, Buffer.from([0, proto, totalL4 >> 8, totalL4 & 0xff])])
    : Buffer.concat([src, dst, Buffer.from([0, 0, totalL4 >> 8, totalL4 & 0xff, 0, 0, 0, proto])]);
  const icmp = proto === 1 || proto === 58;
  const udpNoChecksum = proto === 17 && v4 && l4.readUInt16BE(6) === 0;
  return {
    dstMac: formatMac(frame.subarray(0, 6)), srcMac: formatMac(frame.subarray(6, 12)), family: v4 ? 4 : 6,
    saddr: v4 ? text4(src) : text6(src), daddr: v4 ? text4(dst) : text6(dst), proto, ttl: v4 ? ip[8]! : ip[7]!,
    sport: icmp ? 0 : l4.readUInt16BE(0), dport: icmp ? 0 : l4.readUInt16BE(2),
    tcpFlags: proto === 6 ? l4[13]! : 0, seq: proto === 6 ? l4.readUInt32BE(4) : 0, ack: proto === 6 ? l4.readUInt32BE(8) : 0,
    icmpType: icmp ? l4[0]! : 0, icmpCode: icmp ? l4[1]! : 0, quoted: icmp ? Buffer.from(l4.subarray(8)) : Buffer.alloc(0),
    ipChecksumOk: v4 ? checksum(ip.subarray(0, headerLength)) === 0 : true,
    l4ChecksumOk: udpNoChecksum || checksum(proto === 1 ? Buffer.alloc(0) : pseudo, l4) === 0,
    length: frame.length,
  };
}
