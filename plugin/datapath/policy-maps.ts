// Applies compiled policy to the BPF datapath: each endpoint's policy trie (created here,
// pinned under <pin dir>/policy/<endpoint number>, and inserted into mb_policy), the ipcache
// (address -> identity), and the policy epoch that makes known flows be judged again.
//
// Changes are applied as differences against what the maps hold, in an order that never
// allows more than either the old or the new policy would: entries that become denies first,
// then removals, then new allows. Programs are never reloaded for a policy change.

import fs from 'node:fs';
import path from 'node:path';
import type { BpfAddon } from '../kernel/native.js';
import {
  POLICY_DENY, SIZES, decodeConfig, decodeIpcacheKey, decodeIpcacheValue, decodePerCpuPolicyCounter, decodePolicyEntry,
  decodePolicyKey, encodeConfig, encodeIfindexKey, encodeIpcacheKey, encodeIpcacheValue,
  type IpcacheValue, type PolicyEntry, type PolicyKey,
} from './codec.js';
import type { Datapath } from './loader.js';
import { POLICY_TRIE } from './maps.js';
import { mapEntries } from './iterate.js';
import type { IdleWork } from '../idle-work.js';


/** One entry of an endpoint's compiled policy. */
export interface PolicyMapEntry {
  key: PolicyKey;
  entry: PolicyEntry;
}

export interface ApplyReport {
  written: number;
  deleted: number;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const u32le = (n: number): string => HEX[n & 255]! + HEX[(n >>> 8) & 255]! + HEX[(n >>> 16) & 255]! + HEX[(n >>> 24) & 255]!;

/**
 * encodePolicyKey(k).toString('hex'), without a buffer per key (the maps' caches are keyed by
 * hex; an import writes tens of thousands of keys). policy-maps.test.ts holds the two together.
 */
export function policyKeyHex(k: PolicyKey): string {
  return u32le(k.protocol === 0 ? 40 : 48 + k.portBits) + u32le(k.identity) + HEX[k.direction]! + HEX[k.protocol]! +
    HEX[(k.port >>> 8) & 255]! + HEX[k.port & 255]!;
}

/** encodePolicyEntry(e).toString('hex'), likewise. */
export function policyEntryHex(e: PolicyEntry): string {
  return `${u32le(e.ruleId)}${HEX[e.verdict]!}000000`;
}

/** One key to write: its bytes as hex (the cache's key), the value, the value as hex, and whether it is a deny. */
interface Write {
  key: string;
  hex: string;
  deny: boolean;
}

/** The write of `key` = value `hex`, or undefined when the map holds that already. */
function writeOf(current: Map<string, string>, key: string, hex: string, deny: boolean): Write | undefined {
  return current.get(key) === hex ? undefined : { key, hex, deny };
}

/**
 * Applies writes and deletions (keys absent from the map are skipped) in an order that never
 * allows more than either the old or the new content: denies first, then removals, then allows.
 */
function applyChanges(bpf: BpfAddon, fd: number, current: Map<string, string>, writes: Write[], deletions: string[]): ApplyReport {
  const present = deletions.filter((key) => current.has(key));
  write(bpf, fd, current, writes.filter((w) => w.deny));
  if (present.length >= BATCH_FROM && batchDelete(bpf, fd, present)) {
    for (const key of present) current.delete(key);
  } else {
    for (const key of present) {
      bpf.bpfMapDelete(fd, Buffer.from(key, 'hex'));
      current.delete(key);
    }
  }
  write(bpf, fd, current, writes.filter((w) => !w.deny));
  return { written: writes.length, deleted: present.length };
}

/** From this many entries on, writes and deletions go in batches (one syscall per few thousand entries). */
const BATCH_FROM = 32;
/** Maps (by fd) whose kernel refused batch operations: every later write to them goes key by key. */
const noBatch = new Set<number>();

function unsupported(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EINVAL' || code === 'ENOTSUPP' || code === 'EOPNOTSUPP' || code === 'ENOSYS';
}

function write(bpf: BpfAddon, fd: number, current: Map<string, string>, writes: Write[]): void {
  if (writes.length >= BATCH_FROM && !noBatch.has(fd)) {
    try {
      const count = bpf.bpfMapUpdateBatch(fd, Buffer.from(writes.map((w) => w.key).join(''), 'hex'),
        Buffer.from(writes.map((w) => w.hex).join(''), 'hex'), 0);
      if (count === writes.length) {
        for (const w of writes) current.set(w.key, w.hex);
        return;
      }
    } catch (err) {
      if (unsupported(err)) noBatch.add(fd);
      // Any other failure: key by key below, which fails at the same key and leaves the cache
      // knowing exactly what was written before it.
    }
  }
  // Key by key (also after a partial batch: rewriting an entry with its own value is harmless).
  for (const w of writes) {
    bpf.bpfMapUpdate(fd, Buffer.from(w.key, 'hex'), Buffer.from(w.hex, 'hex'), 0);
    current.set(w.key, w.hex);
  }
}

/** Deletes keys that are all present in one batch; false when that did not happen (then nothing or a prefix went). */
function batchDelete(bpf: BpfAddon, fd: number, keys: string[]): boolean {
  if (noBatch.has(fd)) return false;
  try {
    return bpf.bpfMapDeleteBatch(fd, Buffer.from(keys.join(''), 'hex')) === keys.length;
  } catch (err) {
    if (unsupported(err)) noBatch.add(fd);
    return false;
  }
}


/** A map-of-maps value: the inner map's fd, which the kernel resolves to the map. */
function fdValue(fd: number): Buffer {
  const value = Buffer.alloc(4);
  value.writeUInt32LE(fd, 0);
  return value;
}

export class PolicyMaps {
  /** Endpoint number -> open fd of its trie and what it holds (key hex -> value hex). */
  private readonly tries = new Map<number, { fd: number; content: Map<string, string> }>();
  private ipcacheContent: Map<string, string> | undefined;
  /** CIDR or address -> its ipcache key as hex, for the entries of the last sync. */
  private ipcacheKeys = new Map<string, string>();

