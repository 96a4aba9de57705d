// Maglev consistent hashing for the service load balancer: turns a set of weighted backends into a
// lookup table of prime size M that the BPF datapath indexes with (flow hash mod M).
//
// Table population follows the Maglev paper (Eisenbud et al., NSDI '16, §3.4, Pseudocode 1): every
// backend has a preference walk over the slots, offset, offset + skip, offset + 2·skip, ... (mod M),
// with offset and skip derived from two hashes of the backend's key, and backends take turns
// claiming the next free slot of their walk until all M slots are filled. Because the walks depend
// only on each backend's own key, adding or removing one backend changes its own slots and only a
// small fraction of the others' (at M = 100·N about 1 % of the table besides its own; the tests
// measure it), so most flows keep their backend.
//
// Weights follow Katran's MaglevHashV2 (katran/lib/MaglevHashV2.cpp): each round, every backend adds
// its weight to an accumulator, and a backend whose accumulator reaches the maximum weight subtracts
// the maximum weight and claims one slot. After r complete rounds a backend of weight w has claimed
// exactly floor(r·w / maxWeight) slots (the accumulator stays in [0, maxWeight) because w <=
// maxWeight), so shares are proportional to weights up to rounding in the last rounds; with equal
// weights it is exactly the paper's round robin.
//
// Like Katran we never materialise the N×M permutation matrix: each backend keeps only its skip
// and its walk's current position (advanced by addition, so no offset + next·skip product can
// overflow), and memory is O(N + M). Unlike Katran we do not visit every backend in every round:
// each backend is scheduled under the round of its next claim (see buildTable), which yields the same
// claims in the same order at a cost that does not grow with the spread of the weights.

import { InvalidArgumentError, MembraneError } from '../errors.js';

/** Table sizes: primes, as Cilium offers them. */
export const TABLE_SIZES: readonly number[] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];

/** Backend id 0 never names a backend: a slot holding 0 means "no backend" (an empty table). */
export const NO_BACKEND = 0;

/** Largest backend id and largest weight: both are stored as u32 (ids in the BPF map). */
export const MAX_ID = 0xffff_ffff;
export const MAX_WEIGHT = 0xffff_ffff;

/**
 * Seed used when the caller gives none. Arbitrary, but it must never change: a different seed gives
 * every backend a different walk, so every service's table would be reshuffled on upgrade.
 */
export const DEFAULT_SEED = 0x4d42_4c42;

/**
 * XORed into the seed to get the skip hash's seed. Non-zero, so the offset and skip seeds always
 * differ (x ^ c === x only for c === 0) and the two hashes of a key are unrelated, as Katran does
 * with its two seed pairs.
 */
const SKIP_SEED_XOR = 0x9e37_79b9;

/** Table size per active backend: the paper's M >= 100·N keeps every share within 1 % of 1/N. */
const SLOTS_PER_BACKEND = 100;

export interface MaglevBackend {
  /** Stable numeric id written into the table (>= 1, < 2^32). */
  id: number;
  /** Stable name the permutation is derived from (e.g. "<container id>:<port>"); unique within a table. */
  key: string;
  /** 0 = drained (takes no slot); otherwise a positive integer. */
  weight: number;
}

// ---- MurmurHash3 ------------------------------------------------------------------------------------

const C1 = 0xcc9e_2d51;
const C2 = 0x1b87_3593;

/**
 * MurmurHash3_x86_32 (Austin Appleby's reference, SMHasher) of `data` with a 32-bit `seed`.
 * Math.imul and `| 0` keep every step in 32-bit integer arithmetic, as in the C original.
 */
