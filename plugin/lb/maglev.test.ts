import test from 'ava';
import fc from 'fast-check';
import { InvalidArgumentError } from '../errors.js';
import {
  buildTable, DEFAULT_SEED, MAX_ID, MAX_WEIGHT, type MaglevBackend, murmurHash3_32, NO_BACKEND, permutation,
  TABLE_SIZES, tableDiff, tableSizeFor,
} from './maglev.js';

// ---- helpers ------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();

/** n backends of equal weight named like the daemon names them, "<container id>:<port>". */
function backends(n: number, tag = 'c', weight = 1): MaglevBackend[] {
  return Array.from({ length: n }, (_, i) => ({
    id: i + 1, key: `${tag}${i.toString(16).padStart(12, '0')}:8080`, weight,
  }));
}

function slotCounts(table: Uint32Array): Map<number, number> {
  const counts = new Map<number, number>();
  for (const id of table) counts.set(id, (counts.get(id) ?? 0) + 1);
  return counts;
}

function changedSlots(a: Uint32Array, b: Uint32Array): number {
  let changed = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) changed++;
  return changed;
}

const byKey = (a: MaglevBackend, b: MaglevBackend): number => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

/**
 * A literal transcription of Katran's MaglevHashV2::generateHashRing (with the paper's next[] and
 * (offset + next·skip) mod M) over the module's permutation(): every backend visited in every
 * round. buildTable schedules the claims differently and must produce exactly this table.
 */
function katranReference(set: readonly MaglevBackend[], size: number, seed: number): Uint32Array {
  const active = [...set].sort(byKey).filter((b) => b.weight > 0);
  const table = new Uint32Array(size);
  if (active.length === 0) return table;
  const walks = active.map((b) => permutation(b.key, size, seed));
  const next = active.map(() => 0);
  const cumWeight = active.map(() => 0);
  const maxWeight = Math.max(...active.map((b) => b.weight));
  let runs = 0;
  for (;;) {
    for (let i = 0; i < active.length; i++) {
      cumWeight[i] += active[i].weight;
      if (cumWeight[i] < maxWeight) continue;
      cumWeight[i] -= maxWeight;
      const { offset, skip } = walks[i];
      let cur = (offset + next[i] * skip) % size;
      while (table[cur] !== NO_BACKEND) {
        next[i]++;
        cur = (offset + next[i] * skip) % size;
      }
      table[cur] = active[i].id;
      next[i]++;
      if (++runs === size) return table;
    }
  }
}

const keyArb = fc.string({ minLength: 1, maxLength: 16, unit: 'grapheme' });
const smallSizeArb = fc.constantFrom(251, 509, 1021);
const seedArb = fc.integer({ min: 0, max: 0xffff_ffff });

/** Sets of backends with unique keys and ids, weights drawn from `weightArb`. */
function setArb(maxBackends: number, weightArb: fc.Arbitrary<number>): fc.Arbitrary<MaglevBackend[]> {
  // size 'max': lengths spread over 0..maxBackends instead of staying near 0.
  return fc.uniqueArray(keyArb, { maxLength: maxBackends, size: 'max' }).chain((keys) => fc.tuple(
    fc.uniqueArray(fc.integer({ min: 1, max: MAX_ID }), { minLength: keys.length, maxLength: keys.length }),
    fc.array(weightArb, { minLength: keys.length, maxLength: keys.length }),
  ).map(([ids, weights]) => keys.map((key, i) => ({ key, id: ids[i], weight: weights[i] }))));
}

/** Weight mixes: uniform, small with drained backends, and one heavy backend among light ones. */
const mixedSetArb = (maxBackends: number): fc.Arbitrary<MaglevBackend[]> => fc.oneof(
  setArb(maxBackends, fc.integer({ min: 1, max: 1000 })),
  setArb(maxBackends, fc.nat({ max: 5 })),
  setArb(maxBackends, fc.integer({ min: 1, max: 3 })).chain((set) =>
    fc.integer({ min: 1, max: 1_000_000 }).map((heavy) => set.map((b, i) => (i === 0 ? { ...b, weight: heavy } : b)))),
);

