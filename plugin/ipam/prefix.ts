// Address and prefix values for IPv4 and IPv6. Parsing, formatting and masking go through
// `ip-address` (the design card's library); what is kept here is the representation the rest of
// Membrane computes with, and strictness ip-address does not have on its own.
//
// An address is a (family, value) pair where value is the address as an unsigned integer
// (32 bits for IPv4, 128 bits for IPv6). A prefix is a network value with its host bits zeroed and
// a length. Parsing is strict (no leading zeros in IPv4 octets, no zone ids, no leading zeros in a
// prefix length) and every failure is an InvalidArgumentError whose message says what was wrong
// and what a valid value looks like. IPv6 output is the RFC 5952 canonical form (ip-address's
// correctForm), with IPv4-mapped addresses (::ffff:0:0/96) written with a dotted IPv4 tail, as
// Go's net/netip (and so Docker) prints them.

import { isIPv4, isIPv6 } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Address4, Address6 } from 'ip-address';
import { InvalidArgumentError } from '../errors.js';

export type Family = 4 | 6;

export interface Prefix {
  family: Family;
  /** The network address as an integer; its host bits are always zero. */
  network: bigint;
  /** Prefix length in bits: 0..32 for IPv4, 0..128 for IPv6. */
  length: number;
}

export interface Address {
  family: Family;
  value: bigint;
}

/** Number of bits in an address of the family: 32 or 128. */
export function familyBits(family: Family): 32 | 128 {
  return family === 4 ? 32 : 128;
}

function hostBits(p: Prefix): bigint {
  return BigInt(familyBits(p.family) - p.length);
}

function maxValue(family: Family): bigint {
  return (1n << BigInt(familyBits(family))) - 1n;
}

function describe(s: unknown): string {
  return typeof s === 'string' ? JSON.stringify(s) : String(s);
}

/** Parses a plain IPv4 or IPv6 address (no prefix length, no zone id). */
export function parseAddress(s: string): Address {
  if (typeof s !== 'string') {
    throw new InvalidArgumentError(`expected an IP address string, got ${describe(s)}`);
  }
  // node:net decides what is an address (strict dotted quads, no zone ids); ip-address converts.
  if (isIPv4(s)) return { family: 4, value: new Address4(s).bigInt() };
  if (isIPv6(s) && !s.includes('%')) return { family: 6, value: new Address6(s).bigInt() };
  let hint = 'expected an IPv4 address like 10.0.0.5 or an IPv6 address like fd00::5';
  if (s.includes('/')) hint += ', without a /prefix-length';
  else if (s.includes('%')) hint += ', without a %zone suffix';
  else if (/^\d+(\.\d+){3}$/.test(s)) hint += ' (each octet 0-255, no leading zeros)';
  throw new InvalidArgumentError(`invalid IP address ${describe(s)}: ${hint}`);
}

/** The upper 96 bits of an IPv4-mapped address (::ffff:0:0/96). */
const MAPPED_PREFIX = 0xffffn;

/** Formats an address value: dotted quad for IPv4, RFC 5952 canonical text for IPv6. */
export function formatAddress(family: Family, value: bigint): string {
  if (family !== 4 && family !== 6) throw new InvalidArgumentError(`invalid address family ${describe(family)}: expected 4 or 6`);
  if (typeof value !== 'bigint' || value < 0n || value > maxValue(family)) {
    throw new InvalidArgumentError(`value ${describe(value)} is not an IPv${family} address`);
  }
  if (family === 4) return Address4.fromBigInt(value).correctForm();
  const address = Address6.fromBigInt(value);
  // IPv4-mapped: ::ffff:a.b.c.d (RFC 5952 section 5).
  return value >> 32n === MAPPED_PREFIX ? address.to4in6() : address.correctForm();
}

/**
 * Parses 'address/length'. Host bits are masked off: '10.1.2.3/24' is 10.1.2.0/24 (policy CIDRs
 * are read this way, as Cilium reads them). Pools use parseNetwork, which refuses them instead.
 * Throws InvalidArgumentError on anything else.
 */
export function parsePrefix(cidr: string): Prefix {
  const { address, length } = splitCidr(cidr);
  const text = `${formatAddress(address.family, address.value)}/${length}`;
  const network = (address.family === 4 ? new Address4(text) : new Address6(text)).startAddress().bigInt();
  return { family: address.family, network, length };
}

/**
 * Parses a network in CIDR notation whose host bits are all zero, as a --subnet or --ip-range must
 * be: '::1/112' is refused, naming the network '::/112' it lies in, instead of being silently
 * turned into it. `what` names the value in the message ('subnet', '--ip-range').
 */
export function parseNetwork(cidr: string, what = 'subnet'): Prefix {
  const prefix = parsePrefix(cidr);
  if (splitCidr(cidr).address.value !== prefix.network) {
    throw new InvalidArgumentError(`${what} ${describe(cidr)} has host bits set: the network it lies in is ` +
      `${formatPrefix(prefix)}; write that, or the network you meant, with every bit after the /${prefix.length} zero`);
  }
  return prefix;
}