  constructor(private readonly bpf: BpfAddon, private readonly datapath: Datapath, private readonly pinDir: string,
    private readonly trieMaxEntries = 65536) {}

  /** How many entries one endpoint's policy map holds. */
  get capacity(): number {
    return this.trieMaxEntries;
  }

  private pinPath(endpointNumber: number): string {
    return path.join(this.pinDir, 'policy', String(endpointNumber));
  }

  /**
   * The endpoint's trie, created (and pinned, and inserted into mb_policy) if it has none. The
   * mb_policy entry is rewritten every time: after a migration of mb_policy it is missing.
   */
  private open(endpointNumber: number): { fd: number; content: Map<string, string> } {
    const known = this.tries.get(endpointNumber);
    if (known) return known;
    const opened = this.openTrie(endpointNumber);
    // Only when mb_policy does not point at this trie already (a lookup answers the inner map's
    // id): every update of a map of maps waits for an RCU grace period, 10 ms or more, which a
    // daemon start would otherwise pay once per endpoint.
    const outer = this.datapath.map('mb_policy');
    const key = encodeIfindexKey(endpointNumber);
    const current = this.bpf.bpfMapLookup(outer, key);
    if (!current || current.readUInt32LE(0) !== this.bpf.bpfMapInfo(opened.fd).id) {
      this.bpf.bpfMapUpdate(outer, key, fdValue(opened.fd), 0);
    }
    this.tries.set(endpointNumber, opened);
    return opened;
  }

  /** The endpoint's trie from its pin, or a new one pinned; not yet in mb_policy. */
  private openTrie(endpointNumber: number): { fd: number; content: Map<string, string> } {
    const pin = this.pinPath(endpointNumber);
    let fd: number;
    const content = new Map<string, string>();
    if (fs.existsSync(pin)) {
      fd = this.bpf.bpfObjGet(pin);
      for (const [key, value] of mapEntries(this.bpf, fd, this.trieMaxEntries)) content.set(key.toString('hex'), value.toString('hex'));
    } else {
      fs.mkdirSync(path.dirname(pin), { recursive: true });
      fd = this.bpf.bpfMapCreate(POLICY_TRIE.type, POLICY_TRIE.key.size, POLICY_TRIE.value.size, this.trieMaxEntries,
        { flags: POLICY_TRIE.flags, name: `mb_pol_${endpointNumber}`.slice(0, 15) });
      this.bpf.bpfObjPin(fd, pin);
    }
    return { fd, content };
  }

  /** Makes the endpoint's trie hold exactly `entries`. */
  apply(endpointNumber: number, entries: PolicyMapEntry[]): ApplyReport {
    const trie = this.open(endpointNumber);
    const wanted = new Set<string>();
    const writes: Write[] = [];
    for (const { key, entry } of entries) {
      const hex = policyKeyHex(key);
      wanted.add(hex);
      const w = writeOf(trie.content, hex, policyEntryHex(entry), entry.verdict === POLICY_DENY);
      if (w) writes.push(w);
    }
    const deletions = [...trie.content.keys()].filter((key) => !wanted.has(key));
    return applyChanges(this.bpf, trie.fd, trie.content, writes, deletions);
  }

