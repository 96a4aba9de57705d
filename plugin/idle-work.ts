// Kernel work that Docker need not wait for, run while the plugin is idle.
//
// Some kernel operations cost an RCU grace period (10-30 ms here): deleting a veth, attaching a
// tcx program, replacing an entry of a map of maps. Most also hold the rtnl lock while they wait,
// so any netlink request made meanwhile (a route for the next container) waits too. Docker's calls
// for one container come in bursts (RequestAddress, CreateEndpoint, Join, ProgramExternal-
// Connectivity within a few ms, then nothing while runc starts the process), so this work is
// queued and run in small steps in the gaps: a step starts only when no plugin call is in flight
// and none has arrived for `quietMs`, and the event loop gets a turn between steps.
//
// Nothing queued here may be needed for correctness after a crash: every task finishes a change
// whose acknowledged part is already in the state, and the start-up reconciliation finishes it
// (or undoes it) if the daemon dies first.

import { performance } from 'node:perf_hooks';
import type { Logger } from './log.js';

export interface IdleTask {
  /** For logs and `membrane status`. */
  name: string;
  /**
   * Steps run in order, each on its own turn of the event loop; each should take one grace period
   * or less. A step that returns a promise (work on a worker thread) holds the queue until it
   * settles, but not the event loop: Docker's calls are served meanwhile.
   */
  steps: Array<() => unknown>;
  /** Called when a step throws: the remaining steps are dropped, and this undoes what the done ones made. */
  abort?: () => void;
  /**
   * How long the line must have been quiet before a step of this task starts (never less than
   * the queue's). Work that can wait (refilling prepared endpoints) asks for longer gaps, which are
   * the ones in which Docker is starting a container rather than between two calls of one start.
   */
  quietMs?: number;
}

export class IdleWork {
  private readonly queue: IdleTask[] = [];
  private inFlight = 0;
  private lastActivity = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  /** Tasks finished and steps that threw, since start (for `membrane status`). */
  done = 0;
  failed = 0;
  /**
   * Wall time spent in steps, and the longest step. A synchronous step blocks calls arriving
   * meanwhile; an asynchronous one (on a worker thread) blocks only what needs the same kernel lock.
   */
  busyMs = 0;
  longestStepMs = 0;

  constructor(private readonly log: Logger, private readonly quietMs = 20) {}

  /** A plugin call began: no step starts until it has finished and the line has been quiet. */
  requestStarted(): void {
    this.inFlight++;
    this.lastActivity = performance.now();
  }

  requestFinished(): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    this.lastActivity = performance.now();
    this.schedule();
  }

  get pending(): number {
    return this.queue.length;
  }

  add(task: IdleTask): void {
    this.queue.push(task);
    this.schedule();
  }

  /** Runs everything queued now, idle or not (shutdown, tests). */
  async drain(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.running) await this.current;
    while (this.queue.length) await this.step(this.queue[0]!);
  }

  /** The step in flight, if it is asynchronous. */
  private current: Promise<void> | undefined;

  private idleFor(): number {
    return this.inFlight > 0 ? -1 : performance.now() - this.lastActivity;
  }

  private quietFor(task: IdleTask): number {
    return Math.max(task.quietMs ?? 0, this.quietMs);
  }

  /** The first queued task whose quiet time has passed. */
  private ready(): IdleTask | undefined {
    const idle = this.idleFor();
    return idle < 0 ? undefined : this.queue.find((task) => idle >= this.quietFor(task));
  }

  private schedule(): void {
    if (this.running || !this.queue.length) return;
    // Recomputed on every change: a new task or a finished call may make an earlier start due.
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const idle = this.idleFor();
    const shortest = Math.min(...this.queue.map((task) => this.quietFor(task)));
    const wait = idle < 0 ? shortest : Math.max(0, shortest - idle);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const task = this.ready();
      if (!task) {
        this.schedule();
        return;
      }
      this.running = true;
      this.current = this.step(task).finally(() => {
        this.running = false;
        this.current = undefined;
        this.schedule();
      });
    }, wait);
    // Pending idle work never keeps the process alive: shutdown drains it explicitly.
    this.timer.unref();
  }

  private async step(task: IdleTask): Promise<void> {
    const step = task.steps.shift();
    if (step) {
      const started = performance.now();
      try {
        await step();
      } catch (err) {
        this.failed++;
        task.steps.length = 0;
        this.log.warn('background kernel work failed; the next start-up reconciliation repairs what is left', { task: task.name, error: String(err) });
        try {
          task.abort?.();
        } catch (abortError) {
          this.log.warn('undoing failed background work failed', { task: task.name, error: String(abortError) });
        }
      }
      const ms = performance.now() - started;
      this.log.debug('background step', { task: task.name, ms: Math.round(ms * 1000) / 1000 });
      this.busyMs += ms;
      if (ms > this.longestStepMs) this.longestStepMs = ms;
    }
    if (!task.steps.length) {
      const i = this.queue.indexOf(task);
      if (i >= 0) this.queue.splice(i, 1);
      this.done++;
    }
  }
}