// ---- MurmurHash3 --------------------------------------------------------------------------------------

test('MurmurHash3 x86_32: published test vectors', (t) => {
  const bytes: [number[], number, number][] = [
    [[], 0, 0],
    [[], 1, 0x514e28b7],
    [[], 0xffffffff, 0x81f16f39],
    [[0xff, 0xff, 0xff, 0xff], 0, 0x76293b50],
    [[0x21, 0x43, 0x65, 0x87], 0, 0xf55b516b],
    [[0x21, 0x43, 0x65, 0x87], 0x5082edee, 0x2362f9de],
    [[0x21, 0x43, 0x65], 0, 0x7e4a8634],
    [[0x21, 0x43], 0, 0xa0f7b07a],
    [[0x21], 0, 0x72661cf4],
    [[0, 0, 0, 0], 0, 0x2362f9de],
    [[0, 0, 0], 0, 0x85f0b427],
    [[0, 0], 0, 0x30f4c306],
    [[0], 0, 0x514e28b7],
  ];
  for (const [data, seed, expected] of bytes) {
    t.is(murmurHash3_32(Uint8Array.from(data), seed), expected, `[${data.join(',')}] seed ${seed}`);
  }
  const strings: [string, number][] = [
    ['a', 0x7fa09ea6], ['aa', 0x5d211726], ['aaa', 0x283e0130], ['aaaa', 0x5a97808a],
    ['ab', 0x74875592], ['abc', 0xc84a62dd], ['abcd', 0xf0478627],
    ['Hello, world!', 0x24884cba],
    ['ππππππππ', 0xd58063c1], // 16 UTF-8 bytes: the key is hashed as UTF-8, not UTF-16
    ['The quick brown fox jumps over the lazy dog', 0x2fa826cd],
    ['a'.repeat(256), 0x37405bdc],
  ];
  for (const [text, expected] of strings) {
    t.is(murmurHash3_32(utf8.encode(text), 0x9747b28c), expected, JSON.stringify(text.slice(0, 20)));
  }
});

test('MurmurHash3 x86_32: SMHasher verification value 0xB0F57EE3', (t) => {
  // SMHasher's VerificationTest: hash the keys {}, {0}, {0,1}, ..., {0..254} with seed 256 − length,
  // then hash the 256 little-endian results with seed 0.
  const key = Uint8Array.from({ length: 256 }, (_, i) => i);
  const results = new DataView(new ArrayBuffer(256 * 4));
  for (let length = 0; length < 256; length++) {
    results.setUint32(length * 4, murmurHash3_32(key.subarray(0, length), 256 - length), true);
  }
  t.is(murmurHash3_32(new Uint8Array(results.buffer), 0), 0xb0f57ee3);
});

// ---- permutations -------------------------------------------------------------------------------------

test('TABLE_SIZES are ascending primes, and every preference walk visits every slot', (t) => {
  const isPrime = (n: number): boolean => {
    for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
    return n > 1;
  };
  t.deepEqual(TABLE_SIZES.filter(isPrime), TABLE_SIZES);
  t.deepEqual([...TABLE_SIZES].sort((a, b) => a - b), TABLE_SIZES);

  for (const size of TABLE_SIZES) {
    for (const b of backends(8)) {
      const { offset, skip } = permutation(b.key, size);
      t.true(offset >= 0 && offset < size && skip >= 1 && skip <= size - 1, `${b.key} in ${size}: ${offset}/${skip}`);
      const seen = new Uint8Array(size);
      let slot = offset;
      for (let j = 0; j < size; j++, slot = (slot + skip) % size) seen[slot]++;
      t.true(seen.every((visits) => visits === 1), `${b.key}: each of ${size} slots visited once in ${size} steps`);
    }
  }
});

// ---- filling ------------------------------------------------------------------------------------------

