// Address allocation inside one pool (a Docker network's --subnet, optionally narrowed for dynamic
// allocation by --ip-range).
//
// Allocated addresses are kept as disjoint, non-adjacent intervals [start, end] of offsets from the
// pool's network address, in a B+ tree keyed by start. Memory is proportional to the number of
// intervals (sequential allocations merge into one), never to the pool size, so a /64 is fine.
// allocate(), release() and isAllocated() are O(log n) in the number of intervals.
//
// Dynamic allocation is "next free at or after a cursor, wrapping once". The cursor moves past every
// dynamically allocated address, so a released address comes back only after the cursor has gone
// around the whole range (peers may still have the old owner in their ARP/ND caches). release()
// also moves the cursor past the released address when that address would otherwise be the very
// next one handed out, so release-then-allocate never returns the address just released while any
// other address in the range is free.
//
// Everything here is synchronous: concurrent async callers cannot interleave inside allocate(), so
// no two calls can return the same address.

import BTreeModule from 'sorted-btree';
import {
  AddressInUseError, InvalidArgumentError, IpamExhaustedError, OutOfPoolError, StateError,
} from '../errors.js';
import {
  type Family, type Prefix, familyBits, formatAddress, formatPrefix, parseAddress, parsePrefix,
  prefixContainsPrefix, prefixSize,
} from './prefix.js';

// sorted-btree is CommonJS with `exports.default = BTree`; under NodeNext the default import is the
// whole module.exports object.
const BTree = BTreeModule.default;
type IntervalTree = InstanceType<typeof BTree<bigint, bigint>>;

const compareBigint = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);

/** JSON-friendly persisted form. Addresses are plain strings without prefix length. */
export interface AllocatorState {
  /** The address dynamic allocation continues from. */
  cursor: string;
  /** Every allocated address, dynamic and explicit, in ascending order. */
  allocated: string[];
}

export interface AllocatorOptions {
  /** The pool, in CIDR notation (Docker's --subnet). */
  pool: string;
  /** Sub-pool dynamic allocation is restricted to (Docker's --ip-range); must lie inside pool. */
  range?: string;
  /** Previously persisted state to restore (see toState()). */
  state?: AllocatorState;
}

export class AddressAllocator {
  /** The pool in canonical CIDR text, as used in error messages. */
  readonly pool: string;
  /** The dynamic range in canonical CIDR text, when one was given. */
  readonly range: string | undefined;
  readonly family: Family;

  readonly #pool: Prefix;
  readonly #poolSize: bigint;
  /** Offsets refused to everybody: network address and (IPv4) broadcast address. */
  readonly #reserved: ReadonlySet<bigint>;
  /** Dynamic allocation window, inclusive offsets; empty when #lo > #hi. */
  readonly #lo: bigint;
  readonly #hi: bigint;
  readonly #intervals: IntervalTree = new BTree<bigint, bigint>(undefined, compareBigint);
  #count = 0;
  #cursor: bigint;

