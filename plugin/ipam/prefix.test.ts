import test from 'ava';
import fc from 'fast-check';
import { InvalidArgumentError } from '../errors.js';
import {
  type Prefix, addressAt, contains, formatAddress, formatPrefix, generateUlaPrefix, lastAddress, nthSubnet,
  offsetOf, overlaps, parseAddress, parsePrefix, prefixContainsPrefix, prefixMask, prefixSize, subnetCount,
} from './prefix.js';

const MAX6 = (1n << 128n) - 1n;

test('parses and formats IPv4 addresses', (t) => {
  t.deepEqual(parseAddress('10.1.2.3'), { family: 4, value: 0x0a010203n });
  t.deepEqual(parseAddress('0.0.0.0'), { family: 4, value: 0n });
  t.deepEqual(parseAddress('255.255.255.255'), { family: 4, value: 0xffffffffn });
  t.is(formatAddress(4, 0x0a010203n), '10.1.2.3');
  t.is(formatAddress(4, 0xffffffffn), '255.255.255.255');
});

test('parses IPv6 in every notation and formats canonically (RFC 5952)', (t) => {
  const cases: Array<[string, string]> = [
    ['fd12:3456:789a:1:0:0:0:5', 'fd12:3456:789a:1::5'],
    ['FD12:3456:789A:0001:0000:0000:0000:0005', 'fd12:3456:789a:1::5'],
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // leftmost of two equal runs
    ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'], // a single zero group is not compressed
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // the longer run wins
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
    ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
    ['::ffff:a01:203', '::ffff:10.1.2.3'],
    ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
  ];
  for (const [input, canonical] of cases) {
    const a = parseAddress(input);
    t.is(a.family, 6, input);
    t.is(formatAddress(6, a.value), canonical, input);
  }
  t.is(parseAddress('fd12:3456:789a:1::5').value, 0xfd123456789a00010000000000000005n);
});

test('rejects garbage addresses with InvalidArgumentError', (t) => {
  for (const bad of ['', 'foo', '10.0.0', '10.0.0.256', '010.0.0.1', '10.0.0.1/24', ' 10.0.0.1', '1::2::3',
    'fe80::1%eth0', '1:2:3:4:5:6:7:8:9', 'fd00::g', '12345::', ':::', '::1.2.3']) {
    const err = t.throws(() => parseAddress(bad), { instanceOf: InvalidArgumentError }, bad);
    t.true(err!.message.includes(JSON.stringify(bad)), err!.message);
    t.is(err!.code, 'MEMBRANE_INVALID_ARGUMENT');
  }
  t.throws(() => parseAddress(undefined as unknown as string), { instanceOf: InvalidArgumentError });
  t.throws(() => formatAddress(4, 1n << 32n), { instanceOf: InvalidArgumentError });
  t.throws(() => formatAddress(6, -1n), { instanceOf: InvalidArgumentError });
});

test('property: IPv6 formatting round-trips and matches the WHATWG URL serializer', (t) => {
  // Bias toward zero groups so that compression is exercised.
  const group = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff }));
  fc.assert(fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), (groups) => {
    let v = 0n;
    for (const g of groups) v = (v << 16n) | BigInt(g);
    const text = formatAddress(6, v);
    if (parseAddress(text).value !== v || parseAddress(text).family !== 6) return false;
    // Uncompressed input parses to the same value.
    if (parseAddress(groups.map((g) => g.toString(16)).join(':')).value !== v) return false;
    if (v >> 32n === 0xffffn) return text.startsWith('::ffff:') && text.includes('.');
    return text === new URL(`http://[${text}]/`).hostname.slice(1, -1) &&
      text === new URL(`http://[${groups.map((g) => g.toString(16).padStart(4, '0')).join(':')}]/`).hostname.slice(1, -1);
  }), { numRuns: 2000 });
  t.pass();
});

test('property: IPv4 formatting round-trips', (t) => {
  fc.assert(fc.property(fc.bigInt({ min: 0n, max: 0xffffffffn }), (v) => {
    const text = formatAddress(4, v);
    const back = parseAddress(text);
    return back.family === 4 && back.value === v;
  }));
  t.pass();
});

test('parsePrefix masks host bits and formatPrefix prints canonically', (t) => {
  t.deepEqual(parsePrefix('10.1.2.3/24'), { family: 4, network: 0x0a010200n, length: 24 });
  t.is(formatPrefix(parsePrefix('10.1.2.3/24')), '10.1.2.0/24');
  t.is(formatPrefix(parsePrefix('10.1.2.3/32')), '10.1.2.3/32');
  t.is(formatPrefix(parsePrefix('10.1.2.3/0')), '0.0.0.0/0');
  t.is(formatPrefix(parsePrefix('172.20.255.255/12')), '172.16.0.0/12');
  t.is(formatPrefix(parsePrefix('FD12:3456:789A:1:2:3:4:5/64')), 'fd12:3456:789a:1::/64');
  t.is(formatPrefix(parsePrefix('fd12:3456:789a:1::5/128')), 'fd12:3456:789a:1::5/128');
  t.is(formatPrefix(parsePrefix('fd12:3456:789a:1::5/0')), '::/0');
  t.is(formatPrefix(parsePrefix('2001:db8:abcd:12ff::/56')), '2001:db8:abcd:1200::/56');
});

