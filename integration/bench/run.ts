// Membrane benchmark harness (control plane). Measures, side by side in one run, and reports as
// ratios; it never passes or fails on timing.
//
//   node dist/integration/bench/run.js [--smoke] [--out DIR] [--rounds N] [--cycles N]
//                                      [--datapath-rounds N] [--policy-rounds N] [--lb-rounds N] [--lb-pinning MODE]
//                                      [--only SECTION,...] [--scale-levels N,N]
//                                      [--wait-max-seconds S] [--log-level LEVEL]
//
//   1. `docker run --rm IMAGE true` wall time on a Membrane network vs Docker's bridge driver vs
//      `--network none` (the floor), interleaved per round with a rotating order (recipe R8, R0).
//   2. Plugin call latency: server-side handler time from /v1/status, and client-side round trips
//      of raw POSTs to the plugin socket replaying an endpoint life cycle on a network made by
//      hand (fake 64-hex ids), torn down completely afterwards.
//   3. IPAM allocations per second in-process (AddressAllocator) at 10 % and 99 % fullness.
//   4. Datapath (datapath.ts): container-to-container TCP throughput (iperf3) and round-trip latency
//      p50/p99 (sockperf ping-pong) on a Membrane network vs Docker's bridge vs a bare veth pair
//      between two namespaces, interleaved rounds, plus the Membrane programs' run time per packet
//      under live traffic (kernel.bpf_stats_enabled, restored afterwards).
//   5. Per-packet cost of from_container with BPF_PROG_TEST_RUN (established TCP flow, redirect to a
//      local endpoint and to the stack) against a no-op program.
//   6. Policy at scale (policy.ts): throughput and latency with 0 / 1,000 / 10,000 entries in a
//      Membrane server's policy map vs the same number of non-matching iptables rules on a bridge
//      pair's path, interleaved rounds; importing 10,000 rules and one change at that size (both
//      systems); and the per-new-flow verdict cost in BPF with 0 .. 100k entries (BPF_PROG_TEST_RUN).
//   7. Service load balancer at scale (lb.ts): new connections per second and p50/p99 time to first
//      byte through a service (crr.c) with 1 / 1,000 / 10,000 / 30,000 services on the host, Membrane's
//      socket and per-packet paths (flipped at run time in mb_lb_config) vs kube-proxy-shaped iptables
//      DNAT rules and an nftables verdict map on a bridge pair, with direct connections as floors;
//      adding one service at 10,000 (and the time to the first connection through it), the LB maps'
//      memory, and Maglev table build time and disruption (in-process).
//   8. Many containers on one host (scale.ts): at 10 and at 1,000 running containers on several
//      Membrane networks, `docker run` (Membrane and bridge), Join -> identity, plugin calls, one
//      policy change over the whole population, the daemon's memory and CPU at rest, and restarts.
//   --only runs some sections: docker-run, plugin-latency, ipam, datapath, program-cost, policy, lb, scale.
//   --scale-levels 10,1000 sets section 8's population levels (the first is the baseline).
//   An environment header.
//
// Writes DIR/bench.json and DIR/bench.md (DIR defaults to integration/bench/results/<timestamp>)
// and prints the markdown. Starts and stops its own Membrane daemon, but first waits (bounded) while
// any other Membrane daemon or managed plugin runs on this machine: only one may run per network
// namespace and it may belong to somebody else. Every container and network it creates carries the
// labels membrane.test=1 and membrane.bench=<run id> and is removed in `finally`, also on SIGINT;
// so are the namespaces and veths of section 4 (by name), and section 6's rules, iptables chain
// (DOCKER-USER is put back as it was) and pinned tries, and section 7's services, iptables chains,
// nftables table, guard route and mb_lb_config flags.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { API_SOCKET, CLI, IMAGE, ROOT, TEST_LABEL, apiGet, run, sleep } from '../harness.js';
import {
  BENCH_IMAGE, benchDatapathLive, benchProgramCost, datapathOptions, type DatapathLiveResult, type DatapathVariantKey, type ProgCostResult,
  type VariantRatios,
} from './datapath.js';
import { timedDockerRun } from './docker-run.js';
import { runIpamBench, type IpamResult } from './ipam.js';
import { benchPolicyLive, benchPolicyNewFlow, policyOptions, renderPolicy, type PolicyLiveResult, type PolicyNewFlowResult } from './policy.js';
import { benchScale, renderScale, scaleOptions, type ScaleResult } from './scale.js';
import { LB_PINNINGS, benchLbLive, benchMaglev, lbOptions, renderLb, type LbLiveResult, type LbMaglevResult, type LbPinning } from './lb.js';
import { fmt, median, ratio, round, summarize, type Summary } from './stats.js';

const PLUGIN_SOCKET = '/run/docker/plugins/membrane.sock';
const PLUGIN_ACCEPT = 'application/vnd.docker.plugins.v1.2+json';
/** The four calls the report is about; others are kept in the JSON. */
export const KEY_CALLS = [
  'NetworkDriver.CreateEndpoint', 'NetworkDriver.Join', 'IpamDriver.RequestAddress', 'NetworkDriver.DeleteEndpoint',
] as const;

// ---- options -----------------------------------------------------------------------------------

export interface BenchOptions {
  smoke: boolean;
  outDir: string;
  rounds: number;
  warmupRounds: number;
  cycles: number;
  ipamRepetitions: number;
  ipamPairs: number;
  /** Interleaved rounds of the datapath section (each: iperf3 and sockperf per variant). */
  datapathRounds: number;
  /** Interleaved rounds of the policy section (each: every size, iperf3 and sockperf on both systems). */
  policyRounds: number;
  /** Interleaved rounds per size of the load-balancer section (each: every variant once). */
  lbRounds: number;
  /** CPUs of the load-balancer section's client and servers (lb.ts). */
  lbPinning: LbPinning;
  /** Population levels of the scale section (ascending; the first is the baseline). */
  scaleLevels: number[];
  /** Sections to run (all when null). */
  only: Section[] | null;
  waitMaxSeconds: number;
  logLevel: string;
}

export const SECTIONS = ['docker-run', 'plugin-latency', 'ipam', 'datapath', 'program-cost', 'policy', 'lb', 'scale'] as const;
export type Section = typeof SECTIONS[number];
/** Sections that need the run's own daemon (and its Docker networks). */
const DAEMON_SECTIONS: readonly Section[] = ['docker-run', 'plugin-latency', 'datapath', 'policy', 'lb', 'scale'];

function usage(): string {
  return 'usage: node dist/integration/bench/run.js [--smoke] [--out DIR] [--rounds N] [--cycles N] ' +
    `[--datapath-rounds N] [--policy-rounds N] [--lb-rounds N] [--lb-pinning same|split|none] [--only ${SECTIONS.join(',')}] [--scale-levels N,N] [--wait-max-seconds S] [--log-level LEVEL]`;
}

export function wants(options: Pick<BenchOptions, 'only'>, section: Section): boolean {
  return !options.only || options.only.includes(section);
}