test('property: buildTable is exactly Katran\'s MaglevHashV2 (every backend visited in every round)', (t) => {
  let skewed = 0;
  fc.assert(fc.property(mixedSetArb(40), smallSizeArb, seedArb, (set, size, seed) => {
    const weights = set.map((b) => b.weight).filter((w) => w > 0);
    if (weights.length > 1 && Math.max(...weights) >= 1000 * Math.min(...weights)) skewed++;
    const got = buildTable(set, size, seed);
    const want = katranReference(set, size, seed);
    return changedSlots(got, want) === 0;
  }), { numRuns: 300 });
  t.log(`300 sets compared slot by slot, ${skewed} with weights 1000× apart`);
  t.pass();
});

test('property: every slot holds a backend of positive weight; with none, every slot is NO_BACKEND', (t) => {
  fc.assert(fc.property(mixedSetArb(60), smallSizeArb, seedArb, (set, size, seed) => {
    const table = buildTable(set, size, seed);
    t.is(table.length, size);
    const positive = new Set(set.filter((b) => b.weight > 0).map((b) => b.id));
    if (positive.size === 0) return table.every((id) => id === NO_BACKEND);
    return table.every((id) => positive.has(id));
  }), { numRuns: 300 });
  t.true(buildTable([], 251).every((id) => id === NO_BACKEND));
  t.true(buildTable(backends(5, 'd', 0), 509).every((id) => id === NO_BACKEND));
  t.true(buildTable(backends(1), 131071).every((id) => id === 1), 'one backend owns all 131071 slots');
});

// ---- balance ------------------------------------------------------------------------------------------

test('equal weights: every backend gets floor(M/N) or ceil(M/N) slots, within 1 % of M/N when M >= 100·N', (t) => {
  let worstRelative = 0;
  const check = (n: number, size: number, tag: string): void => {
    const counts = slotCounts(buildTable(backends(n, tag), size));
    const low = Math.floor(size / n);
    const high = Math.ceil(size / n);
    t.is(counts.size, Math.min(n, size));
    for (const [id, count] of counts) {
      t.true(count === low || count === high, `N=${n} M=${size}: backend ${id} has ${count}, not ${low} or ${high}`);
      const relative = Math.abs(count / size - 1 / n) * n;
      if (size >= 100 * n) {
        t.true(relative <= 0.01, `N=${n} M=${size}: share off by ${(relative * 100).toFixed(3)} % of 1/N`);
        worstRelative = Math.max(worstRelative, relative);
      }
    }
  };
  fc.assert(fc.property(fc.integer({ min: 1, max: 150 }), fc.constantFrom(...'abcdefgh'), (n, tag) => {
    check(n, tableSizeFor(n), tag);
    check(n, 1021, tag); // also where M < 100·N: the floor/ceil guarantee holds at any size
  }), { numRuns: 150 });
  check(650, 65521, 'x');
  check(1310, 131071, 'x');
  check(1000, 251, 'x'); // more backends than slots: 251 of them get one slot each
  t.log(`worst share deviation with M >= 100·N: ${(worstRelative * 100).toFixed(3)} % of 1/N`);
});

test('property: weights: slot counts within Katran V2\'s rounding bounds, shares within 1 percentage point', (t) => {
  // After r complete rounds a backend of weight w has floor(r·w/maxWeight) slots; the table fills
  // during some round R, so each count c is floor(R·w/max) or floor((R−1)·w/max). Summing over
  // the N backends (Σc = M) pins R, which gives, with W = Σw:
  //   −2 < c − M·w/W < N·w/W + 1.
  // With M >= 100·N the upper term is at most w/W·M/100 + 1 slots.
  let worstPoints = 0;
  let worstLow = 0;
  let worstHigh = -Infinity;
  let checked = 0;
  fc.assert(fc.property(mixedSetArb(60), seedArb, (set, seed) => {
    const active = set.filter((b) => b.weight > 0);
    fc.pre(active.length >= 2);
    const size = tableSizeFor(active.length);
    const counts = slotCounts(buildTable(set, size, seed));
    const total = active.reduce((sum, b) => sum + b.weight, 0);
    for (const b of set) {
      const count = counts.get(b.id) ?? 0;
      if (b.weight === 0) {
        if (count !== 0) return false;
        continue;
      }
      const deviation = count - size * b.weight / total;
      const points = Math.abs(count / size - b.weight / total) * 100;
      if (!(deviation > -2 && deviation < active.length * b.weight / total + 1)) return false;
      if (!(points < 1)) return false;
      worstLow = Math.min(worstLow, deviation);
      worstHigh = Math.max(worstHigh, deviation - active.length * b.weight / total);
      worstPoints = Math.max(worstPoints, points);
      checked++;
    }
    return true;
  }), { numRuns: 400 });
  t.true(worstPoints < 1);
  t.log(`${checked} backends: worst share deviation ${worstPoints.toFixed(3)} percentage points; slot deviation ` +
    `c − M·w/W ranged from ${worstLow.toFixed(3)} (bound −2) to N·w/W ${worstHigh >= 0 ? '+' : '−'} ` +
    `${Math.abs(worstHigh).toFixed(3)} (bound N·w/W + 1)`);

  // A worked example: weights 1:2:3:4 over 509 slots give 50.9, 101.8, 152.7 and 203.6 slots.
  const four = backends(4).map((b, i) => ({ ...b, weight: i + 1 }));
  const counts = slotCounts(buildTable(four, 509));
  t.log(`weights 1:2:3:4 in 509 slots: ${four.map((b) => counts.get(b.id)).join(', ')}`);
  for (const b of four) t.true(Math.abs((counts.get(b.id) ?? 0) - 50.9 * b.weight) < 2);
});

