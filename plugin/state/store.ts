// The one place that writes /var/lib/membrane.
//
// State is a snapshot plus a journal. The snapshot (state.json) is the whole state, written to a
// temporary file, fsync'd, renamed over the old one, the directory fsync'd: atomic on every Linux
// filesystem. The journal (state.json.journal) holds what changed since: each commit that says
// which records it touched appends one line carrying those records (or their deletion) and the
// state's small top-level fields, then fdatasyncs. A commit therefore costs what it changed (one
// endpoint: about 1 KB and one fdatasync, 0.3 ms here), not the size of the state (at 10,000
// policy rules the snapshot is 2.7 MB, 20 ms to serialize before any disk write).
//
// A commit that names nothing writes a snapshot, as does the journal outgrowing the snapshot
// (compaction), so the journal's length is bounded by the snapshot's. Changes that arrive while a
// write is in flight are grouped into the next one (group commit): 100 concurrent Docker calls
// cost a handful of fdatasyncs, not 100.
//
// After a crash or kill -9: the snapshot is the old or the new one, never a mix; the journal's
// last line may be torn, and a torn line was never acknowledged (the answer waits for the
// fdatasync), so it is dropped. The journal's first line names the snapshot generation it
// continues; a journal left from before a compaction that completed its snapshot is ignored.
//
// Why not an embedded database: the state is read whole at start and is small per container; an
// append-only journal over a JSON snapshot gives writes that grow with the change without a native
// dependency, and both files stay readable with `jq`.

import fs from 'node:fs';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { StateError } from '../errors.js';

/** A path into the state: ['endpoints', id], ['pools', id], ['policy'] ... */
export type Touch = readonly string[];

interface JournalLine {
  /** Top-level fields that are not collections (counters, the ULA prefix ...), always carried. */
  meta?: Record<string, unknown>;
  /** Each touched path with its value, or without `value` when it was deleted. */
  ops: Array<{ path: string[]; value?: unknown }>;
}

export interface StoreOptions {
  /**
   * Top-level keys holding records or whole sections, written only when touched. Every other
   * top-level field is small and rides along with every journal line.
   */
  touchable?: readonly string[];
  /** Compaction: the journal is folded into a new snapshot once it is larger than this and the snapshot. */
  compactBytes?: number;
  /** After every write, read both files back and compare with memory (tests: MEMBRANE_STATE_VERIFY=1). */
  verify?: boolean;
}

const GENERATION_KEY = 'storeGeneration';

/**
 * One step down a path. Objects are indexed by key; an array of records (policy rules) by the
 * records' `id`, so that one rule can be written or deleted without the whole list. Arrays get an
 * id index, made once and kept up to date by applyOp: a write naming 10,000 rules of a list of
 * 10,000 must not search the list 10,000 times.
 */
type ArrayIndexes = WeakMap<unknown[], Map<string, number>>;

/** Arrays being replayed at load: their index lives as long as they do, and only applyOp changes them. */
const replayIndexes: ArrayIndexes = new WeakMap();

function indexOf(array: unknown[], indexes: ArrayIndexes): Map<string, number> {
  let index = indexes.get(array);
  if (!index) {
    index = new Map(array.map((e, i) => [String((e as { id?: unknown })?.id), i]));
    indexes.set(array, index);
  }
  return index;
}

function child(node: unknown, key: string, indexes: ArrayIndexes): { found: boolean; value?: unknown } {
  if (Array.isArray(node)) {
    const i = indexOf(node, indexes).get(key);
    return i === undefined ? { found: false } : { found: true, value: node[i] };
  }
  if (typeof node !== 'object' || node === null || !Object.prototype.hasOwnProperty.call(node, key)) return { found: false };
  return { found: true, value: (node as Record<string, unknown>)[key] };
}