export function parseArgs(argv: string[]): BenchOptions {
  const smoke = argv.includes('--smoke');
  const stamp = new Date().toISOString().replace(/:/g, '-');
  const options: BenchOptions = {
    smoke,
    outDir: path.join(ROOT, 'integration', 'bench', 'results', stamp),
    rounds: smoke ? 3 : 30,
    warmupRounds: 1,
    cycles: smoke ? 20 : 500,
    ipamRepetitions: smoke ? 2 : 7,
    ipamPairs: smoke ? 2_000 : 50_000,
    datapathRounds: datapathOptions(smoke).rounds,
    policyRounds: policyOptions(smoke).rounds,
    lbRounds: lbOptions(smoke).rounds,
    lbPinning: 'same',
    scaleLevels: scaleOptions(smoke).levels,
    only: null,
    waitMaxSeconds: 900,
    logLevel: 'info',
  };
  const positiveInt = (flag: string, value: string | undefined): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer\n${usage()}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    switch (arg) {
      case '--smoke': break;
      case '--out': options.outDir = path.resolve(argv[++i] ?? ''); break;
      case '--rounds': options.rounds = positiveInt(arg, argv[++i]); break;
      case '--cycles': options.cycles = positiveInt(arg, argv[++i]); break;
      case '--datapath-rounds': options.datapathRounds = positiveInt(arg, argv[++i]); break;
      case '--policy-rounds': options.policyRounds = positiveInt(arg, argv[++i]); break;
      case '--lb-rounds': options.lbRounds = positiveInt(arg, argv[++i]); break;
      case '--lb-pinning': {
        const mode = argv[++i] ?? '';
        if (!(LB_PINNINGS as readonly string[]).includes(mode)) throw new Error(`--lb-pinning takes ${LB_PINNINGS.join(', ')}\n${usage()}`);
        options.lbPinning = mode as LbPinning;
        break;
      }
      case '--scale-levels': {
        const levels = (argv[++i] ?? '').split(',').map((x) => positiveInt(arg, x));
        if (levels.length < 2 || levels.some((n, k) => k > 0 && n <= levels[k - 1]!)) {
          throw new Error(`--scale-levels takes two or more ascending container counts, e.g. 10,1000\n${usage()}`);
        }
        options.scaleLevels = levels;
        break;
      }
      case '--only': {
        const names = (argv[++i] ?? '').split(',').map((x) => x.trim()).filter(Boolean);
        const unknown = names.filter((x) => !(SECTIONS as readonly string[]).includes(x));
        if (!names.length || unknown.length) throw new Error(`--only takes sections among ${SECTIONS.join(', ')}${unknown.length ? ` (not ${unknown.join(', ')})` : ''}\n${usage()}`);
        options.only = names as Section[];
        break;
      }
      case '--wait-max-seconds': options.waitMaxSeconds = Number(argv[++i]); break;
      case '--log-level': options.logLevel = argv[++i] ?? 'info'; break;
      case '-h': case '--help': console.log(usage()); process.exit(0); break;
      default: throw new Error(`unknown argument ${arg}\n${usage()}`);
    }
  }
  if (!Number.isFinite(options.waitMaxSeconds) || options.waitMaxSeconds < 0) throw new Error(`--wait-max-seconds needs a number\n${usage()}`);
  return options;
}

// ---- cancellation ------------------------------------------------------------------------------

let aborted = false;
function checkAborted(): void {
  if (aborted) throw new Error('interrupted');
}

// ---- environment -------------------------------------------------------------------------------

export interface Environment {
  date: string;
  smoke: boolean;
  kernel: string;
  uname: string;
  docker: { server: string; client: string };
  node: string;
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  iptables: string;
  membraneCommit: string;
  image: string;
  imageId: string;
  benchImage: string;
  /** Sysctls that shape the bridge variant and the programs' cost. */
  sysctls: Record<string, string>;
  daemonLogLevel: string;
  runId: string;
}

async function text(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { allowFail: true, timeoutMs: 20_000 });
  return (r.stdout.trim() || r.stderr.trim() || `(${cmd} failed)`).split('\n')[0]!;
}

async function environment(options: BenchOptions, runId: string): Promise<Environment> {
  const commit = await text('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = (await run('git', ['-C', ROOT, 'status', '--porcelain'], { allowFail: true })).stdout.trim() !== '';
  return {
    date: new Date().toISOString(),
    smoke: options.smoke,
    kernel: os.release(),
    uname: await text('uname', ['-srvm']),
    docker: {
      server: await text('docker', ['version', '--format', '{{.Server.Version}}']),
      client: await text('docker', ['version', '--format', '{{.Client.Version}}']),
    },
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: round(os.totalmem() / 2 ** 30, 1),
    iptables: await text('iptables', ['-V']),
    membraneCommit: `${commit}${dirty ? ' (working tree modified)' : ''}`,
    image: IMAGE,
    imageId: await text('docker', ['image', 'inspect', '-f', '{{.Id}}', IMAGE]),
    benchImage: BENCH_IMAGE,
    sysctls: Object.fromEntries(['net/bridge/bridge-nf-call-iptables', 'net/bridge/bridge-nf-call-ip6tables', 'kernel/bpf_stats_enabled',
      'net/core/bpf_jit_enable'].map((k) => {
      let v = 'absent';
      try {
        v = fs.readFileSync(`/proc/sys/${k}`, 'utf8').trim();
      } catch {
        // not in this kernel
      }
      return [k.replaceAll('/', '.'), v];
    })),
    daemonLogLevel: options.logLevel,
    runId,
  };
}

// ---- the daemon --------------------------------------------------------------------------------

/** Is the namespace-wide single-daemon lock (an abstract unix socket) held by some process? */
function namespaceLockHeld(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ path: '\0membrane-daemon' });
    const done = (held: boolean) => {
      socket.destroy();
      resolve(held);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Why we must not start a daemon now (somebody else's is running), or undefined. */
async function otherDaemon(): Promise<string | undefined> {
  const pg = await run('pgrep', ['-af', 'main.js daemon'], { allowFail: true });
  const procs = pg.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  if (procs.length) return `running daemon process(es): ${procs.join('; ')}`;
  const plugins = await run('docker', ['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'], { allowFail: true });
  const enabled = plugins.stdout.split('\n').filter((l) => /membrane/i.test(l) && /\btrue$/.test(l.trim()));
  if (enabled.length) return `enabled managed plugin(s): ${enabled.join('; ')}`;
  if (await namespaceLockHeld()) return 'some process holds the Membrane namespace lock';
  return undefined;
}

async function waitForMachine(maxSeconds: number): Promise<void> {
  const deadline = performance.now() + maxSeconds * 1000;
  for (let attempt = 0; attempt < 1000; attempt++) {
    const why = await otherDaemon();
    if (!why) return;
    if (performance.now() + 30_000 > deadline) {
      throw new Error(`another Membrane daemon is in use and did not go away within ${maxSeconds} s (${why}); not touching it`);
    }
    console.error(`bench: waiting 30 s, ${why}`);
    for (let i = 0; i < 30 && !aborted; i++) await sleep(1000);
    checkAborted();
  }
}

/** A timer that does not keep the process alive (a pending race loser must not delay exit). */
function unrefSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Like the harness's MembraneProcess, but with a chosen log level (the harness forces debug). */
class BenchDaemon {
  child: ChildProcess | undefined;
  readonly stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-state-'));
  readonly logFile = path.join(this.stateDir, 'daemon.log');

  constructor(private readonly logLevel: string) {}

  tail(lines = 20): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  async start(timeoutMs = 20_000): Promise<void> {
    const log = fs.openSync(this.logFile, 'a');
    const child = spawn(process.execPath, [CLI, 'daemon'], {
      env: { ...process.env, MEMBRANE_STATE_DIR: this.stateDir, MEMBRANE_LOG_LEVEL: this.logLevel },
      stdio: ['ignore', log, log],
    });
    this.child = child;
    fs.closeSync(log);
    const deadline = performance.now() + timeoutMs;
    // Polled often: section 8 reports the time from spawn to this answer.
    while (performance.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`membrane daemon exited (${child.exitCode ?? child.signalCode}): ${this.tail()}`);
      }
      try {
        const status = await apiGet<{ pid?: number }>('/v1/status');
        // The API socket must be ours, not a daemon somebody started in the meantime.
        if (status.pid === child.pid) return;
      } catch {
        // not up yet
      }
      await sleep(10);
    }
    await this.stop();
    throw new Error(`membrane daemon did not answer within ${timeoutMs / 1000} s: ${this.tail()}`);
  }

  /** Stops the daemon with `signal` (SIGKILL after 20 s) and starts it again, both timed. */
  async restart(signal: 'SIGTERM' | 'SIGKILL'): Promise<{ stopMs: number; readyMs: number }> {
    const stopStarted = performance.now();
    const child = this.child;
    if (child && this.running()) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill(signal);
      await Promise.race([exited, unrefSleep(20_000)]);
      if (this.running()) {
        child.kill('SIGKILL');
        await Promise.race([exited, unrefSleep(5_000)]);
      }
    }
    const stopMs = performance.now() - stopStarted;
    const started = performance.now();
    // A start with many endpoints is what section 8 measures: a slow one is a result, not a failure.
    await this.start(180_000);
    return { stopMs, readyMs: performance.now() - started };
  }

  running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await Promise.race([exited, unrefSleep(15_000)]);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await Promise.race([exited, unrefSleep(5_000)]);
    }
  }

  /** Keeps the log next to the results, removes the temporary state directory. */
  dispose(outDir?: string): void {
    try {
      if (outDir) fs.copyFileSync(this.logFile, path.join(outDir, 'daemon.log'));
    } catch {
      // no log
    }
    fs.rmSync(this.stateDir, { recursive: true, force: true });
  }
}

