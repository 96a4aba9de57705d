// Datapath benchmarks (issue #3 point 7), called by run.ts. Never passes or fails on timing.
//
//   Live: container-to-container TCP throughput (iperf3) and request/response latency (sockperf
//   ping-pong, 64-byte messages over one persistent TCP connection, full round trips) for three
//   variants side by side, interleaved per round with a rotating order (recipes R0, R2, R3):
//     membrane  two containers on a Membrane network (BPF datapath, bpf_redirect_peer between them)
//     bridge    two containers on a user-defined Docker bridge
//     veth      a bare veth pair between two network namespaces, no program, no host involvement
//   Then one extra iperf3 and sockperf run on the Membrane pair with kernel.bpf_stats_enabled=1:
//   run_time_ns / run_cnt of the attached from_container / to_container programs (recipe R6, in
//   situ). It is kept out of the ratios because the stats themselves cost time on every run.
//
//   Program cost: BPF_PROG_TEST_RUN on Membrane's object with fresh unpinned maps, three endpoints
//   on throwaway veths, the load balancer's settings as the daemon writes them, an established TCP
//   flow (SYN, then SYN-ACK) and its ACKs timed through from_container, for the
//   redirect-to-local-endpoint and to-stack paths, against a no-op tc program timed the same way
//   (recipe R6, micro). The redirect path is timed in bursts of repeated runs too (see the note).
//
// Everything made here carries the run's labels or names and is removed in `finally`.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, addressesOf, run, sleep } from '../harness.js';
import { native, type BpfObject } from '../../plugin/kernel/native.js';
import { objectLoadOptionsForTests } from '../../plugin/features.js';
import { decodeCtEntry, encodeCtKey, encodeEndpointInfo, encodeEndpointKey, encodeIfindexKey } from '../../plugin/datapath/codec.js';
import { ETH_P_IP, TCP_ACK, TCP_SYN, ethernet, ipv4, tcp } from '../../plugin/datapath/packets.js';
import { LB_CONFIG, LB_CONFIG_F_DNS, LB_CONFIG_F_SOCKET } from '../../plugin/datapath/maps.js';
import { U32_KEY } from '../../plugin/datapath/layout.js';
import { median, percentileSorted, ratio, round, summarize } from './stats.js';
import { HOST_PORTS, OUTSIDE_PORTS, RoutedPaths, stopServers } from './datapath-paths.js';

export const BENCH_IMAGE = process.env.MEMBRANE_BENCH_IMAGE ?? 'membrane-bench:latest';
const OBJECT = path.join(ROOT, 'bpf', 'build', 'membrane.bpf.o');
export const IPERF_PORT = 5201;
export const SOCKPERF_PORT = 11111;
/** rr's TCP and UDP echo server (rr.c: request/response over either protocol and family). */
export const RR_PORT = 11115;
const MESSAGE_BYTES = 64; // sockperf's minimum is 14 (its header)
const PIN_DIR = '/sys/fs/bpf/membrane';
const BPF_STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';

export type DatapathVariantKey = 'membrane' | 'bridge' | 'veth';
const VARIANTS: DatapathVariantKey[] = ['membrane', 'bridge', 'veth'];

export interface DatapathOptions {
  smoke: boolean;
  /** Interleaved rounds; each runs every variant once for throughput and once for latency. */
  rounds: number;
  iperfSeconds: number;
  /** iperf3 -O: seconds at the start of each run left out of the result (slow start). */
  iperfOmitSeconds: number;
  /** Round trips per latency run (the first N valid ones sockperf logs after its warm-up). */
  latencyMessages: number;
  sockperfSeconds: number;
  /** Wall-clock limit for the rounds; the section stops starting new rounds after it. */
  maxSeconds: number;
  /** BPF_PROG_TEST_RUN: in-kernel repeat per batch, syscalls per batch of one run each, and batches (the median is reported). */
  progRepeat: number;
  progSingleRuns: number;
  progBatches: number;
  /**
   * The redirect path's repeated runs: runs per syscall (at most 254: each run decrements the TTL
   * of the one packet the kernel repeats it on, which starts at 255) and syscalls per batch.
   */
  progBurstRepeat: number;
  progBurstCalls: number;
  /** The paths and workloads measured besides the headline pair (`path/workload`, see SCENARIOS). */
  scenarios: ScenarioName[];
}

/**
 * Where the traffic goes: container to container over IPv4 or IPv6, container to a server in the
 * host's own namespace, container to a namespace outside the host (forwarded, masqueraded).
 */
export type PathKey = 'c2c-v4' | 'c2c-v6' | 'c2host' | 'c2outside';
/** iperf3 with 1, 4 or 16 TCP streams; rr request/response over one TCP connection or over UDP. */
export type WorkloadKey = 'tcp-1' | 'tcp-4' | 'tcp-16' | 'tcp-rr' | 'udp-rr';
export type ScenarioName = `${PathKey}/${WorkloadKey}`;
export const SCENARIOS: ScenarioName[] = [
  'c2c-v4/tcp-4', 'c2c-v4/tcp-16', 'c2c-v4/tcp-rr', 'c2c-v4/udp-rr',
  'c2c-v6/tcp-1', 'c2c-v6/tcp-rr', 'c2c-v6/udp-rr',
  'c2host/tcp-1', 'c2host/tcp-rr', 'c2host/udp-rr',
  'c2outside/tcp-1', 'c2outside/tcp-rr', 'c2outside/udp-rr',
];
/** One of each path, kind and protocol: every code path of the section, quickly. */
const SMOKE_SCENARIOS: ScenarioName[] = ['c2c-v4/tcp-4', 'c2c-v6/udp-rr', 'c2host/tcp-1', 'c2outside/tcp-rr'];

export function datapathOptions(smoke: boolean, rounds?: number): DatapathOptions {
  return {
    smoke,
    rounds: rounds ?? (smoke ? 1 : 10),
    iperfSeconds: smoke ? 1 : 3,
    iperfOmitSeconds: smoke ? 0 : 1,
    latencyMessages: smoke ? 1_000 : 10_000,
    sockperfSeconds: smoke ? 2 : 3,
    // 10 rounds of every scenario take about 30 minutes here.
    maxSeconds: smoke ? 90 : 2700,
    progRepeat: smoke ? 10_000 : 100_000,
    progSingleRuns: smoke ? 2_000 : 20_000,
    progBatches: smoke ? 3 : 5,
    progBurstRepeat: 250,
    progBurstCalls: smoke ? 40 : 400,
    scenarios: smoke ? SMOKE_SCENARIOS : SCENARIOS,
  };
}

// ---- results -----------------------------------------------------------------------------------

export interface IperfRun {
  gbps: number;
  retransmits: number;
  cpuSenderPercent: number;
  cpuReceiverPercent: number;
}

export interface LatencyRun {
  n: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  maxUs: number;
}

export interface ThroughputVariant {
  n: number;
  medianGbps: number;
  iqrGbps: number;
  minGbps: number;
  maxGbps: number;
  medianRetransmits: number;
  /** iperf3's own CPU figures (host_total of the client, remote_total of the server), medians. */
  medianCpuSenderPercent: number;
  medianCpuReceiverPercent: number;
  runs: IperfRun[];
  failures: number;
  errors: string[];
}

export interface LatencyVariant {
  /** Rounds with a result. */
  n: number;
  /** Median over rounds of each round's p50 / p99 (each round: `latencyMessages` round trips). */
  p50Us: number;
  p99Us: number;
  meanUs: number;
  /** Round trips per round actually used (sockperf is time-bound: fewer than asked when slow). */
  messagesPerRound: number[];
  runs: LatencyRun[];
  failures: number;
  errors: string[];
}

export interface VariantRatios {
  membraneOverBridge: number;
  membraneOverVeth: number;
  bridgeOverVeth: number;
  /** Median over rounds of the per-round ratios (both variants measured in the same round). */
  pairedMembraneOverBridge: number;
  pairedMembraneOverVeth: number;
}

export interface ProgramStats {
  id: number;
  name: string;
  runCnt: number;
  runTimeNs: number;
  nsPerRun: number;
}