function applyOp(root: Record<string, unknown>, op: { path: string[]; value?: unknown }): void {
  let node: unknown = root;
  for (const key of op.path.slice(0, -1)) {
    let next = child(node, key, replayIndexes).value;
    if (typeof next !== 'object' || next === null) {
      next = {};
      if (!Array.isArray(node)) (node as Record<string, unknown>)[key] = next;
    }
    node = next;
  }
  const leaf = op.path[op.path.length - 1]!;
  if (Array.isArray(node)) {
    const index = indexOf(node, replayIndexes);
    const i = index.get(leaf);
    if ('value' in op) {
      if (i !== undefined) node[i] = op.value;
      else index.set(leaf, node.push(op.value) - 1);
    } else if (i !== undefined) {
      // Swap with the last and pop: O(1), and the order is restored by its owner (the repository sorts by id).
      const last = node.length - 1;
      if (i !== last) {
        node[i] = node[last];
        index.set(String((node[i] as { id?: unknown })?.id), i);
      }
      node.pop();
      index.delete(leaf);
    }
    return;
  }
  const object = node as Record<string, unknown>;
  if ('value' in op) object[leaf] = op.value;
  else delete object[leaf];
}

/**
 * The value at a path. `indexes` caches array indexes for one pass over memory that nothing
 * changes meanwhile (one write): memory's arrays may be changed in place between writes.
 */
function valueAt(root: unknown, keys: readonly string[], indexes: ArrayIndexes = new WeakMap()): { found: boolean; value?: unknown } {
  let node = root;
  for (const key of keys) {
    const next = child(node, key, indexes);
    if (!next.found) return { found: false };
    node = next.value;
  }
  return { found: node !== undefined, value: node };
}

export class JsonStore<T> {
  readonly file: string;
  readonly journalFile: string;
  private pending: Promise<void> | null = null;
  private writing: Promise<void> | null = null;
  private readonly snapshot: (touched?: readonly Touch[]) => T;
  private readonly touchable: Set<string>;
  private readonly compactBytes: number;
  private readonly verify: boolean;
  /** What the next write carries: touched paths, or everything. */
  private touched = new Map<string, Touch>();
  private wantSnapshot = false;
  private generation = 0;
  private journalBytes = 0;
  private snapshotBytes = 0;
  /** The journal needs a fresh start (none yet, stale or torn): the next write is a snapshot. */
  private journalStale = true;
  /** Snapshots and journal lines written since start (reported by /v1/status). */
  writes = 0;
  snapshots = 0;
  journalLines = 0;

  /**
   * `snapshot` returns the live state; it is told the touched paths when only those are written
   * (so derived records can be brought up to date for just those), nothing for a whole snapshot.
   */
  constructor(file: string, snapshot: (touched?: readonly Touch[]) => T, options: StoreOptions = {}) {
    this.file = file;
    this.journalFile = `${file}.journal`;
    this.snapshot = snapshot;
    this.touchable = new Set(options.touchable ?? []);
    this.compactBytes = options.compactBytes ?? 1 << 20;
    this.verify = options.verify ?? process.env.MEMBRANE_STATE_VERIFY === '1';
  }

  /** Reads the last committed state (snapshot, then the journal's lines), or undefined when none exists yet. */
  load(): T | undefined {
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    // A leftover temporary file is a write that never completed: the rename did not happen, so
    // the state it carried was never acknowledged to anyone.
    fs.rmSync(`${this.file}.tmp`, { force: true });
    fs.rmSync(`${this.journalFile}.tmp`, { force: true });
    const loaded = this.read();
    if (!loaded) return undefined;
    this.generation = loaded.generation;
    this.snapshotBytes = loaded.snapshotBytes;
    this.journalBytes = loaded.journalBytes;
    this.journalStale = loaded.journalStale;
    return loaded.state as T;
  }