  /**
   * Changes some keys of the endpoint's trie: each to the entry given, or away when it has none.
   * Keys not named keep what they hold. `everything` is the endpoint's whole policy, for a trie
   * this instance has not written since it was opened.
   */
  applyDelta(endpointNumber: number, changes: readonly { key: PolicyKey; entry: PolicyEntry | undefined }[],
    everything: () => PolicyMapEntry[]): ApplyReport {
    // A trie opened afresh (after close(), or created because its pin went) may not hold what the
    // caller last wrote: then the whole policy is written as a difference.
    if (!this.tries.has(endpointNumber)) return this.apply(endpointNumber, everything());
    const trie = this.open(endpointNumber);
    const writes: Write[] = [];
    const deletions: string[] = [];
    for (const { key, entry } of changes) {
      const hex = policyKeyHex(key);
      if (!entry) deletions.push(hex);
      else {
        const w = writeOf(trie.content, hex, policyEntryHex(entry), entry.verdict === POLICY_DENY);
        if (w) writes.push(w);
      }
    }
    return applyChanges(this.bpf, trie.fd, trie.content, writes, deletions);
  }

  /** What the endpoint's trie holds (from the kernel, not the cache). */
  read(endpointNumber: number): PolicyMapEntry[] {
    const pin = this.pinPath(endpointNumber);
    if (!fs.existsSync(pin)) return [];
    const fd = this.bpf.bpfObjGet(pin);
    try {
      return mapEntries(this.bpf, fd, this.trieMaxEntries).map(([key, value]) => ({ key: decodePolicyKey(key), entry: decodePolicyEntry(value) }));
    } finally {
      this.bpf.bpfClose(fd);
    }
  }

  /**
   * Readies the trie of endpoint `endpointNumber` before the endpoint exists (a prepared veth
   * pair): inserting it into mb_policy waits for an RCU grace period, which is then not paid
   * while Docker waits.
   */
  prepare(endpointNumber: number): void {
    this.open(endpointNumber);
  }

  /** prepare() with the mb_policy insert (and its grace period) on a worker thread. */
  async prepareAsync(endpointNumber: number): Promise<void> {
    if (this.tries.has(endpointNumber)) return;
    const opened = this.openTrie(endpointNumber);
    // Known before the insert lands, so that a remove() meanwhile closes it.
    this.tries.set(endpointNumber, opened);
    await this.bpf.bpfMapUpdateAsync(this.datapath.map('mb_policy'), encodeIfindexKey(endpointNumber), fdValue(opened.fd), 0);
  }

  /**
   * Set by the daemon: removals from mb_policy (each waits for a grace period, a batch waits once)
   * are then made while the plugin is idle. A number is never given to another endpoint, so a
   * trie left in mb_policy for a while matches no endpoint entry.
   */
  idle: IdleWork | undefined;
  private doomed: number[] = [];

  /** Removes the endpoint's trie from mb_policy and unpins it (the kernel frees it). */
  remove(endpointNumber: number): void {
    this.forgetTrie(endpointNumber);
    if (!this.idle) {
      this.deleteFromOuter([endpointNumber]);
      return;
    }
    this.doomed.push(endpointNumber);
    if (this.doomed.length === 1) this.idle.add({ name: 'remove policy maps', steps: [() => this.flushRemovals()] });
  }

  /** Makes every queued removal now, in one batch, on a worker thread (the batch waits for one grace period). */
  async flushRemovals(): Promise<void> {
    const keys = this.presentKeys(this.doomed.splice(0));
    if (keys.length) await this.bpf.bpfMapDeleteBatchAsync(this.datapath.map('mb_policy'), Buffer.concat(keys));
  }

  private presentKeys(numbers: number[]): Buffer[] {
    const outer = this.datapath.map('mb_policy');
    return numbers.map((n) => encodeIfindexKey(n)).filter((key) => this.bpf.bpfMapLookup(outer, key) !== null);
  }

  private forgetTrie(endpointNumber: number): void {
    const known = this.tries.get(endpointNumber);
    if (known) {
      this.bpf.bpfClose(known.fd);
      this.tries.delete(endpointNumber);
    }
    fs.rmSync(this.pinPath(endpointNumber), { force: true });
  }

  /** Deletes mb_policy entries with one batch request (one grace period for all of them). */
  private deleteFromOuter(numbers: number[]): void {
    const outer = this.datapath.map('mb_policy');
    const keys = this.presentKeys(numbers);
    if (!keys.length) return;
    try {
      this.bpf.bpfMapDeleteBatch(outer, Buffer.concat(keys));
    } catch {
      for (const key of keys) this.bpf.bpfMapDelete(outer, key);
    }
  }