export interface BpfStatsPhase {
  workload: string;
  seconds: number;
  programs: ProgramStats[];
  /** The workload's own result in this run (stats on), for comparison with the medians above. */
  gbps?: number;
  p50Us?: number;
  p99Us?: number;
}

/** One variant of one scenario over the rounds. */
export interface ScenarioVariant {
  n: number;
  /** Throughput: Gbit/s; request/response: the p50 round trip in µs. Median over rounds. */
  median: number;
  min: number;
  max: number;
  /** Request/response only: median over rounds of each round's p99 (µs). */
  p99?: number;
  /** Throughput only: median retransmits per run. */
  retransmits?: number;
  /** UDP request/response only: answers lost in all runs together. */
  lost?: number;
  runs: Array<IperfRun | (LatencyRun & { lost: number })>;
  failures: number;
  errors: string[];
}

/** Per-round paired ratios (both variants in the same round): median and spread. */
export interface PairedRatio {
  median: number;
  min: number;
  max: number;
  iqr: number;
  n: number;
}

export interface ScenarioResult {
  name: ScenarioName;
  path: PathKey;
  workload: WorkloadKey;
  kind: 'throughput' | 'latency';
  variants: Record<DatapathVariantKey, ScenarioVariant>;
  /** Throughput: above 1 = Membrane moves more; latency (p50, and p99 separately): below 1 = Membrane answers faster. */
  ratios: { membraneOverBridge: PairedRatio; membraneOverVeth: PairedRatio; p99MembraneOverBridge?: PairedRatio; p99MembraneOverVeth?: PairedRatio };
}

export interface DatapathLiveResult {
  note: string;
  settings: DatapathOptions;
  image: string;
  imageId: string;
  bridgeVariant: string;
  vethVariant: string;
  pinning: string;
  loadAverageAtStart: number[];
  rounds: number;
  roundsCompleted: number;
  throughput: Record<DatapathVariantKey, ThroughputVariant>;
  latency: Record<DatapathVariantKey, LatencyVariant>;
  /** The other paths and workloads (options.scenarios), measured in the same rounds. */
  scenarioNote: string;
  routedVariant: string;
  scenarios: ScenarioResult[];
  ratios: {
    /** Gbit/s: above 1 means Membrane moves more. */
    throughput: VariantRatios;
    /** p50 and p99 round trip: below 1 means Membrane is faster. */
    latencyP50: VariantRatios;
    latencyP99: VariantRatios;
  };
  bpfStats: {
    note: string;
    sysctlBefore: string;
    sysctlRestored: boolean;
    phases: BpfStatsPhase[];
    errors: string[];
  } | null;
  cleanup: { problems: string[] };
  errors: string[];
}

export interface ProgCostRow {
  path: 'redirect-local-endpoint' | 'to-stack' | 'no-op';
  /** repeat: one syscall of runsPerBatch runs; burst: syscalls of progBurstRepeat runs each, runsPerBatch in all; single: one run per syscall. */
  method: 'repeat' | 'burst' | 'single';
  /** Expected tc verdict (TC_ACT_*), and how many runs returned something else. */
  expectedRetval: number;
  unexpectedRetvals: number;
  runsPerBatch: number;
  batches: number;
  /** Median over batches of the kernel's average ns per run. */
  nsPerPacket: number;
  minNsPerPacket: number;
  maxNsPerPacket: number;
  /** nsPerPacket minus the no-op program's, same method. */
  netOfNoopNs: number;
}

export interface ProgCostResult {
  note: string;
  object: string;
  packet: string;
  rows: ProgCostRow[];
  /** Conntrack packetsOrig of the two flows afterwards: shows every timed run took the established path. */
  conntrack: { redirectPacketsOrig: number; toStackPacketsOrig: number; state: string[] };
  noopError: string | null;
  errors: string[];
}

// ---- small helpers -----------------------------------------------------------------------------

export const errorText = (err: unknown): string => String(err instanceof Error ? err.message : err).slice(0, 400);

/** Deletes test veths by name (their peers go with them); failures are recorded, not thrown. */
export function deleteVeths(nl: { linkGetByName(name: string): { index: number } | null | undefined; linkDelete(index: number): void },
  names: string[], errors: string[]): void {
  for (const name of names) {
    try {
      const link = nl.linkGetByName(name);
      if (link) nl.linkDelete(link.index);
    } catch (err) {
      errors.push(`delete veth ${name}: ${errorText(err)}`);
    }
  }
}

function linesOf(text: string, n = 3): string {
  return text.trim().split('\n').slice(-n).join(' / ').slice(0, 400);
}

/** Parses iperf3 -J output; throws with iperf3's own error when it reports one. */
export function parseIperf(json: string): IperfRun {
  const r = JSON.parse(json) as {
    error?: string;
    end?: {
      sum_received?: { bits_per_second?: number };
      sum_sent?: { retransmits?: number };
      cpu_utilization_percent?: { host_total?: number; remote_total?: number };
    };
  };
  if (r.error) throw new Error(`iperf3: ${r.error}`);
  const bps = r.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number' || !Number.isFinite(bps)) throw new Error('iperf3: no end.sum_received.bits_per_second');
  return {
    gbps: round(bps / 1e9, 3),
    retransmits: r.end?.sum_sent?.retransmits ?? NaN,
    cpuSenderPercent: round(r.end?.cpu_utilization_percent?.host_total ?? NaN, 1),
    cpuReceiverPercent: round(r.end?.cpu_utilization_percent?.remote_total ?? NaN, 1),
  };
}

/** Round trips (µs) from sockperf --full-log CSV: rows "packet, txTime(sec), rxTime(sec), rtt(usec)". */
export function parseSockperfLog(csv: string): number[] {
  const rtts: number[] = [];
  for (const line of csv.split('\n')) {
    const m = /^\s*\d+,\s*[\d.]+,\s*[\d.]+,\s*([\d.]+)\s*$/.exec(line);
    if (m) rtts.push(Number(m[1]));
  }
  return rtts;
}

export function latencyOf(rtts: number[], wanted: number): LatencyRun {
  const used = rtts.slice(0, wanted);
  const s = summarize(used);
  return { n: s.n, p50Us: round(s.median, 2), p99Us: round(percentileSorted([...used].sort((a, b) => a - b), 99), 2), meanUs: round(s.mean, 2), maxUs: round(s.max, 2) };
}

function ratios(values: Record<DatapathVariantKey, number>, perRound: Array<Partial<Record<DatapathVariantKey, number>>>): VariantRatios {
  const paired = (a: DatapathVariantKey, b: DatapathVariantKey) =>
    round(median(perRound.filter((r) => r[a] !== undefined && r[b] !== undefined).map((r) => r[a]! / r[b]!)));
  return {
    membraneOverBridge: round(ratio(values.membrane, values.bridge)),
    membraneOverVeth: round(ratio(values.membrane, values.veth)),
    bridgeOverVeth: round(ratio(values.bridge, values.veth)),
    pairedMembraneOverBridge: paired('membrane', 'bridge'),
    pairedMembraneOverVeth: paired('membrane', 'veth'),
  };
}

// ---- the three variants ------------------------------------------------------------------------

export interface Endpoints {
  key: DatapathVariantKey;
  server: string;
  /** The server's IPv6 address, where the variant has one. */
  serverV6?: string;
  /** How the client runs rr (in the bench image: on PATH; in a namespace: the copy built for this run). */
  rrBinary: string;
  /** Runs a command where the client lives. */
  client(args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string; code: number }>;
  /** Reads a file the client wrote. */
  readClientFile(file: string): Promise<string>;
  /** Where the client may write its sockperf log. */
  logPath: string;
}

export interface Pinning {
  client: string[];
  server: string[];
  iperfClient: string[];
  iperfServer: string[];
}

export function pinning(): Pinning {
  if (os.cpus().length < 2) return { client: [], server: [], iperfClient: [], iperfServer: [] };
  return { client: ['taskset', '-c', '0'], server: ['taskset', '-c', '1'], iperfClient: ['-A', '0'], iperfServer: ['-A', '1'] };
}