test('property: a drained backend is exactly a removed one, and scaling every weight changes nothing', (t) => {
  fc.assert(fc.property(mixedSetArb(30), smallSizeArb, seedArb, fc.integer({ min: 2, max: 1000 }),
    (set, size, seed, factor) => {
      const table = buildTable(set, size, seed);
      const withoutDrained = buildTable(set.filter((b) => b.weight > 0), size, seed);
      const scaled = buildTable(set.map((b) => ({ ...b, weight: Math.min(b.weight * factor, MAX_WEIGHT) })), size, seed);
      // ceil(k·f·max / (f·w)) = ceil(k·max / w): the same claims in the same rounds.
      const exact = set.every((b) => b.weight * factor <= MAX_WEIGHT);
      return changedSlots(table, withoutDrained) === 0 && (!exact || changedSlots(table, scaled) === 0);
    }), { numRuns: 200 });
  t.is(changedSlots(buildTable(backends(7, 'e', 1), 1021), buildTable(backends(7, 'e', 12345), 1021)), 0);
});

// ---- disruption ---------------------------------------------------------------------------------------

// Maglev favours even balance over minimal disruption: when a backend leaves, the backends that
// take over its slots stop short of slots further along their walks, and those go to others. So
// more than the unavoidable 1/N of the slots change. While writing this test, at M = tableSizeFor(N)
// over 20 key sets per N (4 for N >= 300) with N from 3 to 650, the extra fraction was at most
// 0.26/√N for one removal or addition; we assert 0.35/√N on 3 key sets. It shrinks as M/N grows
// (next test).
const EXCESS = 0.35;

test('disruption: removing or adding one backend changes about 1/N of the slots (plus at most 0.35/√N)', (t) => {
  for (const n of [2, 3, 5, 10, 50, 100, 650]) {
    const size = tableSizeFor(n);
    let removeSum = 0;
    let removeWorst = 0;
    let removeRuns = 0;
    let addSum = 0;
    let addWorst = 0;
    let addRuns = 0;
    for (const tag of ['p', 'q', 'r']) {
      const set = backends(n, tag);
      const before = buildTable(set, size);
      const removals = Math.min(n, 8);
      for (let r = 0; r < removals; r++) {
        const gone = set[Math.floor(r * n / removals)];
        const after = buildTable(set.filter((b) => b !== gone), size);
        t.false(after.includes(gone.id), 'every slot of the removed backend changed');
        const fraction = changedSlots(before, after) / size;
        t.true(fraction <= 1 / n + EXCESS / Math.sqrt(n),
          `N=${n} M=${size}: removing ${gone.key} changed ${(fraction * 100).toFixed(2)} % of slots`);
        removeSum += fraction;
        removeWorst = Math.max(removeWorst, fraction);
        removeRuns++;
      }
      for (let a = 0; a < 4; a++) {
        const added = { id: 100_000 + a, key: `new-${tag}-${a}:8080`, weight: 1 };
        const after = buildTable([...set, added], size);
        const fraction = changedSlots(before, after) / size;
        const got = slotCounts(after).get(added.id) ?? 0;
        t.true(got === Math.floor(size / (n + 1)) || got === Math.ceil(size / (n + 1)), `the new backend got ${got} slots`);
        t.true(fraction <= 1 / (n + 1) + EXCESS / Math.sqrt(n + 1),
          `N=${n}+1 M=${size}: adding ${added.key} changed ${(fraction * 100).toFixed(2)} % of slots`);
        addSum += fraction;
        addWorst = Math.max(addWorst, fraction);
        addRuns++;
      }
    }
    const pct = (x: number): string => `${(x * 100).toFixed(2)} %`;
    t.log(`N=${n} M=${size}: remove one: 1/N = ${pct(1 / n)}, changed avg ${pct(removeSum / removeRuns)} ` +
      `worst ${pct(removeWorst)} (excess·√N ${((removeWorst - 1 / n) * Math.sqrt(n)).toFixed(3)}); add one: ` +
      `1/(N+1) = ${pct(1 / (n + 1))}, avg ${pct(addSum / addRuns)} worst ${pct(addWorst)}`);
  }
});