export function murmurHash3_32(data: Uint8Array, seed: number): number {
  const length = data.length;
  const blocks = length >>> 2;
  let h = seed | 0;

  for (let i = 0; i < blocks; i++) {
    const p = i << 2;
    // Blocks are read little-endian, as the reference does on x86.
    let k = data[p] | (data[p + 1] << 8) | (data[p + 2] << 16) | (data[p + 3] << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe654_6b64) | 0;
  }

  // The 1..3 trailing bytes, also little-endian (the reference's fall-through switch).
  const tail = blocks << 2;
  const rest = length & 3;
  if (rest > 0) {
    let k = data[tail];
    if (rest > 1) k |= data[tail + 1] << 8;
    if (rest > 2) k |= data[tail + 2] << 16;
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }

  // Finalisation mix (avalanche): every input bit affects every output bit.
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85eb_ca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2_ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// Keys are hashed as UTF-8. TextEncoder turns a lone surrogate into U+FFFD, so two keys that differ
// only there share a walk: still a valid table, just correlated preferences.
const utf8 = new TextEncoder();

/**
 * A backend's preference walk in a table of `size` slots: it prefers offset, offset + skip, ...
 * skip is in 1..size−1 and size is prime, so gcd(skip, size) = 1 and the walk visits every slot
 * exactly once in its first `size` steps.
 */
export function permutation(key: string, size: number, seed: number = DEFAULT_SEED): { offset: number; skip: number } {
  checkSize(size);
  checkSeed(seed);
  return walkOf(utf8.encode(key), size, seed);
}

function walkOf(bytes: Uint8Array, size: number, seed: number): { offset: number; skip: number } {
  const offset = murmurHash3_32(bytes, seed) % size;
  const skip = (murmurHash3_32(bytes, (seed ^ SKIP_SEED_XOR) >>> 0) % (size - 1)) + 1;
  return { offset, skip };
}

// ---- validation ---------------------------------------------------------------------------------------

function checkSize(size: number): void {
  if (!TABLE_SIZES.includes(size)) {
    throw new InvalidArgumentError(`Maglev table size ${size} is not supported; use one of ` +
      `${TABLE_SIZES.join(', ')} (primes, so that every preference walk visits every slot)`);
  }
}

function checkSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw new InvalidArgumentError(`Maglev seed ${seed} is invalid; use an integer in 0..${0xffff_ffff}`);
  }
}

/**
 * Validates the set and returns it sorted by key. Sorting makes the table independent of input
 * order (who claims first in each round decides contested slots). Keys compare by UTF-16 code
 * units, not localeCompare, whose order depends on the host's locale and ICU version.
 */
function validated(backends: readonly MaglevBackend[]): MaglevBackend[] {
  const ids = new Set<number>();
  for (const b of backends) {
    if (typeof b.key !== 'string' || b.key === '') {
      throw new InvalidArgumentError(`Maglev backend with id ${b.id} has an empty or missing key; ` +
        'give every backend a stable non-empty name such as "<container id>:<port>"');
    }
    if (!Number.isInteger(b.id) || b.id < 1 || b.id > MAX_ID) {
      throw new InvalidArgumentError(`Maglev backend "${b.key}" has id ${b.id}; use an integer in 1..${MAX_ID} ` +
        `(${NO_BACKEND} marks an empty slot)`);
    }
    if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > MAX_WEIGHT) {
      throw new InvalidArgumentError(`Maglev backend "${b.key}" has weight ${b.weight}; use an integer in ` +
        `0..${MAX_WEIGHT} (0 drains the backend)`);
    }
    if (ids.has(b.id)) {
      throw new InvalidArgumentError(`Maglev backend id ${b.id} is used twice (again by "${b.key}"); ids must be unique`);
    }
    ids.add(b.id);
  }
  const sorted = [...backends].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].key === sorted[i - 1].key) {
      throw new InvalidArgumentError(`Maglev backend key "${sorted[i].key}" is used twice (ids ` +
        `${sorted[i - 1].id} and ${sorted[i].id}); keys must be unique within a table`);
    }
  }
  return sorted;
}

// ---- table --------------------------------------------------------------------------------------------

/** The smallest size in TABLE_SIZES that is >= 100 × backends with weight > 0 (251 at least; the largest size above 1310 backends). */
export function tableSizeFor(activeBackends: number): number {
  if (!Number.isInteger(activeBackends) || activeBackends < 0) {
    throw new InvalidArgumentError(`backend count ${activeBackends} is invalid; use a non-negative integer`);
  }
  const wanted = SLOTS_PER_BACKEND * activeBackends;
  return TABLE_SIZES.find((size) => size >= wanted) ?? TABLE_SIZES[TABLE_SIZES.length - 1];
}