test('parsePrefix rejects garbage with a helpful message', (t) => {
  const cases: Array<[string, RegExp]> = [
    ['10.0.0.0', /missing \/prefix-length/],
    ['10.0.0.0/33', /0 to 32/],
    ['fd00::/129', /0 to 128/],
    ['10.0.0.0/-1', /prefix length/],
    ['10.0.0.0/024', /prefix length/],
    ['10.0.0.0/', /prefix length/],
    ['10.0.0.0/8/8', /prefix length/],
    ['10.0.0.0/ 8', /prefix length/],
    ['garbage/8', /not an IP address/],
    ['/8', /not an IP address/],
    ['', /missing/],
  ];
  for (const [bad, re] of cases) {
    const err = t.throws(() => parsePrefix(bad), { instanceOf: InvalidArgumentError }, bad);
    t.regex(err!.message, re, bad);
    t.regex(err!.message, /CIDR notation/, bad);
  }
});

test('prefixSize, lastAddress, contains, addressAt, offsetOf', (t) => {
  const p = parsePrefix('10.0.0.0/24');
  t.is(prefixSize(p), 256n);
  t.is(lastAddress(p), parseAddress('10.0.0.255').value);
  t.true(contains(p, parseAddress('10.0.0.0').value));
  t.true(contains(p, parseAddress('10.0.0.255').value));
  t.false(contains(p, parseAddress('10.0.1.0').value));
  t.false(contains(p, parseAddress('9.255.255.255').value));
  t.is(formatAddress(4, addressAt(p, 5n)), '10.0.0.5');
  t.is(offsetOf(p, parseAddress('10.0.0.200').value), 200n);
  t.throws(() => addressAt(p, 256n), { instanceOf: InvalidArgumentError });
  t.throws(() => addressAt(p, -1n), { instanceOf: InvalidArgumentError });
  t.throws(() => offsetOf(p, parseAddress('10.0.1.0').value), { instanceOf: InvalidArgumentError, message: /10\.0\.1\.0/ });

  const v6 = parsePrefix('fd00:1::/64');
  t.is(prefixSize(v6), 1n << 64n);
  t.is(formatAddress(6, addressAt(v6, 0xabcn)), 'fd00:1::abc');
  t.true(contains(v6, parseAddress('fd00:1::ffff:ffff:ffff:ffff').value));
  t.false(contains(v6, parseAddress('fd00:1:0:1::').value));
  t.is(prefixSize(parsePrefix('::/0')), 1n << 128n);
  t.is(lastAddress(parsePrefix('::/0')), MAX6);
});

test('overlaps and prefixContainsPrefix', (t) => {
  const P = parsePrefix;
  t.true(overlaps(P('10.0.0.0/8'), P('10.1.0.0/16')));
  t.true(overlaps(P('10.1.0.0/16'), P('10.0.0.0/8')));
  t.true(overlaps(P('10.0.0.0/24'), P('10.0.0.0/24')));
  t.false(overlaps(P('10.0.0.0/24'), P('10.0.1.0/24')));
  t.false(overlaps(P('10.0.0.0/25'), P('10.0.0.128/25')));
  t.false(overlaps(P('0.0.0.0/0'), P('::/0')), 'different families never overlap');
  t.true(overlaps(P('fd00::/8'), P('fd12:3456::/32')));
  t.false(overlaps(P('fd00:1::/64'), P('fd00:2::/64')));
  t.true(prefixContainsPrefix(P('10.0.0.0/8'), P('10.255.0.0/16')));
  t.false(prefixContainsPrefix(P('10.255.0.0/16'), P('10.0.0.0/8')));
  t.true(prefixContainsPrefix(P('10.0.0.0/8'), P('10.0.0.0/8')));
  t.false(prefixContainsPrefix(P('10.0.0.0/8'), P('11.0.0.0/16')));
});

