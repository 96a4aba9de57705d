import test from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import {
  AddressInUseError, InvalidArgumentError, IpamExhaustedError, MembraneError, OutOfPoolError, StateError,
} from '../errors.js';
import { AddressAllocator, type AllocatorState } from './allocator.js';
import { type Family, familyBits, formatAddress, parseAddress, parsePrefix, prefixSize } from './prefix.js';

// ---- a deliberately simple reference model ---------------------------------------------------------

interface PoolConfig { pool: string; range?: string }

/** Set of offsets plus a cursor over the sorted list of dynamic candidates, scanned linearly. */
class Model {
  readonly family: Family;
  readonly network: bigint;
  readonly size: bigint;
  readonly reserved = new Set<bigint>();
  /** Offsets dynamic allocation may use, ascending. */
  readonly candidates: bigint[] = [];
  readonly allocated = new Set<bigint>();
  cursor = 0; // index into candidates

  constructor(readonly config: PoolConfig) {
    const pool = parsePrefix(config.pool);
    this.family = pool.family;
    this.network = pool.network;
    this.size = prefixSize(pool);
    if (familyBits(pool.family) - pool.length >= 2) {
      this.reserved.add(0n);
      if (pool.family === 4) this.reserved.add(this.size - 1n);
    }
    const range = config.range === undefined ? pool : parsePrefix(config.range);
    for (let o = 0n; o < this.size; o++) {
      const v = this.network + o;
      if (v >= range.network && v < range.network + prefixSize(range) && !this.reserved.has(o)) this.candidates.push(o);
    }
  }

  text(offset: bigint): string { return formatAddress(this.family, this.network + offset); }

  inPool(offset: bigint): boolean { return offset >= 0n && offset < this.size; }

  /** Index in candidates of the next free candidate at or after the cursor (cyclic), or -1. */
  nextFreeIndex(): number {
    const n = this.candidates.length;
    for (let k = 0; k < n; k++) {
      const i = (this.cursor + k) % n;
      if (!this.allocated.has(this.candidates[i]!)) return i;
    }
    return -1;
  }

  freeInRange(): number { return this.candidates.filter((o) => !this.allocated.has(o)).length; }

  allocate(): bigint | 'exhausted' {
    const i = this.nextFreeIndex();
    if (i < 0) return 'exhausted';
    const o = this.candidates[i]!;
    this.allocated.add(o);
    this.cursor = (i + 1) % this.candidates.length;
    return o;
  }

  allocatePreferred(offset: bigint): 'out-of-pool' | 'reserved' | 'in-use' | bigint {
    if (!this.inPool(offset)) return 'out-of-pool';
    if (this.reserved.has(offset)) return 'reserved';
    if (this.allocated.has(offset)) return 'in-use';
    this.allocated.add(offset);
    return offset;
  }

  release(offset: bigint): boolean {
    if (!this.allocated.delete(offset)) return false;
    const i = this.nextFreeIndex();
    if (i >= 0 && this.candidates[i] === offset) this.cursor = (i + 1) % this.candidates.length;
    return true;
  }

  sorted(): bigint[] { return [...this.allocated].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)); }

  runs(): number {
    let runs = 0;
    let prev: bigint | undefined;
    for (const o of this.sorted()) {
      if (prev === undefined || o !== prev + 1n) runs++;
      prev = o;
    }
    return runs;
  }
}

const CONFIGS: PoolConfig[] = [
  { pool: '10.0.0.0/28' },
  { pool: '10.0.0.0/28', range: '10.0.0.8/29' }, // range holds the broadcast address
  { pool: '10.0.0.0/28', range: '10.0.0.0/30' }, // range holds the network address
  { pool: '10.0.0.16/28', range: '10.0.0.20/31' },
  { pool: '10.0.0.0/30' },
  { pool: 'fd00:0:0:1::/124' },
  { pool: 'fd00:0:0:1::/124', range: 'fd00:0:0:1::8/125' },
  { pool: 'fd00:0:0:1::/124', range: 'fd00:0:0:1::/126' },
  { pool: '10.0.0.2/31' },
  { pool: '10.0.0.7/32' },
  { pool: 'fd00::/127' },
  { pool: 'fd00::5/128' },
  { pool: '10.0.0.0/30', range: '10.0.0.0/32' }, // empty dynamic range
  { pool: '10.0.0.0/29', range: '10.0.0.7/32' }, // empty dynamic range
];

