// VIP choice: a hash of the service's key picks the first candidate in the service range, linear
// probing skips taken addresses, the network (and IPv4 broadcast) address is never a VIP, and a
// full range is an error. VIPs users ask for are checked against the same rules.

import test from 'ava';
import fc from 'fast-check';
import { InvalidArgumentError, IpamExhaustedError } from '../errors.js';
import { formatAddress, parseAddress, parsePrefix, type Prefix } from '../ipam/prefix.js';
import { murmurHash3_32 } from './maglev.js';
import { checkRequestedVip, pickVip } from './vips.js';

const NONE: ReadonlySet<string> = new Set();

/** Offset of an address inside its range. */
const offsetIn = (range: Prefix, address: string): bigint => parseAddress(address).value - range.network;

/** Every address of a small range, as text. */
function addressesOf(range: Prefix): string[] {
  const bits = range.family === 4 ? 32 : 128;
  const size = 1 << (bits - range.length);
  return Array.from({ length: size }, (_, i) => formatAddress(range.family, range.network + BigInt(i)));
}

// ---- pickVip ------------------------------------------------------------------------------------

test('the first choice is a pure function of the key: same key, same VIP', (t) => {
  const range = parsePrefix('10.211.0.0/16');
  const a = pickVip(range, 'net-a/api', NONE);
  t.is(pickVip(range, 'net-a/api', NONE), a);
  t.is(pickVip(range, 'net-a/api', new Set(['10.1.1.1'])), a, 'addresses that are not the first choice do not matter');
  t.not(pickVip(range, 'net-b/api', NONE), a, 'the same name on another network hashes elsewhere');
});

test('the first choice is the hash of the key (seed "VIP1") over the usable addresses', (t) => {
  // Pinned, because the same service recreated must find its VIP where it was.
  const range = parsePrefix('10.211.0.0/16');
  for (const key of ['n/api', 'n/web', 'x'.repeat(64)]) {
    const hash = BigInt(murmurHash3_32(Buffer.from(key, 'utf8'), 0x5649_5031));
    const expected = formatAddress(4, range.network + 1n + (hash % 65534n));
    t.is(pickVip(range, key, NONE), expected, key);
  }
});

test('different keys spread over the range', (t) => {
  const range = parsePrefix('10.211.0.0/16');
  const picks = new Set(Array.from({ length: 300 }, (_, i) => pickVip(range, `network/svc-${i}`, NONE)));
  // 300 keys over 65534 addresses: a birthday collision or two at most.
  t.true(picks.size >= 297, `only ${picks.size} distinct first choices`);
  // And over the whole range, not a corner of it: each quarter gets some.
  const quarters = new Set([...picks].map((a) => Number(offsetIn(range, a) / 16384n)));
  t.deepEqual([...quarters].sort(), [0, 1, 2, 3]);
});

test('a taken first choice moves to the next free address (linear probing), wrapping at the end', (t) => {
  const range = parsePrefix('10.0.0.0/29'); // usable .1 to .6
  const key = 'net/api';
  const first = pickVip(range, key, NONE);
  const firstOffset = Number(offsetIn(range, first));
  const next = (offset: number) => (offset % 6) + 1; // .6 wraps to .1
  t.is(pickVip(range, key, new Set([first])), `10.0.0.${next(firstOffset)}`);
  t.is(pickVip(range, key, new Set([first, `10.0.0.${next(firstOffset)}`])), `10.0.0.${next(next(firstOffset))}`);
  // Everything but one address taken: that one, wherever it is.
  for (let free = 1; free <= 6; free++) {
    const taken = new Set(addressesOf(range).filter((a) => a !== `10.0.0.${free}`));
    t.is(pickVip(range, key, taken), `10.0.0.${free}`);
  }
});

test('the network and broadcast addresses of an IPv4 range are never chosen', (t) => {
  const range = parsePrefix('192.168.7.0/30'); // .1 and .2 only
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) seen.add(pickVip(range, `k${i}`, NONE));
  t.deepEqual([...seen].sort(), ['192.168.7.1', '192.168.7.2']);
  t.is(pickVip(range, 'k', new Set(['192.168.7.1'])), '192.168.7.2');
  t.is(pickVip(range, 'k', new Set(['192.168.7.2'])), '192.168.7.1');
});

