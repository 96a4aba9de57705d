// Address blocks a container network must not use, from IANA's special-purpose address registries
// (https://www.iana.org/assignments/iana-ipv4-special-registry, .../iana-ipv6-special-registry,
// RFC 6890) and the multicast and deprecated blocks the kernel treats specially. Checked for every
// subnet, --ip-range, --gateway, --aux-address, --ip/--ip6, the configured default ranges and the
// node ULA, so a network that cannot work is refused at `docker network create` with a message
// that says why and what to use, instead of failing later inside the kernel at container start.
//
// Both registries are listed whole, so what is allowed is a decision written down too: private,
// shared, documentation and benchmarking blocks work as plain unicast on one host and people use
// them in examples and labs; blocks whose addresses the stack gives another meaning (this host,
// loopback, link-local, multicast, broadcast, IPv4-mapped, translation, discard) cannot be a
// container's address and are refused.

import { InvalidArgumentError } from '../errors.js';
import { type Address, type Family, type Prefix, formatAddress, formatPrefix, overlaps, parsePrefix } from './prefix.js';

export interface SpecialBlock {
  /** The block in CIDR notation. */
  cidr: string;
  /** The registry's name for it. */
  name: string;
  /** Where it is defined. */
  rfc: string;
  /** Whether a container network may use it, and if not, why not (what the stack does with it). */
  refused: false | string;
  prefix: Prefix;
}

type Entry = [cidr: string, name: string, rfc: string, refused: false | string];

const block = ([cidr, name, rfc, refused]: Entry): SpecialBlock => ({ cidr, name, rfc, refused, prefix: parsePrefix(cidr) });

/** IANA IPv4 Special-Purpose Address Registry, plus multicast (not in that registry, RFC 5771). */
export const IPV4_SPECIAL_BLOCKS: readonly SpecialBlock[] = ([
  ['0.0.0.0/8', '"this network"', 'RFC 791 section 3.2', 'its addresses mean "this host on this network" (0.0.0.0 is the unspecified address)'],
  ['0.0.0.0/32', '"this host on this network"', 'RFC 1122 section 3.2.1.3', 'it is the unspecified address'],
  ['10.0.0.0/8', 'private use', 'RFC 1918', false],
  ['100.64.0.0/10', 'shared address space', 'RFC 6598', false],
  ['127.0.0.0/8', 'loopback', 'RFC 1122 section 3.2.1.3', 'every address in it is the host\'s own loopback'],
  ['169.254.0.0/16', 'link local', 'RFC 3927', 'link-local addresses are never routed, and Membrane routes every container address'],
  ['172.16.0.0/12', 'private use', 'RFC 1918', false],
  ['192.0.0.0/24', 'IETF protocol assignments', 'RFC 6890 section 2.1', 'its addresses are assigned to protocols (DS-Lite, NAT64 discovery, PCP and TURN anycast)'],
  ['192.0.0.0/29', 'IPv4 service continuity prefix (DS-Lite)', 'RFC 7335', 'it is reserved for DS-Lite and 464XLAT'],
  ['192.0.0.8/32', 'IPv4 dummy address', 'RFC 7600', 'it is the source of ICMP errors from hosts without an IPv4 address'],
  ['192.0.0.9/32', 'port control protocol anycast', 'RFC 7723', 'it is the PCP anycast address'],
  ['192.0.0.10/32', 'traversal using relays around NAT anycast', 'RFC 8155', 'it is the TURN anycast address'],
  ['192.0.0.170/32', 'NAT64/DNS64 discovery', 'RFC 7050 section 2.2', 'it is used to discover NAT64 prefixes'],
  ['192.0.0.171/32', 'NAT64/DNS64 discovery', 'RFC 7050 section 2.2', 'it is used to discover NAT64 prefixes'],
  ['192.0.2.0/24', 'documentation (TEST-NET-1)', 'RFC 5737', false],
  ['192.31.196.0/24', 'AS112-v4', 'RFC 7535', false],
  ['192.52.193.0/24', 'AMT', 'RFC 7450', false],
  ['192.88.99.0/24', 'deprecated (6to4 relay anycast)', 'RFC 7526', false],
  ['192.168.0.0/16', 'private use', 'RFC 1918', false],
  ['192.175.48.0/24', 'direct delegation AS112 service', 'RFC 7534', false],
  ['198.18.0.0/15', 'benchmarking', 'RFC 2544', false],
  ['198.51.100.0/24', 'documentation (TEST-NET-2)', 'RFC 5737', false],
  ['203.0.113.0/24', 'documentation (TEST-NET-3)', 'RFC 5737', false],
  ['224.0.0.0/4', 'multicast', 'RFC 5771', 'multicast addresses name groups, not hosts, and cannot be a container\'s source address'],
  ['240.0.0.0/4', 'reserved', 'RFC 1112 section 4', 'Linux refuses to route it as unicast'],
  ['255.255.255.255/32', 'limited broadcast', 'RFC 919 section 7', 'it is the broadcast address of every link'],
] as Entry[]).map(block);

