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
  decodePolicyKey, encodeConfig, encodeIfindexKey, encodeIpcacheKey, encodeIpcacheValue, encodePolicyEntry, encodePolicyKey,
  type IpcacheValue, type PolicyEntry, type PolicyKey,
} from './codec.js';
import type { Datapath } from './loader.js';
import { POLICY_TRIE } from './maps.js';
import { mapEntries } from './iterate.js';


/** One entry of an endpoint's compiled policy. */
export interface PolicyMapEntry {
  key: PolicyKey;
  entry: PolicyEntry;
}

export interface ApplyReport {
  written: number;
  deleted: number;
}

/**
 * Orders writes and deletions so that no intermediate state allows more than old or new.
 * `desired` holds the keys to write (skipped when the map holds that value already) and
 * `deletions` the keys to remove (skipped when absent).
 */
function applyChanges(bpf: BpfAddon, fd: number, current: Map<string, string>, desired: Map<string, Buffer>, deletions: string[],
  isDeny: (value: Buffer) => boolean): ApplyReport {
  const denyWrites: [string, Buffer][] = [];
  const allowWrites: [string, Buffer][] = [];
  for (const [key, value] of desired) {
    if (current.get(key) === value.toString('hex')) continue;
    (isDeny(value) ? denyWrites : allowWrites).push([key, value]);
  }
  const present = deletions.filter((key) => current.has(key));
  write(bpf, fd, current, denyWrites);
  if (present.length >= BATCH_FROM && batchDelete(bpf, fd, present)) {
    for (const key of present) current.delete(key);
  } else {
    for (const key of present) {
      bpf.bpfMapDelete(fd, Buffer.from(key, 'hex'));
      current.delete(key);
    }
  }
  write(bpf, fd, current, allowWrites);
  return { written: denyWrites.length + allowWrites.length, deleted: present.length };
}

/** From this many entries on, writes and deletions go in batches (one syscall per few thousand entries). */
const BATCH_FROM = 32;
/** Set when the kernel refuses batch operations on a map type: every later write goes key by key. */
let batchUnsupported = false;

function unsupported(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'EINVAL' || code === 'ENOTSUPP' || code === 'EOPNOTSUPP' || code === 'ENOSYS';
}

function write(bpf: BpfAddon, fd: number, current: Map<string, string>, writes: [string, Buffer][]): void {
  if (writes.length >= BATCH_FROM && !batchUnsupported) {
    const keys = Buffer.from(writes.map(([key]) => key).join(''), 'hex');
    const values = Buffer.concat(writes.map(([, value]) => value));
    try {
      const count = bpf.bpfMapUpdateBatch(fd, keys, values, 0);
      if (count === writes.length) {
        for (const [key, value] of writes) current.set(key, value.toString('hex'));
        return;
      }
    } catch (err) {
      if (!unsupported(err)) throw err;
      batchUnsupported = true;
    }
  }
  // Key by key (also after a partial batch: rewriting an entry with its own value is harmless).
  for (const [key, value] of writes) {
    bpf.bpfMapUpdate(fd, Buffer.from(key, 'hex'), value, 0);
    current.set(key, value.toString('hex'));
  }
}

/** Deletes keys that are all present in one batch; false when the kernel cannot (then nothing or a prefix went). */
function batchDelete(bpf: BpfAddon, fd: number, keys: string[]): boolean {
  if (batchUnsupported) return false;
  try {
    return bpf.bpfMapDeleteBatch(fd, Buffer.from(keys.join(''), 'hex')) === keys.length;
  } catch (err) {
    if (!unsupported(err)) throw err;
    batchUnsupported = true;
    return false;
  }
}

/** Makes the map hold exactly `desired`. */
function applyDifference(bpf: BpfAddon, fd: number, current: Map<string, string>, desired: Map<string, Buffer>,
  isDeny: (value: Buffer) => boolean): ApplyReport {
  const deletions = [...current.keys()].filter((key) => !desired.has(key));
  return applyChanges(bpf, fd, current, desired, deletions, isDeny);
}

const isPolicyDeny = (value: Buffer): boolean => decodePolicyEntry(value).verdict === POLICY_DENY;