test('a full range throws IpamExhaustedError naming the range and the settings to change', (t) => {
  const range = parsePrefix('192.168.7.0/30');
  const err = t.throws(() => pickVip(range, 'k', new Set(['192.168.7.1', '192.168.7.2'])), { instanceOf: IpamExhaustedError });
  t.is(err?.pool, '192.168.7.0/30');
  t.regex(err!.message, /^address pool 192\.168\.7\.0\/30 is exhausted \(every address of the service range is a VIP already;/);
  t.regex(err!.message, /serviceIPv4Range \/ serviceIPv6Range/);
  // Taken addresses outside the usable set (network, broadcast) do not make it fuller.
  t.is(pickVip(range, 'k', new Set(['192.168.7.0', '192.168.7.3', '192.168.7.1'])), '192.168.7.2');
});

test('IPv6 ranges: the network address is never chosen, the last address may be (no broadcast)', (t) => {
  const range = parsePrefix('fd00:1:2::/126'); // ::1, ::2, ::3
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) seen.add(pickVip(range, `k${i}`, NONE));
  t.deepEqual([...seen].sort(), ['fd00:1:2::1', 'fd00:1:2::2', 'fd00:1:2::3']);
  t.is(pickVip(range, 'k', new Set(['fd00:1:2::1', 'fd00:1:2::2'])), 'fd00:1:2::3');
  t.throws(() => pickVip(range, 'k', new Set(['fd00:1:2::1', 'fd00:1:2::2', 'fd00:1:2::3'])), {
    instanceOf: IpamExhaustedError, message: /^address pool fd00:1:2::\/126 is exhausted/,
  });
});

test('IPv6 VIPs of a /112 are canonical text inside the range', (t) => {
  const range = parsePrefix('fd11:2233:4455::/112');
  for (let i = 0; i < 50; i++) {
    const vip = pickVip(range, `net/svc${i}`, NONE);
    const offset = offsetIn(range, vip);
    t.true(offset >= 1n && offset <= 65535n, vip);
    t.is(vip, formatAddress(6, parseAddress(vip).value), 'RFC 5952 form');
    t.regex(vip, /^fd11:2233:4455::[0-9a-f]{1,4}$/);
  }
});

test('property: picks for random keys in a /28 never collide while addresses remain, then the range is exhausted', (t) => {
  const range = parsePrefix('10.99.0.16/28'); // usable .17 to .30
  const usable = new Set(addressesOf(range).slice(1, -1));
  t.is(usable.size, 14);
  fc.assert(fc.property(fc.array(fc.string({ maxLength: 20 }), { minLength: 14, maxLength: 14 }), fc.string(), (keys, extra) => {
    const taken = new Set<string>();
    for (const key of keys) {
      const vip = pickVip(range, key, taken);
      if (taken.has(vip) || !usable.has(vip)) return false;
      taken.add(vip);
    }
    t.deepEqual([...taken].sort(), [...usable].sort());
    t.throws(() => pickVip(range, extra, taken), { instanceOf: IpamExhaustedError });
    return true;
  }), { numRuns: 200 });
});

test('property: with some addresses taken, the pick is the first free one after the hashed start', (t) => {
  const range = parsePrefix('10.99.0.16/28');
  const usable = addressesOf(range).slice(1, -1);
  fc.assert(fc.property(fc.string({ maxLength: 20 }), fc.subarray(usable, { maxLength: 13 }), (key, takenList) => {
    const taken = new Set(takenList);
    const start = usable.indexOf(pickVip(range, key, NONE));
    let expected = '';
    for (let i = 0; i < usable.length; i++) {
      const candidate = usable[(start + i) % usable.length]!;
      if (!taken.has(candidate)) { expected = candidate; break; }
    }
    t.is(pickVip(range, key, taken), expected);
  }), { numRuns: 200 });
});

// ---- checkRequestedVip --------------------------------------------------------------------------

const V4 = parsePrefix('10.211.0.0/16');
const V6 = parsePrefix('fd11:2233:4455::/112');