/** Waits (bounded) until both servers listen, as seen by `listCmd` (netstat/ss output). */
async function waitListening(list: () => Promise<string>, what: string): Promise<void> {
  const deadline = performance.now() + 15_000;
  let last = '';
  while (performance.now() < deadline) {
    last = await list().catch((err) => errorText(err));
    if ([IPERF_PORT, SOCKPERF_PORT, RR_PORT].every((port) => last.includes(`:${port} `))) return;
    await sleep(200);
  }
  throw new Error(`${what}: servers not listening within 15 s (${linesOf(last)})`);
}

const containerName = (runId: string, key: 'membrane' | 'bridge', role: 'srv' | 'cli') => `mbbench-${runId}-${key === 'membrane' ? 'dm' : 'db'}-${role}`;

/** For other sections (policy.ts) that need their own pair: names and per-role identity labels. */
export interface PairOptions {
  /** Containers are named `${namePrefix}-srv` and `${namePrefix}-cli` instead of this section's names. */
  namePrefix?: string;
  /** Extra labels for the server or the client only (what a policy selects them by). */
  serverLabels?: string[];
  clientLabels?: string[];
}

export async function containerPair(key: 'membrane' | 'bridge', network: string, runId: string, labels: string[], pin: Pinning,
  options: PairOptions = {}): Promise<Endpoints> {
  const labelArgs = (extra: string[] = []) => [...labels, ...extra].flatMap((l) => ['--label', l]);
  const name = (role: 'srv' | 'cli') => (options.namePrefix ? `${options.namePrefix}-${role}` : containerName(runId, key, role));
  const serverCmd = `iperf3 -s -p ${IPERF_PORT} ${pin.iperfServer.join(' ')} & ${pin.server.join(' ')} rr serve ${RR_PORT} & ` +
    `exec ${pin.server.join(' ')} sockperf server --tcp -i 0.0.0.0 -p ${SOCKPERF_PORT}`;
  await run('docker', ['run', '-d', '--name', name('srv'), ...labelArgs(options.serverLabels), '--network', network, BENCH_IMAGE, 'sh', '-c', serverCmd],
    { timeoutMs: 60_000 });
  // Bounded: the container is removed in `finally` anyway.
  await run('docker', ['run', '-d', '--name', name('cli'), ...labelArgs(options.clientLabels), '--network', network, BENCH_IMAGE, 'sleep', '1800'],
    { timeoutMs: 60_000 });
  const addresses = await addressesOf(name('srv'), network);
  const server = addresses.ipv4;
  if (!server) throw new Error(`${key}: server container has no IPv4 address on ${network}`);
  await waitListening(async () => (await run('docker', ['exec', name('srv'), 'netstat', '-ltnu'], { allowFail: true, timeoutMs: 10_000 })).stdout, key);
  const client = name('cli');
  return {
    key, server, serverV6: addresses.ipv6, logPath: '/tmp/sockperf.csv', rrBinary: 'rr',
    client: (args, timeoutMs) => run('docker', ['exec', client, ...args], { allowFail: true, timeoutMs }),
    readClientFile: async (file) => (await run('docker', ['exec', client, 'cat', file], { timeoutMs: 20_000 })).stdout,
  };
}

/** A bare veth pair between two namespaces of our own; no program, no bridge, no host routing. */
class VethPair {
  readonly nsA: string;
  readonly nsB: string;
  readonly ifA: string;
  readonly ifB: string;
  readonly addrA = '198.18.0.1'; // RFC 2544 benchmarking range, only inside these two namespaces
  readonly addrB = '198.18.0.2';
  // RFC 5180's IPv6 benchmarking range, likewise only inside the two namespaces.
  readonly addrA6 = '2001:2::1';
  readonly addrB6 = '2001:2::2';
  readonly tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-veth-'));
  private readonly servers: ChildProcess[] = [];
  private created = false;

  constructor(runId: string) {
    const tag = randomBytes(3).toString('hex');
    this.nsA = `mbbench-${runId}-a`;
    this.nsB = `mbbench-${runId}-b`;
    this.ifA = `mbv${tag}a`;
    this.ifB = `mbv${tag}b`;
  }

  describe(): string {
    return `veth ${this.ifA}/${this.ifB} between netns ${this.nsA} (${this.addrA}/30, ${this.addrA6}/64) and ${this.nsB} ` +
      `(${this.addrB}/30, ${this.addrB6}/64), MTU 1500, default offloads`;
  }

