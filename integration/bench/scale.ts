// Section 8: many containers on one host (issue #9 item 5). Brings the host to each population
// level in turn (10, then 1,000 running containers spread over several Membrane networks, each
// with a label identity and a standing policy), and at each level measures, with the same method:
//
//   - `docker run --rm IMAGE true` on the run's Membrane network and on Docker's bridge, interleaved
//     (the bridge shows how much dockerd itself slows down with the population);
//   - long-running probe containers started one by one: `docker run -d` time, the daemon's own
//     Join -> identity applied samples for exactly those probes, and the plugin calls' handler time
//     (CreateEndpoint, Join, RequestAddress, DeleteEndpoint) taken while the level was measured;
//   - one policy rule that selects every population container added and removed: the API round
//     trip and the daemon's regeneration time;
//   - the daemon's (and dockerd's) memory and CPU at rest;
//   - daemon restarts (SIGTERM, and kill -9): spawn to the API answering, and to the Docker
//     reconcile having run.
//
// Bounded: the fill has its own time limit (a level not reached is measured at what was reached and
// says so), every docker call has a timeout. Everything carries the run's labels; the section removes
// its containers in batches and its networks itself, and run.ts's label sweep is the backstop.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { IMAGE, apiRequest, run, sleep } from '../harness.js';
import { timedDockerRun } from './docker-run.js';
import { median, ratio, round, summarize, timingSummary, type TimingSummary } from './stats.js';

export interface ScaleBenchOptions {
  /** Population levels in containers, ascending; the first is the baseline the others are compared with. */
  levels: number[];
  /** Membrane networks the population is spread over (each gets Membrane's default /24 and a /64). */
  networks: number;
  /** Parallel `docker run -d` while filling. */
  concurrency: number;
  /** Interleaved `docker run --rm` rounds per level (Membrane and bridge each once per round). */
  rounds: number;
  /** Long-running probe containers per level, started one at a time (Join -> identity samples). */
  probes: number;
  /** Add + delete pairs of the all-population rule per level. */
  policyChanges: number;
  /** Restarts of each kind (SIGTERM, SIGKILL) per level. */
  restarts: number;
  /** Window over which CPU at rest is taken. */
  restSeconds: number;
  /** Time limit for filling up to the largest level. */
  fillSeconds: number;
}

export function scaleOptions(smoke: boolean): ScaleBenchOptions {
  return smoke
    ? { levels: [3, 8], networks: 2, concurrency: 4, rounds: 2, probes: 2, policyChanges: 2, restarts: 1, restSeconds: 2, fillSeconds: 120 }
    : { levels: [10, 1000], networks: 5, concurrency: 6, rounds: 10, probes: 10, policyChanges: 10, restarts: 3, restSeconds: 10, fillSeconds: 900 };
}

export interface ScaleContext {
  runId: string;
  labels: string[];
  /** The run's Membrane and bridge networks (section 1's), where `docker run --rm` is timed. */
  networks: { membrane: string; bridge: string };
  aborted: () => boolean;
  daemonPid: () => number | undefined;
  /** Stops the run's daemon (SIGTERM or SIGKILL) and starts it again; ms from spawn to its API answering. */
  restartDaemon: (signal: 'SIGTERM' | 'SIGKILL') => Promise<{ stopMs: number; readyMs: number }>;
}

interface ProcessAtRest {
  pid: number;
  rssMiB: number;
  /** Peak resident set since the process started (VmHWM). */
  peakRssMiB: number;
  /** User + system CPU over the window, in % of one CPU. */
  cpuPercent: number;
}

interface RestartTiming {
  /** Spawn to the API answering (the kernel reconciled, the plugin socket listening). */
  ready: TimingSummary;
  /** Spawn to the Docker reconcile having run (labels and containers caught up). */
  dockerReconciled: TimingSummary;
  /** Stopping the old daemon (SIGTERM: until it exited). */
  stop: TimingSummary;
  /** Endpoints the restarted daemon reported. */
  endpoints: number[];
  /** Where each start's time went, as the daemon reports it (lastKernelSync.phaseMs). */
  phaseMs: Record<string, number>[];
}