async function startDaemonWhenFree(options: BenchOptions): Promise<BenchDaemon> {
  const deadline = performance.now() + options.waitMaxSeconds * 1000;
  for (let attempt = 0; attempt < 30; attempt++) {
    await waitForMachine(Math.max(0, (deadline - performance.now()) / 1000));
    const daemon = new BenchDaemon(options.logLevel);
    try {
      await daemon.start();
      return daemon;
    } catch (err) {
      await daemon.stop();
      daemon.dispose();
      // Lost a race with somebody else's daemon: wait again (bounded by the same deadline).
      if (!/another Membrane daemon/.test(String(err)) || performance.now() > deadline) throw err;
    }
  }
  throw new Error('could not start a Membrane daemon');
}

interface DaemonStatus {
  pid: number;
  networks: number;
  endpoints: number;
  pools: number;
  dockerCalls: Record<string, { count: number; errors: number; p50Ms: number; p99Ms: number }>;
}

// ---- 1. docker run -----------------------------------------------------------------------------

interface VariantResult extends Summary {
  network: string;
  failures: number;
  errors: string[];
}

export interface DockerRunResult {
  command: string;
  bridgeVariant: string;
  rounds: number;
  warmupRounds: number;
  roundsCompleted: number;
  variants: { membrane: VariantResult; bridge: VariantResult; none: VariantResult };
  ratios: {
    membraneOverBridge: number;
    membraneOverNone: number;
    bridgeOverNone: number;
    /** Median over rounds of the per-round membrane/bridge ratio. */
    pairedMembraneOverBridge: number;
  };
  deltasMs: { membraneMinusBridge: number; membraneMinusNone: number; bridgeMinusNone: number };
  samplesMs: { membrane: number[]; bridge: number[]; none: number[] };
}

type VariantKey = 'membrane' | 'bridge' | 'none';

async function createBridge(name: string, labels: string[]): Promise<string> {
  const labelArgs = labels.flatMap((l) => ['--label', l]);
  const v6 = await run('docker', ['network', 'create', ...labelArgs, '--ipv6', '--subnet', 'fd00:b::/64', name], { allowFail: true });
  if (v6.code === 0) return 'user-defined bridge, --ipv6 --subnet fd00:b::/64 (IPv4 subnet picked by Docker)';
  await run('docker', ['network', 'create', ...labelArgs, name]);
  return `plain user-defined bridge (IPv4 only; --ipv6 --subnet fd00:b::/64 failed: ${v6.stderr.trim().slice(0, 200)})`;
}

interface BenchNetworks {
  membrane: string;
  bridge: string;
  bridgeVariant: string;
}

/** The two Docker networks sections 1 and 4 share (removed with the run's other resources). */
async function createNetworks(names: { membrane: string; bridge: string }, labels: string[]): Promise<BenchNetworks> {
  const labelArgs = labels.flatMap((l) => ['--label', l]);
  await run('docker', ['network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', '--ipv6', ...labelArgs, names.membrane]);
  const bridgeVariant = await createBridge(names.bridge, labels);
  return { ...names, bridgeVariant };
}

async function benchDockerRun(options: BenchOptions, names: BenchNetworks, labels: string[]): Promise<DockerRunResult> {
  const bridgeVariant = names.bridgeVariant;
  const networks: Record<VariantKey, string> = { membrane: names.membrane, bridge: names.bridge, none: 'none' };
  const keys: VariantKey[] = ['membrane', 'bridge', 'none'];
  const samples: Record<VariantKey, number[]> = { membrane: [], bridge: [], none: [] };
  const errors: Record<VariantKey, string[]> = { membrane: [], bridge: [], none: [] };
  const paired: number[] = [];
  const deadline = performance.now() + (options.smoke ? 3 : 8) * 60_000;
  let completed = 0;
  const total = options.warmupRounds + options.rounds;
  for (let round = 0; round < total; round++) {
    checkAborted();
    if (performance.now() > deadline) {
      console.error(`bench: docker run section hit its time limit after ${completed} rounds`);
      break;
    }
    const order = keys.map((_, i) => keys[(i + round) % keys.length]!);
    const thisRound: Partial<Record<VariantKey, number>> = {};
    for (const key of order) {
      const r = await timedDockerRun(networks[key], labels);
      if (round < options.warmupRounds) continue;
      if (r.error) errors[key].push(r.error);
      else thisRound[key] = r.ms;
    }
    if (round < options.warmupRounds) continue;
    for (const key of keys) if (thisRound[key] !== undefined) samples[key].push(thisRound[key]!);
    if (thisRound.membrane !== undefined && thisRound.bridge !== undefined) paired.push(thisRound.membrane / thisRound.bridge);
    completed++;
  }
  const variant = (key: VariantKey): VariantResult => {
    const s = summarize(samples[key]);
    return {
      network: networks[key], failures: errors[key].length, errors: [...new Set(errors[key])].slice(0, 5),
      n: s.n, median: round(s.median, 1), p90: round(s.p90, 1), p99: round(s.p99, 1), min: round(s.min, 1),
      max: round(s.max, 1), mean: round(s.mean, 1), iqr: round(s.iqr, 1),
    };
  };
  const v = { membrane: variant('membrane'), bridge: variant('bridge'), none: variant('none') };
  return {
    command: `docker run --rm --network NET ${IMAGE} true`,
    bridgeVariant, rounds: options.rounds, warmupRounds: options.warmupRounds, roundsCompleted: completed,
    variants: v,
    ratios: {
      membraneOverBridge: round(ratio(v.membrane.median, v.bridge.median)),
      membraneOverNone: round(ratio(v.membrane.median, v.none.median)),
      bridgeOverNone: round(ratio(v.bridge.median, v.none.median)),
      pairedMembraneOverBridge: round(median(paired)),
    },
    deltasMs: {
      membraneMinusBridge: round(v.membrane.median - v.bridge.median, 1),
      membraneMinusNone: round(v.membrane.median - v.none.median, 1),
      bridgeMinusNone: round(v.bridge.median - v.none.median, 1),
    },
    samplesMs: {
      membrane: samples.membrane.map((x) => round(x, 1)), bridge: samples.bridge.map((x) => round(x, 1)),
      none: samples.none.map((x) => round(x, 1)),
    },
  };
}