type Command =
  | { kind: 'alloc' }
  | { kind: 'preferred'; raw: number }
  | { kind: 'foreign' }
  | { kind: 'release'; raw: number }
  | { kind: 'releaseAllocated'; pick: number }
  | { kind: 'snapshot' };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { weight: 5, arbitrary: fc.constant({ kind: 'alloc' } as const) },
  { weight: 2, arbitrary: fc.nat().map((raw) => ({ kind: 'preferred', raw }) as const) },
  { weight: 1, arbitrary: fc.constant({ kind: 'foreign' } as const) },
  { weight: 1, arbitrary: fc.nat().map((raw) => ({ kind: 'release', raw }) as const) },
  { weight: 3, arbitrary: fc.nat().map((pick) => ({ kind: 'releaseAllocated', pick }) as const) },
  { weight: 1, arbitrary: fc.constant({ kind: 'snapshot' } as const) },
);

function errorKind(fn: () => string): string {
  try {
    return fn();
  } catch (err) {
    if (err instanceof OutOfPoolError) return 'out-of-pool';
    if (err instanceof AddressInUseError) return 'in-use';
    if (err instanceof IpamExhaustedError) return 'exhausted';
    if (err instanceof InvalidArgumentError) return 'reserved';
    throw err;
  }
}

test('property: allocator behaves like the Set model over random command sequences', (t) => {
  let exhaustions = 0;
  let reuseChecks = 0;
  fc.assert(fc.property(fc.constantFrom(...CONFIGS), fc.array(commandArb, { maxLength: 120 }), (config, commands) => {
    const model = new Model(config);
    let alloc = new AddressAllocator(config);
    assert.equal(alloc.size(), BigInt(model.candidates.length));
    const candidateSet = new Set(model.candidates);
    const span = Number(model.size) + 4;
    let justReleased: bigint | undefined;

    for (const cmd of commands) {
      let released: bigint | undefined;
      switch (cmd.kind) {
        case 'alloc': {
          const freeBefore = model.freeInRange();
          const expected = model.allocate();
          const got = errorKind(() => alloc.allocate());
          if (expected === 'exhausted') {
            assert.equal(freeBefore, 0);
            assert.equal(got, 'exhausted');
            exhaustions++;
          } else {
            assert.equal(got, model.text(expected));
            const offset = parseAddress(got).value - model.network;
            assert.ok(candidateSet.has(offset), `${got} is in the dynamic range and not reserved`);
            assert.ok(!model.reserved.has(offset));
            if (justReleased !== undefined && freeBefore > 1) {
              assert.notEqual(offset, justReleased, 'address released just before is not handed out again at once');
              reuseChecks++;
            }
          }
          break;
        }
        case 'preferred': {
          const offset = BigInt(cmd.raw % span) - 2n;
          const expected = model.allocatePreferred(offset);
          const got = errorKind(() => alloc.allocate(model.text(offset)));
          assert.equal(got, typeof expected === 'bigint' ? model.text(expected) : expected);
          break;
        }
        case 'foreign': {
          const other = model.family === 4 ? 'fd00::1' : '10.0.0.1';
          assert.equal(errorKind(() => alloc.allocate(other)), 'out-of-pool');
          assert.equal(alloc.release(other), false);
          assert.equal(alloc.isAllocated(other), false);
          break;
        }
        case 'release': {
          const offset = BigInt(cmd.raw % span) - 2n;
          const expected = model.release(offset);
          assert.equal(alloc.release(model.text(offset)), expected);
          if (expected) released = offset;
          break;
        }
        case 'releaseAllocated': {
          const all = model.sorted();
          if (all.length === 0) break;
          const offset = all[cmd.pick % all.length]!;
          assert.equal(model.release(offset), true);
          assert.equal(alloc.release(model.text(offset)), true);
          assert.equal(alloc.release(model.text(offset)), false, 'release is idempotent');
          released = offset;
          break;
        }
        case 'snapshot': {
          const state = JSON.parse(JSON.stringify(alloc.toState())) as AllocatorState;
          alloc = new AddressAllocator({ ...config, state });
          break;
        }
      }
      justReleased = released;

      assert.equal(alloc.allocatedCount(), model.allocated.size);
      const list = alloc.list();
      assert.deepEqual(list, model.sorted().map((o) => model.text(o)));
      assert.equal(new Set(list).size, list.length, 'no duplicates');
      assert.equal(alloc.intervalCount(), model.runs(), 'adjacent allocations are merged');
      if (model.candidates.length > 0) {
        assert.equal(alloc.toState().cursor, model.text(model.candidates[model.cursor]!));
      }
      for (let o = -1n; o <= model.size; o++) {
        assert.equal(alloc.isAllocated(model.text(o)), model.allocated.has(o));
      }
    }
  }), { numRuns: 1000 });
  t.log(`${exhaustions} exhaustions and ${reuseChecks} release-then-allocate checks exercised`);
  t.true(exhaustions > 0);
  t.true(reuseChecks > 0);
});

