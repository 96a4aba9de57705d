// In-process IPAM micro-benchmark: AddressAllocator allocations per second at a given pool fullness.
//
// A pool is filled to the level with explicit allocations at random (seeded) offsets, which leaves
// it fragmented the way a long-lived pool with container churn is (the allocator's cost depends on
// its number of intervals, not on the fullness itself; a sequential fill would be one interval).
// Then dynamic allocate()+release() pairs are timed: each pair takes the next free address after
// the cursor (a hole, at 99 %) and frees it again, so the fullness stays constant.

import { performance } from 'node:perf_hooks';
import { AddressAllocator } from '../../plugin/ipam/allocator.js';
import { formatAddress, parsePrefix, prefixSize } from '../../plugin/ipam/prefix.js';
import { median, rng, round } from './stats.js';

export interface IpamCase {
  /** Short label for reports. */
  name: string;
  pool: string;
  range?: string;
  /** Fill to this fraction of the dynamic range's assignable addresses... */
  level?: number;
  /** ...or scatter exactly this many addresses over the whole pool (for pools too big to fill). */
  scatter?: number;
}

export interface IpamResult {
  name: string;
  pool: string;
  range: string | null;
  /** Allocated / assignable addresses of the dynamic range after the fill (0..1). */
  fullness: number;
  allocated: number;
  intervals: number;
  fillAllocsPerSec: number;
  repetitions: number;
  pairsPerRepetition: number[];
  /** Median over repetitions of allocate()+release() pairs per second. */
  allocsPerSec: number;
  /** Median microseconds per allocate()+release() pair. */
  usPerPair: number;
  allocsPerSecAll: number[];
}

export interface IpamOptions {
  repetitions: number;
  pairs: number;
  /** Upper bound on the time of one repetition. */
  maxMsPerRepetition: number;
  seed?: number;
}

export const DEFAULT_IPAM_CASES: IpamCase[] = [
  { name: 'IPv4 /16, 10 %', pool: '10.200.0.0/16', level: 0.10 },
  { name: 'IPv4 /16, 99 %', pool: '10.200.0.0/16', level: 0.99 },
  { name: 'IPv6 /64 (--ip-range /112), 10 %', pool: 'fd00:be::/64', range: 'fd00:be::/112', level: 0.10 },
  { name: 'IPv6 /64 (--ip-range /112), 99 %', pool: 'fd00:be::/64', range: 'fd00:be::/112', level: 0.99 },
  { name: 'IPv6 /64, 65,000 scattered (≈0 %)', pool: 'fd00:be::/64', scatter: 65_000 },
];

function shuffledPrefix(count: number, take: number, random: () => number): number[] {
  const all = Array.from({ length: count }, (_, i) => i);
  for (let i = 0; i < Math.min(take, count - 1); i++) {
    const j = i + Math.floor(random() * (count - i));
    const tmp = all[i]!;
    all[i] = all[j]!;
    all[j] = tmp;
  }
  return all.slice(0, take);
}

/** Addresses (as text) to allocate explicitly so the pool reaches the case's fill. */
function fillAddresses(c: IpamCase, random: () => number): string[] {
  const pool = parsePrefix(c.pool);
  const poolSize = prefixSize(pool);
  const isReserved = (offset: bigint): boolean => offset === 0n || (pool.family === 4 && offset === poolSize - 1n);
  if (c.scatter !== undefined) {
    const out = new Set<string>();
    const bits = BigInt(pool.family === 4 ? 32 : 128) - BigInt(pool.length);
    const mask = (1n << bits) - 1n;
    while (out.size < c.scatter) {
      const r = (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32));
      const offset = r & mask;
      if (!isReserved(offset)) out.add(formatAddress(pool.family, pool.network + offset));
    }
    return [...out];
  }
  const range = c.range ? parsePrefix(c.range) : pool;
  const start = range.network - pool.network;
  const size = Number(prefixSize(range));
  if (size > 1 << 24) throw new Error(`${c.name}: range too large to fill; use scatter`);
  const offsets: bigint[] = [];
  for (let i = 0; i < size; i++) {
    const offset = start + BigInt(i);
    if (!isReserved(offset)) offsets.push(offset);
  }
  const take = Math.round((c.level ?? 0) * offsets.length);
  return shuffledPrefix(offsets.length, take, random).map((i) => formatAddress(pool.family, pool.network + offsets[i]!));
}

function timePairs(allocator: AddressAllocator, pairs: number, maxMs: number): { pairs: number; ms: number } {
  const started = performance.now();
  let done = 0;
  while (done < pairs) {
    allocator.release(allocator.allocate());
    done++;
    if ((done & 255) === 0 && performance.now() - started > maxMs) break;
  }
  return { pairs: done, ms: performance.now() - started };
}

export function runIpamCase(c: IpamCase, options: IpamOptions): IpamResult {
  const random = rng(options.seed ?? 0x6d656d62);
  const allocator = new AddressAllocator({ pool: c.pool, range: c.range });
  const addresses = fillAddresses(c, random);
  const fillStarted = performance.now();
  for (const address of addresses) allocator.allocate(address);
  const fillMs = performance.now() - fillStarted;
  const allocated = allocator.allocatedCount();
  // Warm-up (JIT), not recorded.
  timePairs(allocator, Math.min(options.pairs, 2000), options.maxMsPerRepetition);
  const rates: number[] = [];
  const counts: number[] = [];
  for (let r = 0; r < options.repetitions; r++) {
    const { pairs, ms } = timePairs(allocator, options.pairs, options.maxMsPerRepetition);
    counts.push(pairs);
    rates.push(pairs / (ms / 1000));
  }
  if (allocator.allocatedCount() !== allocated) {
    throw new Error(`${c.name}: allocate/release pairs changed the allocated count (${allocated} -> ${allocator.allocatedCount()})`);
  }
  const rate = median(rates);
  return {
    name: c.name, pool: c.pool, range: c.range ?? null,
    fullness: round(allocated / Number(allocator.size()), 6), allocated, intervals: allocator.intervalCount(),
    fillAllocsPerSec: round(addresses.length / (fillMs / 1000), 0),
    repetitions: options.repetitions, pairsPerRepetition: counts,
    allocsPerSec: round(rate, 0), usPerPair: round(1e6 / rate, 3), allocsPerSecAll: rates.map((x) => round(x, 0)),
  };
}

export function runIpamBench(options: IpamOptions, cases: IpamCase[] = DEFAULT_IPAM_CASES): IpamResult[] {
  return cases.map((c) => runIpamCase(c, options));
}