  /** Removes the tries of endpoints that no longer exist (deleted while the daemon was down). */
  prune(liveNumbers: Set<number>): number[] {
    const dir = path.join(this.pinDir, 'policy');
    const removed = new Set<number>();
    if (fs.existsSync(dir)) {
      for (const name of fs.readdirSync(dir)) {
        const n = Number(name);
        if (Number.isInteger(n) && !liveNumbers.has(n)) {
          this.forgetTrie(n);
          removed.add(n);
        }
      }
    }
    const outer = this.datapath.map('mb_policy');
    for (const [key] of mapEntries(this.bpf, outer, 1_000_000)) {
      const n = key.readUInt32LE(0);
      if (!liveNumbers.has(n)) removed.add(n);
    }
    this.deleteFromOuter([...removed]);
    return [...removed];
  }

  /** Makes mb_ipcache hold exactly `entries` (CIDR or address -> identity). */
  syncIpcache(entries: Map<string, IpcacheValue>): ApplyReport {
    const fd = this.datapath.map('mb_ipcache');
    if (!this.ipcacheContent) {
      this.ipcacheContent = new Map();
      for (const [key, value] of mapEntries(this.bpf, fd, 1_000_000)) this.ipcacheContent.set(key.toString('hex'), value.toString('hex'));
    }
    const wanted = new Set<string>();
    const writes: Write[] = [];
    const keys = new Map<string, string>();
    for (const [cidr, value] of entries) {
      // The same CIDRs come back every regeneration: their keys are encoded once.
      const hex = this.ipcacheKeys.get(cidr) ?? encodeIpcacheKey(cidr).toString('hex');
      keys.set(cidr, hex);
      wanted.add(hex);
      const w = writeOf(this.ipcacheContent, hex, encodeIpcacheValue(value).toString('hex'), false);
      if (w) writes.push(w);
    }
    this.ipcacheKeys = keys;
    const deletions = [...this.ipcacheContent.keys()].filter((key) => !wanted.has(key));
    return applyChanges(this.bpf, fd, this.ipcacheContent, writes, deletions);
  }

  readIpcache(): { cidr: string; value: IpcacheValue }[] {
    return mapEntries(this.bpf, this.datapath.map('mb_ipcache'), 1_000_000)
      .map(([key, value]) => ({ cidr: decodeIpcacheKey(key), value: decodeIpcacheValue(value) }));
  }

  /**
   * Moves config.policy_epoch on: every known flow is judged again by its next packet. Called
   * after a batch of changes is applied, so flows are judged against the finished policy.
   */
  bumpEpoch(): number {
    const fd = this.datapath.map('mb_config');
    const key = encodeIfindexKey(0);
    const current = decodeConfig(this.bpf.bpfMapLookup(fd, key)!);
    const next = (current.policyEpoch + 1) >>> 0 || 1;
    this.bpf.bpfMapUpdate(fd, key, encodeConfig({ ...current, policyEpoch: next }), 0);
    return next;
  }

  /** Verdict counters by rule id (0 = default deny), summed over CPUs; only non-zero ones. */
  verdictCounters(ruleIds: number[]): Map<number, { allowed: bigint; denied: bigint }> {
    const fd = this.datapath.map('mb_policy_verdicts');
    const out = new Map<number, { allowed: bigint; denied: bigint }>();
    for (const id of new Set([0, ...ruleIds])) {
      const value = this.bpf.bpfMapLookup(fd, encodeIfindexKey(id));
      if (!value) continue;
      const counter = decodePerCpuPolicyCounter(value);
      if (counter.allowed || counter.denied) out.set(id, counter);
    }
    return out;
  }

  /** Zeroes a rule's counters (a rule id is being given to a new rule). */
  resetCounter(ruleId: number): void {
    this.resetCounters([ruleId]);
  }

  /** Zeroes the counters of rules (their ids are being given to new rules); in batches when there are many. */
  resetCounters(ruleIds: readonly number[]): void {
    if (!ruleIds.length) return;
    const fd = this.datapath.map('mb_policy_verdicts');
    const size = SIZES.policy_counter * this.bpf.bpfNumPossibleCpus();
    const zero = Buffer.alloc(size);
    if (ruleIds.length >= BATCH_FROM && !noBatch.has(fd)) {
      try {
        const keys = Buffer.concat(ruleIds.map((id) => encodeIfindexKey(id)));
        if (this.bpf.bpfMapUpdateBatch(fd, keys, Buffer.alloc(size * ruleIds.length), 0) === ruleIds.length) return;
      } catch (err) {
        if (unsupported(err)) noBatch.add(fd);
      }
    }
    for (const id of ruleIds) this.bpf.bpfMapUpdate(fd, encodeIfindexKey(id), zero, 0);
  }

  close(): void {
    for (const { fd } of this.tries.values()) this.bpf.bpfClose(fd);
    this.tries.clear();
    this.ipcacheContent = undefined;
  }
}