  constructor(options: AllocatorOptions) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('AddressAllocator needs options { pool, range?, state? }');
    }
    const pool = parsePrefix(options.pool);
    this.#pool = pool;
    this.family = pool.family;
    this.pool = formatPrefix(pool);
    this.#poolSize = prefixSize(pool);

    const reserved = new Set<bigint>();
    // RFC 3021: in a /31 or /32 (v4) and /127 or /128 (v6) every address is usable.
    if (familyBits(pool.family) - pool.length >= 2) {
      reserved.add(0n);
      if (pool.family === 4) reserved.add(this.#poolSize - 1n);
    }
    this.#reserved = reserved;

    let lo = 0n;
    let hi = this.#poolSize - 1n;
    if (options.range !== undefined && options.range !== '') {
      const range = parsePrefix(options.range);
      if (!prefixContainsPrefix(pool, range)) {
        throw new InvalidArgumentError(`ip-range ${formatPrefix(range)} is not inside subnet ${this.pool}; ` +
          'pick an --ip-range that lies within the network\'s --subnet');
      }
      this.range = formatPrefix(range);
      lo = range.network - pool.network;
      hi = lo + prefixSize(range) - 1n;
    }
    const rangeStart = lo;
    while (lo <= hi && reserved.has(lo)) lo++;
    while (hi >= lo && reserved.has(hi)) hi--;
    this.#lo = lo;
    this.#hi = hi;
    // An empty range (e.g. --ip-range of just the network address) still needs an in-pool cursor.
    this.#cursor = lo <= hi ? lo : rangeStart;

    if (options.state !== undefined) this.#restore(options.state);
  }

  /** Rebuilds an allocator from toState() output. Throws StateError if the state does not fit the pool. */
  static fromState(options: { pool: string; range?: string }, state: AllocatorState): AddressAllocator {
    return new AddressAllocator({ ...options, state });
  }

  /**
   * Allocates an address and returns it as plain text (no prefix length).
   * With `preferred` (Docker's --ip/--aux-address): that exact address, which must be inside the
   * pool (it may be outside the range) and free. Without: the next free address in the range.
   */
  allocate(preferred?: string): string {
    if (preferred !== undefined && preferred !== '') {
      const offset = this.#offsetForRequest(preferred);
      if (!this.#insert(offset)) throw new AddressInUseError(this.#text(offset), this.pool);
      return this.#text(offset);
    }
    const offset = this.#nextFree(this.#cursor);
    if (offset === undefined) {
      const where = this.range === undefined ? `pool ${this.pool}` : `ip-range ${this.range}`;
      throw new IpamExhaustedError(this.pool,
        `all ${this.size()} assignable addresses in ${where} are allocated`);
    }
    this.#insert(offset);
    this.#cursor = this.#wrap(offset + 1n);
    return this.#text(offset);
  }

  /** Frees an address. Returns false, without error, when it was not allocated (or not in the pool). */
  release(address: string): boolean {
    const offset = this.#offsetIfInPool(address);
    if (offset === undefined || !this.#remove(offset)) return false;
    // Keep the address just released from being the very next one handed out.
    if (offset >= this.#lo && offset <= this.#hi && this.#nextFree(this.#cursor) === offset) {
      this.#cursor = this.#wrap(offset + 1n);
    }
    return true;
  }

  /** Whether the address is currently allocated. False for addresses outside the pool. */
  isAllocated(address: string): boolean {
    const offset = this.#offsetIfInPool(address);
    return offset !== undefined && this.#find(offset) !== undefined;
  }

  /** Number of allocated addresses, dynamic and explicit. */
  allocatedCount(): number {
    return this.#count;
  }

  /** Number of addresses dynamic allocation can hand out (the range minus reserved addresses). */
  size(): bigint {
    return this.#hi >= this.#lo ? this.#hi - this.#lo + 1n : 0n;
  }

  /** All allocated addresses in ascending order. */
  list(): string[] {
    const out: string[] = [];
    for (const [start, end] of this.#intervals.entries()) {
      for (let o = start; o <= end; o++) out.push(this.#text(o));
    }
    return out;
  }

  /** Number of stored intervals (diagnostics: memory use is proportional to this). */
  intervalCount(): number {
    return this.#intervals.size;
  }

  /** Height of the interval B+ tree (diagnostics). */
  treeHeight(): number {
    return this.#intervals.height;
  }

  /** JSON-friendly snapshot; feed it to the constructor's `state` or fromState() to restore. */
  toState(): AllocatorState {
    return { cursor: this.#text(this.#cursor), allocated: this.list() };
  }

  // ---- internals -------------------------------------------------------------------------------

  #text(offset: bigint): string {
    return formatAddress(this.family, this.#pool.network + offset);
  }

  #wrap(offset: bigint): bigint {
    return offset > this.#hi ? this.#lo : offset;
  }

  /** Accepts 'addr' and, leniently, 'addr/len' when len is the pool's length or a host length. */
  #parse(address: string): { family: Family; value: bigint } {
    if (typeof address === 'string') {
      const slash = address.indexOf('/');
      if (slash >= 0) {
        const len = address.slice(slash + 1);
        const parsed = parseAddress(address.slice(0, slash));
        if (len === String(this.#pool.length) || len === String(familyBits(parsed.family))) return parsed;
        throw new InvalidArgumentError(`invalid address ${JSON.stringify(address)} for pool ${this.pool}: ` +
          'give the address without a prefix length, e.g. ' + this.#text(this.#lo <= this.#hi ? this.#lo : 0n));
      }
    }
    return parseAddress(address);
  }

  #offsetIfInPool(address: string): bigint | undefined {
    const { family, value } = this.#parse(address);
    if (family !== this.family) return undefined;
    const offset = value - this.#pool.network;
    return offset >= 0n && offset < this.#poolSize ? offset : undefined;
  }

  #offsetForRequest(address: string): bigint {
    const offset = this.#offsetIfInPool(address);
    if (offset === undefined) throw new OutOfPoolError(address, this.pool);
    if (this.#reserved.has(offset)) {
      const what = offset === 0n ? 'network address' : 'broadcast address';
      throw new InvalidArgumentError(`address ${this.#text(offset)} is the ${what} of pool ${this.pool} and cannot ` +
        'be assigned; pick another --ip/--ip6');
    }
    return offset;
  }

  /** The interval containing offset, if any. */
  #find(offset: bigint): [bigint, bigint] | undefined {
    const pair = this.#intervals.getPairOrNextLower(offset);
    return pair !== undefined && pair[1] >= offset ? pair : undefined;
  }

  /** First free offset in [from, hi], then in [lo, from); undefined when the range is full. */
  #nextFree(from: bigint): bigint | undefined {
    if (this.#lo > this.#hi) return undefined;
    const firstFreeAtOrAfter = (x: bigint): bigint => {
      // Intervals never touch, so the offset right after an interval is always free.
      const hit = this.#find(x);
      return hit === undefined ? x : hit[1] + 1n;
    };
    const a = firstFreeAtOrAfter(from);
    if (a <= this.#hi) return a;
    const b = firstFreeAtOrAfter(this.#lo);
    return b < from && b <= this.#hi ? b : undefined;
  }

  /** Marks offset allocated, merging with neighbours. False if it already was. */
  #insert(x: bigint): boolean {
    const left = this.#intervals.getPairOrNextLower(x);
    if (left !== undefined && left[1] >= x) return false;
    const rightEnd = this.#intervals.get(x + 1n);
    const joinLeft = left !== undefined && left[1] === x - 1n;
    if (rightEnd !== undefined) this.#intervals.delete(x + 1n);
    if (joinLeft) this.#intervals.set(left[0], rightEnd ?? x);
    else this.#intervals.set(x, rightEnd ?? x);
    this.#count++;
    return true;
  }

  /** Marks offset free, splitting its interval. False if it was not allocated. */
  #remove(x: bigint): boolean {
    const hit = this.#find(x);
    if (hit === undefined) return false;
    const [start, end] = hit;
    if (start === x) this.#intervals.delete(start);
    else this.#intervals.set(start, x - 1n);
    if (end > x) this.#intervals.set(x + 1n, end);
    this.#count--;
    return true;
  }

  #restore(state: AllocatorState): void {
    const bad = (detail: string, cause?: unknown): StateError =>
      new StateError(`persisted IPAM state for pool ${this.pool} is invalid: ${detail}`,
        cause === undefined ? undefined : { cause });
    if (state === null || typeof state !== 'object' || !Array.isArray(state.allocated)) {
      throw bad('expected { cursor: string, allocated: string[] }');
    }
    const inPool = (address: unknown, what: string): bigint => {
      if (typeof address !== 'string') throw bad(`${what} ${JSON.stringify(address)} is not a string`);
      let offset: bigint | undefined;
      try {
        offset = this.#offsetIfInPool(address);
      } catch (err) {
        throw bad(`${what} ${JSON.stringify(address)} is not an IP address`, err);
      }
      if (offset === undefined) {
        throw bad(`${what} ${address} is not inside the pool`, new OutOfPoolError(address, this.pool));
      }
      return offset;
    };
    for (const address of state.allocated) {
      const offset = inPool(address, 'allocated address');
      if (this.#reserved.has(offset)) throw bad(`allocated address ${address} is reserved (network/broadcast)`);
      if (!this.#insert(offset)) throw bad(`address ${address} is listed twice`);
    }
    if (state.cursor !== undefined && state.cursor !== '') {
      const cursor = inPool(state.cursor, 'cursor');
      // The range may have changed since the state was written; start over in that case.
      if (cursor >= this.#lo && cursor <= this.#hi) this.#cursor = cursor;
    }
  }
}