/** Builds the table: M backend ids. Deterministic: the same set (in any order) and seed give the same table. */
export function buildTable(backends: readonly MaglevBackend[], size: number, seed: number = DEFAULT_SEED): Uint32Array {
  checkSize(size);
  checkSeed(seed);
  const active = validated(backends).filter((b) => b.weight > 0);
  const table = new Uint32Array(size); // zero-filled: every slot NO_BACKEND
  const n = active.length;
  if (n === 0) return table;

  const id = new Uint32Array(n);
  const weight = new Uint32Array(n);
  const skip = new Uint32Array(n);
  const position = new Uint32Array(n); // offset + next·skip (mod size): the walk's next candidate slot
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const b = active[i];
    const walk = walkOf(utf8.encode(b.key), size, seed);
    id[i] = b.id;
    weight[i] = b.weight;
    skip[i] = walk.skip;
    position[i] = walk.offset;
    if (b.weight > maxWeight) maxWeight = b.weight;
  }

  // Katran's rounds, without visiting every backend in every round. With the accumulator, backend
  // i's k-th claim happens in round ceil(k·maxWeight / weight_i) (rounds counted from 1: the first
  // round r with r·weight_i >= k·maxWeight), and within a round backends claim in index (= key)
  // order; weight_i <= maxWeight, so nobody claims twice in one round. So we schedule each backend
  // under the round of its next claim and run the rounds in order. Visiting every backend in
  // every round costs maxWeight / (mean weight) steps per slot: 0.4 s here for one backend of
  // weight 10^6 among 999 of weight 1 at M = 131071, against 5 ms this way.
  //
  // A backend of maximal weight claims in every round, so the table is full by the end of round
  // `size`, and claims due later are never scheduled. Exactness of the round: k <= size + 1 < 2^18 and
  // maxWeight < 2^32, so k·maxWeight < 2^50 is exact in a double; a non-integer quotient
  // q + f/weight_i (0 < f < weight_i) lies at least 1/weight_i from both neighbouring integers, more
  // than the division's rounding error (q·2^-53 < 2^-3/weight_i), so Math.ceil is exact.
  const claims = new Uint32Array(n);
  const nextRound = (i: number): number => Math.ceil((claims[i] + 1) * maxWeight / weight[i]);
  // Per round, a linked list of the backends due then: first/last backend, and each one's successor.
  const first = new Int32Array(size + 1).fill(-1);
  const last = new Int32Array(size + 1);
  const successor = new Int32Array(n);
  const schedule = (i: number, r: number): void => {
    if (r > size) return;
    successor[i] = -1;
    if (first[r] < 0) first[r] = i;
    else successor[last[r]] = i;
    last[r] = i;
  };
  for (let i = 0; i < n; i++) schedule(i, nextRound(i));

  // Termination: at most `size` rounds (above), and each claim ends: it always finds a free slot
  // while one exists, because the walk cycles through all slots (see permutation()). As a
  // backend's position only moves forward and one lap covers every slot, each backend probes at
  // most `size` times in all; in practice the whole build takes about size·ln(size) probes (a
  // probe finds a free slot with the probability that a slot is still free).
  const due = new Uint32Array(n);
  let filled = 0;
  for (let r = 1; r <= size; r++) {
    // Backends scheduled in index order during a single earlier round are already sorted (always so
    // with equal weights); lists filled from several rounds need sorting.
    let count = 0;
    let sorted = true;
    for (let i = first[r]; i >= 0; i = successor[i]) {
      if (count > 0 && i < due[count - 1]) sorted = false;
      due[count++] = i;
    }
    if (!sorted) due.subarray(0, count).sort();
    for (let k = 0; k < count; k++) {
      const i = due[k];
      let slot = position[i];
      const step = skip[i];
      while (table[slot] !== NO_BACKEND) {
        slot += step;
        if (slot >= size) slot -= size; // slot, step < size, so one subtraction is mod size
      }
      table[slot] = id[i];
      if (++filled === size) return table;
      slot += step;
      position[i] = slot >= size ? slot - size : slot;
      claims[i]++;
      schedule(i, nextRound(i));
    }
  }
  throw new MembraneError('MEMBRANE_INTERNAL', `internal error: Maglev table of ${size} slots has only ` +
    `${filled} filled after ${size} rounds`);
}

/** Slots whose backend differs between two tables of the same size (indices ascending, with the new values). */
export function tableDiff(previous: Uint32Array | undefined, next: Uint32Array): { indices: Uint32Array; values: Uint32Array } {
  const size = next.length;
  if (previous === undefined) {
    // Nothing written yet: every slot must be written.
    const indices = new Uint32Array(size);
    for (let i = 0; i < size; i++) indices[i] = i;
    return { indices, values: next.slice() };
  }
  if (previous.length !== size) {
    throw new InvalidArgumentError(`cannot diff Maglev tables of ${previous.length} and ${size} slots; ` +
      'a table of a new size must be written whole (pass no previous table)');
  }
  // Two passes (count, then fill) so the result is exactly sized without growing arrays.
  let count = 0;
  for (let i = 0; i < size; i++) if (previous[i] !== next[i]) count++;
  const indices = new Uint32Array(count);
  const values = new Uint32Array(count);
  for (let i = 0, j = 0; i < size; i++) {
    if (previous[i] !== next[i]) {
      indices[j] = i;
      values[j] = next[i];
      j++;
    }
  }
  return { indices, values };
}