test('disruption: a larger table disrupts less (N = 100, 16381 vs 131071 slots)', (t) => {
  const set = backends(100, 's');
  const excess = (size: number): number => {
    const before = buildTable(set, size);
    let sum = 0;
    for (let r = 0; r < 10; r++) {
      sum += changedSlots(before, buildTable(set.filter((_, i) => i !== r * 10), size)) / size - 1 / 100;
    }
    return sum / 10;
  };
  const small = excess(16381);
  const large = excess(131071);
  t.true(large < small);
  t.true(large < 0.01, `131071 slots: ${(large * 100).toFixed(2)} % beyond 1/N`);
  t.log(`removing one of 100: slots changed beyond 1/N: ${(small * 100).toFixed(2)} % at M = 16381 (164/backend), ` +
    `${(large * 100).toFixed(2)} % at M = 131071 (1311/backend)`);
});

test('disruption: changing one backend\'s weight moves slots to/from it, and shuffles a few among the others', (t) => {
  // Measured while writing this test: the reweighted backend's slots move the right way except for
  // at most 0.2 % of the table, and up to 2.7 % of slots change hands between other backends
  // (the claim order of everyone after it shifts). Asserted with some margin: 0.5 % and 4 %.
  let worstWrongWay = 0;
  let worstCollateral = 0;
  let collateralSum = 0;
  let runs = 0;
  for (const n of [3, 10, 50, 100]) {
    const size = tableSizeFor(n);
    const set = backends(n, 'w', 2);
    const before = buildTable(set, size);
    const beforeCounts = slotCounts(before);
    for (let k = 0; k < Math.min(n, 10); k++) {
      const target = set[Math.floor(k * n / Math.min(n, 10))];
      for (const weight of [1, 3, 4, 6]) {
        const after = buildTable(set.map((b) => (b === target ? { ...b, weight } : b)), size);
        let lost = 0;
        let gained = 0;
        let collateral = 0;
        for (let i = 0; i < size; i++) {
          if (before[i] === after[i]) continue;
          if (before[i] === target.id) lost++;
          else if (after[i] === target.id) gained++;
          else collateral++;
        }
        const delta = (slotCounts(after).get(target.id) ?? 0) - (beforeCounts.get(target.id) ?? 0);
        t.true(weight > 2 ? delta > 0 : delta < 0, `N=${n}: weight 2 → ${weight} moved the count by ${delta}`);
        const wrongWay = (weight > 2 ? lost : gained) / size;
        t.true(wrongWay <= 0.005, `N=${n}: ${(wrongWay * 100).toFixed(2)} % moved against the change`);
        t.true(collateral / size <= 0.04, `N=${n}: ${(collateral / size * 100).toFixed(2)} % changed among others`);
        worstWrongWay = Math.max(worstWrongWay, wrongWay);
        worstCollateral = Math.max(worstCollateral, collateral / size);
        collateralSum += collateral / size;
        runs++;
      }
    }
  }
  t.log(`${runs} weight changes (2 → 1, 3, 4, 6): against the change worst ${(worstWrongWay * 100).toFixed(2)} %; ` +
    `between other backends avg ${(collateralSum / runs * 100).toFixed(2)} %, worst ${(worstCollateral * 100).toFixed(2)} %`);
});