interface CallTiming {
  n: number;
  p50Ms: number;
  p99Ms: number;
}

export interface ScaleLevel {
  target: number;
  /** Population containers running when the level was measured. */
  running: number;
  /** Endpoints the daemon had (population + the bench's own). */
  endpoints: number;
  dockerRun: {
    membrane: TimingSummary;
    bridge: TimingSummary;
    /** Median of per-round membrane/bridge. */
    pairedMembraneOverBridge: number;
    failures: string[];
  };
  /** `docker run -d` of the probes (Membrane, one population network). */
  probeRun: TimingSummary;
  /** Daemon samples: Join answered -> the container's identity applied, for the probes. */
  joinToIdentity: TimingSummary & { p99Ms: number };
  /** Plugin handler time of the calls Docker made during this level's measurements. */
  calls: Record<string, CallTiming>;
  policy: {
    addApi: TimingSummary;
    deleteApi: TimingSummary;
    addDaemon: TimingSummary;
    deleteDaemon: TimingSummary;
    /** Map entries written per add (the change touches every population endpoint). */
    written: number[];
  };
  atRest: { daemon: ProcessAtRest | null; dockerd: ProcessAtRest | null; afterRestartRssMiB: number | null };
  restart: { graceful: RestartTiming; kill9: RestartTiming };
  seconds: number;
}

export interface ScaleResult {
  note: string;
  settings: ScaleBenchOptions;
  levels: ScaleLevel[];
  fill: { started: number; failed: number; seconds: number; perSecond: number; errors: string[]; reachedLargest: boolean };
  /** Largest level over the baseline (1.0 = no change). */
  ratios: {
    membraneDockerRun: number;
    bridgeDockerRun: number;
    joinToIdentityP99: number;
    joinToIdentityP50: number;
    policyAddDaemon: number;
    policyAddApi: number;
  };
  errors: string[];
  cleanup: { seconds: number; problems: string[] };
}

const SCALE_CALLS = ['NetworkDriver.CreateEndpoint', 'NetworkDriver.Join', 'IpamDriver.RequestAddress', 'NetworkDriver.DeleteEndpoint'] as const;
/** Label groups of the population: this many identities, each allowed from the next by a standing rule. */
const GROUPS = 20;
const POLICY_PORT = 8080;
const CHANGE_PORT = 9090;

interface StatusSamples {
  pid: number;
  endpoints: number;
  dockerCalls: Record<string, { count: number; recentMs?: number[] }>;
  policy: { joinToIdentityMs: { total: number; recentMs?: number[] }; lastRegeneration: { revision: number; ms: number; written: number } | null };
  lastDockerReconcile: unknown;
  lastKernelSync?: { phaseMs?: Record<string, number> } | null;
}

async function statusWithSamples(): Promise<StatusSamples> {
  return (await apiRequest<StatusSamples>('GET', '/v1/status?samples=1', undefined, 30_000)).body;
}

/** The samples taken between two status reads (the daemon keeps a bounded recent window and a total). */
function newSamples(before: { count: number; recent: number[] }, after: { count: number; recent: number[] }): number[] {
  const added = after.count - before.count;
  return added > 0 ? after.recent.slice(Math.max(0, after.recent.length - added)) : [];
}

function callSamples(s: StatusSamples, method: string): { count: number; recent: number[] } {
  const c = s.dockerCalls[method];
  return { count: c?.count ?? 0, recent: c?.recentMs ?? [] };
}

function identitySamples(s: StatusSamples): { count: number; recent: number[] } {
  return { count: s.policy.joinToIdentityMs.total, recent: s.policy.joinToIdentityMs.recentMs ?? [] };
}