// ---- examples -------------------------------------------------------------------------------------

test('dynamic allocation skips network and broadcast, then wraps around past released addresses', (t) => {
  const a = new AddressAllocator({ pool: '10.0.0.0/28' });
  t.is(a.size(), 14n);
  const first = Array.from({ length: 5 }, () => a.allocate());
  t.deepEqual(first, ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5']);
  t.true(a.release('10.0.0.3'));
  t.false(a.release('10.0.0.3'));
  const rest = Array.from({ length: 9 }, () => a.allocate());
  t.deepEqual(rest, ['10.0.0.6', '10.0.0.7', '10.0.0.8', '10.0.0.9', '10.0.0.10', '10.0.0.11', '10.0.0.12',
    '10.0.0.13', '10.0.0.14']);
  t.is(a.allocate(), '10.0.0.3', 'released address comes back only after the cursor went around');
  t.throws(() => a.allocate(), { instanceOf: IpamExhaustedError });
  t.is(a.allocatedCount(), 14);
});

test('release of the address right at the cursor does not hand it straight back', (t) => {
  const a = new AddressAllocator({ pool: '10.0.0.0/29' });
  t.is(a.allocate('10.0.0.1'), '10.0.0.1'); // explicit: cursor stays at .1
  t.true(a.release('10.0.0.1'));
  t.is(a.allocate(), '10.0.0.2');
  t.is(a.allocate(), '10.0.0.3');
});

test('explicit requests: anywhere in the pool, also outside the range; reserved and taken addresses refused', (t) => {
  const a = new AddressAllocator({ pool: '10.0.0.0/24', range: '10.0.0.128/25' });
  t.is(a.range, '10.0.0.128/25');
  t.is(a.size(), 127n, '.128-.254');
  t.is(a.allocate(), '10.0.0.128');
  t.is(a.allocate('10.0.0.5'), '10.0.0.5');
  t.is(a.allocate(''), '10.0.0.129', 'empty preferred means no preference (Docker sends "")');
  const inUse = t.throws(() => a.allocate('10.0.0.5'), { instanceOf: AddressInUseError });
  t.regex(inUse!.message, /10\.0\.0\.5 in pool 10\.0\.0\.0\/24/);
  const out = t.throws(() => a.allocate('10.0.1.5'), { instanceOf: OutOfPoolError });
  t.regex(out!.message, /10\.0\.1\.5 is not inside pool 10\.0\.0\.0\/24/);
  t.throws(() => a.allocate('fd00::5'), { instanceOf: OutOfPoolError });
  const net = t.throws(() => a.allocate('10.0.0.0'), { instanceOf: InvalidArgumentError });
  t.regex(net!.message, /network address of pool 10\.0\.0\.0\/24/);
  const bcast = t.throws(() => a.allocate('10.0.0.255'), { instanceOf: InvalidArgumentError });
  t.regex(bcast!.message, /broadcast address of pool 10\.0\.0\.0\/24/);
  t.throws(() => a.allocate('not-an-ip'), { instanceOf: InvalidArgumentError });
  t.deepEqual(a.list(), ['10.0.0.5', '10.0.0.128', '10.0.0.129']);
});

test('IPv6: subnet-router anycast (offset 0) is reserved, the last address is not', (t) => {
  const a = new AddressAllocator({ pool: 'fd12:3456:789a:1::/124' });
  t.is(a.size(), 15n);
  t.is(a.allocate(), 'fd12:3456:789a:1::1');
  t.throws(() => a.allocate('fd12:3456:789a:1::'), { instanceOf: InvalidArgumentError });
  t.is(a.allocate('fd12:3456:789a:1::f'), 'fd12:3456:789a:1::f');
  t.is(a.allocate('FD12:3456:789A:0001:0:0:0:5'), 'fd12:3456:789a:1::5', 'returns canonical text');
  t.true(a.isAllocated('fd12:3456:789a:1:0::5'));
});

test('/31, /32, /127, /128 pools: every address is usable (RFC 3021)', (t) => {
  const p31 = new AddressAllocator({ pool: '10.0.0.4/31' });
  t.is(p31.size(), 2n);
  t.deepEqual([p31.allocate(), p31.allocate()], ['10.0.0.4', '10.0.0.5']);
  t.throws(() => p31.allocate(), { instanceOf: IpamExhaustedError });
  const p32 = new AddressAllocator({ pool: '10.0.0.9/32' });
  t.is(p32.allocate('10.0.0.9'), '10.0.0.9');
  const p127 = new AddressAllocator({ pool: 'fd00::/127' });
  t.deepEqual([p127.allocate(), p127.allocate()], ['fd00::', 'fd00::1']);
  const p128 = new AddressAllocator({ pool: 'fd00::7/128' });
  t.is(p128.allocate(), 'fd00::7');
  t.throws(() => p128.allocate(), { instanceOf: IpamExhaustedError });
});

test('addresses may carry the pool\'s prefix length or a host length', (t) => {
  const a = new AddressAllocator({ pool: '10.0.0.0/24' });
  t.is(a.allocate('10.0.0.7/24'), '10.0.0.7');
  t.true(a.isAllocated('10.0.0.7/32'));
  t.throws(() => a.allocate('10.0.0.8/16'), { instanceOf: InvalidArgumentError, message: /without a prefix length/ });
  t.true(a.release('10.0.0.7/24'));
});

test('constructor validates pool and range', (t) => {
  t.throws(() => new AddressAllocator({ pool: 'nonsense' }), { instanceOf: InvalidArgumentError });
  t.throws(() => new AddressAllocator({ pool: '10.0.0.0/24', range: '10.0.1.0/25' }),
    { instanceOf: InvalidArgumentError, message: /ip-range 10\.0\.1\.0\/25 is not inside subnet 10\.0\.0\.0\/24/ });
  t.throws(() => new AddressAllocator({ pool: '10.0.0.0/24', range: '10.0.0.0/23' }), { instanceOf: InvalidArgumentError });
  t.throws(() => new AddressAllocator({ pool: '10.0.0.0/24', range: 'fd00::/120' }), { instanceOf: InvalidArgumentError });
  const a = new AddressAllocator({ pool: '10.0.0.77/24' });
  t.is(a.pool, '10.0.0.0/24', 'host bits are masked');
  t.is(a.range, undefined);
});

test('errors name the pool and the range and carry stable codes', (t) => {
  const a = new AddressAllocator({ pool: '10.9.0.0/24', range: '10.9.0.64/30' });
  t.deepEqual([a.allocate(), a.allocate(), a.allocate(), a.allocate()],
    ['10.9.0.64', '10.9.0.65', '10.9.0.66', '10.9.0.67']);
  const err = t.throws(() => a.allocate(), { instanceOf: IpamExhaustedError });
  t.true(err instanceof MembraneError);
  t.is(err!.code, 'MEMBRANE_IPAM_EXHAUSTED');
  t.is(err!.pool, '10.9.0.0/24');
  t.regex(err!.message, /10\.9\.0\.0\/24/);
  t.regex(err!.message, /ip-range 10\.9\.0\.64\/30/);
  t.is((t.throws(() => a.allocate('10.9.0.64')) as MembraneError).code, 'MEMBRANE_IPAM_ADDRESS_IN_USE');
  t.is((t.throws(() => a.allocate('10.9.1.1')) as MembraneError).code, 'MEMBRANE_IPAM_OUT_OF_POOL');

  const v6 = new AddressAllocator({ pool: 'fd00::/127' });
  v6.allocate();
  v6.allocate();
  const e6 = t.throws(() => v6.allocate(), { instanceOf: IpamExhaustedError });
  t.regex(e6!.message, /fd00::\/127/);
  t.notRegex(e6!.message, /ip-range/);

  const empty = new AddressAllocator({ pool: '10.0.0.0/29', range: '10.0.0.7/32' });
  t.is(empty.size(), 0n);
  t.throws(() => empty.allocate(), { instanceOf: IpamExhaustedError });
  t.is(empty.allocate('10.0.0.3'), '10.0.0.3');
  t.deepEqual(new AddressAllocator({ pool: '10.0.0.0/29', range: '10.0.0.7/32', state: empty.toState() }).list(),
    ['10.0.0.3']);
});

test('state round-trip preserves allocations and cursor', (t) => {
  const a = new AddressAllocator({ pool: 'fd00:1::/64', range: 'fd00:1::1:0/112' });
  const got = Array.from({ length: 20 }, () => a.allocate());
  a.allocate('fd00:1::5');
  a.release(got[3]!);
  a.release(got[10]!);
  const state = JSON.parse(JSON.stringify(a.toState())) as AllocatorState;
  t.is(state.cursor, 'fd00:1::1:14');
  t.is(state.allocated.length, 19);
  t.is(state.allocated[0], 'fd00:1::5');
  const b = AddressAllocator.fromState({ pool: 'fd00:1::/64', range: 'fd00:1::1:0/112' }, state);
  t.deepEqual(b.toState(), a.toState());
  t.is(b.allocatedCount(), a.allocatedCount());
  t.is(b.intervalCount(), a.intervalCount());
  for (let i = 0; i < 30; i++) t.is(b.allocate(), a.allocate());
});

test('restoring state validates every address against the pool', (t) => {
  const pool = '10.0.0.0/24';
  const out = t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1', allocated: ['10.0.0.5', '10.0.1.5'] } }),
    { instanceOf: StateError });
  t.regex(out!.message, /10\.0\.1\.5 is not inside the pool/);
  t.regex(out!.message, /10\.0\.0\.0\/24/);
  t.true(out!.cause instanceof OutOfPoolError);
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1', allocated: ['garbage'] } }), { instanceOf: StateError });
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1', allocated: ['fd00::1'] } }), { instanceOf: StateError });
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1', allocated: ['10.0.0.0'] } }),
    { instanceOf: StateError, message: /reserved/ });
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1', allocated: ['10.0.0.2', '10.0.0.2'] } }),
    { instanceOf: StateError, message: /twice/ });
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.9.1', allocated: [] } }), { instanceOf: StateError });
  t.throws(() => new AddressAllocator({ pool, state: { cursor: '10.0.0.1' } as unknown as AllocatorState }), { instanceOf: StateError });
  // A cursor outside a (changed) range is accepted and restarts at the range start.
  const b = new AddressAllocator({ pool, range: '10.0.0.64/26', state: { cursor: '10.0.0.9', allocated: ['10.0.0.64'] } });
  t.is(b.allocate(), '10.0.0.65');
});