test('property: overlaps agrees with a brute-force check on small prefixes', (t) => {
  // Prefixes inside 10.0.0.0/28: compare against the sets of addresses they cover.
  const arb = fc.record({ offset: fc.integer({ min: 0, max: 15 }), length: fc.integer({ min: 28, max: 32 }) })
    .map(({ offset, length }) => parsePrefix(`10.0.0.${offset}/${length}`));
  const members = (p: Prefix): Set<bigint> => {
    const s = new Set<bigint>();
    for (let v = p.network; v <= lastAddress(p); v++) s.add(v);
    return s;
  };
  fc.assert(fc.property(arb, arb, (a, b) => {
    const ma = members(a);
    const mb = members(b);
    const shared = [...ma].some((v) => mb.has(v));
    const aInB = [...ma].every((v) => mb.has(v));
    return overlaps(a, b) === shared && prefixContainsPrefix(b, a) === aInB;
  }));
  t.pass();
});

test('nthSubnet splits a parent and rejects out-of-range indices', (t) => {
  const parent = parsePrefix('10.0.0.0/16');
  t.is(formatPrefix(nthSubnet(parent, 24, 0n)), '10.0.0.0/24');
  t.is(formatPrefix(nthSubnet(parent, 24, 5n)), '10.0.5.0/24');
  t.is(formatPrefix(nthSubnet(parent, 24, 255n)), '10.0.255.0/24');
  t.is(formatPrefix(nthSubnet(parent, 16, 0n)), '10.0.0.0/16');
  t.is(subnetCount(parent, 24), 256n);
  t.throws(() => nthSubnet(parent, 24, 256n), { instanceOf: InvalidArgumentError, message: /256 \/24 subnets/ });
  t.throws(() => nthSubnet(parent, 24, -1n), { instanceOf: InvalidArgumentError });
  t.throws(() => nthSubnet(parent, 15, 0n), { instanceOf: InvalidArgumentError });
  t.throws(() => nthSubnet(parent, 33, 0n), { instanceOf: InvalidArgumentError });

  const ula = parsePrefix('fd12:3456:789a::/48');
  t.is(formatPrefix(nthSubnet(ula, 64, 1n)), 'fd12:3456:789a:1::/64');
  t.is(formatPrefix(nthSubnet(ula, 64, 0xffffn)), 'fd12:3456:789a:ffff::/64');
  t.throws(() => nthSubnet(ula, 64, 0x10000n), { instanceOf: InvalidArgumentError });
  const all = parsePrefix('::/0');
  t.is(formatPrefix(nthSubnet(all, 128, MAX6)), 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128');
});

test('property: nthSubnet results are disjoint, inside the parent, and in order', (t) => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 120 }), fc.integer({ min: 0, max: 8 }), fc.bigInt({ min: 0n, max: MAX6 }),
    fc.bigInt({ min: 0n, max: 255n }), fc.bigInt({ min: 0n, max: 255n }), (length, extra, addr, i, j) => {
      const parent = parsePrefix(`${formatAddress(6, addr)}/${length}`);
      const count = subnetCount(parent, length + extra);
      const a = nthSubnet(parent, length + extra, i % count);
      const b = nthSubnet(parent, length + extra, j % count);
      return prefixContainsPrefix(parent, a) && prefixContainsPrefix(parent, b) &&
        overlaps(a, b) === (i % count === j % count) &&
        (a.network < b.network) === (i % count < j % count);
    }));
  t.pass();
});

test('generateUlaPrefix returns an fd00::/8 /48 that differs between calls', (t) => {
  const fd = parsePrefix('fd00::/8');
  const seen = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const p = generateUlaPrefix();
    t.is(p.family, 6);
    t.is(p.length, 48);
    t.true(prefixContainsPrefix(fd, p), formatPrefix(p));
    t.is(p.network & ((1n << 80n) - 1n), 0n, 'no host bits set');
    t.regex(formatPrefix(p), /^fd[0-9a-f]{2}:.*\/48$/);
    seen.add(formatPrefix(p));
  }
  t.is(seen.size, 50, 'random global IDs differ between calls');
});

test('generateUlaPrefix places the 40-bit Global ID from the random source', (t) => {
  const p = generateUlaPrefix((n) => Buffer.from([0x12, 0x34, 0x56, 0x78, 0x9a].slice(0, n)));
  t.is(formatPrefix(p), 'fd12:3456:789a::/48');
  t.is(formatPrefix(generateUlaPrefix((n) => Buffer.alloc(n, 0))), 'fd00::/48');
  t.is(formatPrefix(generateUlaPrefix((n) => Buffer.alloc(n, 0xff))), 'fdff:ffff:ffff::/48');
});

test('prefixMask is the netmask as an address value, /0 to full length, both families', (t) => {
  t.is(prefixMask(parsePrefix('10.0.0.0/24')), 0xffffff00n);
  t.is(prefixMask(parsePrefix('0.0.0.0/0')), 0n);
  t.is(prefixMask(parsePrefix('10.1.2.3/32')), 0xffffffffn);
  t.is(prefixMask(parsePrefix('fd00::/8')), 0xffn << 120n);
  t.is(prefixMask(parsePrefix('::/0')), 0n);
});