  async up(pin: Pinning, rrBinary: string): Promise<Endpoints> {
    this.created = true;
    await run('ip', ['netns', 'add', this.nsA]);
    await run('ip', ['netns', 'add', this.nsB]);
    await run('ip', ['link', 'add', this.ifA, 'mtu', '1500', 'type', 'veth', 'peer', 'name', this.ifB, 'mtu', '1500']);
    await run('ip', ['link', 'set', this.ifA, 'netns', this.nsA]);
    await run('ip', ['link', 'set', this.ifB, 'netns', this.nsB]);
    for (const [ns, dev, addr, addr6] of [[this.nsA, this.ifA, this.addrA, this.addrA6], [this.nsB, this.ifB, this.addrB, this.addrB6]] as const) {
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${addr}/30`, 'dev', dev]);
      await run('ip', ['-n', ns, 'addr', 'add', `${addr6}/64`, 'dev', dev, 'nodad']);
      await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    }
    const serve = (args: string[]) => {
      const child = spawn('ip', ['netns', 'exec', this.nsB, ...args], { stdio: 'ignore' });
      child.on('error', () => undefined);
      this.servers.push(child);
    };
    serve(['iperf3', '-s', '-p', String(IPERF_PORT), ...pin.iperfServer]);
    serve([...pin.server, 'sockperf', 'server', '--tcp', '-i', '0.0.0.0', '-p', String(SOCKPERF_PORT)]);
    serve([...pin.server, rrBinary, 'serve', String(RR_PORT)]);
    await waitListening(async () => (await run('ip', ['netns', 'exec', this.nsB, 'ss', '-ltnuH'], { allowFail: true, timeoutMs: 10_000 })).stdout + ' ', 'veth');
    return {
      key: 'veth', server: this.addrB, serverV6: this.addrB6, logPath: path.join(this.tmp, 'sockperf.csv'), rrBinary,
      client: (args, timeoutMs) => run('ip', ['netns', 'exec', this.nsA, ...args], { allowFail: true, timeoutMs }),
      readClientFile: async (file) => fs.readFileSync(file, 'utf8'),
    };
  }

  /** Kills our servers (by pid), deletes both namespaces (and with them the veth). */
  async down(): Promise<string[]> {
    const problems: string[] = [];
    await stopServers(this.servers);
    if (this.created) {
      for (const ns of [this.nsA, this.nsB]) {
        const r = await run('ip', ['netns', 'del', ns], { allowFail: true });
        if (r.code !== 0 && !/No such file/.test(r.stderr)) problems.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
      }
      // If moving it into a namespace failed, the pair is still here.
      for (const dev of [this.ifA, this.ifB]) {
        if ((await run('ip', ['link', 'show', dev], { allowFail: true })).code === 0) {
          const r = await run('ip', ['link', 'del', dev], { allowFail: true });
          if (r.code !== 0) problems.push(`ip link del ${dev}: ${r.stderr.trim()}`);
        }
      }
      const left = (await run('ip', ['netns', 'list'], { allowFail: true })).stdout;
      for (const ns of [this.nsA, this.nsB]) if (left.split('\n').some((l) => l.split(' ')[0] === ns)) problems.push(`netns ${ns} still exists`);
    }
    fs.rmSync(this.tmp, { recursive: true, force: true });
    return problems;
  }
}

// ---- one measurement ---------------------------------------------------------------------------

/** Where one measurement goes, when not to the variant's own server on the usual ports. */
export interface Target {
  server?: string;
  port?: number;
  /** iperf3 -P: parallel TCP streams. */
  streams?: number;
  /** Request/response over UDP instead of one TCP connection (rrOnce). */
  udp?: boolean;
}

export async function iperfOnce(e: Endpoints, o: DatapathOptions, pin: Pinning, target: Target = {}): Promise<IperfRun> {
  const args = ['iperf3', '-c', target.server ?? e.server, '-p', String(target.port ?? IPERF_PORT), '-t', String(o.iperfSeconds),
    '-O', String(o.iperfOmitSeconds), '-J', '--connect-timeout', '5000', ...pin.iperfClient];
  if (target.streams && target.streams > 1) args.push('-P', String(target.streams));
  const r = await e.client(args, (o.iperfSeconds + o.iperfOmitSeconds + 30) * 1000);
  try {
    return parseIperf(r.stdout);
  } catch (err) {
    throw new Error(`${e.key} iperf3 (exit ${r.code}): ${errorText(err)} ${linesOf(r.stderr)}`.trim());
  }
}

export async function latencyOnce(e: Endpoints, o: DatapathOptions, pin: Pinning, target: Target = {}): Promise<LatencyRun> {
  const args = [...pin.client, 'sockperf', 'ping-pong', '--tcp', '-i', target.server ?? e.server, '-p', String(target.port ?? SOCKPERF_PORT),
    '-m', String(MESSAGE_BYTES),
    '-t', String(o.sockperfSeconds), '--full-rtt', '--no-rdtsc', '--full-log', e.logPath];
  const r = await e.client(args, (o.sockperfSeconds + 30) * 1000);
  if (r.code !== 0) throw new Error(`${e.key} sockperf exit ${r.code}: ${linesOf(r.stderr || r.stdout)}`);
  const rtts = parseSockperfLog(await e.readClientFile(e.logPath));
  if (rtts.length === 0) throw new Error(`${e.key} sockperf logged no valid round trips: ${linesOf(r.stdout)}`);
  return latencyOf(rtts, o.latencyMessages);
}

/** One rr client run (rr.c): p50/p99 of every timed round trip, and the UDP answers lost. */
export async function rrOnce(e: Endpoints, o: DatapathOptions, pin: Pinning, target: Target = {}): Promise<LatencyRun & { lost: number }> {
  const args = [...pin.client, e.rrBinary, 'client', target.server ?? e.server, String(target.port ?? RR_PORT), ...(target.udp ? ['--udp'] : []),
    '--size', String(MESSAGE_BYTES), '--seconds', String(o.sockperfSeconds), '--warmup-seconds', '0.5', '--count', String(o.latencyMessages)];
  const r = await e.client(args, (o.sockperfSeconds + 30) * 1000);
  return parseRr(r.stdout, `${e.key} rr${target.udp ? ' --udp' : ''} to ${target.server ?? e.server} (exit ${r.code}) ${linesOf(r.stderr)}`);
}

/** rr client's JSON line; throws with its error when it timed nothing. */
export function parseRr(stdout: string, what: string): LatencyRun & { lost: number } {
  let x: { n?: number; lost?: number; p50_us?: number; p99_us?: number; mean_us?: number; max_us?: number; first_error?: string };
  try {
    x = JSON.parse(stdout.trim().split('\n').pop() ?? '');
  } catch {
    throw new Error(`${what}: no result: ${linesOf(stdout)}`.trim());
  }
  if (!x.n || typeof x.p50_us !== 'number') throw new Error(`${what}: no round trip timed (${x.first_error ?? 'no error given'}, ${x.lost ?? 0} lost)`.trim());
  return { n: x.n, lost: x.lost ?? 0, p50Us: x.p50_us, p99Us: x.p99_us ?? NaN, meanUs: x.mean_us ?? NaN, maxUs: x.max_us ?? NaN };
}

// ---- bpf_stats on live traffic -----------------------------------------------------------------

/** Ids of the programs attached to the Membrane containers' host-side veths. */
async function membraneProgramIds(containers: string[], network: string): Promise<number[]> {
  const nl = native();
  const ids = new Set<number>();
  for (const c of containers) {
    const endpointId = (await run('docker', ['inspect', '-f', `{{with index .NetworkSettings.Networks "${network}"}}{{.EndpointID}}{{end}}`, c])).stdout.trim();
    const link = endpointId ? nl.linkGetByName(`mbr${endpointId.slice(0, 12)}`) : null;
    if (!link) continue;
    for (const dir of ['ingress', 'egress'] as const) {
      try {
        for (const id of nl.tcxQuery(link.index, dir)) ids.add(id);
      } catch {
        // clsact mode (no tcx links): fall back below
      }
    }
  }
  if (ids.size) return [...ids];
  // clsact: the programs named from_container/to_container that use Membrane's pinned endpoint map.
  const map = JSON.parse((await run('bpftool', ['map', 'show', 'pinned', `${PIN_DIR}/mb_endpoints`, '-j'])).stdout) as { id: number };
  const progs = JSON.parse((await run('bpftool', ['prog', 'show', '-j'])).stdout) as Array<{ id: number; name?: string; map_ids?: number[] }>;
  return progs.filter((p) => (p.name === 'from_container' || p.name === 'to_container') && p.map_ids?.includes(map.id)).map((p) => p.id);
}

async function programStats(ids: number[]): Promise<Map<number, { name: string; runCnt: number; runTimeNs: number }>> {
  const progs = JSON.parse((await run('bpftool', ['prog', 'show', '-j'])).stdout) as
    Array<{ id: number; name?: string; run_time_ns?: number; run_cnt?: number }>;
  const out = new Map<number, { name: string; runCnt: number; runTimeNs: number }>();
  for (const p of progs) {
    if (!ids.includes(p.id) || (p.name !== 'from_container' && p.name !== 'to_container')) continue;
    // bpftool leaves both fields out while run_time_ns is 0.
    out.set(p.id, { name: p.name, runCnt: p.run_cnt ?? 0, runTimeNs: p.run_time_ns ?? 0 });
  }
  return out;
}

async function statsPhase<T>(workload: string, ids: number[], fn: () => Promise<T>): Promise<{ phase: BpfStatsPhase; value: T }> {
  const before = await programStats(ids);
  const started = performance.now();
  const value = await fn();
  const seconds = round((performance.now() - started) / 1000, 2);
  const after = await programStats(ids);
  const programs: ProgramStats[] = [];
  for (const [id, a] of after) {
    const b = before.get(id) ?? { runCnt: 0, runTimeNs: 0 };
    const runCnt = a.runCnt - b.runCnt;
    const runTimeNs = a.runTimeNs - b.runTimeNs;
    programs.push({ id, name: a.name, runCnt, runTimeNs, nsPerRun: round(ratio(runTimeNs, runCnt), 1) });
  }
  programs.sort((x, y) => x.name.localeCompare(y.name) || x.id - y.id);
  return { phase: { workload, seconds, programs }, value };
}

// ---- the other paths and workloads -------------------------------------------------------------

/** The server of one path, and its ports where they are not the usual ones. */
interface Destination {
  server: string;
  ports?: { iperf: number; rr: number };
}

/** Who sends and where to, for one variant of one path; undefined when the variant cannot take it. */
function scenarioTarget(pathKey: PathKey, key: DatapathVariantKey, pairs: Partial<Record<DatapathVariantKey, Endpoints>>,
  routedFloor: Endpoints | undefined, routed: RoutedPaths): { client: Endpoints; to: Destination } | undefined {
  const pair = pairs[key];
  switch (pathKey) {
    case 'c2c-v4':
      return pair && { client: pair, to: { server: pair.server } };
    case 'c2c-v6':
      return pair?.serverV6 ? { client: pair, to: { server: pair.serverV6 } } : undefined;
    case 'c2host':
    case 'c2outside': {
      const client = key === 'veth' ? routedFloor : pair;
      if (!client || !routedFloor) return undefined;
      return { client, to: pathKey === 'c2host' ? { server: routed.hostAddress, ports: HOST_PORTS } : { server: routed.outsideAddress, ports: OUTSIDE_PORTS } };
    }
  }
}

function pairedRatio(values: number[]): PairedRatio {
  const s = summarize(values.filter(Number.isFinite));
  return { median: round(s.median), min: round(s.min), max: round(s.max), iqr: round(s.iqr), n: s.n };
}

/** What one scenario collects over the rounds. */
class ScenarioRuns {
  readonly path: PathKey;
  readonly workload: WorkloadKey;
  readonly kind: 'throughput' | 'latency';
  readonly rounds: Array<Partial<Record<DatapathVariantKey, { value: number; p99?: number }>>> = [];
  private readonly runs: Record<DatapathVariantKey, ScenarioVariant['runs']> = { membrane: [], bridge: [], veth: [] };
  private readonly failures: Record<DatapathVariantKey, { n: number; errors: string[] }> = {
    membrane: { n: 0, errors: [] }, bridge: { n: 0, errors: [] }, veth: { n: 0, errors: [] },
  };

  constructor(readonly name: ScenarioName) {
    const [pathKey, workload] = name.split('/') as [PathKey, WorkloadKey];
    this.path = pathKey;
    this.workload = workload;
    this.kind = workload.endsWith('-rr') ? 'latency' : 'throughput';
  }

  async measure(key: DatapathVariantKey, client: Endpoints, to: Destination, o: DatapathOptions, pin: Pinning): Promise<{ value: number; p99?: number }> {
    if (this.kind === 'throughput') {
      const x = await iperfOnce(client, o, pin, { server: to.server, port: to.ports?.iperf, streams: Number(this.workload.split('-')[1]) });
      this.runs[key].push(x);
      return { value: x.gbps };
    }
    const x = await rrOnce(client, o, pin, { server: to.server, port: to.ports?.rr, udp: this.workload === 'udp-rr' });
    this.runs[key].push(x);
    return { value: x.p50Us, p99: x.p99Us };
  }

  fail(key: DatapathVariantKey, err: unknown): void {
    this.failures[key].n++;
    if (this.failures[key].errors.length < 3) this.failures[key].errors.push(errorText(err));
  }

  result(): ScenarioResult {
    const variant = (key: DatapathVariantKey): ScenarioVariant => {
      const runs = this.runs[key];
      const main = summarize(this.rounds.map((r) => r[key]?.value).filter((v): v is number => v !== undefined));
      const v: ScenarioVariant = {
        n: main.n, median: round(main.median, 3), min: round(main.min, 3), max: round(main.max, 3), runs,
        failures: this.failures[key].n, errors: this.failures[key].errors,
      };
      if (this.kind === 'throughput') v.retransmits = median((runs as IperfRun[]).map((x) => x.retransmits));
      else {
        v.p99 = round(median(this.rounds.map((r) => r[key]?.p99).filter((x): x is number => x !== undefined)), 2);
        if (this.workload === 'udp-rr') v.lost = (runs as Array<{ lost: number }>).reduce((a, x) => a + x.lost, 0);
      }
      return v;
    };
    const per = (a: DatapathVariantKey, b: DatapathVariantKey, pick: (x: { value: number; p99?: number }) => number | undefined) =>
      pairedRatio(this.rounds.filter((r) => r[a] && r[b]).map((r) => ratio(pick(r[a]!) ?? NaN, pick(r[b]!) ?? NaN)));
    const ratios: ScenarioResult['ratios'] = {
      membraneOverBridge: per('membrane', 'bridge', (x) => x.value),
      membraneOverVeth: per('membrane', 'veth', (x) => x.value),
    };
    if (this.kind === 'latency') {
      ratios.p99MembraneOverBridge = per('membrane', 'bridge', (x) => x.p99);
      ratios.p99MembraneOverVeth = per('membrane', 'veth', (x) => x.p99);
    }
    return {
      name: this.name, path: this.path, workload: this.workload, kind: this.kind,
      variants: { membrane: variant('membrane'), bridge: variant('bridge'), veth: variant('veth') }, ratios,
    };
  }
}

// ---- the live section --------------------------------------------------------------------------

export interface LiveContext {
  runId: string;
  labels: string[];
  networks: { membrane: string; bridge: string; bridgeVariant: string };
  aborted: () => boolean;
}

function emptyThroughput(): ThroughputVariant {
  return {
    n: 0, medianGbps: NaN, iqrGbps: NaN, minGbps: NaN, maxGbps: NaN, medianRetransmits: NaN, medianCpuSenderPercent: NaN,
    medianCpuReceiverPercent: NaN, runs: [], failures: 0, errors: [],
  };
}

function emptyLatency(): LatencyVariant {
  return { n: 0, p50Us: NaN, p99Us: NaN, meanUs: NaN, messagesPerRound: [], runs: [], failures: 0, errors: [] };
}

/** Builds the benchmark image (idempotent; a no-op when it is up to date). */
export async function ensureBenchImage(): Promise<string> {
  await run('bash', [path.join(ROOT, 'integration', 'bench', 'image.sh')], { timeoutMs: 300_000 });
  return (await run('docker', ['image', 'inspect', '-f', '{{.Id}}', BENCH_IMAGE])).stdout.trim();
}

export async function benchDatapathLive(o: DatapathOptions, ctx: LiveContext): Promise<DatapathLiveResult> {
  const pin = pinning();
  const result: DatapathLiveResult = {
    note: 'iperf3 3.12 (one TCP stream, IPv4, client → server) and sockperf ping-pong (TCP, one persistent connection, ' +
      `${MESSAGE_BYTES}-byte messages, full round trips, --no-rdtsc) between a client and a server of each variant, on one host. ` +
      'Each round runs every variant once for throughput, then once for latency, in an order rotated every round. ' +
      'Latency per round = p50/p99 of the first N round trips sockperf logs after its own warm-up; the table gives the median over rounds. ' +
      'The Membrane pair talks through its BPF datapath (from_container redirects into the peer); the bridge pair through ' +
      'Docker\'s bridge and iptables; the veth pair directly (the floor).',
    settings: o,
    image: BENCH_IMAGE,
    imageId: '',
    bridgeVariant: ctx.networks.bridgeVariant,
    vethVariant: '',
    pinning: pin.client.length ? 'clients (iperf3 -A 0, taskset -c 0) on CPU 0, servers (iperf3 -A 1, taskset -c 1) on CPU 1' : 'none (fewer than 2 CPUs)',
    loadAverageAtStart: os.loadavg().map((x) => round(x, 2)),
    rounds: o.rounds,
    roundsCompleted: 0,
    throughput: { membrane: emptyThroughput(), bridge: emptyThroughput(), veth: emptyThroughput() },
    latency: { membrane: emptyLatency(), bridge: emptyLatency(), veth: emptyLatency() },
    ratios: { throughput: ratios({ membrane: NaN, bridge: NaN, veth: NaN }, []), latencyP50: ratios({ membrane: NaN, bridge: NaN, veth: NaN }, []), latencyP99: ratios({ membrane: NaN, bridge: NaN, veth: NaN }, []) },
    scenarioNote: 'The same rounds also run these paths and workloads, every variant once per round in the rotated order. ' +
      'tcp-N: iperf3 -P N (N TCP streams, Gbit/s summed). tcp-rr / udp-rr: rr (rr.c) request/response, ' +
      `${MESSAGE_BYTES}-byte messages, one at a time over one TCP connection (TCP_NODELAY) or one UDP socket, every round trip timed ` +
      'after 0.5 s of warm-up. c2c-v6: the container pairs over IPv6 (the bare veth pair over 2001:2::/64). c2host: to servers in ' +
      'the host\'s own namespace (on an address of the host). c2outside: to servers in a namespace behind a veth of its own, ' +
      'forwarded by the host (Membrane and the bridge masquerade). For c2host and c2outside the floor is a namespace on a bare veth ' +
      'to the host, routed by the host without NAT or programs. Ratios are medians of per-round ratios (both in the same round), ' +
      'with their range over rounds.',
    routedVariant: '',
    scenarios: [],
    bpfStats: null,
    cleanup: { problems: [] },
    errors: [],
  };
  const veth = new VethPair(ctx.runId);
  result.vethVariant = veth.describe();
  const routed = new RoutedPaths(ctx.runId);
  result.routedVariant = routed.describe();
  let routedFloor: Endpoints | undefined;
  const rrDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-rr-'));
  const scenarioRuns = o.scenarios.map((name) => new ScenarioRuns(name));
  const endpoints: Partial<Record<DatapathVariantKey, Endpoints>> = {};
  const containers: string[] = [];
  const tput: Record<DatapathVariantKey, IperfRun[]> = { membrane: [], bridge: [], veth: [] };
  const lat: Record<DatapathVariantKey, LatencyRun[]> = { membrane: [], bridge: [], veth: [] };
  const tputRounds: Array<Partial<Record<DatapathVariantKey, number>>> = [];
  const p50Rounds: Array<Partial<Record<DatapathVariantKey, number>>> = [];
  const p99Rounds: Array<Partial<Record<DatapathVariantKey, number>>> = [];
  const fail = (section: ThroughputVariant | LatencyVariant, err: unknown) => {
    section.failures++;
    if (section.errors.length < 5) section.errors.push(errorText(err));
  };
  try {
    result.imageId = await ensureBenchImage();
    // The namespaces' rr: the same source as the image's, built for this host.
    const rrBinary = path.join(rrDir, 'rr');
    await run('gcc', ['-static', '-O2', '-Wall', '-Werror', '-o', rrBinary, path.join(ROOT, 'integration', 'bench', 'rr.c')], { timeoutMs: 60_000 });
    if (o.scenarios.some((n) => n.startsWith('c2host/') || n.startsWith('c2outside/'))) {
      try {
        routedFloor = await routed.up(pin, rrBinary);
      } catch (err) {
        result.errors.push(`host and outside paths set-up: ${errorText(err)}`);
      }
    }
    for (const key of VARIANTS) {
      try {
        // Listed before they exist, so a half-made pair is removed too.
        if (key !== 'veth') containers.push(containerName(ctx.runId, key, 'srv'), containerName(ctx.runId, key, 'cli'));
        endpoints[key] = key === 'veth' ? await veth.up(pin, rrBinary)
          : await containerPair(key, ctx.networks[key], ctx.runId, ctx.labels, pin);
        // Neighbour entries (and Membrane's conntrack) primed before anything is timed.
        const e = endpoints[key]!;
        await e.client(['busybox', 'ping', '-c', '2', '-W', '1', e.server], 15_000);
        if (e.serverV6) await e.client(['busybox', 'ping', '-6', '-c', '2', '-W', '1', e.serverV6], 15_000);
      } catch (err) {
        result.errors.push(`${key} set-up: ${errorText(err)}`);
        delete endpoints[key];
      }
    }
    if (routedFloor) {
      for (const client of [endpoints.membrane, endpoints.bridge, routedFloor]) {
        for (const address of [routed.hostAddress, routed.outsideAddress]) {
          if (client) await client.client(['busybox', 'ping', '-c', '2', '-W', '1', address], 15_000);
        }
      }
    }
    const deadline = performance.now() + o.maxSeconds * 1000;
    for (let r = 0; r < o.rounds; r++) {
      if (ctx.aborted()) throw new Error('interrupted');
      if (performance.now() > deadline) {
        result.errors.push(`datapath rounds hit their time limit (${o.maxSeconds} s) after ${result.roundsCompleted} rounds`);
        break;
      }
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]!);
      const t: Partial<Record<DatapathVariantKey, number>> = {};
      const p50: Partial<Record<DatapathVariantKey, number>> = {};
      const p99: Partial<Record<DatapathVariantKey, number>> = {};
      for (const key of order) {
        const e = endpoints[key];
        if (!e || ctx.aborted()) continue;
        try {
          const x = await iperfOnce(e, o, pin);
          tput[key].push(x);
          t[key] = x.gbps;
        } catch (err) {
          fail(result.throughput[key], err);
        }
      }
      for (const key of order) {
        const e = endpoints[key];
        if (!e || ctx.aborted()) continue;
        try {
          const x = await latencyOnce(e, o, pin);
          lat[key].push(x);
          p50[key] = x.p50Us;
          p99[key] = x.p99Us;
        } catch (err) {
          fail(result.latency[key], err);
        }
      }
      tputRounds.push(t);
      p50Rounds.push(p50);
      p99Rounds.push(p99);
      for (const sc of scenarioRuns) {
        const values: Partial<Record<DatapathVariantKey, { value: number; p99?: number }>> = {};
        for (const key of order) {
          if (ctx.aborted()) break;
          const where = scenarioTarget(sc.path, key, endpoints, routedFloor, routed);
          if (!where) continue;
          try {
            values[key] = await sc.measure(key, where.client, where.to, o, pin);
          } catch (err) {
            sc.fail(key, err);
          }
        }
        sc.rounds.push(values);
      }
      result.roundsCompleted++;
    }
    for (const key of VARIANTS) {
      const s = summarize(tput[key].map((x) => x.gbps));
      Object.assign(result.throughput[key], {
        n: s.n, medianGbps: round(s.median, 3), iqrGbps: round(s.iqr, 3), minGbps: round(s.min, 3), maxGbps: round(s.max, 3),
        medianRetransmits: median(tput[key].map((x) => x.retransmits)),
        medianCpuSenderPercent: round(median(tput[key].map((x) => x.cpuSenderPercent)), 1),
        medianCpuReceiverPercent: round(median(tput[key].map((x) => x.cpuReceiverPercent)), 1),
        runs: tput[key],
      });
      Object.assign(result.latency[key], {
        n: lat[key].length,
        p50Us: round(median(lat[key].map((x) => x.p50Us)), 2),
        p99Us: round(median(lat[key].map((x) => x.p99Us)), 2),
        meanUs: round(median(lat[key].map((x) => x.meanUs)), 2),
        messagesPerRound: lat[key].map((x) => x.n),
        runs: lat[key],
      });
    }
    result.scenarios = scenarioRuns.map((sc) => sc.result());
    const med = (pick: (k: DatapathVariantKey) => number) => ({ membrane: pick('membrane'), bridge: pick('bridge'), veth: pick('veth') });
    result.ratios = {
      throughput: ratios(med((k) => result.throughput[k].medianGbps), tputRounds),
      latencyP50: ratios(med((k) => result.latency[k].p50Us), p50Rounds),
      latencyP99: ratios(med((k) => result.latency[k].p99Us), p99Rounds),
    };
    if (endpoints.membrane && !ctx.aborted()) {
      result.bpfStats = await liveBpfStats(endpoints.membrane, o, pin,
        [containerName(ctx.runId, 'membrane', 'srv'), containerName(ctx.runId, 'membrane', 'cli')], ctx.networks.membrane);
    }
  } catch (err) {
    result.errors.push(errorText(err));
  } finally {
    for (const c of containers) {
      const r = await run('docker', ['rm', '-f', c], { allowFail: true, timeoutMs: 60_000 });
      if (r.code !== 0 && !/No such container/.test(r.stderr)) result.cleanup.problems.push(`docker rm ${c}: ${r.stderr.trim()}`);
    }
    result.cleanup.problems.push(...await veth.down());
    result.cleanup.problems.push(...await routed.down());
    fs.rmSync(rrDir, { recursive: true, force: true });
  }
  return result;
}

async function liveBpfStats(e: Endpoints, o: DatapathOptions, pin: Pinning, containers: string[], network: string): Promise<NonNullable<DatapathLiveResult['bpfStats']>> {
  const before = fs.readFileSync(BPF_STATS_SYSCTL, 'utf8').trim();
  const stats: NonNullable<DatapathLiveResult['bpfStats']> = {
    note: 'One extra iperf3 run and one extra sockperf run on the Membrane pair with kernel.bpf_stats_enabled=1 (not part of the ' +
      'ratios: the stats add two clock reads to every program run). run_time_ns and run_cnt deltas of the programs attached to ' +
      'the two containers\' host-side veths (one loaded program of each name serves every endpoint). A run is one skb: under ' +
      'iperf3 these are GSO/GRO aggregates of up to 64 KiB, under sockperf single 64-byte messages and ACKs. to_container ' +
      'counts only what the host stack delivers: container-to-container packets are put into the peer by from_container ' +
      '(bpf_redirect_peer) and never pass the host side\'s egress, so it may show no runs here.',
    sysctlBefore: before, sysctlRestored: false, phases: [], errors: [],
  };
  const restore = () => {
    try {
      fs.writeFileSync(BPF_STATS_SYSCTL, before);
    } catch {
      // reported below through sysctlRestored
    }
  };
  process.once('exit', restore);
  try {
    const ids = await membraneProgramIds(containers, network);
    if (!ids.length) throw new Error('no from_container/to_container programs found on the Membrane containers\' veths');
    fs.writeFileSync(BPF_STATS_SYSCTL, '1');
    try {
      const i = await statsPhase(`iperf3 -t ${o.iperfSeconds}`, ids, () => iperfOnce(e, o, pin));
      stats.phases.push({ ...i.phase, gbps: i.value.gbps });
    } catch (err) {
      stats.errors.push(`iperf3 with stats: ${errorText(err)}`);
    }
    try {
      const l = await statsPhase(`sockperf ping-pong -t ${o.sockperfSeconds}`, ids, () => latencyOnce(e, o, pin));
      stats.phases.push({ ...l.phase, p50Us: l.value.p50Us, p99Us: l.value.p99Us });
    } catch (err) {
      stats.errors.push(`sockperf with stats: ${errorText(err)}`);
    }
  } catch (err) {
    stats.errors.push(errorText(err));
  } finally {
    restore();
    process.removeListener('exit', restore);
    stats.sysctlRestored = fs.readFileSync(BPF_STATS_SYSCTL, 'utf8').trim() === before;
    if (!stats.sysctlRestored) stats.errors.push(`kernel.bpf_stats_enabled could not be restored to ${before}`);
  }
  return stats;
}

// ---- per-packet program cost (BPF_PROG_TEST_RUN) -----------------------------------------------

const TC_ACT_OK = 0;
const TC_ACT_REDIRECT = 7;

/** __sk_buff with only ifindex set (offset 40); the kernel resolves it to the device. */
function skbCtx(ifindex: number): Buffer {
  const ctx = Buffer.alloc(44);
  ctx.writeUInt32LE(ifindex, 40);
  return ctx;
}

const NOOP_SOURCE = `// no-op tc program: the harness overhead BPF_PROG_TEST_RUN adds to every timed run
#include <linux/bpf.h>
__attribute__((section("tc"), used)) int noop(struct __sk_buff *skb) { return 0; }
char _license[] __attribute__((section("license"), used)) = "GPL";
`;

async function compileNoop(dir: string): Promise<string> {
  const src = path.join(dir, 'noop.bpf.c');
  const out = path.join(dir, 'noop.bpf.o');
  fs.writeFileSync(src, NOOP_SOURCE);
  await run('clang', ['-O2', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-c', src, '-o', out], { timeoutMs: 60_000 });
  return out;
}

/** `objectPath`: another build of the object (a before/after comparison); the tree's own by default. */
export async function benchProgramCost(o: DatapathOptions, objectPath = OBJECT): Promise<ProgCostResult> {
  const nl = native();
  const result: ProgCostResult = {
    note: 'BPF_PROG_TEST_RUN of from_container on Membrane\'s compiled object (fresh unpinned maps, trace sampling off) with ' +
      'endpoints A, B and C of one network on real throwaway veths, mb_lb_config as the daemon writes it (VIP ranges set: ' +
      'a destination outside them costs no frontend lookup). Each flow is made established first (SYN from A, ' +
      'SYN-ACK back), then an ACK of it is timed. "repeat" = one syscall running the program `repeat` times in the kernel on ' +
      'the same skb (durationNs = the kernel\'s average); "single" = one run per syscall, summed kernel durations / runs, ' +
      'which includes one clock read per run. The kernel repeats a run on the same skb without restoring it, and the redirect ' +
      'path rewrites MACs and TTL in place: "burst" times it repeated anyway, on a flow to a third endpoint C whose MACs are A\'s ' +
      'swapped (the rewrite then writes back the bytes it read) with TTL 255, so each syscall runs the program `burst` (250) ' +
      'times, every run redirecting (checked: the packet out has TTL 255 - 250, and conntrack counted every run), with clock ' +
      'reads at the burst\'s ends only; durationNs = the kernel\'s average (truncated to whole ns), averaged over the batch\'s ' +
      'syscalls. To-stack and no-op are timed the same way beside it. "− no-op" subtracts a ' +
      'no-op tc program measured the same way. Test runs redirect nothing and loop hot in cache: a lower bound of the real cost.',
    object: objectPath,
    packet: 'IPv4 TCP ACK, no payload (54 bytes), established flow',
    rows: [],
    conntrack: { redirectPacketsOrig: NaN, toStackPacketsOrig: NaN, state: [] },
    noopError: null,
    errors: [],
  };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-prog-'));
  const links: string[] = [];
  const objects: BpfObject[] = [];
  try {
    const obj = nl.bpfObjectLoad(objectPath, objectLoadOptionsForTests());
    objects.push(obj);
    const map = (name: string) => {
      const m = obj.maps.find((x) => x.name === name);
      if (!m) throw new Error(`map ${name} not in ${objectPath}`);
      return m.fd;
    };
    const from = obj.programs.find((p) => p.name === 'from_container')?.fd;
    const to = obj.programs.find((p) => p.name === 'to_container')?.fd;
    if (from === undefined || to === undefined) throw new Error('from_container/to_container not in the object');
    const veth = () => {
      const name = `mbq${randomBytes(5).toString('hex')}`;
      links.push(name);
      return nl.linkCreateVeth(name, `${name}p`, {});
    };
    const A = { mac: '02:00:00:00:00:0a', hostMac: '02:00:00:00:01:0a', ipv4: '10.20.0.10', gateway4: '10.20.0.1', ifindex: veth() };
    const B = { mac: '02:00:00:00:00:0b', hostMac: '02:00:00:00:01:0b', ipv4: '10.20.0.11', gateway4: '10.20.0.1', ifindex: veth() };
    // C's MACs are A's swapped: the rewrite for C leaves a packet from A as it was, so a repeated run redirects every time.
    const C = { mac: A.hostMac, hostMac: A.mac, ipv4: '10.20.0.12', gateway4: '10.20.0.1', ifindex: veth() };
    for (const [e, id] of [[A, 1], [B, 2], [C, 3]] as const) {
      const value = encodeEndpointInfo({ ...e, endpointId: id, identity: 0, networkId: 1 });
      nl.bpfMapUpdate(map('mb_endpoints_by_if'), encodeIfindexKey(e.ifindex), value, 0);
      nl.bpfMapUpdate(map('mb_endpoints'), encodeEndpointKey(e.ipv4), value, 0);
    }
    // The load balancer's settings as the daemon writes them with its defaults (socket level on, service DNS on, VIP ranges
    // 10.211.0.0/16 and a ULA /112): a destination outside the ranges costs no frontend lookup. Fresh maps have a /0 there.
    nl.bpfMapUpdate(map('mb_lb_config'), U32_KEY.encode({ value: 0 }), LB_CONFIG.encode({
      flags: LB_CONFIG_F_SOCKET | LB_CONFIG_F_DNS, dnsPort: 53, dnsZoneLen: 0, dnsZoneLabels: 0,
      vip4Net: Buffer.from([10, 211, 0, 0]), vip4Mask: Buffer.from([255, 255, 0, 0]),
      vip6Net: Buffer.from('fd000000000000000000000000000000', 'hex'), vip6Mask: Buffer.from('ffffffffffffffffffffffffffff0000', 'hex'),
    }), 0);
    const outside = '198.51.100.7'; // TEST-NET-2: never leaves the test run
    const fromA = (dst: string, dport: number, flags: number, ttl = 64) =>
      ethernet(A.hostMac, A.mac, ETH_P_IP, ipv4(A.ipv4, dst, tcp(40000, dport, flags), ttl));
    const expect = (what: string, retval: number, want: number) => {
      if (retval !== want) throw new Error(`${what}: verdict ${retval}, expected ${want}`);
    };
    // Flow 1, A -> B: redirected into B.
    expect('SYN A->B', nl.bpfProgTestRun(from, fromA(B.ipv4, 80, TCP_SYN), { ctxIn: skbCtx(A.ifindex) }).retval, TC_ACT_REDIRECT);
    expect('SYN-ACK B->A', nl.bpfProgTestRun(from, ethernet(B.hostMac, B.mac, ETH_P_IP, ipv4(B.ipv4, A.ipv4, tcp(80, 40000, TCP_SYN | TCP_ACK))),
      { ctxIn: skbCtx(B.ifindex) }).retval, TC_ACT_REDIRECT);
    // Flow 3, A -> C: redirected into C, for the repeated runs.
    expect('SYN A->C', nl.bpfProgTestRun(from, fromA(C.ipv4, 80, TCP_SYN), { ctxIn: skbCtx(A.ifindex) }).retval, TC_ACT_REDIRECT);
    expect('SYN-ACK C->A', nl.bpfProgTestRun(from, ethernet(C.hostMac, C.mac, ETH_P_IP, ipv4(C.ipv4, A.ipv4, tcp(80, 40000, TCP_SYN | TCP_ACK))),
      { ctxIn: skbCtx(C.ifindex) }).retval, TC_ACT_REDIRECT);
    // Flow 2, A -> outside: to the host stack; the reply comes back through to_container.
    expect('SYN A->outside', nl.bpfProgTestRun(from, fromA(outside, 443, TCP_SYN), { ctxIn: skbCtx(A.ifindex) }).retval, TC_ACT_OK);
    nl.bpfProgTestRun(to, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4(outside, A.ipv4, tcp(443, 40000, TCP_SYN | TCP_ACK))), { ctxIn: skbCtx(A.ifindex) });
    const ackRedirect = fromA(B.ipv4, 80, TCP_ACK);
    const ackStack = fromA(outside, 443, TCP_ACK);
    const burst = o.progBurstRepeat;
    // TTL 255: every one of a burst's runs still has a TTL above 1 to decrement (the last leaves 255 - burst).
    const ackBurst = fromA(C.ipv4, 80, TCP_ACK, 255);
    const ackBurstAfter = fromA(C.ipv4, 80, TCP_ACK, 255 - burst);
    const ctState = (daddr: string, dport: number) => {
      const v = nl.bpfMapLookup(map('mb_conntrack'), encodeCtKey({ family: 4, proto: 6, saddr: A.ipv4, daddr, sport: 40000, dport }));
      return v ? decodeCtEntry(v) : null;
    };
    for (const [what, daddr, dport] of [['redirect flow', B.ipv4, 80], ['burst redirect flow', C.ipv4, 80], ['to-stack flow', outside, 443]] as const) {
      const s = ctState(daddr, dport);
      if (s?.state !== 'established') throw new Error(`${what}: conntrack state ${s?.state ?? 'missing'}, expected established`);
    }

    let noop: number | undefined;
    try {
      const noopObj = nl.bpfObjectLoad(await compileNoop(tmp), {});
      objects.push(noopObj);
      noop = noopObj.programs[0]?.fd;
    } catch (err) {
      result.noopError = errorText(err);
    }

    const batchesOf = (fn: () => number) => {
      const values: number[] = [];
      for (let b = 0; b < o.progBatches; b++) values.push(fn());
      return values;
    };
    const single = (prog: number, packet: Buffer, ifindex: number, want: number, counter: { bad: number }) => batchesOf(() => {
      const ctxIn = skbCtx(ifindex);
      let total = 0;
      for (let i = 0; i < o.progSingleRuns; i++) {
        const r = nl.bpfProgTestRun(prog, packet, { ctxIn });
        total += r.durationNs;
        if (r.retval !== want) counter.bad++;
      }
      return total / o.progSingleRuns;
    });
    const repeated = (prog: number, packet: Buffer, ifindex: number, want: number, counter: { bad: number }) => batchesOf(() => {
      const r = nl.bpfProgTestRun(prog, packet, { ctxIn: skbCtx(ifindex), repeat: o.progRepeat });
      if (r.retval !== want) counter.bad += o.progRepeat;
      if (!r.data.equals(packet)) counter.bad += o.progRepeat; // the to-stack path must leave the packet alone
      return r.durationNs;
    });
    // Bursts: the kernel's average of each syscall's runs (clock reads at a burst's start and end only), averaged over the
    // batch's syscalls. Every run must have taken the same path: the packet out is exactly what `after` says `burst` runs leave.
    const bursts = (prog: number, packet: Buffer, after: Buffer, ifindex: number, want: number, counter: { bad: number }) => batchesOf(() => {
      const ctxIn = skbCtx(ifindex);
      let total = 0;
      for (let i = 0; i < o.progBurstCalls; i++) {
        const r = nl.bpfProgTestRun(prog, packet, { ctxIn, repeat: burst });
        total += r.durationNs;
        if (r.retval !== want || !r.data.equals(after)) counter.bad += burst;
      }
      return total / o.progBurstCalls;
    });
    const runsPerBatch = (method: ProgCostRow['method']) =>
      method === 'repeat' ? o.progRepeat : method === 'burst' ? o.progBurstCalls * burst : o.progSingleRuns;
    const row = (p: ProgCostRow['path'], method: ProgCostRow['method'], want: number, values: number[], bad: number): ProgCostRow => {
      const s = summarize(values);
      return {
        path: p, method, expectedRetval: want, unexpectedRetvals: bad, runsPerBatch: runsPerBatch(method), batches: values.length,
        nsPerPacket: round(s.median, 1), minNsPerPacket: round(s.min, 1), maxNsPerPacket: round(s.max, 1), netOfNoopNs: NaN,
      };
    };
    const measure = (p: ProgCostRow['path'], method: ProgCostRow['method'], prog: number, packet: Buffer, want: number, after = packet) => {
      const counter = { bad: 0 };
      const values = method === 'burst' ? bursts(prog, packet, after, A.ifindex, want, counter)
        : (method === 'repeat' ? repeated : single)(prog, packet, A.ifindex, want, counter);
      result.rows.push(row(p, method, want, values, counter.bad));
    };
    // Interleave the paths within each method so drift hits them alike.
    measure('to-stack', 'repeat', from, ackStack, TC_ACT_OK);
    if (noop !== undefined) measure('no-op', 'repeat', noop, ackStack, TC_ACT_OK);
    const burstBefore = ctState(C.ipv4, 80);
    measure('redirect-local-endpoint', 'burst', from, ackBurst, TC_ACT_REDIRECT, ackBurstAfter);
    const burstCounted = Number(ctState(C.ipv4, 80)?.packetsOrig ?? NaN) - Number(burstBefore?.packetsOrig ?? NaN);
    const burstRuns = o.progBurstCalls * burst * o.progBatches;
    if (burstCounted !== burstRuns) result.errors.push(`burst redirect flow: conntrack counted ${burstCounted} packets for ${burstRuns} runs`);
    measure('to-stack', 'burst', from, ackStack, TC_ACT_OK);
    if (noop !== undefined) measure('no-op', 'burst', noop, ackStack, TC_ACT_OK);
    measure('redirect-local-endpoint', 'single', from, ackRedirect, TC_ACT_REDIRECT);
    measure('to-stack', 'single', from, ackStack, TC_ACT_OK);
    if (noop !== undefined) measure('no-op', 'single', noop, ackStack, TC_ACT_OK);
    for (const r of result.rows) {
      const base = result.rows.find((x) => x.path === 'no-op' && x.method === r.method);
      r.netOfNoopNs = base ? round(r.nsPerPacket - base.nsPerPacket, 1) : NaN;
    }
    const redirect = ctState(B.ipv4, 80);
    const stack = ctState(outside, 443);
    result.conntrack = {
      redirectPacketsOrig: Number(redirect?.packetsOrig ?? NaN),
      toStackPacketsOrig: Number(stack?.packetsOrig ?? NaN),
      state: [redirect?.state ?? 'missing', stack?.state ?? 'missing'],
    };
  } catch (err) {
    result.errors.push(errorText(err));
  } finally {
    for (const obj of objects) obj.close();
    deleteVeths(nl, links, result.errors);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return result;
}