test('a /64 IPv6 pool: 10000 allocations stay one interval, memory does not grow with the pool', (t) => {
  const a = new AddressAllocator({ pool: 'fd12:3456:789a:1::/64' });
  t.is(a.size(), (1n << 64n) - 1n);
  const got: string[] = [];
  for (let i = 0; i < 10000; i++) got.push(a.allocate());
  t.is(got[0], 'fd12:3456:789a:1::1');
  t.is(got[9999], 'fd12:3456:789a:1::2710');
  t.is(new Set(got).size, 10000);
  t.is(a.allocatedCount(), 10000);
  t.is(a.intervalCount(), 1, 'sequential allocations merge into one interval');
  t.is(a.treeHeight(), 0, 'a single leaf node');

  // Release every other address: worst-case fragmentation, 5000 intervals, still a shallow tree.
  for (let i = 0; i < 10000; i += 2) t.true(a.release(got[i]!));
  t.is(a.intervalCount(), 5000);
  t.true(a.treeHeight() <= 3, `height ${a.treeHeight()}`);
  for (let i = 1; i < 10000; i += 2) t.true(a.release(got[i]!));
  t.is(a.allocatedCount(), 0);
  t.is(a.intervalCount(), 0);
  t.deepEqual(a.toState(), { cursor: 'fd12:3456:789a:1::2711', allocated: [] });
  t.is(a.allocate(), 'fd12:3456:789a:1::2711', 'the cursor keeps going instead of reusing released addresses');
});