// ---- determinism --------------------------------------------------------------------------------------

test('property: deterministic and independent of input order; ids are only labels', (t) => {
  fc.assert(fc.property(
    mixedSetArb(30).chain((set) => fc.tuple(fc.constant(set), fc.shuffledSubarray(set, { minLength: set.length, maxLength: set.length }))),
    smallSizeArb, seedArb,
    ([set, shuffled], size, seed) => {
      const table = buildTable(set, size, seed);
      if (changedSlots(table, buildTable(set, size, seed)) !== 0) return false;
      if (changedSlots(table, buildTable(shuffled, size, seed)) !== 0) return false;
      // Relabel ids (i ↦ position + 1): the slots are the same, under the new labels.
      const relabel = new Map(set.map((b, i) => [b.id, i + 1]));
      const relabelled = buildTable(set.map((b) => ({ ...b, id: relabel.get(b.id)! })), size, seed);
      return table.every((id, i) => (id === NO_BACKEND ? 0 : relabel.get(id)) === relabelled[i]);
    }), { numRuns: 200 });
  // The default seed is a fixed constant: the same table with and without it.
  t.is(changedSlots(buildTable(backends(10), 1021), buildTable(backends(10), 1021, DEFAULT_SEED)), 0);
});

test('property: different seeds give different tables (about 1 − 1/N of the slots differ)', (t) => {
  let ratioSum = 0;
  let runs = 0;
  fc.assert(fc.property(fc.integer({ min: 2, max: 30 }), seedArb, seedArb, (n, a, b) => {
    fc.pre(a !== b);
    const size = tableSizeFor(n);
    const set = backends(n, 'z');
    const differing = changedSlots(buildTable(set, size, a), buildTable(set, size, b)) / size;
    ratioSum += differing / (1 - 1 / n);
    runs++;
    return differing >= (1 - 1 / n) / 2;
  }), { numRuns: 100 });
  t.is(changedSlots(buildTable(backends(1), 251, 1), buildTable(backends(1), 251, 2)), 0, 'one backend: all slots anyway');
  t.log(`slots differing between two seeds, relative to 1 − 1/N: average ${(ratioSum / runs).toFixed(3)}`);
});

// ---- sizes and validation -----------------------------------------------------------------------------

test('tableSizeFor: the smallest size >= 100 per active backend, 251 at least, 131071 at most', (t) => {
  const cases: [number, number][] = [
    [0, 251], [1, 251], [2, 251], [3, 509], [5, 509], [10, 1021], [20, 2039], [40, 4093], [80, 8191],
    [160, 16381], [163, 16381], [164, 32749], [655, 65521], [656, 131071], [1310, 131071], [1311, 131071],
    [5000, 131071],
  ];
  for (const [n, size] of cases) t.is(tableSizeFor(n), size, `${n} backends`);
  for (const bad of [-1, 1.5, Number.NaN, Infinity]) t.throws(() => tableSizeFor(bad), { instanceOf: InvalidArgumentError });
});

