// Special-purpose address blocks: the registries as written, what is refused (with a message that
// names the range, its purpose and what to use), and what is allowed.

import test from 'ava';
import fc from 'fast-check';
import { InvalidArgumentError } from '../errors.js';
import { formatPrefix, parseAddress, parseNetwork, parsePrefix } from './prefix.js';
import {
  IPV4_SPECIAL_BLOCKS, IPV6_SPECIAL_BLOCKS, assertUsableAddress, assertUsableNetwork, refusedBlocksOverlapping,
} from './special-purpose.js';

/** Every block the issue names (and the rest of the refused ones), as a user would type a subnet in it. */
const REFUSED_SUBNETS: [subnet: string, mentions: RegExp][] = [
  ['0.0.0.0/24', /0\.0\.0\.0\/8 \("this network"/],
  ['0.0.0.0/8', /"this network"/],
  ['127.1.0.0/24', /127\.0\.0\.0\/8 \(loopback/],
  ['169.254.10.0/24', /169\.254\.0\.0\/16 \(link local/],
  ['224.1.0.0/24', /224\.0\.0\.0\/4 \(multicast/],
  ['239.255.0.0/16', /multicast/],
  ['240.0.0.0/24', /240\.0\.0\.0\/4 \(reserved/],
  ['255.255.255.0/24', /255\.255\.255\.255\/32 \(limited broadcast/],
  ['192.0.0.0/24', /IETF protocol assignments/],
  ['0.0.0.0/0', /overlaps special-purpose/],
  ['::/64', /::\/128 \(unspecified address/],
  ['::/112', /::1\/128 \(loopback address/],
  ['::ffff:10.0.0.0/120', /::ffff:0\.0\.0\.0\/96 \(IPv4-mapped/],
  ['::ffff:0:0/96', /IPv4-mapped/],
  ['fe80::/64', /fe80::\/10 \(link-local unicast/],
  ['febf:1::/64', /link-local/],
  ['ff00::/64', /ff00::\/8 \(multicast/],
  ['ff02::/16', /multicast/],
  ['fec0::/64', /site-local/],
  ['64:ff9b::/96', /NAT64/],
  ['100::/64', /discard/],
  ['2001::/32', /TEREDO/],
  ['2001:20::/28', /ORCHID/],
  ['::/0', /overlaps special-purpose/],
];

const ALLOWED_SUBNETS = ['10.1.0.0/24', '172.16.5.0/24', '192.168.7.0/24', '100.64.1.0/24', '192.0.2.0/24', '198.51.100.0/24',
  '203.0.113.0/24', '198.18.0.0/24', '11.0.0.0/24', 'fd00:1::/64', 'fd12:3456:789a::/48', '2001:db8:1::/64', '3fff:1::/64',
  '2001:2::/64', '2a01:4f8:1::/64', '2002:c000:204::/48'];

test('every block the issue lists is refused, with its range, purpose and RFC, and what to use instead', (t) => {
  for (const [subnet, mentions] of REFUSED_SUBNETS) {
    const prefix = parseNetwork(subnet);
    const err = t.throws(() => assertUsableNetwork(prefix, 'subnet'), { instanceOf: InvalidArgumentError }, subnet)!;
    t.regex(err.message, mentions, subnet);
    t.regex(err.message, new RegExp(`^subnet ${formatPrefix(prefix).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `), subnet);
    t.regex(err.message, /RFC \d+/, subnet);
    t.regex(err.message, prefix.family === 6 ? /unique local \/64 .*leave out --subnet/ : /private range .*leave out --subnet/, subnet);
    t.is(err.code, 'MEMBRANE_INVALID_ARGUMENT');
  }
});

test('private, shared, documentation, benchmarking and global unicast subnets are allowed', (t) => {
  for (const subnet of ALLOWED_SUBNETS) t.notThrows(() => assertUsableNetwork(parseNetwork(subnet), 'subnet'), subnet);
});

test('a subnet with host bits set is refused, naming the network the user probably meant', (t) => {
  const err = t.throws(() => parseNetwork('::1/112'), { instanceOf: InvalidArgumentError })!;
  t.is(err.message, 'subnet "::1/112" has host bits set: the network it lies in is ::/112; write that, or the network you meant, with every bit after the /112 zero');
  t.regex(t.throws(() => parseNetwork('10.1.2.3/24', '--ip-range'))!.message, /^--ip-range "10\.1\.2\.3\/24" has host bits set: .* 10\.1\.2\.0\/24/);
  t.regex(t.throws(() => parseNetwork('fd00:1::5/64'))!.message, /fd00:1::\/64/);
  t.deepEqual(parseNetwork('10.1.2.0/24'), parsePrefix('10.1.2.0/24'));
  t.deepEqual(parseNetwork('10.1.2.3/32'), parsePrefix('10.1.2.3/32'));
});

test('single addresses (--ip, --ip6, --gateway, --aux-address) in refused blocks are refused', (t) => {
  for (const address of ['0.0.0.0', '127.0.0.1', '169.254.1.1', '224.0.0.1', '255.255.255.255', '240.1.2.3', '::', '::1',
    '::ffff:10.1.1.1', 'fe80::1', 'ff02::1', '192.0.0.9', '2001:1::1']) {
    const err = t.throws(() => assertUsableAddress(parseAddress(address), '--ip'), { instanceOf: InvalidArgumentError }, address)!;
    t.regex(err.message, /^--ip \S+ is a special-purpose address: .*RFC/, address);
  }
  for (const address of ['10.1.0.5', '192.0.2.1', 'fd00::5', '2001:db8::1', '2001:1::4']) t.notThrows(() => assertUsableAddress(parseAddress(address), '--ip'));
});

test('the registries are written canonically, one entry per block, and refused entries say why', (t) => {
  for (const [family, blocks] of [[4, IPV4_SPECIAL_BLOCKS], [6, IPV6_SPECIAL_BLOCKS]] as const) {
    const seen = new Set<string>();
    for (const b of blocks) {
      t.is(formatPrefix(parseNetwork(b.cidr)), b.cidr, `${b.cidr} is canonical and has no host bits`);
      t.is(b.prefix.family, family);
      t.false(seen.has(b.cidr), `${b.cidr} listed once`);
      seen.add(b.cidr);
      t.regex(b.rfc, /^RFC \d+/);
      if (b.refused) t.true(b.refused.length > 10);
    }
  }
});

test('property: a refused answer means the subnet shares an address with a refused block, and never otherwise', (t) => {
  const refused = [...IPV4_SPECIAL_BLOCKS, ...IPV6_SPECIAL_BLOCKS].filter((b) => b.refused);
  const v4 = fc.tuple(fc.bigInt(0n, (1n << 32n) - 1n), fc.integer({ min: 0, max: 32 })).map(([v, l]) => ({ family: 4 as const, network: (v >> BigInt(32 - l)) << BigInt(32 - l), length: l }));
  // IPv6 biased to the low and high ends, where the special blocks are.
  const v6value = fc.oneof(fc.bigInt(0n, (1n << 48n) - 1n), fc.bigInt(0xfe00n << 112n, (1n << 128n) - 1n), fc.bigInt(0n, (1n << 128n) - 1n),
    fc.bigInt(0x2001n << 112n, (0x2002n << 112n) - 1n));
  const v6 = fc.tuple(v6value, fc.integer({ min: 0, max: 128 })).map(([v, l]) => ({ family: 6 as const, network: (v >> BigInt(128 - l)) << BigInt(128 - l), length: l }));
  fc.assert(fc.property(fc.oneof(v4, v6), (prefix) => {
    const last = prefix.network + (1n << BigInt((prefix.family === 4 ? 32 : 128) - prefix.length)) - 1n;
    const expected = refused.some((b) => {
      if (b.prefix.family !== prefix.family) return false;
      const bLast = b.prefix.network + (1n << BigInt((b.prefix.family === 4 ? 32 : 128) - b.prefix.length)) - 1n;
      return b.prefix.network <= last && prefix.network <= bLast;
    });
    return (refusedBlocksOverlapping(prefix).length > 0) === expected;
  }), { numRuns: 3000 });
  t.pass();
});