// ---- 2. plugin call latency --------------------------------------------------------------------

class PluginClient {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

  constructor(private readonly socketPath: string) {}

  call(method: string, body: unknown): Promise<{ status: number; body: Record<string, unknown>; ms: number }> {
    const payload = `${JSON.stringify(body)}\n`;
    return new Promise((resolve, reject) => {
      const started = performance.now();
      const req = http.request({
        socketPath: this.socketPath, path: `/${method}`, method: 'POST', agent: this.agent, timeout: 30_000,
        headers: { Accept: PLUGIN_ACCEPT, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const ms = performance.now() - started;
          const raw = Buffer.concat(chunks).toString('utf8');
          let parsed: Record<string, unknown>;
          try {
            parsed = JSON.parse(raw) as Record<string, unknown>;
          } catch {
            parsed = { Err: `non-JSON answer: ${raw.slice(0, 200)}` };
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, ms });
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`${method}: no answer within 30 s`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /** Like call(), but throws on a plugin error. */
  async must(method: string, body: unknown): Promise<{ body: Record<string, unknown>; ms: number }> {
    const r = await this.call(method, body);
    if (r.status !== 200 || (typeof r.body.Err === 'string' && r.body.Err !== '')) {
      throw new Error(`${method} failed (${r.status}): ${String(r.body.Err)}`);
    }
    return r;
  }

  close(): void {
    this.agent.destroy();
  }
}

export interface CallLatency {
  n: number;
  p50Ms: number;
  p99Ms: number;
  medianMs: number;
  maxMs: number;
}

export interface PluginLatencyResult {
  serverSide: {
    note: string;
    afterDockerRuns: DaemonStatus['dockerCalls'];
    afterReplay: DaemonStatus['dockerCalls'];
  };
  clientSide: {
    note: string;
    cycles: number;
    cyclesCompleted: number;
    failures: number;
    errors: string[];
    calls: Record<string, CallLatency>;
    cycleTotal: CallLatency;
  };
  leakCheck: {
    before: { networks: number; endpoints: number; pools: number };
    after: { networks: number; endpoints: number; pools: number };
    teardownErrors: string[];
    clean: boolean;
  };
}

const hex64 = (): string => randomBytes(32).toString('hex');
const plain = (cidr: string): string => cidr.split('/')[0]!;

function latency(values: number[]): CallLatency {
  const s = summarize(values);
  return { n: s.n, p50Ms: round(s.median, 3), p99Ms: round(s.p99, 3), medianMs: round(s.median, 3), maxMs: round(s.max, 3) };
}

/** Replays Docker's endpoint life cycle on a hand-made network; everything made is torn down. */
async function replayCycles(options: BenchOptions): Promise<Omit<PluginLatencyResult, 'serverSide' | 'leakCheck'> & { teardownErrors: string[] }> {
  const client = new PluginClient(PLUGIN_SOCKET);
  const times: Record<string, number[]> = {};
  const record = (method: string, ms: number) => (times[method] ??= []).push(ms);
  const cycleTotals: number[] = [];
  const errors: string[] = [];
  const teardownErrors: string[] = [];
  const networkId = hex64();
  const pools: string[] = [];
  const addresses = new Map<string, string>(); // address -> pool id
  const endpoints = new Set<string>();
  let networkCreated = false;
  let completed = 0;
  let failures = 0;
  try {
    // Network set-up, in Docker's order: pools, gateways, CreateNetwork (not timed).
    const v4 = await client.must('IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false });
    pools.push(String(v4.body.PoolID));
    const v6 = await client.must('IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: true });
    pools.push(String(v6.body.PoolID));
    const gateways: string[] = [];
    for (const poolId of pools) {
      const gw = await client.must('IpamDriver.RequestAddress', { PoolID: poolId, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } });
      gateways.push(String(gw.body.Address));
      addresses.set(plain(String(gw.body.Address)), poolId);
    }
    await client.must('NetworkDriver.CreateNetwork', {
      NetworkID: networkId,
      Options: { 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': {} },
      IPv4Data: [{ AddressSpace: 'membrane-local', Gateway: gateways[0], Pool: String(v4.body.Pool) }],
      IPv6Data: [{ AddressSpace: 'membrane-local', Gateway: gateways[1], Pool: String(v6.body.Pool) }],
    });
    networkCreated = true;

    const deadline = performance.now() + (options.smoke ? 60_000 : 5 * 60_000);
    for (let i = 0; i < options.cycles; i++) {
      checkAborted();
      if (performance.now() > deadline) {
        errors.push(`time limit reached after ${completed} cycles`);
        break;
      }
      if (failures >= 10) {
        errors.push('stopped after 10 failed cycles');
        break;
      }
      try {
        // A no-op call first: the bare HTTP-over-UDS round trip of the plugin server.
        record('NetworkDriver.GetCapabilities', (await client.must('NetworkDriver.GetCapabilities', {})).ms);
        const endpointId = hex64();
        let total = 0;
        const timed = async (method: string, body: unknown) => {
          const r = await client.must(method, body);
          record(method, r.ms);
          total += r.ms;
          return r.body;
        };
        const a4 = String((await timed('IpamDriver.RequestAddress', { PoolID: pools[0], Address: '', Options: null })).Address);
        addresses.set(plain(a4), pools[0]!);
        const a6 = String((await timed('IpamDriver.RequestAddress', { PoolID: pools[1], Address: '', Options: null })).Address);
        addresses.set(plain(a6), pools[1]!);
        endpoints.add(endpointId);
        await timed('NetworkDriver.CreateEndpoint', {
          NetworkID: networkId, EndpointID: endpointId, Interface: { Address: a4, AddressIPv6: a6, MacAddress: '' }, Options: {},
        });
        await timed('NetworkDriver.Join', { NetworkID: networkId, EndpointID: endpointId, SandboxKey: '/var/run/docker/netns/membrane-bench', Options: {} });
        await timed('NetworkDriver.Leave', { NetworkID: networkId, EndpointID: endpointId });
        await timed('NetworkDriver.DeleteEndpoint', { NetworkID: networkId, EndpointID: endpointId });
        endpoints.delete(endpointId);
        await timed('IpamDriver.ReleaseAddress', { PoolID: pools[0], Address: plain(a4) });
        addresses.delete(plain(a4));
        await timed('IpamDriver.ReleaseAddress', { PoolID: pools[1], Address: plain(a6) });
        addresses.delete(plain(a6));
        cycleTotals.push(total);
        completed++;
      } catch (err) {
        failures++;
        if (errors.length < 5) errors.push(String(err instanceof Error ? err.message : err).slice(0, 300));
      }
    }
  } finally {
    // Tear down in Docker's order; keep going on errors and report them.
    const attempt = async (method: string, body: unknown) => {
      try {
        await client.must(method, body);
      } catch (err) {
        teardownErrors.push(String(err instanceof Error ? err.message : err).slice(0, 300));
      }
    };
    for (const endpointId of endpoints) {
      await attempt('NetworkDriver.Leave', { NetworkID: networkId, EndpointID: endpointId });
      await attempt('NetworkDriver.DeleteEndpoint', { NetworkID: networkId, EndpointID: endpointId });
    }
    if (networkCreated) await attempt('NetworkDriver.DeleteNetwork', { NetworkID: networkId });
    for (const [address, poolId] of addresses) await attempt('IpamDriver.ReleaseAddress', { PoolID: poolId, Address: address });
    for (const poolId of pools) await attempt('IpamDriver.ReleasePool', { PoolID: poolId });
    client.close();
  }
  const calls: Record<string, CallLatency> = {};
  for (const [method, values] of Object.entries(times)) calls[method] = latency(values);
  return {
    clientSide: {
      note: 'Client-side round trip of one raw HTTP POST on the plugin unix socket (keep-alive connection), ' +
        'replaying RequestAddress(v4, v6) + CreateEndpoint + Join + Leave + DeleteEndpoint + ReleaseAddress(v4, v6) ' +
        'on a network created directly on the plugin with fake 64-hex ids. NetworkDriver.GetCapabilities is a no-op ' +
        'probe (bare HTTP/UDS + express overhead). The IpamDriver.* rows mix the v4 and v6 calls.',
      cycles: options.cycles, cyclesCompleted: completed, failures, errors,
      calls, cycleTotal: latency(cycleTotals),
    },
    teardownErrors,
  };
}

async function benchPluginLatency(options: BenchOptions, afterDockerRuns: DaemonStatus): Promise<PluginLatencyResult> {
  const before = { networks: afterDockerRuns.networks, endpoints: afterDockerRuns.endpoints, pools: afterDockerRuns.pools };
  const replay = await replayCycles(options);
  const status = await apiGet<DaemonStatus>('/v1/status');
  const after = { networks: status.networks, endpoints: status.endpoints, pools: status.pools };
  return {
    serverSide: {
      note: 'Server-side handler time inside the plugin (/v1/status dockerCalls: count and errors since daemon start; ' +
        'p50/p99 over the last 1024 calls of each method). afterDockerRuns = the calls dockerd made for the docker run ' +
        'section (and its network create); afterReplay = the same window after the raw replay, so dominated by it.',
      afterDockerRuns: afterDockerRuns.dockerCalls,
      afterReplay: status.dockerCalls,
    },
    clientSide: replay.clientSide,
    leakCheck: {
      before, after, teardownErrors: replay.teardownErrors,
      clean: replay.teardownErrors.length === 0 && before.networks === after.networks &&
        before.endpoints === after.endpoints && before.pools === after.pools,
    },
  };
}

// ---- report ------------------------------------------------------------------------------------

export interface BenchResult {
  schema: 'membrane-bench/1';
  environment: Environment;
  settings: Omit<BenchOptions, 'outDir'> & { outDir: string };
  dockerRun: DockerRunResult | null;
  pluginLatency: PluginLatencyResult | null;
  ipam: { note: string; results: IpamResult[] } | null;
  /** Section 4: throughput and latency, Membrane vs bridge vs bare veth, and live bpf_stats. */
  datapath: DatapathLiveResult | null;
  /** Section 5: BPF_PROG_TEST_RUN ns per packet. */
  programCost: ProgCostResult | null;
  /** Section 6: live throughput/latency and control plane with N policy entries vs N iptables rules. */
  policy: PolicyLiveResult | null;
  /** Section 6: per-new-flow verdict cost in BPF with N entries. */
  policyNewFlow: PolicyNewFlowResult | null;
  /** Section 7: connections through a service with N services (Membrane socket/per-packet, iptables, nftables), control plane, memory. */
  lb: LbLiveResult | null;
  /** Section 7: Maglev table build time and disruption, in-process. */
  lbMaglev: LbMaglevResult | null;
  /** Section 8: 10 against 1,000 containers on one host. */
  scale: ScaleResult | null;
  errors: string[];
  durationSeconds: number;
  /** Wall time per phase (setup includes waiting for another daemon to go away). */
  phaseSeconds: Record<string, number>;
}

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function renderMarkdown(r: BenchResult): string {
  const e = r.environment;
  const out: string[] = [];
  out.push(`# Membrane benchmark${e.smoke ? ' (SMOKE: tiny N, numbers not meaningful)' : ''}`, '');
  out.push(table(['Environment', ''], [
    ['date', e.date], ['smoke', String(e.smoke)], ['kernel', e.kernel], ['uname', e.uname],
    ['docker', `server ${e.docker.server}, client ${e.docker.client}`], ['node', e.node],
    ['CPUs', `${e.cpus} × ${e.cpuModel}`], ['memory', `${e.memoryGiB} GiB`], ['iptables', e.iptables],
    ['membrane', e.membraneCommit], ['image', `${e.image} (${e.imageId.slice(0, 19)})`],
    ['daemon log level', e.daemonLogLevel],
    ['duration', `${r.durationSeconds} s (${Object.entries(r.phaseSeconds).map(([k, v]) => `${k} ${v}`).join(', ')})`],
  ]), '');

  const d = r.dockerRun;
  out.push('## 1. `docker run --rm IMAGE true` wall time', '');
  if (d) {
    out.push(`Interleaved rounds, order rotated each round; ${d.roundsCompleted}/${d.rounds} rounds after ${d.warmupRounds} discarded warm-up round(s). ` +
      `Bridge variant: ${d.bridgeVariant}.`, '');
    const row = (label: string, v: VariantResult, none: number): string[] =>
      [label, String(v.n), fmt(v.median), fmt(v.p90), fmt(v.min), fmt(v.max), fmt(v.iqr), fmt(v.median - none), String(v.failures)];
    out.push(table(['Network', 'n', 'median ms', 'p90 ms', 'min ms', 'max ms', 'IQR ms', 'Δ median vs none ms', 'failed'], [
      row('Membrane (`-d membrane --ipam-driver membrane --ipv6`)', d.variants.membrane, d.variants.none.median),
      row('Docker bridge', d.variants.bridge, d.variants.none.median),
      row('`--network none` (floor)', d.variants.none, d.variants.none.median),
    ]), '');
    out.push(`**Ratio membrane/bridge (medians): ${fmt(d.ratios.membraneOverBridge, 3)}**; median of per-round ratios ${fmt(d.ratios.pairedMembraneOverBridge, 3)}; ` +
      `membrane/none ${fmt(d.ratios.membraneOverNone, 3)}; bridge/none ${fmt(d.ratios.bridgeOverNone, 3)}; ` +
      `membrane − bridge ${fmt(d.deltasMs.membraneMinusBridge)} ms.`, '');
    for (const [k, v] of Object.entries(d.variants)) if (v.errors.length) out.push(`- ${k} errors: ${v.errors.join(' / ')}`);
  } else {
    out.push(missing(r, 'docker-run'), '');
  }

  const p = r.pluginLatency;
  out.push('## 2. Plugin call latency', '');
  if (p) {
    out.push('Server = handler time inside the plugin as it reports in /v1/status (p50/p99 over the last ≤1024 calls), for the calls dockerd made ' +
      'during section 1. Client = round trip of raw POSTs on /run/docker/plugins/membrane.sock (keep-alive), ' +
      `${p.clientSide.cyclesCompleted}/${p.clientSide.cycles} replayed cycles (${p.clientSide.failures} failed). ` +
      'IpamDriver.* rows mix v4 and v6 requests.', '');
    const methods = [...KEY_CALLS, 'NetworkDriver.Leave', 'IpamDriver.ReleaseAddress', 'NetworkDriver.GetCapabilities'];
    out.push(table(['Call', 'server p50 ms', 'server p99 ms', 'server calls (errors)', 'client p50 ms', 'client p99 ms', 'client n'],
      [...methods.map((m) => {
        const s = p.serverSide.afterDockerRuns[m];
        const c = p.clientSide.calls[m];
        return [m + (m.endsWith('GetCapabilities') ? ' (no-op probe)' : ''), fmt(s?.p50Ms, 3), fmt(s?.p99Ms, 3),
          s ? `${s.count} (${s.errors})` : '—', fmt(c?.p50Ms, 3), fmt(c?.p99Ms, 3), c ? String(c.n) : '—'];
      }), ['whole cycle (8 calls, client)', '', '', '', fmt(p.clientSide.cycleTotal.p50Ms, 3), fmt(p.clientSide.cycleTotal.p99Ms, 3), String(p.clientSide.cycleTotal.n)]]), '');
    const sr = p.serverSide.afterReplay;
    out.push(`Server-side after the replay (window dominated by it): ${KEY_CALLS.map((m) => `${m.split('.')[1]} p50 ${fmt(sr[m]?.p50Ms, 3)} / p99 ${fmt(sr[m]?.p99Ms, 3)} ms`).join('; ')}.`, '');
    out.push(`Leak check: daemon networks/endpoints/pools before replay ${p.leakCheck.before.networks}/${p.leakCheck.before.endpoints}/${p.leakCheck.before.pools}, ` +
      `after ${p.leakCheck.after.networks}/${p.leakCheck.after.endpoints}/${p.leakCheck.after.pools}; ` +
      `${p.leakCheck.clean ? 'clean' : `NOT clean: ${p.leakCheck.teardownErrors.join(' / ')}`}.`, '');
    if (p.clientSide.errors.length) out.push(`- replay errors: ${p.clientSide.errors.join(' / ')}`, '');
  } else {
    out.push(missing(r, 'plugin-latency'), '');
  }

  out.push('## 3. IPAM allocations per second (in-process AddressAllocator)', '');
  if (r.ipam) {
    out.push(r.ipam.note, '');
    out.push(table(['Pool', 'fullness', 'allocated', 'intervals', 'allocs/s (median)', 'µs per alloc+release', 'reps × pairs', 'explicit fill allocs/s'],
      r.ipam.results.map((x) => [x.name, `${fmt(x.fullness * 100, 2)} %`, String(x.allocated), String(x.intervals),
        Math.round(x.allocsPerSec).toLocaleString('en-US'), fmt(x.usPerPair, 2), `${x.repetitions} × ${Math.min(...x.pairsPerRepetition)}`,
        Math.round(x.fillAllocsPerSec).toLocaleString('en-US')])), '');
  } else {
    out.push(missing(r, 'ipam'), '');
  }
  out.push(...renderDatapath(r.datapath, missing(r, 'datapath')), ...renderProgramCost(r.programCost, r.datapath, missing(r, 'program-cost')));
  out.push(...renderPolicy(r.policy, r.policyNewFlow, !wants(r.settings, 'policy')));
  out.push(...renderLb(r.lb, r.lbMaglev, !wants(r.settings, 'lb')));
  out.push(...renderScale(r.scale, missing(r, 'scale')));
  if (r.errors.length) out.push('## Errors', '', ...r.errors.map((x) => `- ${x}`), '');
  return out.join('\n');
}

const VARIANT_LABELS: Record<DatapathVariantKey, string> = {
  membrane: 'Membrane (BPF datapath)',
  bridge: 'Docker bridge',
  veth: 'bare veth pair (floor)',
};

function ratioLine(what: string, x: VariantRatios): string {
  return `**${what}: membrane/bridge ${fmt(x.membraneOverBridge, 3)}, membrane/bare veth ${fmt(x.membraneOverVeth, 3)}** ` +
    `(bridge/bare veth ${fmt(x.bridgeOverVeth, 3)}; median of per-round ratios: membrane/bridge ${fmt(x.pairedMembraneOverBridge, 3)}, ` +
    `membrane/bare veth ${fmt(x.pairedMembraneOverVeth, 3)})`;
}

/** What an empty section says: skipped with --only, or failed. */
function missing(r: BenchResult, section: Section): string {
  return wants(r.settings, section) ? '(section failed, see errors)' : '(not run)';
}

function renderDatapath(d: DatapathLiveResult | null, whyMissing: string): string[] {
  const out: string[] = ['## 4. Datapath: container-to-container throughput and latency', ''];
  if (!d) return [...out, whyMissing, ''];
  const s = d.settings;
  out.push(`${d.note}`, '');
  out.push(`${d.roundsCompleted}/${d.rounds} interleaved rounds; iperf3 -t ${s.iperfSeconds} -O ${s.iperfOmitSeconds}; ` +
    `sockperf -t ${s.sockperfSeconds}, first ${s.latencyMessages} round trips per run. Pinning: ${d.pinning}. ` +
    `Load average at start: ${d.loadAverageAtStart.join(' / ')}. Image ${d.image} (${d.imageId.slice(0, 19)}).`, '');
  out.push(`Bridge: ${d.bridgeVariant}. Bare veth: ${d.vethVariant}. Medians over runs; retransmits and CPU % as iperf3 reports them.`, '');
  const keys: DatapathVariantKey[] = ['membrane', 'bridge', 'veth'];
  out.push(table(['Variant', 'runs (tput / lat)', 'Gbit/s median', 'IQR', 'min', 'max', 'retransmits', 'CPU % snd / rcv', 'RTT p50 µs', 'RTT p99 µs', 'RTT mean µs', 'round trips per run', 'failed'],
    keys.map((k) => {
      const t = d.throughput[k];
      const l = d.latency[k];
      return [VARIANT_LABELS[k], `${t.n} / ${l.n}`, fmt(t.medianGbps, 2), fmt(t.iqrGbps, 2), fmt(t.minGbps, 2), fmt(t.maxGbps, 2),
        fmt(t.medianRetransmits, 0), `${fmt(t.medianCpuSenderPercent, 0)} / ${fmt(t.medianCpuReceiverPercent, 0)}`, fmt(l.p50Us, 1), fmt(l.p99Us, 1), fmt(l.meanUs, 1),
        l.messagesPerRound.length ? `${Math.min(...l.messagesPerRound)}–${Math.max(...l.messagesPerRound)}` : '—', `${t.failures} / ${l.failures}`];
    })), '');
  out.push(`- ${ratioLine('Throughput', d.ratios.throughput)}; above 1 = Membrane moves more.`);
  out.push(`- ${ratioLine('Latency p50', d.ratios.latencyP50)}; below 1 = Membrane answers faster.`);
  out.push(`- ${ratioLine('Latency p99', d.ratios.latencyP99)}.`, '');
  for (const k of keys) {
    for (const e of [...d.throughput[k].errors, ...d.latency[k].errors]) out.push(`- ${k} error: ${e}`);
  }
  out.push(...renderScenarios(d));
  return out;
}

const PATH_LABELS: Record<string, string> = {
  'c2c-v4': 'container → container, IPv4', 'c2c-v6': 'container → container, IPv6',
  'c2host': 'container → host', 'c2outside': 'container → outside (forwarded, NAT)',
};

function renderScenarios(d: DatapathLiveResult): string[] {
  if (!d.scenarios?.length) return [];
  const out = ['### 4b. Every path and workload', '', d.scenarioNote, '', `Host and outside: ${d.routedVariant}.`, ''];
  const range = (x: { median: number; min: number; max: number; n: number }) => (x.n ? `${fmt(x.median, 3)} (${fmt(x.min, 2)}–${fmt(x.max, 2)}, n ${x.n})` : '—');
  out.push(table(['Path', 'Workload', 'Figure', 'Membrane', 'bridge', 'floor', 'Membrane/bridge (range)', 'Membrane/floor (range)', 'retransmits or p99 µs (M / b / f)', 'p99 Membrane/bridge, /floor', 'failed (M / b / f)'],
    d.scenarios.map((sc) => {
      const v = sc.variants;
      const tput = sc.kind === 'throughput';
      const extra = tput ? `${fmt(v.membrane.retransmits ?? NaN, 0)} / ${fmt(v.bridge.retransmits ?? NaN, 0)} / ${fmt(v.veth.retransmits ?? NaN, 0)}`
        : `${fmt(v.membrane.p99 ?? NaN, 1)} / ${fmt(v.bridge.p99 ?? NaN, 1)} / ${fmt(v.veth.p99 ?? NaN, 1)}` +
          (sc.workload === 'udp-rr' ? ` (lost ${v.membrane.lost ?? 0} / ${v.bridge.lost ?? 0} / ${v.veth.lost ?? 0})` : '');
      const p99 = tput ? '—' : `${fmt(sc.ratios.p99MembraneOverBridge?.median ?? NaN, 3)}, ${fmt(sc.ratios.p99MembraneOverVeth?.median ?? NaN, 3)}`;
      return [PATH_LABELS[sc.path] ?? sc.path, sc.workload, tput ? 'Gbit/s' : 'p50 µs', fmt(v.membrane.median, tput ? 2 : 1), fmt(v.bridge.median, tput ? 2 : 1),
        fmt(v.veth.median, tput ? 2 : 1), range(sc.ratios.membraneOverBridge), range(sc.ratios.membraneOverVeth), extra, p99,
        `${v.membrane.failures} / ${v.bridge.failures} / ${v.veth.failures}`];
    })), '');
  out.push('- Throughput ratios above 1 = Membrane moves more; latency ratios below 1 = Membrane answers faster.', '');
  for (const sc of d.scenarios) {
    for (const k of ['membrane', 'bridge', 'veth'] as const) for (const e of sc.variants[k].errors) out.push(`- ${sc.name} ${k} error: ${e}`);
  }
  return out;
}

function renderProgramCost(p: ProgCostResult | null, d: DatapathLiveResult | null, whyMissing: string): string[] {
  const out: string[] = ['## 5. Per-packet cost of the Membrane programs', ''];
  out.push('### 5a. BPF_PROG_TEST_RUN (micro)', '');
  if (p) {
    out.push(p.note, '');
    const label: Record<string, string> = {
      'redirect-local-endpoint': 'from_container, redirect to a local endpoint (TC_ACT_REDIRECT)',
      'to-stack': 'from_container, to the host stack (TC_ACT_OK)',
      'no-op': 'no-op tc program (harness floor)',
    };
    out.push(table(['Path (established TCP ACK, IPv4)', 'method', 'ns/packet (median)', 'min', 'max', '− no-op ns', 'runs × batches', 'unexpected verdicts'],
      p.rows.map((r) => [label[r.path] ?? r.path, r.method, fmt(r.nsPerPacket, 1), fmt(r.minNsPerPacket, 1), fmt(r.maxNsPerPacket, 1),
        r.path === 'no-op' ? '' : fmt(r.netOfNoopNs, 1), `${r.runsPerBatch.toLocaleString('en-US')} × ${r.batches}`, String(r.unexpectedRetvals)])), '');
    out.push(`Conntrack afterwards: redirect flow ${p.conntrack.state[0]} with ${p.conntrack.redirectPacketsOrig} packets, ` +
      `to-stack flow ${p.conntrack.state[1]} with ${p.conntrack.toStackPacketsOrig} packets (original direction).` +
      (p.noopError ? ` No-op program unavailable: ${p.noopError}.` : ''), '');
  } else {
    out.push(whyMissing, '');
  }
  out.push('### 5b. Live traffic, kernel.bpf_stats_enabled=1 (in situ)', '');
  const b = d?.bpfStats;
  if (b && b.phases.length) {
    out.push(b.note, '');
    out.push(table(['Workload (Membrane pair)', 'program', 'runs', 'ns/run', 'runs/s (phase wall time)', 'workload result (stats on)'],
      b.phases.flatMap((ph) => ph.programs.map((x) => [ph.workload, `${x.name} (id ${x.id})`, x.runCnt.toLocaleString('en-US'), fmt(x.nsPerRun, 1),
        Math.round(x.runCnt / ph.seconds).toLocaleString('en-US'),
        ph.gbps !== undefined ? `${fmt(ph.gbps, 2)} Gbit/s` : `p50 ${fmt(ph.p50Us, 1)} / p99 ${fmt(ph.p99Us, 1)} µs`]))), '');
    out.push(`kernel.bpf_stats_enabled was ${b.sysctlBefore} before and ${b.sysctlRestored ? 'was restored' : 'could NOT be restored'}.`, '');
  } else {
    out.push(b ? `(no result: ${b.errors.join(' / ')})` : '(not run, see errors)', '');
  }
  return out;
}

// ---- main --------------------------------------------------------------------------------------

async function removeOwnResources(label: string): Promise<string[]> {
  const problems: string[] = [];
  const containers = (await run('docker', ['ps', '-aq', '--filter', `label=${label}`], { allowFail: true })).stdout.split('\n').filter(Boolean);
  if (containers.length) {
    const r = await run('docker', ['rm', '-f', ...containers], { allowFail: true });
    if (r.code !== 0) problems.push(`docker rm: ${r.stderr.trim()}`);
  }
  const networks = (await run('docker', ['network', 'ls', '-q', '--filter', `label=${label}`], { allowFail: true })).stdout.split('\n').filter(Boolean);
  for (const network of networks) {
    const r = await run('docker', ['network', 'rm', network], { allowFail: true });
    if (r.code !== 0) problems.push(`docker network rm ${network}: ${r.stderr.trim()}`);
  }
  return problems;
}

export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const started = performance.now();
  const runId = `${process.pid.toString(36)}${randomBytes(3).toString('hex')}`;
  const benchLabel = `membrane.bench=${runId}`;
  const labels = [TEST_LABEL, benchLabel];
  fs.mkdirSync(options.outDir, { recursive: true });
  const result: BenchResult = {
    schema: 'membrane-bench/1',
    environment: await environment(options, runId),
    settings: { ...options },
    dockerRun: null, pluginLatency: null, ipam: null, datapath: null, programCost: null, policy: null, policyNewFlow: null, lb: null, lbMaglev: null, scale: null,
    errors: [], durationSeconds: 0, phaseSeconds: {},
  };
  let phaseStart = performance.now();
  const phase = (name: string) => {
    result.phaseSeconds[name] = round((performance.now() - phaseStart) / 1000, 1);
    phaseStart = performance.now();
  };
  const want = (section: Section) => wants(options, section);

  const image = await run('docker', ['image', 'inspect', IMAGE], { allowFail: true });
  if (image.code !== 0) {
    await run('bash', [path.join(ROOT, 'integration', 'image', 'build.sh')], { timeoutMs: 300_000 });
    result.environment.imageId = await text('docker', ['image', 'inspect', '-f', '{{.Id}}', IMAGE]);
  }

  if (DAEMON_SECTIONS.some(want)) {
    const daemon = await startDaemonWhenFree(options);
    const killOnExit = () => daemon.child?.kill('SIGTERM');
    process.once('exit', killOnExit);
    try {
      const status = await apiGet<DaemonStatus>('/v1/status', API_SOCKET);
      if (status.pid !== daemon.child?.pid) throw new Error('the API socket does not belong to the daemon this run started');
      const networks = await createNetworks({ membrane: `mbbench-${runId}-m`, bridge: `mbbench-${runId}-b` }, labels);
      phase('setup');
      if (want('docker-run')) {
        try {
          result.dockerRun = await benchDockerRun(options, networks, labels);
        } catch (err) {
          result.errors.push(`docker run section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('dockerRun');
      }
      checkAborted();
      if (want('plugin-latency')) {
        const afterRuns = await apiGet<DaemonStatus>('/v1/status');
        try {
          result.pluginLatency = await benchPluginLatency(options, afterRuns);
        } catch (err) {
          result.errors.push(`plugin latency section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('pluginLatency');
      }
      checkAborted();
      if (want('datapath')) {
        try {
          result.datapath = await benchDatapathLive(datapathOptions(options.smoke, options.datapathRounds),
            { runId, labels, networks, aborted: () => aborted });
          result.errors.push(...result.datapath.errors.map((e) => `datapath section: ${e}`));
          result.errors.push(...result.datapath.cleanup.problems.map((p) => `datapath cleanup: ${p}`));
          if (result.datapath.bpfStats) result.errors.push(...result.datapath.bpfStats.errors.map((e) => `bpf_stats: ${e}`));
        } catch (err) {
          result.errors.push(`datapath section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('datapath');
      }
      checkAborted();
      if (want('policy')) {
        try {
          result.policy = await benchPolicyLive(policyOptions(options.smoke, options.policyRounds), { runId, labels, networks, aborted: () => aborted });
          result.errors.push(...result.policy.errors.map((e) => `policy section: ${e}`));
          result.errors.push(...result.policy.cleanup.problems.map((p) => `policy cleanup: ${p}`));
        } catch (err) {
          result.errors.push(`policy section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('policy');
      }
      checkAborted();
      if (want('lb')) {
        try {
          result.lb = await benchLbLive(lbOptions(options.smoke, options.lbRounds, options.lbPinning), { runId, labels, networks, aborted: () => aborted });
          result.errors.push(...result.lb.errors.map((e) => `lb section: ${e}`));
          result.errors.push(...result.lb.cleanup.problems.map((p) => `lb cleanup: ${p}`));
        } catch (err) {
          result.errors.push(`lb section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('lb');
      }
      checkAborted();
      // Last of the daemon sections: it restarts the daemon.
      if (want('scale')) {
        try {
          result.scale = await benchScale({ ...scaleOptions(options.smoke), levels: options.scaleLevels }, {
            runId, labels, networks, aborted: () => aborted, daemonPid: () => daemon.child?.pid,
            restartDaemon: (signal) => daemon.restart(signal),
          });
          result.errors.push(...result.scale.errors.map((e) => `scale section: ${e}`));
          result.errors.push(...result.scale.cleanup.problems.map((p) => `scale cleanup: ${p}`));
        } catch (err) {
          result.errors.push(`scale section: ${err instanceof Error ? err.message : String(err)}`);
        }
        phase('scale');
      }
    } catch (err) {
      result.errors.push(err instanceof Error ? err.message : String(err));
    } finally {
      // Docker networks of the membrane driver must go while the daemon still answers.
      const problems = await removeOwnResources(benchLabel);
      result.errors.push(...problems.map((p) => `cleanup: ${p}`));
      if (!daemon.running()) result.errors.push(`the daemon died during the run: ${daemon.tail(5)}`);
      await daemon.stop();
      daemon.dispose(options.outDir);
      process.removeListener('exit', killOnExit);
      phase('cleanup');
    }
  }

  if (!aborted) {
    if (want('ipam')) {
      try {
        result.ipam = {
          note: 'In-process AddressAllocator, no daemon, no I/O: there is no alternative implementation to compare with ' +
            '(Docker\'s default IPAM lives inside dockerd), so these are absolute numbers, not ratios. The pool is filled to ' +
            'the level with explicit allocations at seeded random offsets (fragmented, like a pool after churn), then ' +
            'allocate()+release() pairs are timed (each pair takes the next free address after the cursor: a hole at 99 %). ' +
            'allocs/s = pairs per second. A /64 cannot be filled, so IPv6 levels are of a --ip-range /112 inside the /64; ' +
            'the last row scatters 65,000 addresses over a whole /64 (one interval each: the largest tree).',
          results: runIpamBench({ repetitions: options.ipamRepetitions, pairs: options.ipamPairs, maxMsPerRepetition: 3000 }),
        };
      } catch (err) {
        result.errors.push(`ipam section: ${err instanceof Error ? err.message : String(err)}`);
      }
      phase('ipam');
    }
    if (want('program-cost')) {
      try {
        result.programCost = await benchProgramCost(datapathOptions(options.smoke, options.datapathRounds));
        result.errors.push(...result.programCost.errors.map((e) => `program cost section: ${e}`));
      } catch (err) {
        result.errors.push(`program cost section: ${err instanceof Error ? err.message : String(err)}`);
      }
      phase('programCost');
    }
    if (want('policy')) {
      try {
        result.policyNewFlow = await benchPolicyNewFlow(policyOptions(options.smoke, options.policyRounds));
        result.errors.push(...result.policyNewFlow.errors.map((e) => `policy new-flow section: ${e}`));
      } catch (err) {
        result.errors.push(`policy new-flow section: ${err instanceof Error ? err.message : String(err)}`);
      }
      phase('policyNewFlow');
    }
    if (want('lb')) {
      try {
        result.lbMaglev = benchMaglev(lbOptions(options.smoke, options.lbRounds));
        result.errors.push(...result.lbMaglev.errors.map((e) => `lb maglev section: ${e}`));
      } catch (err) {
        result.errors.push(`lb maglev section: ${err instanceof Error ? err.message : String(err)}`);
      }
      phase('lbMaglev');
    }
  } else {
    result.errors.push('interrupted');
  }
  result.durationSeconds = Math.round((performance.now() - started) / 1000);
  return result;
}

export function writeResult(result: BenchResult, outDir: string): string {
  const markdown = renderMarkdown(result);
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'bench.json'), `${JSON.stringify(result, null, 2)}\n`);
  fs.writeFileSync(path.join(outDir, 'bench.md'), `${markdown}\n`);
  return markdown;
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    aborted = true;
    if (++signals > 1) process.exit(130);
    console.error(`bench: ${sig}, cleaning up (send again to exit at once)`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const result = await runBench(options);
  const markdown = writeResult(result, options.outDir);
  console.log(markdown);
  console.log(`\nwrote ${path.join(options.outDir, 'bench.json')} and bench.md`);
  return result.errors.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().then((code) => { process.exitCode = code; }, (err) => {
    console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 2;
  });
}