function splitCidr(cidr: string): { address: Address; length: number } {
  if (typeof cidr !== 'string') {
    throw new InvalidArgumentError(`expected a subnet in CIDR notation, got ${describe(cidr)}`);
  }
  const example = 'use CIDR notation like 10.10.0.0/16 or fd00:1234:5678::/64';
  const slash = cidr.indexOf('/');
  if (slash < 0) {
    throw new InvalidArgumentError(`invalid subnet ${describe(cidr)}: missing /prefix-length; ${example}`);
  }
  const addrText = cidr.slice(0, slash);
  const lenText = cidr.slice(slash + 1);
  let address: Address;
  try {
    address = parseAddress(addrText);
  } catch (err) {
    throw new InvalidArgumentError(`invalid subnet ${describe(cidr)}: ${describe(addrText)} is not an IP address; ${example}`,
      { cause: err });
  }
  const bits = familyBits(address.family);
  if (!/^(0|[1-9]\d{0,2})$/.test(lenText) || Number(lenText) > bits) {
    throw new InvalidArgumentError(`invalid subnet ${describe(cidr)}: prefix length must be a whole number from 0 to ${bits} ` +
      `for IPv${address.family}; ${example}`);
  }
  return { address, length: Number(lenText) };
}

/** 'network/length' with the network in canonical text. */
export function formatPrefix(p: Prefix): string {
  return `${formatAddress(p.family, p.network)}/${p.length}`;
}

/** The prefix's netmask as an address value (255.255.255.0 for a /24). */
export function prefixMask(p: Prefix): bigint {
  return maxValue(p.family) ^ ((1n << hostBits(p)) - 1n);
}

/** Number of addresses in the prefix (2^(bits - length)). */
export function prefixSize(p: Prefix): bigint {
  return 1n << hostBits(p);
}

/** Highest address value in the prefix (the IPv4 broadcast address). */
export function lastAddress(p: Prefix): bigint {
  return p.network + prefixSize(p) - 1n;
}

/** Whether the address value (of the prefix's family) lies inside the prefix. */
export function contains(p: Prefix, addrValue: bigint): boolean {
  return addrValue >= p.network && addrValue <= lastAddress(p);
}

/** Whether `inner` lies entirely inside `outer` (same family, inner at least as long). */
export function prefixContainsPrefix(outer: Prefix, inner: Prefix): boolean {
  return outer.family === inner.family && inner.length >= outer.length && contains(outer, inner.network);
}

/** Whether two prefixes share any address. Prefixes either nest or are disjoint. */
export function overlaps(a: Prefix, b: Prefix): boolean {
  return prefixContainsPrefix(a, b) || prefixContainsPrefix(b, a);
}

/** Number of subnets of length newLength that fit in parent. */
export function subnetCount(parent: Prefix, newLength: number): bigint {
  const bits = familyBits(parent.family);
  if (!Number.isInteger(newLength) || newLength < parent.length || newLength > bits) {
    throw new InvalidArgumentError(`cannot split ${formatPrefix(parent)} into /${newLength} subnets: ` +
      `the new length must be from ${parent.length} to ${bits}`);
  }
  return 1n << BigInt(newLength - parent.length);
}

/** The index-th (0-based) subnet of length newLength inside parent. Throws if index is out of range. */
export function nthSubnet(parent: Prefix, newLength: number, index: bigint): Prefix {
  const count = subnetCount(parent, newLength);
  if (typeof index !== 'bigint' || index < 0n || index >= count) {
    throw new InvalidArgumentError(`subnet index ${describe(index)} is out of range: ${formatPrefix(parent)} ` +
      `holds ${count} /${newLength} subnets (0 to ${count - 1n})`);
  }
  const size = 1n << BigInt(familyBits(parent.family) - newLength);
  return { family: parent.family, network: parent.network + index * size, length: newLength };
}

/** The address value at a 0-based offset from the prefix's network address. */
export function addressAt(p: Prefix, offset: bigint): bigint {
  if (offset < 0n || offset >= prefixSize(p)) {
    throw new InvalidArgumentError(`offset ${offset} is outside ${formatPrefix(p)} (0 to ${prefixSize(p) - 1n})`);
  }
  return p.network + offset;
}

/** The 0-based offset of an address value from the prefix's network address. */
export function offsetOf(p: Prefix, value: bigint): bigint {
  if (!contains(p, value)) {
    const text = value >= 0n && value <= maxValue(p.family) ? formatAddress(p.family, value) : String(value);
    throw new InvalidArgumentError(`address ${text} is outside ${formatPrefix(p)}`);
  }
  return value - p.network;
}

/**
 * A random RFC 4193 unique local /48: fd00::/8 followed by a 40-bit pseudo-random Global ID.
 * `random(n)` must return n random bytes; it defaults to node:crypto's randomBytes.
 */
export function generateUlaPrefix(random: (n: number) => Buffer = randomBytes): Prefix {
  const bytes = random(5);
  if (bytes.length < 5) throw new InvalidArgumentError('random source returned fewer than 5 bytes');
  let globalId = 0n;
  for (let i = 0; i < 5; i++) globalId = (globalId << 8n) | BigInt(bytes[i]!);
  return { family: 6, network: (0xfdn << 120n) | (globalId << 80n), length: 48 };
}