  private read(): { state: Record<string, unknown>; generation: number; snapshotBytes: number; journalBytes: number; journalStale: boolean } | undefined {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StateError(`cannot read state file ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    let state: Record<string, unknown>;
    try {
      state = JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new StateError(`state file ${this.file} is not valid JSON (${(err as Error).message}); ` +
        'restore it from a backup, or move it away to start with empty state', { cause: err });
    }
    const generation = typeof state[GENERATION_KEY] === 'number' ? state[GENERATION_KEY] as number : 0;
    delete state[GENERATION_KEY];
    let journal: string;
    try {
      journal = fs.readFileSync(this.journalFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state, generation, snapshotBytes: text.length, journalBytes: 0, journalStale: true };
      throw new StateError(`cannot read state journal ${this.journalFile}: ${(err as Error).message}`, { cause: err });
    }
    const lines = journal.split('\n');
    // The text after the last newline is a line whose write did not complete: never acknowledged.
    const torn = lines.pop() !== '';
    let header: { generation?: unknown } | undefined;
    try {
      header = lines.length ? JSON.parse(lines[0]!) as { generation?: unknown } : undefined;
    } catch {
      header = undefined;
    }
    if (!header || header.generation !== generation) {
      // From before the compaction that wrote this snapshot (the snapshot holds all of it).
      return { state, generation, snapshotBytes: text.length, journalBytes: 0, journalStale: true };
    }
    for (let i = 1; i < lines.length; i++) {
      let line: JournalLine;
      try {
        line = JSON.parse(lines[i]!) as JournalLine;
      } catch (err) {
        throw new StateError(`state journal ${this.journalFile} line ${i + 1} is not valid JSON (${(err as Error).message}); ` +
          'restore it from a backup, or move the journal away to start from the snapshot alone', { cause: err });
      }
      if (line.meta) Object.assign(state, line.meta);
      for (const op of line.ops ?? []) applyOp(state, op);
    }
    return { state, generation, snapshotBytes: text.length, journalBytes: journal.length, journalStale: torn };
  }

  /**
   * Marks a path as changed without writing: the next commit carries it. For code below the one
   * that commits (IPAM marks the pools it changes; the caller commits with `commit([])`).
   */
  touch(t: Touch): void {
    if (t.length && this.touchable.has(t[0]!)) this.touched.set(JSON.stringify(t), t);
    else if (t.length > 1) this.wantSnapshot = true;
  }

  /**
   * Makes the current in-memory state durable. Resolves once a write taken after this call has
   * reached the disk. Callers acknowledge Docker only after this resolves. `touched` names what
   * changed (records or sections); without it, the whole state is written.
   */
  commit(touched?: readonly Touch[]): Promise<void> {
    if (touched) {
      // A path outside the touchable keys is top-level metadata, carried by every line anyway.
      for (const t of touched) this.touch(t);
    } else {
      this.wantSnapshot = true;
    }
    if (this.pending) return this.pending;
    // The write is taken when the previous one has finished, so it includes every change made
    // before this call and any that arrive while we wait (group commit). The `.then` callback
    // runs asynchronously, so `this.pending` is set before it can be cleared.
    const previous = this.writing ? this.writing.catch(() => undefined) : Promise.resolve();
    const pending = previous.then(async () => {
      this.pending = null;
      const writing = this.write();
      this.writing = writing;
      try {
        await writing;
      } finally {
        if (this.writing === writing) this.writing = null;
      }
    });
    this.pending = pending;
    return pending;
  }

  /** Waits for every requested commit to land. */
  async flush(): Promise<void> {
    while (this.pending || this.writing) {
      await (this.pending ?? this.writing)!.catch(() => undefined);
    }
  }

  /** A clean stop: every requested commit has landed. */
  async close(): Promise<void> {
    await this.flush();
  }

  private async write(): Promise<void> {
    const touched = [...this.touched.values()];
    const full = this.wantSnapshot || this.journalStale || this.journalBytes > Math.max(this.compactBytes, this.snapshotBytes);
    this.touched = new Map();
    this.wantSnapshot = false;
    // What the disk must hold after this write (verification): memory as it was when the write was
    // taken, since calls that arrive during the write change memory for the next one.
    let expected: Record<string, unknown> | undefined;
    const taken = (): void => {
      if (this.verify) expected = JSON.parse(JSON.stringify(this.snapshot())) as Record<string, unknown>;
    };
    try {
      if (full) await this.writeSnapshot(taken);
      else await this.appendJournal(touched, taken);
      this.writes++;
    } catch (err) {
      // What was not written is written by the next commit, whole.
      this.wantSnapshot = true;
      throw new StateError(`cannot write state file ${this.file}: ${(err as Error).message}; ` +
        'check free space and permissions of the state directory', { cause: err });
    }
    if (expected) this.verifyAgainst(touched, expected);
  }

  private async appendJournal(touched: Touch[], taken: () => void): Promise<void> {
    const state = this.snapshot(touched) as Record<string, unknown>;
    const meta: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(state)) if (!this.touchable.has(key)) meta[key] = value;
    const line: JournalLine = { meta, ops: [] };
    const indexes: ArrayIndexes = new WeakMap();
    for (const t of touched) {
      const { found, value } = valueAt(state, t, indexes);
      line.ops.push(found ? { path: [...t], value } : { path: [...t] });
    }
    const text = JSON.stringify(line) + '\n';
    taken();
    // Opened per write: no descriptor outlives a commit (a few µs against the fdatasync).
    const handle = await fs.promises.open(this.journalFile, 'a', 0o600);
    try {
      await handle.writeFile(text);
      await handle.datasync();
    } finally {
      await handle.close();
    }
    this.journalBytes += Buffer.byteLength(text);
    this.journalLines++;
  }

  private async writeSnapshot(taken: () => void): Promise<void> {
    const generation = this.generation + 1;
    const state = this.snapshot() as Record<string, unknown>;
    const data = JSON.stringify({ ...state, [GENERATION_KEY]: generation }, null, 1);
    taken();
    await this.writeFileDurably(`${this.file}.tmp`, data);
    await fs.promises.rename(`${this.file}.tmp`, this.file);
    // The new journal continues this snapshot. A crash before its rename leaves the old journal,
    // which names the old generation and is then ignored.
    const header = JSON.stringify({ generation }) + '\n';
    await this.writeFileDurably(`${this.journalFile}.tmp`, header);
    await fs.promises.rename(`${this.journalFile}.tmp`, this.journalFile);
    const dir = await fs.promises.open(path.dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.generation = generation;
    this.snapshotBytes = data.length;
    this.journalBytes = header.length;
    this.journalStale = false;
    this.snapshots++;
  }

  private async writeFileDurably(file: string, data: string): Promise<void> {
    const handle = await fs.promises.open(file, 'w', 0o600);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /**
   * Test mode: what a restart would read must equal memory, except for endpoint fields that are
   * derived again at start (an endpoint's compiled policy may lag until its owner commits it): of
   * endpoints, the set of records and each touched one are compared; everything else whole.
   */
  private verifyAgainst(touched: Touch[], memory: Record<string, unknown>): void {
    const disk = this.read()?.state ?? {};
    const problems: string[] = [];
    for (const key of new Set([...Object.keys(memory), ...Object.keys(disk)])) {
      const m = memory[key];
      const d = disk[key];
      if (key === 'endpoints') {
        const mk = Object.keys((m ?? {}) as object).sort();
        const dk = Object.keys((d ?? {}) as object).sort();
        if (!isDeepStrictEqual(mk, dk)) problems.push(`${key}: memory has [${mk.join(', ')}], disk [${dk.join(', ')}]`);
      } else if (!isDeepStrictEqual(m, d)) {
        const mk = Object.keys((m ?? {}) as object).sort();
        const dk = Object.keys((d ?? {}) as object).sort();
        problems.push(isDeepStrictEqual(mk, dk) ? `${key} differs` : `${key}: memory has [${mk.join(', ')}], disk [${dk.join(', ')}]`);
      }
    }
    const memoryIndexes: ArrayIndexes = new WeakMap();
    const diskIndexes: ArrayIndexes = new WeakMap();
    for (const t of touched) {
      if (!isDeepStrictEqual(valueAt(memory, t, memoryIndexes).value, valueAt(disk, t, diskIndexes).value)) problems.push(`${t.join('/')} differs`);
    }
    if (problems.length) {
      throw new StateError(`state verification failed after a write: ${problems.join('; ')} (a commit did not name everything it changed)`);
    }
  }
}