/**
 * IANA IPv6 Special-Purpose Address Registry, plus multicast (RFC 4291 section 2.7), the
 * deprecated IPv4-compatible and site-local blocks, and ULA, which is where Membrane's own pools
 * come from.
 */
export const IPV6_SPECIAL_BLOCKS: readonly SpecialBlock[] = ([
  ['::/128', 'unspecified address', 'RFC 4291 section 2.5.2', 'it is the unspecified address'],
  ['::1/128', 'loopback address', 'RFC 4291 section 2.5.3', 'it is the host\'s own loopback (the kernel refuses it on any other device)'],
  ['::/96', 'IPv4-compatible (deprecated)', 'RFC 4291 section 2.5.5.1', 'IPv4-compatible addresses are deprecated and hold the unspecified and loopback addresses'],
  ['::ffff:0.0.0.0/96', 'IPv4-mapped', 'RFC 4291 section 2.5.5.2', 'IPv4-mapped addresses stand for IPv4 peers inside IPv6 sockets and never appear on the wire'],
  ['64:ff9b::/96', 'IPv4-IPv6 translation', 'RFC 6052', 'it is the well-known NAT64 prefix: its addresses stand for IPv4 hosts'],
  ['64:ff9b:1::/48', 'local-use IPv4/IPv6 translation', 'RFC 8215', 'it is reserved for local NAT64 prefixes'],
  ['100::/64', 'discard-only address block', 'RFC 6666', 'packets to it are discarded by design'],
  ['100:0:0:1::/64', 'dummy IPv6 prefix', 'RFC 9780', 'it is reserved as a dummy prefix'],
  ['2001::/23', 'IETF protocol assignments', 'RFC 2928', false],
  ['2001::/32', 'TEREDO', 'RFC 4380', 'Teredo addresses encode a tunnel endpoint and are answered by Teredo relays'],
  ['2001:1::1/128', 'port control protocol anycast', 'RFC 7723', 'it is the PCP anycast address'],
  ['2001:1::2/128', 'traversal using relays around NAT anycast', 'RFC 8155', 'it is the TURN anycast address'],
  ['2001:1::3/128', 'DNS-SD service registration protocol anycast', 'RFC 9665', 'it is the DNS-SD SRP anycast address'],
  ['2001:2::/48', 'benchmarking', 'RFC 5180', false],
  ['2001:3::/32', 'AMT', 'RFC 7450', false],
  ['2001:4:112::/48', 'AS112-v6', 'RFC 7535', false],
  ['2001:10::/28', 'deprecated (previously ORCHID)', 'RFC 4843', 'it is reserved (formerly ORCHID identifiers, not routable)'],
  ['2001:20::/28', 'ORCHIDv2', 'RFC 7343', 'ORCHID identifiers are not routable locators'],
  ['2001:30::/28', 'drone remote ID protocol entity tags (DETs)', 'RFC 9374', 'DETs are identifiers, not routable locators'],
  ['2001:db8::/32', 'documentation', 'RFC 3849', false],
  ['2002::/16', '6to4', 'RFC 3056', false],
  ['2620:4f:8000::/48', 'direct delegation AS112 service', 'RFC 7534', false],
  ['3fff::/20', 'documentation', 'RFC 9637', false],
  ['5f00::/16', 'segment routing (SRv6) SIDs', 'RFC 9602', false],
  ['fc00::/7', 'unique-local', 'RFC 4193', false],
  ['fe80::/10', 'link-local unicast', 'RFC 4291 section 2.5.6', 'link-local addresses are never routed, and every interface already has its own'],
  ['fec0::/10', 'site-local (deprecated)', 'RFC 3879', 'site-local addresses are deprecated'],
  ['ff00::/8', 'multicast', 'RFC 4291 section 2.7', 'multicast addresses name groups, not hosts, and cannot be a container\'s source address'],
] as Entry[]).map(block);