test('100 concurrent allocations return distinct addresses', async (t) => {
  for (const pool of ['10.1.0.0/25', 'fd00:9::/120']) {
    const a = new AddressAllocator({ pool });
    const results = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (i % 10 === 0) await Promise.resolve();
      return a.allocate();
    }));
    t.is(new Set(results).size, 100, pool);
    t.is(a.allocatedCount(), 100);
    t.true(results.every((r) => a.isAllocated(r)));
  }
  // Exhaustion under concurrency: exactly the free addresses succeed.
  const small = new AddressAllocator({ pool: '10.2.0.0/26' }); // 62 usable
  const settled = await Promise.allSettled(Array.from({ length: 100 }, async () => {
    await Promise.resolve();
    return small.allocate();
  }));
  const ok = settled.filter((s) => s.status === 'fulfilled').map((s) => (s as PromiseFulfilledResult<string>).value);
  t.is(ok.length, 62);
  t.is(new Set(ok).size, 62);
  t.true(settled.filter((s) => s.status === 'rejected')
    .every((s) => (s as PromiseRejectedResult).reason instanceof IpamExhaustedError));
});

test('throughput on a /16 IPv4 pool (informational, not asserted)', (t) => {
  const measure = (fill: number): number => {
    const a = new AddressAllocator({ pool: '10.20.0.0/16' });
    const held: string[] = [];
    const target = Math.floor(Number(a.size()) * fill);
    for (let i = 0; i < target; i++) held.push(a.allocate());
    let seed = 12345;
    const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    const batch = Math.min(500, Math.floor(held.length / 2));
    let allocations = 0;
    let ns = 0n;
    for (let round = 0; round < 40; round++) {
      // Punch random holes, then time refilling them.
      for (let k = 0; k < batch; k++) {
        const i = rnd(held.length);
        a.release(held[i]!);
        held[i] = held[held.length - 1]!;
        held.pop();
      }
      const start = process.hrtime.bigint();
      for (let k = 0; k < batch; k++) held.push(a.allocate());
      ns += process.hrtime.bigint() - start;
      allocations += batch;
    }
    t.is(a.allocatedCount(), target);
    return allocations / (Number(ns) / 1e9);
  };
  for (const fill of [0.1, 0.99]) {
    t.log(`/16 v4 at ${fill * 100}% full: ${Math.round(measure(fill)).toLocaleString('en-US')} allocations/s`);
  }
});
