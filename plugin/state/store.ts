// The one place that writes /var/lib/membrane.
//
// Why a JSON snapshot with atomic rename instead of an embedded database: Membrane's state is
// small (networks, pools, the addresses actually handed out, endpoints: a few hundred bytes per
// container), it is read whole at start, and every change must be durable before Docker hears
// "ok". A snapshot written to a temporary file, fsync'd, renamed over the old one and followed by
// an fsync of the directory is atomic on every Linux filesystem: after a crash or kill -9 the
// file holds either the old or the new state, never a mix. Changes that arrive while a write is
// in flight are grouped into the next write (group commit), so 100 concurrent Docker calls cost a
// handful of fsyncs, not 100. An embedded database would add a native dependency for no gain at
// this size; if state ever grows past a few MB, an append-only log is the next step.

import fs from 'node:fs';
import path from 'node:path';
import { StateError } from '../errors.js';

export class JsonStore<T> {
  readonly file: string;
  private pending: Promise<void> | null = null;
  private writing: Promise<void> | null = null;
  private snapshot: () => T;
  /** Number of snapshots written since start (reported by /v1/status). */
  writes = 0;

  constructor(file: string, snapshot: () => T) {
    this.file = file;
    this.snapshot = snapshot;
  }

  /** Reads the last committed state, or undefined when none exists yet. */
  load(): T | undefined {
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    // A leftover temporary file is a write that never completed: the rename did not happen, so
    // the state it carried was never acknowledged to anyone.
    fs.rmSync(`${this.file}.tmp`, { force: true });
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StateError(`cannot read state file ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new StateError(`state file ${this.file} is not valid JSON (${(err as Error).message}); ` +
        'restore it from a backup, or move it away to start with empty state', { cause: err });
    }
  }

  /**
   * Makes the current in-memory state durable. Resolves once a snapshot taken after this call
   * has reached the disk. Callers acknowledge Docker only after this resolves.
   */
  commit(): Promise<void> {
    if (this.pending) return this.pending;
    // The snapshot is taken when the previous write has finished, so it includes every change
    // made before this call and any that arrive while we wait (group commit). The `.then`
    // callback runs asynchronously, so `this.pending` is set before it can be cleared.
    const previous = this.writing ? this.writing.catch(() => undefined) : Promise.resolve();
    const pending = previous.then(async () => {
      this.pending = null;
      const writing = this.writeSnapshot();
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

  private async writeSnapshot(): Promise<void> {
    const data = JSON.stringify(this.snapshot(), null, 1);
    const tmp = `${this.file}.tmp`;
    try {
      const handle = await fs.promises.open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(data);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fs.promises.rename(tmp, this.file);
      const dir = await fs.promises.open(path.dirname(this.file), 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
      this.writes++;
    } catch (err) {
      throw new StateError(`cannot write state file ${this.file}: ${(err as Error).message}; ` +
        'check free space and permissions of the state directory', { cause: err });
    }
  }
}