test('a requested VIP inside the range is accepted, in canonical form', (t) => {
  t.is(checkRequestedVip(V4, '10.211.3.4', NONE, '--vip'), '10.211.3.4');
  t.is(checkRequestedVip(V4, '10.211.0.1', NONE, '--vip'), '10.211.0.1', 'the first usable address');
  t.is(checkRequestedVip(V4, '10.211.255.254', NONE, '--vip'), '10.211.255.254', 'the last usable address');
  t.is(checkRequestedVip(V6, 'FD11:2233:4455:0:0:0:0:00AB', NONE, '--vip'), 'fd11:2233:4455::ab');
  t.is(checkRequestedVip(V6, 'fd11:2233:4455::ffff', NONE, '--vip'), 'fd11:2233:4455::ffff', 'IPv6 has no broadcast address');
});

test('a requested VIP outside the range is refused with the range', (t) => {
  for (const [range, address] of [[V4, '10.212.0.1'], [V4, '10.210.255.255'], [V6, 'fd11:2233:4455::1:0'], [V6, 'fd00::1']] as const) {
    t.throws(() => checkRequestedVip(range, address, NONE, '--vip'), {
      instanceOf: InvalidArgumentError,
      message: `--vip ${address} is not inside the service range ${range === V4 ? '10.211.0.0/16' : 'fd11:2233:4455::/112'}; ` +
        'give an address from it, or leave the VIP out and Membrane picks one',
    });
  }
});

test('a requested VIP of the wrong family is refused as outside the range', (t) => {
  t.throws(() => checkRequestedVip(V4, 'fd11:2233:4455::5', NONE, 'vip4'), {
    instanceOf: InvalidArgumentError, message: /^vip4 fd11:2233:4455::5 is not inside the service range 10\.211\.0\.0\/16;/,
  });
  t.throws(() => checkRequestedVip(V6, '10.211.0.5', NONE, 'vip6'), {
    instanceOf: InvalidArgumentError, message: /^vip6 10\.211\.0\.5 is not inside the service range fd11:2233:4455::\/112;/,
  });
  t.throws(() => checkRequestedVip(V4, '::ffff:10.211.0.5', NONE, 'vip4'), {
    instanceOf: InvalidArgumentError, message: /is not inside the service range 10\.211\.0\.0\/16/,
  }, 'an IPv4-mapped IPv6 address is IPv6');
});

test('the network and broadcast addresses are refused as VIPs', (t) => {
  for (const [range, address, text] of [
    [V4, '10.211.0.0', '10.211.0.0/16'], [V4, '10.211.255.255', '10.211.0.0/16'], [V6, 'fd11:2233:4455::', 'fd11:2233:4455::/112'],
  ] as const) {
    t.throws(() => checkRequestedVip(range, address, NONE, '--vip'), {
      instanceOf: InvalidArgumentError, message: `--vip ${address} is the network or broadcast address of ${text}; give another`,
    });
  }
});

test('a VIP another service has is refused, whatever its spelling', (t) => {
  t.throws(() => checkRequestedVip(V4, '10.211.0.9', new Set(['10.211.0.9']), '--vip'), {
    instanceOf: InvalidArgumentError, message: '--vip 10.211.0.9 is already the VIP of another service',
  });
  t.throws(() => checkRequestedVip(V6, 'FD11:2233:4455:0::9', new Set(['fd11:2233:4455::9']), '--vip'), {
    instanceOf: InvalidArgumentError, message: '--vip FD11:2233:4455:0::9 is already the VIP of another service',
  });
  t.is(checkRequestedVip(V4, '10.211.0.10', new Set(['10.211.0.9']), '--vip'), '10.211.0.10');
});

test('text that is no address is refused', (t) => {
  t.throws(() => checkRequestedVip(V4, 'ten.two.one.one', NONE, '--vip'), { instanceOf: InvalidArgumentError, message: /invalid IP address "ten\.two\.one\.one"/ });
  t.throws(() => checkRequestedVip(V4, '10.211.0.5/32', NONE, '--vip'), { instanceOf: InvalidArgumentError, message: /without a \/prefix-length/ });
});

test('property: every pick passes checkRequestedVip against an empty taken set, and fails it once taken', (t) => {
  fc.assert(fc.property(fc.string({ maxLength: 30 }), fc.constantFrom(V4, V6, parsePrefix('10.0.0.0/30')), (key, range) => {
    const vip = pickVip(range, key, NONE);
    t.is(checkRequestedVip(range, vip, NONE, '--vip'), vip);
    t.throws(() => checkRequestedVip(range, vip, new Set([vip]), '--vip'), { message: /already the VIP/ });
  }), { numRuns: 100 });
});