test('invalid input is refused with InvalidArgumentError naming the problem', (t) => {
  const ok = backends(3);
  const refuse = (set: MaglevBackend[], message: RegExp, size = 251, seed?: number): void => {
    t.throws(() => buildTable(set, size, seed), { instanceOf: InvalidArgumentError, message });
  };
  refuse([...ok, { id: 9, key: ok[1].key, weight: 1 }], /key "c000000000001:8080" is used twice/);
  refuse([...ok, { id: 2, key: 'other', weight: 1 }], /id 2 is used twice/);
  refuse([...ok, { id: 2, key: 'drained', weight: 0 }], /id 2 is used twice/); // drained backends count too
  for (const id of [0, -1, 1.5, MAX_ID + 1, Number.NaN]) refuse([{ id, key: 'a', weight: 1 }], /has id .*use an integer in 1\.\.4294967295/);
  for (const weight of [-1, 0.5, Number.NaN, Infinity, MAX_WEIGHT + 1]) refuse([{ id: 1, key: 'a', weight }], /has weight .*use an integer/);
  refuse([{ id: 1, key: '', weight: 1 }], /empty or missing key/);
  for (const size of [0, 250, 252, 1000, 65537, 131072]) refuse(ok, /table size .* is not supported; use one of 251, 509/, size);
  for (const seed of [-1, 0.5, 2 ** 32]) refuse(ok, /seed .* is invalid/, 251, seed);
  t.throws(() => permutation('a', 100), { instanceOf: InvalidArgumentError });
  t.throws(() => tableDiff(new Uint32Array(251), new Uint32Array(509)), { instanceOf: InvalidArgumentError, message: /251 and 509/ });
  // The extremes are accepted.
  t.notThrows(() => buildTable([{ id: MAX_ID, key: 'a', weight: MAX_WEIGHT }, { id: 1, key: 'b', weight: 1 }], 131071, 0xffff_ffff));
});

// ---- tableDiff ----------------------------------------------------------------------------------------

test('property: tableDiff lists exactly the changed slots, ascending, and applying it gives the new table', (t) => {
  fc.assert(fc.property(mixedSetArb(20), mixedSetArb(20), smallSizeArb, (a, b, size) => {
    const previous = buildTable(a, size);
    const next = buildTable(b, size);
    const { indices, values } = tableDiff(previous, next);
    if (indices.length !== changedSlots(previous, next) || values.length !== indices.length) return false;
    const applied = previous.slice();
    for (let j = 0; j < indices.length; j++) {
      if (j > 0 && indices[j] <= indices[j - 1]) return false;
      if (previous[indices[j]] === next[indices[j]]) return false;
      applied[indices[j]] = values[j];
    }
    return changedSlots(applied, next) === 0;
  }), { numRuns: 200 });
  const next = buildTable(backends(4), 251);
  const whole = tableDiff(undefined, next);
  t.deepEqual([...whole.indices], Array.from({ length: 251 }, (_, i) => i));
  t.deepEqual([...whole.values], [...next]);
  t.not(whole.values.buffer, next.buffer, 'values is a copy');
  t.is(tableDiff(next, next.slice()).indices.length, 0);
});

// ---- timing (informational) ---------------------------------------------------------------------------

test('timing (informational, not asserted): build per table size and backend count, and tableDiff', (t) => {
  const timed = (f: () => void): number => {
    let best = Infinity;
    for (let r = 0; r < 3; r++) {
      const started = performance.now();
      f();
      best = Math.min(best, performance.now() - started);
    }
    return best;
  };
  const counts = [1, 10, 100, 650, 1000];
  const sets = new Map(counts.map((n) => [n, backends(n, 't')]));
  const lines = [`build, best of 3, ms     ${counts.map((n) => `N=${n}`.padStart(8)).join('')}`];
  for (const size of [251, 1021, 16381, 65521, 131071]) {
    const row = counts.map((n) => timed(() => buildTable(sets.get(n)!, size)).toFixed(2).padStart(8));
    lines.push(`M=${String(size).padEnd(22)}${row.join('')}`);
  }
  const skewed = backends(1000, 't').map((b, i) => ({ ...b, weight: i === 0 ? 1_000_000 : 1 }));
  lines.push(`M=131071, N=1000, one backend 10^6× the others: ${timed(() => buildTable(skewed, 131071)).toFixed(2)} ms`);
  const before = buildTable(sets.get(1000)!, 131071);
  const after = buildTable(sets.get(1000)!.slice(1), 131071);
  let changed = 0;
  const diffMs = timed(() => { changed = tableDiff(before, after).indices.length; });
  lines.push(`tableDiff of two 131071-slot tables (${changed} slots changed): ${diffMs.toFixed(3)} ms; ` +
    `whole table: ${timed(() => tableDiff(undefined, after)).toFixed(3)} ms`);
  t.log(lines.join('\n'));
  t.pass();
});