function cpuTicks(pid: number): number {
  // Fields after the command (which may hold spaces): utime and stime are fields 14 and 15.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Memory and CPU of processes over one quiet window (USER_HZ is 100 on Linux). */
async function atRest(pids: (number | undefined)[], seconds: number): Promise<(ProcessAtRest | null)[]> {
  const live = pids.map((pid) => (pid && fs.existsSync(`/proc/${pid}`) ? pid : undefined));
  const before = live.map((pid) => (pid ? cpuTicks(pid) : 0));
  const started = performance.now();
  await sleep(seconds * 1000);
  const elapsed = (performance.now() - started) / 1000;
  return live.map((pid, i) => {
    if (!pid || !fs.existsSync(`/proc/${pid}`)) return null;
    return {
      pid, rssMiB: round(statusKiB(pid, 'VmRSS') / 1024, 1), peakRssMiB: round(statusKiB(pid, 'VmHWM') / 1024, 1),
      cpuPercent: round(((cpuTicks(pid) - before[i]!) / 100 / elapsed) * 100, 2),
    };
  });
}

async function dockerdPid(): Promise<number | undefined> {
  const r = await run('pidof', ['dockerd'], { allowFail: true });
  const pid = Number(r.stdout.trim().split(' ')[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

function groupLabel(i: number): string {
  return `pop-${i % GROUPS}`;
}

/** Standing policy: group k accepts TCP 8080 from group k+1 (so every endpoint compiles real rules). */
function standingRules(runId: string): Record<string, unknown>[] {
  return Array.from({ length: GROUPS }, (_, k) => ({
    labels: [`bench-run=${runId}`, 'bench-set=scale-standing'],
    endpointSelector: { matchLabels: { 'bench-scale': runId, app: groupLabel(k) } },
    ingress: [{ fromEndpoints: [{ matchLabels: { app: groupLabel(k + 1) } }], toPorts: [{ ports: [{ port: String(POLICY_PORT), protocol: 'TCP' }] }] }],
  }));
}

/** The measured change: a rule selecting the whole population (the widest change there is). */
function changeRule(runId: string): Record<string, unknown> {
  return {
    labels: [`bench-run=${runId}`, 'bench-set=scale-change'],
    endpointSelector: { matchLabels: { 'bench-scale': runId } },
    ingress: [{ fromEndpoints: [{ matchLabels: { app: groupLabel(0) } }], toPorts: [{ ports: [{ port: String(CHANGE_PORT), protocol: 'TCP' }] }] }],
  };
}

class Population {
  readonly names: string[] = [];
  started = 0;
  failed = 0;
  readonly errors: string[] = [];
  fillMs = 0;

  constructor(private readonly runId: string, private readonly labels: string[], private readonly networks: string[]) {}

  private labelArgs(extra: string[]): string[] {
    return [...this.labels, `bench-scale=${this.runId}`, ...extra].flatMap((l) => ['--label', l]);
  }

  /** Starts containers until `target` run, `concurrency` at a time, until `deadline` (performance.now()). */
  async fillTo(target: number, concurrency: number, deadline: number, aborted: () => boolean): Promise<void> {
    const started = performance.now();
    let consecutiveFailures = 0;
    const worker = async (): Promise<void> => {
      while (this.names.length < target && performance.now() < deadline && !aborted() && consecutiveFailures < 20) {
        const i = this.names.length;
        const name = `mbbench-${this.runId}-p${i}`;
        this.names.push(name);
        const r = await run('docker', ['run', '-d', '--name', name, ...this.labelArgs([`app=${groupLabel(i)}`]),
          '--network', this.networks[i % this.networks.length]!, IMAGE, 'sleep', '3600'], { allowFail: true, timeoutMs: 120_000 });
        if (r.code === 0) {
          this.started++;
          consecutiveFailures = 0;
        } else {
          this.failed++;
          consecutiveFailures++;
          if (this.errors.length < 5) this.errors.push(`${name}: ${(r.stderr.trim() || `exit ${r.code}`).slice(0, 200)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, () => worker()));
    this.fillMs += performance.now() - started;
  }

  async running(): Promise<number> {
    const r = await run('docker', ['ps', '-q', '--filter', `label=bench-scale=${this.runId}`, '--filter', 'status=running'], { allowFail: true, timeoutMs: 60_000 });
    return r.stdout.split('\n').filter(Boolean).length;
  }

  /** One probe: `docker run -d` on the first network, timed. */
  async probe(k: number): Promise<{ name: string; ms: number; error?: string }> {
    const name = `mbbench-${this.runId}-probe${k}-${randomBytes(2).toString('hex')}`;
    const started = performance.now();
    const r = await run('docker', ['run', '-d', '--name', name, ...this.labelArgs(['app=probe']), '--network', this.networks[0]!, IMAGE, 'sleep', '3600'],
      { allowFail: true, timeoutMs: 120_000 });
    const ms = performance.now() - started;
    return r.code === 0 ? { name, ms } : { name, ms, error: (r.stderr.trim() || `exit ${r.code}`).slice(0, 200) };
  }
}

/**
 * Removes containers in batches, one `docker rm -f` of 50 at a time. (Two at a time left Docker
 * 20.10 counting endpoints on networks that had none: "has active endpoints" until dockerd restarted.)
 */
async function removeContainers(names: string[], problems: string[]): Promise<void> {
  const batches: string[][] = [];
  for (let i = 0; i < names.length; i += 50) batches.push(names.slice(i, i + 50));
  const worker = async () => {
    for (let b = batches.shift(); b; b = batches.shift()) {
      const r = await run('docker', ['rm', '-f', ...b], { allowFail: true, timeoutMs: 300_000 });
      // A name that never became a container (its docker run failed) is not a problem.
      const refused = r.stderr.split('\n').filter((l) => l.trim() && !/No such container/.test(l));
      if (r.code !== 0 && refused.length) problems.push(`docker rm: ${refused.slice(0, 3).join(' / ').slice(0, 300)}`);
    }
  };
  await worker();
}

function emptyRestart(): RestartTiming {
  return { ready: timingSummary([], 1), dockerReconciled: timingSummary([], 1), stop: timingSummary([], 1), endpoints: [], phaseMs: [] };
}

async function measureRestarts(ctx: ScaleContext, signal: 'SIGTERM' | 'SIGKILL', count: number, errors: string[]): Promise<RestartTiming> {
  const ready: number[] = [];
  const reconciled: number[] = [];
  const stop: number[] = [];
  const endpoints: number[] = [];
  const phaseMs: Record<string, number>[] = [];
  for (let i = 0; i < count && !ctx.aborted(); i++) {
    try {
      const r = await ctx.restartDaemon(signal);
      ready.push(r.readyMs);
      stop.push(r.stopMs);
      const since = performance.now() - r.readyMs;
      // The Docker reconcile runs after the API listens; bounded wait for its report.
      const deadline = performance.now() + 60_000;
      for (;;) {
        const s = await statusWithSamples();
        if (s.lastDockerReconcile) {
          reconciled.push(performance.now() - since);
          endpoints.push(s.endpoints);
          if (s.lastKernelSync?.phaseMs) phaseMs.push(s.lastKernelSync.phaseMs);
          break;
        }
        if (performance.now() > deadline) {
          errors.push(`restart (${signal}): no Docker reconcile within 60 s`);
          break;
        }
        await sleep(20);
      }
    } catch (err) {
      errors.push(`restart (${signal}): ${err instanceof Error ? err.message : String(err)}`);
      break;
    }
  }
  return { ready: timingSummary(ready, 1), dockerReconciled: timingSummary(reconciled, 1), stop: timingSummary(stop, 1), endpoints, phaseMs };
}

/** One policy change, its revision waited for: the API round trip and the daemon's own regeneration time. */
async function timedPolicyChange(method: 'POST' | 'DELETE', urlPath: string, body?: string): Promise<{ api: number; daemon: number; written: number }> {
  const answer = await apiRequest<{ revision: number }>(method, urlPath, body);
  await apiRequest('GET', `/v1/policy/wait?revision=${answer.body.revision}&timeout=120000`);
  const report = (await statusWithSamples()).policy.lastRegeneration;
  return { api: answer.ms, daemon: report && report.revision === answer.body.revision ? report.ms : NaN, written: report?.written ?? 0 };
}

async function measureLevel(o: ScaleBenchOptions, ctx: ScaleContext, pop: Population, target: number, errors: string[]): Promise<ScaleLevel> {
  const started = performance.now();
  const before = await statusWithSamples();

  // docker run --rm, interleaved with the bridge (order alternating per round).
  const samples = { membrane: [] as number[], bridge: [] as number[] };
  const paired: number[] = [];
  const failures: string[] = [];
  for (let round = 0; round < o.rounds && !ctx.aborted(); round++) {
    const order: ('membrane' | 'bridge')[] = round % 2 ? ['bridge', 'membrane'] : ['membrane', 'bridge'];
    const thisRound: Partial<Record<'membrane' | 'bridge', number>> = {};
    for (const key of order) {
      const r = await timedDockerRun(ctx.networks[key], ctx.labels);
      if (r.error) failures.push(`${key}: ${r.error}`);
      else thisRound[key] = r.ms;
    }
    if (thisRound.membrane !== undefined) samples.membrane.push(thisRound.membrane);
    if (thisRound.bridge !== undefined) samples.bridge.push(thisRound.bridge);
    if (thisRound.membrane !== undefined && thisRound.bridge !== undefined) paired.push(thisRound.membrane / thisRound.bridge);
  }

  // Probes, one at a time; their identities, then they go (the level stays what it was).
  const probeMs: number[] = [];
  const probeNames: string[] = [];
  const identityBefore = identitySamples(await statusWithSamples());
  for (let k = 0; k < o.probes && !ctx.aborted(); k++) {
    const p = await pop.probe(k);
    probeNames.push(p.name);
    if (p.error) failures.push(`probe: ${p.error}`);
    else probeMs.push(p.ms);
  }
  let identityAfter = identitySamples(await statusWithSamples());
  const identityDeadline = performance.now() + 30_000;
  while (identityAfter.count - identityBefore.count < probeMs.length && performance.now() < identityDeadline) {
    await sleep(100);
    identityAfter = identitySamples(await statusWithSamples());
  }
  const joinToIdentity = newSamples(identityBefore, identityAfter);
  if (joinToIdentity.length < probeMs.length) errors.push(`level ${target}: ${joinToIdentity.length} of ${probeMs.length} probes got their identity within 30 s`);
  const afterRuns = await statusWithSamples();
  const cleanupProblems: string[] = [];
  await removeContainers(probeNames, cleanupProblems);
  errors.push(...cleanupProblems);

  // The widest policy change: add and remove a rule selecting every population container.
  const addApi: number[] = [];
  const deleteApi: number[] = [];
  const addDaemon: number[] = [];
  const deleteDaemon: number[] = [];
  const written: number[] = [];
  for (let k = 0; k < o.policyChanges && !ctx.aborted(); k++) {
    const add = await timedPolicyChange('POST', '/v1/policy', JSON.stringify([changeRule(ctx.runId)]));
    addApi.push(add.api);
    addDaemon.push(add.daemon);
    written.push(add.written);
    const del = await timedPolicyChange('DELETE', `/v1/policy?labels=${encodeURIComponent(`bench-run=${ctx.runId},bench-set=scale-change`)}`);
    deleteApi.push(del.api);
    deleteDaemon.push(del.daemon);
  }

  const running = await pop.running();
  await sleep(2000);
  const [daemon, dockerd] = await atRest([ctx.daemonPid(), await dockerdPid()], o.restSeconds);
  const endpoints = (await statusWithSamples()).endpoints;

  const graceful = o.restarts ? await measureRestarts(ctx, 'SIGTERM', o.restarts, errors) : emptyRestart();
  const kill9 = o.restarts ? await measureRestarts(ctx, 'SIGKILL', o.restarts, errors) : emptyRestart();
  let afterRestartRssMiB: number | null = null;
  const pid = ctx.daemonPid();
  if (o.restarts && pid) {
    await sleep(2000);
    afterRestartRssMiB = round(statusKiB(pid, 'VmRSS') / 1024, 1);
  }

  const calls: Record<string, CallTiming> = {};
  for (const m of SCALE_CALLS) {
    const s = newSamples(callSamples(before, m), callSamples(afterRuns, m));
    const sum = summarize(s);
    calls[m] = { n: sum.n, p50Ms: round(sum.median, 3), p99Ms: round(sum.p99, 3) };
  }
  const identitySummary = summarize(joinToIdentity);
  return {
    target, running, endpoints,
    dockerRun: {
      membrane: timingSummary(samples.membrane, 1), bridge: timingSummary(samples.bridge, 1),
      pairedMembraneOverBridge: round(median(paired), 3), failures: [...new Set(failures)].slice(0, 5),
    },
    probeRun: timingSummary(probeMs, 1),
    joinToIdentity: { ...timingSummary(joinToIdentity, 2), p99Ms: round(identitySummary.p99, 2) },
    calls,
    policy: {
      addApi: timingSummary(addApi, 2), deleteApi: timingSummary(deleteApi, 2),
      addDaemon: timingSummary(addDaemon, 2), deleteDaemon: timingSummary(deleteDaemon, 2), written,
    },
    atRest: { daemon, dockerd, afterRestartRssMiB },
    restart: { graceful, kill9 },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

export async function benchScale(o: ScaleBenchOptions, ctx: ScaleContext): Promise<ScaleResult> {
  const levels = [...new Set(o.levels)].sort((a, b) => a - b);
  const errors: string[] = [];
  const result: ScaleResult = {
    note: `Population: long-running containers (\`${IMAGE} sleep 3600\`) spread round-robin over ${o.networks} Membrane networks ` +
      `(--ipv6, Membrane's default pools), labelled app=pop-0 … pop-${GROUPS - 1} (${GROUPS} identities), started ${o.concurrency} at a time; ` +
      `a standing policy of ${GROUPS} rules (group k accepts TCP ${POLICY_PORT} from group k+1). At each level, with the same method: ` +
      `${o.rounds} interleaved rounds of \`docker run --rm IMAGE true\` on the run's Membrane network and on Docker's bridge; ` +
      `${o.probes} probe containers started one at a time (docker run -d, then removed), their Join → identity applied as the daemon ` +
      'measured it (the clock starts when Join is answered and stops when the identity from the container\'s labels is in the maps), ' +
      'and the plugin handler time of the calls Docker made meanwhile; ' +
      `${o.policyChanges} add/delete pairs of one rule selecting the whole population (API round trip, and the daemon's regeneration); ` +
      `memory (VmRSS, VmHWM = peak) and CPU over ${o.restSeconds} s at rest; ${o.restarts} restarts each by SIGTERM and by kill -9 ` +
      '(spawn → API answering, which is after the kernel reconcile; spawn → the Docker reconcile reported).',
    settings: o, levels: [],
    fill: { started: 0, failed: 0, seconds: 0, perSecond: NaN, errors: [], reachedLargest: false },
    ratios: { membraneDockerRun: NaN, bridgeDockerRun: NaN, joinToIdentityP99: NaN, joinToIdentityP50: NaN, policyAddDaemon: NaN, policyAddApi: NaN },
    errors, cleanup: { seconds: 0, problems: [] },
  };
  const networkNames = Array.from({ length: o.networks }, (_, k) => `mbbench-${ctx.runId}-s${k}`);
  const labelArgs = ctx.labels.flatMap((l) => ['--label', l]);
  const pop = new Population(ctx.runId, ctx.labels, networkNames);
  const made: string[] = [];
  try {
    for (const name of networkNames) {
      await run('docker', ['network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', '--ipv6', ...labelArgs, name], { timeoutMs: 60_000 });
      made.push(name);
    }
    await apiRequest('POST', '/v1/policy', JSON.stringify(standingRules(ctx.runId)));
    const fillDeadline = performance.now() + o.fillSeconds * 1000;
    for (const target of levels) {
      if (ctx.aborted()) break;
      console.error(`bench: scale: filling to ${target} containers`);
      await pop.fillTo(target, o.concurrency, fillDeadline, ctx.aborted);
      if (pop.started < target) errors.push(`level ${target}: only ${pop.started} containers started (${pop.failed} failed, fill limit ${o.fillSeconds} s)`);
      console.error(`bench: scale: measuring at ${pop.started} containers`);
      result.levels.push(await measureLevel(o, ctx, pop, target, errors));
      if (pop.started < target) break;
    }
    result.fill = {
      started: pop.started, failed: pop.failed, seconds: round(pop.fillMs / 1000, 1), perSecond: round(pop.started / (pop.fillMs / 1000), 2),
      errors: pop.errors, reachedLargest: pop.started >= levels[levels.length - 1]!,
    };
    const base = result.levels[0];
    const top = result.levels[result.levels.length - 1];
    if (base && top && top !== base) {
      result.ratios = {
        membraneDockerRun: round(ratio(top.dockerRun.membrane.p50Ms, base.dockerRun.membrane.p50Ms), 3),
        bridgeDockerRun: round(ratio(top.dockerRun.bridge.p50Ms, base.dockerRun.bridge.p50Ms), 3),
        joinToIdentityP99: round(ratio(top.joinToIdentity.p99Ms, base.joinToIdentity.p99Ms), 3),
        joinToIdentityP50: round(ratio(top.joinToIdentity.p50Ms, base.joinToIdentity.p50Ms), 3),
        policyAddDaemon: round(ratio(top.policy.addDaemon.p50Ms, base.policy.addDaemon.p50Ms), 3),
        policyAddApi: round(ratio(top.policy.addApi.p50Ms, base.policy.addApi.p50Ms), 3),
      };
    }
  } catch (err) {
    errors.push(err instanceof Error ? err.message : String(err));
  } finally {
    const cleanupStarted = performance.now();
    console.error(`bench: scale: removing ${pop.names.length} containers`);
    await removeContainers(pop.names, result.cleanup.problems);
    await apiRequest('DELETE', `/v1/policy?labels=${encodeURIComponent(`bench-run=${ctx.runId}`)}`).catch((err: unknown) => {
      result.cleanup.problems.push(`policy delete: ${err instanceof Error ? err.message : String(err)}`);
    });
    for (const name of made) {
      const r = await run('docker', ['network', 'rm', name], { allowFail: true, timeoutMs: 60_000 });
      if (r.code !== 0) result.cleanup.problems.push(`docker network rm ${name}: ${r.stderr.trim().slice(0, 200)}`);
    }
    result.cleanup.seconds = round((performance.now() - cleanupStarted) / 1000, 1);
  }
  return result;
}

// ---- report ------------------------------------------------------------------------------------

function cell(t: TimingSummary, digits = 1): string {
  return t.n ? `${t.p50Ms.toFixed(digits)} (${t.minMs.toFixed(digits)}–${t.maxMs.toFixed(digits)})` : '—';
}

function num(v: number | null | undefined, digits = 1): string {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '—';
}

export function renderScale(s: ScaleResult | null, whyMissing: string): string[] {
  const out: string[] = ['## 8. Many containers on one host', ''];
  if (!s) return [...out, whyMissing, ''];
  out.push(s.note, '');
  out.push(`Fill: ${s.fill.started} containers started (${s.fill.failed} failed) in ${num(s.fill.seconds)} s, ` +
    `${num(s.fill.perSecond, 2)} per second${s.fill.reachedLargest ? '' : '; the largest level was NOT reached'}. ` +
    `Cleanup: ${num(s.cleanup.seconds)} s.`, '');
  if (!s.levels.length) return [...out, '(no level measured, see errors)', ''];
  const base = s.levels[0]!;
  const top = s.levels[s.levels.length - 1]!;
  const header = ['p50 ms (min–max) unless said', ...s.levels.map((l) => `${l.running} running`), `${top.running} / ${base.running}`];
  const row = (label: string, pick: (l: ScaleLevel) => string, r?: number) => [label, ...s.levels.map(pick), r === undefined ? '' : num(r, 3)];
  const call = (m: string) => (l: ScaleLevel) => (l.calls[m]?.n ? `${num(l.calls[m]!.p50Ms, 2)} / ${num(l.calls[m]!.p99Ms, 2)} (n ${l.calls[m]!.n})` : '—');
  const restart = (t: RestartTiming) => `${cell(t.ready, 0)}; Docker reconciled ${num(t.dockerReconciled.p50Ms, 0)}`;
  const rest = (p: ProcessAtRest | null) => (p ? `${num(p.rssMiB)} MiB (peak ${num(p.peakRssMiB)}), CPU ${num(p.cpuPercent, 2)} %` : '—');
  const rows = [
    row('`docker run --rm IMAGE true`, Membrane', (l) => cell(l.dockerRun.membrane), s.ratios.membraneDockerRun),
    row('`docker run --rm IMAGE true`, bridge', (l) => cell(l.dockerRun.bridge), s.ratios.bridgeDockerRun),
    row('Membrane / bridge (median of per-round ratios)', (l) => num(l.dockerRun.pairedMembraneOverBridge, 3)),
    row('`docker run -d` probe, Membrane', (l) => cell(l.probeRun)),
    row('Join → identity applied (daemon), p50', (l) => cell(l.joinToIdentity, 2), s.ratios.joinToIdentityP50),
    row('Join → identity applied (daemon), p99', (l) => num(l.joinToIdentity.p99Ms, 2), s.ratios.joinToIdentityP99),
    ...SCALE_CALLS.map((m) => row(`${m.split('.')[1]} handler p50 / p99`, call(m))),
    row('policy: add a rule selecting the population, daemon', (l) => cell(l.policy.addDaemon, 2), s.ratios.policyAddDaemon),
    row('policy: add, API round trip', (l) => cell(l.policy.addApi, 2), s.ratios.policyAddApi),
    row('policy: delete it, daemon', (l) => cell(l.policy.deleteDaemon, 2)),
    row('policy: delete, API round trip', (l) => cell(l.policy.deleteApi, 2)),
    row('policy: map entries written per add', (l) => (l.policy.written.length ? String(median(l.policy.written)) : '—')),
    row('Membrane daemon at rest', (l) => rest(l.atRest.daemon)),
    row('Membrane daemon RSS 2 s after its last restart', (l) => (l.atRest.afterRestartRssMiB === null ? '—' : `${num(l.atRest.afterRestartRssMiB)} MiB`)),
    row('dockerd at rest', (l) => rest(l.atRest.dockerd)),
    row('restart (SIGTERM): spawn → API ready', (l) => restart(l.restart.graceful)),
    row('restart (kill -9): spawn → API ready', (l) => restart(l.restart.kill9)),
    row('SIGTERM → daemon exited', (l) => cell(l.restart.graceful.stop, 0)),
  ];
  out.push(`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`), '');
  for (const l of s.levels) {
    const last = l.restart.graceful.phaseMs.at(-1);
    if (last) {
      out.push(`Start-up at ${l.running} containers, last SIGTERM restart, ms per step: ` +
        `${Object.entries(last).map(([k, v]) => `${k} ${num(v, 0)}`).join(', ')}.`, '');
    }
  }
  const failures = s.levels.flatMap((l) => l.dockerRun.failures.map((f) => `level ${l.target}: ${f}`));
  if (failures.length) out.push(...failures.map((f) => `- ${f}`), '');
  return out;
}