function blocksOf(family: Family): readonly SpecialBlock[] {
  return family === 4 ? IPV4_SPECIAL_BLOCKS : IPV6_SPECIAL_BLOCKS;
}

/**
 * The refused blocks a prefix shares any address with: first those that contain it, closest
 * first (what the subnet "is"), then those inside it, largest first (what it would swallow).
 */
export function refusedBlocksOverlapping(prefix: Prefix): SpecialBlock[] {
  const hits = blocksOf(prefix.family).filter((b) => b.refused && overlaps(b.prefix, prefix));
  const containing = hits.filter((b) => b.prefix.length <= prefix.length).sort((x, y) => y.prefix.length - x.prefix.length);
  const inside = hits.filter((b) => b.prefix.length > prefix.length).sort((x, y) => x.prefix.length - y.prefix.length);
  return [...containing, ...inside];
}

function whatToUse(family: Family): string {
  return family === 6
    ? 'use a unique local /64 (fd00::/8, e.g. fd12:3456:789a:1::/64), or leave out --subnet and Membrane picks one from the node\'s ULA'
    : 'use a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16), or leave out --subnet and Membrane picks one';
}

function describeBlocks(blocks: SpecialBlock[]): string {
  const shown = blocks.slice(0, 3).map((b) => `${b.cidr} (${b.name}, ${b.rfc}: ${b.refused})`);
  return shown.join('; ') + (blocks.length > 3 ? `; and ${blocks.length - 3} more special-purpose blocks` : '');
}

/**
 * Throws an InvalidArgumentError when `prefix` overlaps a refused block. `what` says which value
 * it was ('subnet', '--ip-range', 'defaultIPv4Ranges entry', ...).
 */
export function assertUsableNetwork(prefix: Prefix, what: string): void {
  const blocks = refusedBlocksOverlapping(prefix);
  if (blocks.length === 0) return;
  const inside = blocks.some((b) => b.prefix.length <= prefix.length);
  throw new InvalidArgumentError(`${what} ${formatPrefix(prefix)} ${inside ? 'lies in' : 'overlaps'} special-purpose ` +
    `address space that cannot hold container addresses: ${describeBlocks(blocks)}; ${whatToUse(prefix.family)}`);
}

/** Throws an InvalidArgumentError when an address (--ip, --ip6, --gateway, --aux-address) lies in a refused block. */
export function assertUsableAddress(address: Address, what: string): void {
  const host: Prefix = { family: address.family, network: address.value, length: address.family === 4 ? 32 : 128 };
  const blocks = refusedBlocksOverlapping(host);
  if (blocks.length === 0) return;
  throw new InvalidArgumentError(`${what} ${formatAddress(address.family, address.value)} is a special-purpose address: ` +
    `${describeBlocks(blocks)}; ${whatToUse(address.family)}`);
}
