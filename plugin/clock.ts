// Time as Membrane's BPF programs see it, and the arithmetic on it, written once so that it holds
// on a host that booted a second ago and on one that has been up for years.
//
// bpf_ktime_get_ns() reads CLOCK_MONOTONIC of the root time namespace: nanoseconds since boot,
// not counting suspend, so near zero on a machine that just booted. Node's process.hrtime reads
// the same clock (libuv uses CLOCK_MONOTONIC), but through this process's time namespace, which
// may be offset (`unshare --time`, CLONE_NEWTIME); /proc/self/timens_offsets says by how much.
// Kernel timestamps are unsigned 64-bit: "an hour ago" does not exist in the first hour after
// boot, so every subtraction saturates at zero instead of going negative (which cannot be
// encoded and would mean "before boot"), and every addition saturates at 2^64 - 1 (584 years of
// uptime: unreachable, but a timeout added to a corrupt map value must not wrap to the past).
//
// Wall-clock time (Date.now) is for display only: it steps when NTP or an RTC correction lands,
// which happens most often in the minutes after boot. Durations and "before or after this
// daemon started" are never decided with it.

import fs from 'node:fs';

export const NS_PER_MS = 1_000_000n;
export const NS_PER_SECOND = 1_000_000_000n;
/** The largest value a kernel u64 timestamp can hold. */
export const U64_MAX = (1n << 64n) - 1n;

/**
 * Parses /proc/self/timens_offsets ("monotonic <sec> <nsec>" lines): how far this process's
 * CLOCK_MONOTONIC is ahead of the kernel's own. Zero when the file is absent (no time namespaces,
 * Linux < 5.6) or says nothing about the monotonic clock.
 */
export function parseTimeNamespaceOffsetNs(text: string | undefined): bigint {
  if (!text) return 0n;
  for (const line of text.split('\n')) {
    const [clock, sec, nsec] = line.trim().split(/\s+/);
    if ((clock === 'monotonic' || clock === '1') && sec !== undefined && nsec !== undefined && /^-?\d+$/.test(sec) && /^\d+$/.test(nsec)) {
      // A normalised timespec: tv_nsec is in [0, 1e9) whatever the sign of tv_sec.
      return BigInt(sec) * NS_PER_SECOND + BigInt(nsec);
    }
  }
  return 0n;
}

let timeNamespaceOffset: bigint | undefined;

function readTimeNamespaceOffsetNs(): bigint {
  if (timeNamespaceOffset === undefined) {
    let text: string | undefined;
    try {
      text = fs.readFileSync('/proc/self/timens_offsets', 'utf8');
    } catch {
      text = undefined;
    }
    timeNamespaceOffset = parseTimeNamespaceOffsetNs(text);
  }
  return timeNamespaceOffset;
}

/** Now, on the clock bpf_ktime_get_ns() reads: nanoseconds since boot. Never negative. */
export function kernelNowNs(hrtimeNs: bigint = process.hrtime.bigint(), offsetNs: bigint = readTimeNamespaceOffsetNs()): bigint {
  return clampU64(hrtimeNs - offsetNs);
}

/** `value` forced into a kernel u64: below zero is zero, above 2^64 - 1 is 2^64 - 1. */
export function clampU64(value: bigint): bigint {
  return value < 0n ? 0n : value > U64_MAX ? U64_MAX : value;
}

/** The kernel time `durationNs` before `now`; zero (boot) when the host has not been up that long. */
export function nsBefore(now: bigint, durationNs: bigint): bigint {
  return clampU64(now - durationNs);
}

/** The kernel time `durationNs` after `now`, saturating at 2^64 - 1. */
export function nsAfter(now: bigint, durationNs: bigint): bigint {
  return clampU64(now + durationNs);
}

/**
 * Whether a deadline has passed, exactly as the datapath decides it: ct_lookup_live() keeps an
 * entry while `expires_ns >= now`, so only a deadline strictly before now is expired. The collector
 * and every listing use this, so the daemon never deletes what BPF still matches.
 */
export function hasExpired(deadlineNs: bigint, now: bigint): boolean {
  return deadlineNs < now;
}

/**
 * Whole seconds from `now` until `deadlineNs`, rounded up (an entry with 0.2 s left shows 1, so
 * 0 means expired), and 0 for a deadline already passed (never a negative count).
 */
export function secondsUntil(deadlineNs: bigint, now: bigint): number {
  if (deadlineNs <= now) return 0;
  return Number((deadlineNs - now + NS_PER_SECOND - 1n) / NS_PER_SECOND);
}

/**
 * The wall-clock time (ms since the epoch) of a kernel timestamp, by how long ago it was on the
 * kernel's clock. Differences are taken in bigint first: a host up for more than 104 days has
 * timestamps above 2^53 ns, where a Number would no longer hold every nanosecond. A timestamp
 * from the future (another CPU's clock read a little later) maps to the present.
 */
export function kernelTimeToEpochMs(tsNs: bigint, now: bigint = kernelNowNs(), nowEpochMs: number = Date.now()): number {
  const agoNs = now > tsNs ? now - tsNs : 0n;
  return nowEpochMs - Number(agoNs / NS_PER_MS);
}

/** Milliseconds between two kernel timestamps (`later - earlier`), zero when `later` is earlier. */
export function elapsedMs(earlierNs: bigint, laterNs: bigint): number {
  return laterNs > earlierNs ? Number(laterNs - earlierNs) / 1e6 : 0;
}
