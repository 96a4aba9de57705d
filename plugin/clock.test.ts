// Clock arithmetic at both ends of a host's life: a second after boot, when the kernel's clock is
// near zero and "an hour ago" does not exist, and after years (or a corrupt value near 2^64).

import test from 'ava';
import fc from 'fast-check';
import {
  NS_PER_SECOND, U64_MAX, clampU64, elapsedMs, hasExpired, kernelNowNs, kernelTimeToEpochMs, nsAfter, nsBefore,
  parseTimeNamespaceOffsetNs, secondsUntil,
} from './clock.js';
import { decodeCtEntry, encodeCtEntry } from './datapath/codec.js';

const HOUR = 3600n * NS_PER_SECOND;
const YEAR = 365n * 24n * HOUR;
/** Kernel clock readings: at boot, a millisecond and a minute after, a day, 10 and 300 years, the top of u64. */
const ENDS = [0n, 1n, 1_000_000n, 60n * NS_PER_SECOND, 24n * HOUR, 10n * YEAR, 300n * YEAR, U64_MAX - 1n, U64_MAX];

test('an hour before a host that booted a minute ago is boot itself, and is already expired', (t) => {
  const now = 60n * NS_PER_SECOND;
  t.is(nsBefore(now, HOUR), 0n);
  t.true(hasExpired(nsBefore(now, HOUR), now));
  // What failed on a new machine: the entry "an hour ago" could not be encoded.
  t.notThrows(() => encodeCtEntry({ expiresNs: nsBefore(now, HOUR), createdNs: 0n, packetsOrig: 0n, bytesOrig: 0n,
    packetsReply: 0n, bytesReply: 0n, endpointId: 1, state: 'established', tcpFlagsOrig: 0, tcpFlagsReply: 0 }));
});

test('at both ends every result is a kernel u64 and keeps its order', (t) => {
  for (const now of ENDS) {
    for (const d of [0n, 1n, NS_PER_SECOND, HOUR, 6n * HOUR, YEAR, U64_MAX]) {
      const before = nsBefore(now, d);
      const after = nsAfter(now, d);
      t.true(before >= 0n && before <= now, `nsBefore(${now}, ${d})`);
      t.true(after >= now && after <= U64_MAX, `nsAfter(${now}, ${d})`);
      // A deadline in the future is live however long the host has been up, unless it saturated at the top.
      if (d > 0n && now + d <= U64_MAX) t.false(hasExpired(after, now), `live: now ${now} + ${d}`);
      if (d > 0n && now >= d) t.true(hasExpired(before, now), `expired: now ${now} - ${d}`);
      t.true(secondsUntil(before, now) === 0, 'a passed deadline has 0 s left, never a negative count');
      const encoded = encodeCtEntry({ expiresNs: after, createdNs: before, packetsOrig: 0n, bytesOrig: 0n, packetsReply: 0n,
        bytesReply: 0n, endpointId: 1, state: 'new', tcpFlagsOrig: 0, tcpFlagsReply: 0 });
      t.like(decodeCtEntry(encoded), { expiresNs: after, createdNs: before });
    }
  }
});

test('the deadline rule is the datapath\'s: live while expires >= now', (t) => {
  t.false(hasExpired(100n, 100n));
  t.true(hasExpired(99n, 100n));
  t.false(hasExpired(0n, 0n), 'at the instant of boot nothing has expired yet');
  t.is(secondsUntil(100n, 100n), 0);
  t.is(secondsUntil(100n + 1n, 100n), 1, 'a fraction of a second left shows as 1 s');
  t.is(secondsUntil(10n * YEAR + 6n * HOUR, 10n * YEAR), 21600, 'a 6 h timeout after 10 years of uptime');
});

test('property: clamped arithmetic never leaves u64 and never reorders', (t) => {
  const u64 = fc.bigInt(0n, U64_MAX);
  fc.assert(fc.property(u64, u64, (now, d) => {
    const before = nsBefore(now, d);
    const after = nsAfter(now, d);
    return before >= 0n && before <= now && after >= now && after <= U64_MAX &&
      (before === now - d || (now < d && before === 0n)) && (after === now + d || (now + d > U64_MAX && after === U64_MAX)) &&
      secondsUntil(before, now) === 0;
  }), { numRuns: 2000 });
  t.is(clampU64(-5n), 0n);
  t.is(clampU64(U64_MAX + 5n), U64_MAX);
});

test('kernel timestamps map to the wall clock by their age, exactly even above 2^53 ns (104 days)', (t) => {
  const now = 10n * YEAR + 123_456_789n;
  t.is(kernelTimeToEpochMs(now - 1_500_000_000n, now, 1_700_000_000_000), 1_700_000_000_000 - 1500);
  t.is(kernelTimeToEpochMs(now + 5n, now, 1_700_000_000_000), 1_700_000_000_000, 'a stamp a little ahead is now');
  t.is(kernelTimeToEpochMs(0n, 1_000_000n, 1_700_000_000_000), 1_700_000_000_000 - 1, 'the first millisecond after boot');
  t.is(elapsedMs(now, now + 2_500_000n), 2.5);
  t.is(elapsedMs(now + 1n, now), 0);
});

test('a time namespace offset is taken off, so the daemon reads the clock BPF reads', (t) => {
  t.is(parseTimeNamespaceOffsetNs(undefined), 0n);
  t.is(parseTimeNamespaceOffsetNs('monotonic           0         0\nboottime            0         0\n'), 0n);
  t.is(parseTimeNamespaceOffsetNs('monotonic  86400  500\nboottime 0 0\n'), 86_400n * NS_PER_SECOND + 500n);
  t.is(parseTimeNamespaceOffsetNs('1 -3600 0\n7 0 0\n'), -HOUR, 'older kernels print clock ids');
  t.is(kernelNowNs(5n * HOUR, 86_400n * NS_PER_SECOND), 0n, 'an offset larger than the reading clamps to boot');
  t.is(kernelNowNs(5n * HOUR, 2n * HOUR), 3n * HOUR);
  t.true(kernelNowNs() > 0n);
});