export class PolicyMaps {
  /** Endpoint number -> open fd of its trie and what it holds (key hex -> value hex). */
  private readonly tries = new Map<number, { fd: number; content: Map<string, string> }>();
  private ipcacheContent: Map<string, string> | undefined;

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
    const pin = this.pinPath(endpointNumber);
    let fd: number;
    let content = new Map<string, string>();
    if (fs.existsSync(pin)) {
      fd = this.bpf.bpfObjGet(pin);
      for (const [key, value] of mapEntries(this.bpf, fd, this.trieMaxEntries)) content.set(key.toString('hex'), value.toString('hex'));
    } else {
      fs.mkdirSync(path.dirname(pin), { recursive: true });
      fd = this.bpf.bpfMapCreate(POLICY_TRIE.type, POLICY_TRIE.key.size, POLICY_TRIE.value.size, this.trieMaxEntries,
        { flags: POLICY_TRIE.flags, name: `mb_pol_${endpointNumber}`.slice(0, 15) });
      this.bpf.bpfObjPin(fd, pin);
      content = new Map();
    }
    const value = Buffer.alloc(4);
    value.writeUInt32LE(fd, 0);
    this.bpf.bpfMapUpdate(this.datapath.map('mb_policy'), encodeIfindexKey(endpointNumber), value, 0);
    const opened = { fd, content };
    this.tries.set(endpointNumber, opened);
    return opened;
  }

  /** Makes the endpoint's trie hold exactly `entries`. */
  apply(endpointNumber: number, entries: PolicyMapEntry[]): ApplyReport {
    const trie = this.open(endpointNumber);
    const desired = new Map<string, Buffer>();
    for (const { key, entry } of entries) desired.set(encodePolicyKey(key).toString('hex'), encodePolicyEntry(entry));
    return applyDifference(this.bpf, trie.fd, trie.content, desired, isPolicyDeny);
  }

  /**
   * Changes some keys of the endpoint's trie: each to the entry given, or away when it has none.
   * Keys not named keep what they hold.
   */
  applyDelta(endpointNumber: number, changes: readonly { key: PolicyKey; entry: PolicyEntry | undefined }[]): ApplyReport {
    const trie = this.open(endpointNumber);
    const desired = new Map<string, Buffer>();
    const deletions: string[] = [];
    for (const { key, entry } of changes) {
      const hex = encodePolicyKey(key).toString('hex');
      if (entry) desired.set(hex, encodePolicyEntry(entry));
      else deletions.push(hex);
    }
    return applyChanges(this.bpf, trie.fd, trie.content, desired, deletions, isPolicyDeny);
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

  /** Removes the endpoint's trie from mb_policy and unpins it (the kernel frees it). */
  remove(endpointNumber: number): void {
    const known = this.tries.get(endpointNumber);
    if (known) {
      this.bpf.bpfClose(known.fd);
      this.tries.delete(endpointNumber);
    }
    this.bpf.bpfMapDelete(this.datapath.map('mb_policy'), encodeIfindexKey(endpointNumber));
    fs.rmSync(this.pinPath(endpointNumber), { force: true });
  }

  /** Removes the tries of endpoints that no longer exist (deleted while the daemon was down). */
  prune(liveNumbers: Set<number>): number[] {
    const dir = path.join(this.pinDir, 'policy');
    const removed: number[] = [];
    if (fs.existsSync(dir)) {
      for (const name of fs.readdirSync(dir)) {
        const n = Number(name);
        if (Number.isInteger(n) && !liveNumbers.has(n)) {
          this.remove(n);
          removed.push(n);
        }
      }
    }
    const outer = this.datapath.map('mb_policy');
    for (const [key] of mapEntries(this.bpf, outer, 1_000_000)) {
      const n = key.readUInt32LE(0);
      if (!liveNumbers.has(n)) {
        this.bpf.bpfMapDelete(outer, key);
        if (!removed.includes(n)) removed.push(n);
      }
    }
    return removed;
  }

  /** Makes mb_ipcache hold exactly `entries` (CIDR or address -> identity). */
  syncIpcache(entries: Map<string, IpcacheValue>): ApplyReport {
    const fd = this.datapath.map('mb_ipcache');
    if (!this.ipcacheContent) {
      this.ipcacheContent = new Map();
      for (const [key, value] of mapEntries(this.bpf, fd, 1_000_000)) this.ipcacheContent.set(key.toString('hex'), value.toString('hex'));
    }
    const desired = new Map<string, Buffer>();
    for (const [cidr, value] of entries) desired.set(encodeIpcacheKey(cidr).toString('hex'), encodeIpcacheValue(value));
    return applyDifference(this.bpf, fd, this.ipcacheContent, desired, () => false);
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
    const fd = this.datapath.map('mb_policy_verdicts');
    this.bpf.bpfMapUpdate(fd, encodeIfindexKey(ruleId), Buffer.alloc(SIZES.policy_counter * this.bpf.bpfNumPossibleCpus()), 0);
  }

  close(): void {
    for (const { fd } of this.tries.values()) this.bpf.bpfClose(fd);
    this.tries.clear();
    this.ipcacheContent = undefined;
  }
}
