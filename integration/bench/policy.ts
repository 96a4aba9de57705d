// Policy at scale, called by run.ts. Reports ratios; never passes or fails on timing.
//
//   Live (needs the run's daemon): one client/server pair on the Membrane network and one on
//   Docker's bridge. Each round visits every size in a rotated order; at each size the Membrane
//   server's policy map holds about SIZE extra entries (SIZE imported rules, one TCP port each,
//   allowing the client) and a chain jumped to first thing from DOCKER-USER holds SIZE
//   non-matching iptables rules for the bridge pair; then both pairs run iperf3 and sockperf
//   (datapath.ts's measurements) in an alternating order. Ratios: each size against size 0 per
//   system (flatness), and Membrane against iptables at each size.
//   Control plane, same daemon: importing the SIZE-rule set (API round trip and the daemon's own
//   regeneration time from /v1/status), deleting it, and one change at the largest size (import
//   one more rule, delete it again), with the iptables counterparts (iptables-restore --noflush
//   of the set, `iptables -A` / `-D` of one rule).
//
//   New-flow cost (no daemon, no Docker): BPF_PROG_TEST_RUN of from_container on a SYN from a
//   client endpoint to a server endpoint whose ingress policy trie holds 0 .. 100k extra entries,
//   a fresh source port per run and the conntrack entry deleted after it: every timed run takes
//   the new-flow path, the only one where policy is looked up.
//
// Everything made here is removed in `finally`: the rules (by their run label), the containers,
// the iptables chain and its jump (also from a process 'exit' hook, so a second Ctrl-C or a crash
// still restores DOCKER-USER), the pinned tries and the veths of the new-flow part.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { ROOT, apiRequest, eventually, run } from '../harness.js';
import { native, type BpfObject } from '../../plugin/kernel/native.js';
import { objectLoadOptionsForTests } from '../../plugin/features.js';
import { encodeConfig, encodeCtKey, encodeEndpointInfo, encodeEndpointKey, encodeIfindexKey, type EndpointInfo } from '../../plugin/datapath/codec.js';
import { ETH_P_IP, TCP_SYN, ethernet, ipv4, tcp } from '../../plugin/datapath/packets.js';
import { PolicyMaps } from '../../plugin/datapath/policy-maps.js';
import type { Datapath } from '../../plugin/datapath/loader.js';
import { IdentityAllocator, emptyIdentityState } from '../../plugin/identity/identities.js';
import { PolicyCompiler } from '../../plugin/policy/compile.js';
import { parseLabel } from '../../plugin/policy/labels.js';
import type { PolicyRule, PortProtocolSpec, StoredRule } from '../../plugin/policy/types.js';
import {
  IPERF_PORT, SOCKPERF_PORT, containerPair, datapathOptions, deleteVeths, ensureBenchImage, errorText, iperfOnce, latencyOnce, pinning,
  type DatapathOptions, type Endpoints, type IperfRun, type LatencyRun, type LatencyVariant, type Pinning, type ThroughputVariant,
} from './datapath.js';
import { fmt, median, ratio, round, summarize, timingSummary, type TimingSummary } from './stats.js';

const OBJECT = path.join(ROOT, 'bpf', 'build', 'membrane.bpf.o');
const SERVER_APP = 'bench-server';
const CLIENT_APP = 'bench-client';
/** Ports of the size-N rule sets: one rule (and one policy entry) per port, clear of 5201 and 11111. */
const FILLER_FIRST_PORT = 20_000;
/** Ports of the single-rule changes, below the filler range. */
const CHANGE_FIRST_PORT = 19_000;
/** Sources of the iptables filler rules: TEST-NET-1, never the source of a container's packet. */
const IPTABLES_NET = '192.0.2';
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;

export type PolicySystem = 'membrane' | 'iptables';
const SYSTEMS: PolicySystem[] = ['membrane', 'iptables'];

// ---- options -----------------------------------------------------------------------------------

export interface PolicyBenchOptions {
  smoke: boolean;
  /** Interleaved rounds; each visits every size once and measures both systems there. */
  rounds: number;
  /** Extra entries in the Membrane server's policy map = non-matching iptables rules on the bridge path. */
  sizes: number[];
  /** Single-rule import + delete pairs at the largest size. */
  changeRepetitions: number;
  /** iperf3 / sockperf settings (datapath.ts's, shorter: this section measures six combinations per round). */
  traffic: DatapathOptions;
  /** New-flow cost: trie sizes, timed runs per batch (one syscall each) and batches. */
  newFlowSizes: number[];
  newFlowRuns: number;
  newFlowBatches: number;
  /** Wall-clock limit for the rounds; no new round starts after it. */
  maxSeconds: number;
}

export function policyOptions(smoke: boolean, rounds?: number): PolicyBenchOptions {
  return {
    smoke,
    rounds: rounds ?? (smoke ? 1 : 5),
    sizes: smoke ? [0, 20, 100] : [0, 1_000, 10_000],
    changeRepetitions: smoke ? 2 : 7,
    traffic: {
      ...datapathOptions(smoke),
      iperfSeconds: smoke ? 1 : 3,
      iperfOmitSeconds: smoke ? 0 : 1,
      sockperfSeconds: smoke ? 2 : 3,
    },
    newFlowSizes: smoke ? [0, 100, 1_000] : [0, 1_000, 10_000, 100_000],
    newFlowRuns: smoke ? 1_000 : 20_000,
    newFlowBatches: smoke ? 2 : 5,
    maxSeconds: smoke ? 120 : 330,
  };
}

// ---- results -----------------------------------------------------------------------------------

export interface TrafficPoint {
  throughput: ThroughputVariant;
  latency: LatencyVariant;
}

export interface SizePoint {
  size: number;
  membrane: TrafficPoint;
  iptables: TrafficPoint;
}

/** A measure at one size against the same system at size 0, or Membrane against iptables. */
export interface RatioRow {
  size: number;
  throughput: number;
  p50: number;
  p99: number;
  /** Median over rounds of the per-round ratio (both sides measured in the same round). */
  pairedThroughput: number;
  pairedP50: number;
  pairedP99: number;
}

/** One kind of Membrane policy change, timed from the client and inside the daemon. */
export interface MembraneChangeTiming {
  rules: number;
  /** HTTP round trip of POST/DELETE /v1/policy: parse, store, regeneration, answer. */
  api: TimingSummary;
  /** policy.lastRegeneration.ms: compiling every endpoint and writing the differences. */
  regeneration: TimingSummary;
  /** GET /v1/policy/wait for the new revision, after the answer. */
  wait: TimingSummary;
  /** Map writes and deletions of each regeneration (shows that only differences are written). */
  written: number[];
  deleted: number[];
  /** Samples whose lastRegeneration was not the change's own revision (a later one had run). */
  reportMismatches: number;
}

export interface PolicyLiveResult {
  note: string;
  settings: PolicyBenchOptions;
  image: string;
  pinning: string;
  loadAverageAtStart: number[];
  rounds: number;
  roundsCompleted: number;
  membrane: {
    network: string;
    serverEndpoint: string;
    /** What GET /v1/bpf/policy/<server> returned at each size (first visit): ingress entries, and the read's time. */
    mapEntries: Array<{ size: number; entries: number; ingressEntries: number; readMs: number }>;
  };
  iptables: {
    version: string;
    network: string;
    bridgeInterface: string;
    chain: string;
    jump: string;
    /** Rules in the chain at each size (first visit), from `iptables -S`. */
    chainRules: Array<{ size: number; rules: number }>;
    dockerUserBefore: string[];
    dockerUserAfter: string[];
    dockerUserRestored: boolean;
  };
  points: SizePoint[];
  ratios: {
    /** Each size against size 0, per system: 1.0 = flat. */
    flatness: Record<PolicySystem, RatioRow[]>;
    /** Membrane / iptables at each size (throughput above 1 and latency below 1 favour Membrane). */
    membraneOverIptables: RatioRow[];
  };
  controlPlane: {
    note: string;
    membrane: { importSet: MembraneChangeTiming; deleteSet: MembraneChangeTiming; addOne: MembraneChangeTiming; deleteOne: MembraneChangeTiming };
    iptables: { loadSet: TimingSummary & { rules: number }; addOne: TimingSummary; deleteOne: TimingSummary };
  };
  cleanup: { problems: string[] };
  errors: string[];
}

export interface NewFlowRow {
  size: number;
  /** Entries the server's trie held (size + the traffic rule's one). */
  entries: number;
  path: 'allowed' | 'default-denied';
  expectedRetval: number;
  unexpectedRetvals: number;
  /** Allowed path only: runs after which no conntrack entry was there to delete (the flow was not new). */
  missingConntrack: number;
  runsPerBatch: number;
  batches: number;
  /** Median over batches of the summed kernel durations / runs. */
  nsPerPacket: number;
  minNsPerPacket: number;
  maxNsPerPacket: number;
  ratioVsZero: number;
}

export interface PolicyNewFlowResult {
  note: string;
  object: string;
  /** Where the tries were pinned (removed afterwards). */
  pinDir: string;
  trieMaxEntries: number;
  /** Compile + PolicyMaps.apply of each trie (ms), for reference. */
  writeMs: Record<string, number>;
  rows: NewFlowRow[];
  errors: string[];
}

// ---- small helpers -----------------------------------------------------------------------------


const timing = (values: number[]): TimingSummary => timingSummary(values, 2);

function emptyThroughput(): ThroughputVariant {
  return {
    n: 0, medianGbps: NaN, iqrGbps: NaN, minGbps: NaN, maxGbps: NaN, medianRetransmits: NaN, medianCpuSenderPercent: NaN,
    medianCpuReceiverPercent: NaN, runs: [], failures: 0, errors: [],
  };
}

function emptyLatency(): LatencyVariant {
  return { n: 0, p50Us: NaN, p99Us: NaN, meanUs: NaN, messagesPerRound: [], runs: [], failures: 0, errors: [] };
}

function summarizeThroughput(runs: IperfRun[], into: ThroughputVariant): void {
  const s = summarize(runs.map((x) => x.gbps));
  Object.assign(into, {
    n: s.n, medianGbps: round(s.median, 3), iqrGbps: round(s.iqr, 3), minGbps: round(s.min, 3), maxGbps: round(s.max, 3),
    medianRetransmits: median(runs.map((x) => x.retransmits)),
    medianCpuSenderPercent: round(median(runs.map((x) => x.cpuSenderPercent)), 1),
    medianCpuReceiverPercent: round(median(runs.map((x) => x.cpuReceiverPercent)), 1),
    runs,
  });
}

function summarizeLatency(runs: LatencyRun[], into: LatencyVariant): void {
  Object.assign(into, {
    n: runs.length,
    p50Us: round(median(runs.map((x) => x.p50Us)), 2),
    p99Us: round(median(runs.map((x) => x.p99Us)), 2),
    meanUs: round(median(runs.map((x) => x.meanUs)), 2),
    messagesPerRound: runs.map((x) => x.n),
    runs,
  });
}

/** __sk_buff with only ifindex set (offset 40); the kernel resolves it to the device. */
function skbCtx(ifindex: number): Buffer {
  const ctx = Buffer.alloc(44);
  ctx.writeUInt32LE(ifindex, 40);
  return ctx;
}

// ---- the management API ------------------------------------------------------------------------

interface RegenerationReport {
  revision: number;
  endpoints: number;
  written: number;
  deleted: number;
  ms: number;
}

/** One request on the daemon's API socket; throws on an error answer. */
function apiCall<T>(method: string, urlPath: string, body?: string): Promise<{ body: T; ms: number }> {
  return apiRequest<T>(method, urlPath, body);
}

/** A rule in the import document's (Cilium's) shape: the server accepts `port` on TCP from the client. */
function portRule(runId: string, set: string, port: number): Record<string, unknown> {
  return {
    labels: [`bench-run=${runId}`, `bench-set=${set}`, `bench-port=${port}`],
    endpointSelector: { matchLabels: { app: SERVER_APP } },
    ingress: [{ fromEndpoints: [{ matchLabels: { app: CLIENT_APP } }], toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }],
  };
}

/** What the measurements themselves need: iperf3 and sockperf (TCP), and ping to prime neighbours. */
function trafficRule(runId: string): Record<string, unknown> {
  return {
    labels: [`bench-run=${runId}`, 'bench-set=traffic'],
    endpointSelector: { matchLabels: { app: SERVER_APP } },
    ingress: [
      { fromEndpoints: [{ matchLabels: { app: CLIENT_APP } }], toPorts: [{ ports: [{ port: String(IPERF_PORT), protocol: 'TCP' }, { port: String(SOCKPERF_PORT), protocol: 'TCP' }] }] },
      { fromEndpoints: [{ matchLabels: { app: CLIENT_APP } }], icmps: [{ fields: [{ type: 8, family: 'IPv4' }] }] },
    ],
  };
}

function emptyChange(rules: number): MembraneChangeTiming {
  return { rules, api: timing([]), regeneration: timing([]), wait: timing([]), written: [], deleted: [], reportMismatches: 0 };
}

/** Keeps the raw samples of one kind of change; summarized at the end. */
class ChangeSamples {
  readonly api: number[] = [];
  readonly regeneration: number[] = [];
  readonly wait: number[] = [];
  readonly written: number[] = [];
  readonly deleted: number[] = [];
  mismatches = 0;

  constructor(readonly rules: number) {}

  summary(): MembraneChangeTiming {
    return {
      rules: this.rules, api: timing(this.api), regeneration: timing(this.regeneration), wait: timing(this.wait),
      written: this.written, deleted: this.deleted, reportMismatches: this.mismatches,
    };
  }
}

/** The Membrane side: which filler set is imported, and the timing of every change made. */
class MembranePolicy {
  current = 0;
  readonly importSet: ChangeSamples;
  readonly deleteSet: ChangeSamples;
  readonly addOne = new ChangeSamples(1);
  readonly deleteOne = new ChangeSamples(1);

  constructor(private readonly runId: string, readonly largest: number) {
    this.importSet = new ChangeSamples(largest);
    this.deleteSet = new ChangeSamples(largest);
  }

  /** Runs one change, waits for its revision and records the daemon's regeneration report. */
  private async change(samples: ChangeSamples | undefined, call: () => Promise<{ body: { revision: number }; ms: number }>): Promise<number> {
    const { body, ms } = await call();
    const waitStarted = performance.now();
    await apiCall('GET', `/v1/policy/wait?revision=${body.revision}&timeout=120000`);
    const waitMs = performance.now() - waitStarted;
    if (samples) {
      const status = (await apiCall<{ policy?: { lastRegeneration?: RegenerationReport | null } }>('GET', '/v1/status')).body;
      const report = status.policy?.lastRegeneration;
      samples.api.push(ms);
      samples.wait.push(waitMs);
      if (report) {
        samples.regeneration.push(report.ms);
        samples.written.push(report.written);
        samples.deleted.push(report.deleted);
        if (report.revision !== body.revision) samples.mismatches++;
      }
    }
    return body.revision;
  }

  async importTraffic(): Promise<void> {
    await this.change(undefined, async () => {
      const answer = await apiCall<{ revision: number; enforced?: boolean }>('POST', '/v1/policy', JSON.stringify([trafficRule(this.runId)]));
      // On the routing datapath policy is stored but not enforced: there would be nothing to measure.
      if (answer.body.enforced === false) throw new Error('the daemon does not enforce policy (datapath "routing"); this section needs the BPF datapath');
      return answer;
    });
  }

  /** Makes the imported filler set the one of `size` rules (deleting the current set first). */
  async setSize(size: number): Promise<void> {
    if (size === this.current) return;
    if (this.current > 0) {
      const current = this.current;
      await this.change(current === this.largest ? this.deleteSet : undefined,
        () => apiCall('DELETE', `/v1/policy?labels=${encodeURIComponent(`bench-run=${this.runId},bench-set=size-${current}`)}`));
      this.current = 0;
    }
    if (size > 0) {
      if (FILLER_FIRST_PORT + size - 1 > 65535) throw new Error(`size ${size} does not fit into TCP ports ${FILLER_FIRST_PORT}-65535`);
      const rules = Array.from({ length: size }, (_, i) => portRule(this.runId, `size-${size}`, FILLER_FIRST_PORT + i));
      const body = JSON.stringify(rules);
      await this.change(size === this.largest ? this.importSet : undefined, () => apiCall('POST', '/v1/policy', body));
      this.current = size;
    }
  }

  async changeOne(k: number): Promise<void> {
    const port = CHANGE_FIRST_PORT + k;
    await this.change(this.addOne, () => apiCall('POST', '/v1/policy', JSON.stringify([portRule(this.runId, 'change', port)])));
    await this.change(this.deleteOne, () => apiCall('DELETE',
      `/v1/policy?labels=${encodeURIComponent(`bench-run=${this.runId},bench-set=change,bench-port=${port}`)}`));
  }

  /** Deletes every rule of this run. */
  async removeAll(): Promise<void> {
    await apiCall('DELETE', `/v1/policy?labels=${encodeURIComponent(`bench-run=${this.runId}`)}`);
    this.current = 0;
  }
}

// ---- the iptables baseline ---------------------------------------------------------------------

async function dockerUserRules(): Promise<string[]> {
  return (await run('iptables', ['-w', '-S', 'DOCKER-USER'])).stdout.trim().split('\n').filter(Boolean);
}

/**
 * Non-matching rules on the bridge pair's forwarding path: a chain of our own, jumped to from the
 * first position of DOCKER-USER for packets coming in on the bench bridge only. FORWARD jumps to
 * DOCKER-USER before anything else, so every forwarded packet of the pair walks all rules before
 * Docker's own RELATED,ESTABLISHED accept. A chain of our own rather than the rules themselves in
 * DOCKER-USER: putting DOCKER-USER back is the deletion of one rule (nothing else there is
 * rewritten), and changing the size is a flush of our chain.
 */
class IptablesBaseline {
  readonly chain: string;
  private chainMade = false;
  private jumpMade = false;
  before: string[] = [];
  private readonly tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-ipt-'));
  private readonly exitHook = () => this.removeSync();

  constructor(runId: string, readonly bridgeInterface: string) {
    this.chain = `MBBENCH-${runId}`.slice(0, 28); // iptables chain names: at most 28 characters
  }

  get jumpArgs(): string[] {
    return ['-i', this.bridgeInterface, '-j', this.chain];
  }

  async install(): Promise<void> {
    this.before = await dockerUserRules();
    process.once('exit', this.exitHook);
    this.chainMade = true;
    await run('iptables', ['-w', '-N', this.chain]);
    this.jumpMade = true;
    await run('iptables', ['-w', '-I', 'DOCKER-USER', '1', ...this.jumpArgs]);
  }

  private rule(i: number, port = FILLER_FIRST_PORT + i): string {
    return `-A ${this.chain} -s ${IPTABLES_NET}.${1 + (i % 254)}/32 -p tcp --dport ${port} -j DROP`;
  }

  /** Replaces the chain's rules with `size` non-matching ones in one iptables-restore --noflush; returns its wall time. */
  async setSize(size: number): Promise<number> {
    // Declaring a chain in a --noflush restore flushes just that chain.
    const text = ['*filter', `:${this.chain} - [0:0]`, ...Array.from({ length: size }, (_, i) => this.rule(i)), 'COMMIT', ''].join('\n');
    const file = path.join(this.tmp, 'rules');
    fs.writeFileSync(file, text);
    const started = performance.now();
    await run('iptables-restore', ['-w', '--noflush', file], { timeoutMs: 300_000 });
    return performance.now() - started;
  }

  async count(): Promise<number> {
    const out = (await run('iptables', ['-w', '-S', this.chain], { timeoutMs: 120_000 })).stdout;
    return out.split('\n').filter((l) => l.startsWith('-A ')).length;
  }

  /** `iptables -A` then `-D` of one more rule; wall time of each command. */
  async changeOne(k: number): Promise<{ addMs: number; deleteMs: number }> {
    const spec = this.rule(k, CHANGE_FIRST_PORT + k).split(' ').slice(2); // without "-A CHAIN"
    let started = performance.now();
    await run('iptables', ['-w', '-A', this.chain, ...spec]);
    const addMs = performance.now() - started;
    started = performance.now();
    await run('iptables', ['-w', '-D', this.chain, ...spec]);
    return { addMs, deleteMs: performance.now() - started };
  }

  /** Removes the jump and the chain; returns problems (empty when DOCKER-USER is as it was). */
  async remove(): Promise<{ problems: string[]; after: string[] }> {
    const problems: string[] = [];
    if (this.jumpMade) {
      for (let i = 0; i < 5; i++) {
        if ((await run('iptables', ['-w', '-C', 'DOCKER-USER', ...this.jumpArgs], { allowFail: true })).code !== 0) break;
        const r = await run('iptables', ['-w', '-D', 'DOCKER-USER', ...this.jumpArgs], { allowFail: true });
        if (r.code !== 0) problems.push(`iptables -D DOCKER-USER ${this.jumpArgs.join(' ')}: ${r.stderr.trim()}`);
      }
    }
    if (this.chainMade) {
      await run('iptables', ['-w', '-F', this.chain], { allowFail: true, timeoutMs: 120_000 });
      await run('iptables', ['-w', '-X', this.chain], { allowFail: true });
      if ((await run('iptables', ['-w', '-S', this.chain], { allowFail: true })).code === 0) problems.push(`chain ${this.chain} still exists`);
    }
    const after = await dockerUserRules().catch(() => [] as string[]);
    if (this.jumpMade && after.join('\n') !== this.before.join('\n')) {
      problems.push(`DOCKER-USER differs from before the run: before ${JSON.stringify(this.before)}, after ${JSON.stringify(after)}`);
    }
    this.jumpMade = false;
    this.chainMade = false;
    process.removeListener('exit', this.exitHook);
    fs.rmSync(this.tmp, { recursive: true, force: true });
    return { problems, after };
  }

  /** Last resort from the 'exit' hook (a second Ctrl-C exits at once): synchronous, best effort. */
  private removeSync(): void {
    const quiet = (args: string[]) => {
      try {
        execFileSync('iptables', ['-w', ...args], { stdio: 'ignore', timeout: 60_000 });
        return true;
      } catch {
        return false;
      }
    };
    if (this.jumpMade) for (let i = 0; i < 5 && quiet(['-D', 'DOCKER-USER', ...this.jumpArgs]); i++) { /* until gone */ }
    if (this.chainMade) {
      quiet(['-F', this.chain]);
      quiet(['-X', this.chain]);
    }
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** The Linux bridge behind a Docker bridge network. */
async function bridgeInterfaceOf(network: string): Promise<string> {
  const out = (await run('docker', ['network', 'inspect', '-f', '{{.Id}} {{index .Options "com.docker.network.bridge.name"}}', network])).stdout.trim();
  const [id, named] = out.split(' ');
  const name = named && named !== '<no' ? named : `br-${id!.slice(0, 12)}`;
  await run('ip', ['link', 'show', name]);
  return name;
}

// ---- the live section --------------------------------------------------------------------------

export interface PolicyContext {
  runId: string;
  labels: string[];
  networks: { membrane: string; bridge: string };
  aborted: () => boolean;
}

/** Throughput (Gbit/s) and round-trip p50/p99 (µs) of one system at one size. */
interface Measures {
  t: number;
  p50: number;
  p99: number;
}

/** One round's measures: size -> system -> measures. */
type RoundMeasures = Map<number, Partial<Record<PolicySystem, Measures>>>;

/**
 * Ratio rows of `values` over `base` at each size: of the medians, and the median of the per-round
 * ratios (`pick` chooses numerator and denominator within one round).
 */
function ratioRows(sizes: number[], values: (size: number) => Measures, base: (size: number) => Measures, perRound: RoundMeasures[],
  pick: (round: RoundMeasures, size: number) => [Measures | undefined, Measures | undefined]): RatioRow[] {
  return sizes.map((size) => {
    const a = values(size);
    const b = base(size);
    const paired = (k: keyof Measures) => round(median(perRound.map((r) => {
      const [x, y] = pick(r, size);
      return x && y ? ratio(x[k], y[k]) : NaN;
    })));
    return {
      size, throughput: round(ratio(a.t, b.t)), p50: round(ratio(a.p50, b.p50)), p99: round(ratio(a.p99, b.p99)),
      pairedThroughput: paired('t'), pairedP50: paired('p50'), pairedP99: paired('p99'),
    };
  });
}

export async function benchPolicyLive(o: PolicyBenchOptions, ctx: PolicyContext): Promise<PolicyLiveResult> {
  const pin: Pinning = pinning();
  const sizes = [...new Set(o.sizes)].sort((a, b) => a - b);
  if (sizes[0] !== 0) sizes.unshift(0);
  const largest = sizes[sizes.length - 1]!;
  const newPoint = (size: number): SizePoint => ({
    size, membrane: { throughput: emptyThroughput(), latency: emptyLatency() }, iptables: { throughput: emptyThroughput(), latency: emptyLatency() },
  });
  const result: PolicyLiveResult = {
    note: `Two pairs, a client and a server each: one on the Membrane network (the server selected by app=${SERVER_APP}, the client ` +
      `app=${CLIENT_APP}) and one on a Docker bridge. At size N the Membrane server's ingress policy map holds N entries more than at ` +
      `size 0: N imported rules, one TCP port each (${FILLER_FIRST_PORT}…), all allowing the client, next to the rule the traffic ` +
      `itself needs (TCP ${IPERF_PORT}, TCP ${SOCKPERF_PORT}, ICMP echo; so at size 0 the server enforces ingress with those entries). ` +
      `Membrane judges a flow once, when it starts (and again after a policy change), not per packet. The bridge pair's path holds ` +
      `N non-matching iptables rules (-s ${IPTABLES_NET}.x/32 -p tcp --dport y -j DROP) in a chain jumped to from the first rule of ` +
      'DOCKER-USER for packets entering on the bench bridge: FORWARD jumps to DOCKER-USER before anything else, so every forwarded packet ' +
      'of the pair (bridge-nf-call-iptables=1), established or not, walks all N rules before Docker\'s own RELATED,ESTABLISHED accept. ' +
      'Each round visits every size once in a rotated order; at each size both systems run iperf3 and then sockperf, in an order ' +
      'alternating between sizes. Medians over rounds.',
    settings: o,
    image: '',
    pinning: pin.client.length ? 'clients on CPU 0, servers on CPU 1 (iperf3 -A, taskset)' : 'none (fewer than 2 CPUs)',
    loadAverageAtStart: os.loadavg().map((x) => round(x, 2)),
    rounds: o.rounds,
    roundsCompleted: 0,
    membrane: { network: ctx.networks.membrane, serverEndpoint: '', mapEntries: [] },
    iptables: {
      version: '', network: ctx.networks.bridge, bridgeInterface: '', chain: '', jump: '', chainRules: [],
      dockerUserBefore: [], dockerUserAfter: [], dockerUserRestored: false,
    },
    points: sizes.map(newPoint),
    ratios: { flatness: { membrane: [], iptables: [] }, membraneOverIptables: [] },
    controlPlane: {
      note: 'Membrane: HTTP round trip of POST /v1/policy (the whole document; answered after the regeneration is applied and the ' +
        'state stored) or DELETE /v1/policy?labels=…, the daemon\'s own regeneration time for it (/v1/status policy.lastRegeneration), ' +
        'and GET /v1/policy/wait afterwards. The set import/delete samples are the rounds\' switches to and from the largest size ' +
        '(into a policy holding only the traffic rule); one change = one more rule imported at the largest size, then deleted. ' +
        'iptables: wall time of the command, process start included: iptables-restore --noflush of the whole set into the ' +
        'flushed chain, and `iptables -A` / `-D` of one rule in the chain holding the largest set.',
      membrane: { importSet: emptyChange(largest), deleteSet: emptyChange(largest), addOne: emptyChange(1), deleteOne: emptyChange(1) },
      iptables: { loadSet: { ...timing([]), rules: largest }, addOne: timing([]), deleteOne: timing([]) },
    },
    cleanup: { problems: [] },
    errors: [],
  };
  const membrane = new MembranePolicy(ctx.runId, largest);
  let iptables: IptablesBaseline | undefined;
  const containers: string[] = [];
  const endpoints: Partial<Record<PolicySystem, Endpoints>> = {};
  const tput: Record<PolicySystem, Map<number, IperfRun[]>> = { membrane: new Map(), iptables: new Map() };
  const lat: Record<PolicySystem, Map<number, LatencyRun[]>> = { membrane: new Map(), iptables: new Map() };
  const perRound: RoundMeasures[] = [];
  const iptLoads: number[] = [];
  const point = (size: number) => result.points.find((p) => p.size === size)!;
  const fail = (section: ThroughputVariant | LatencyVariant, err: unknown) => {
    section.failures++;
    if (section.errors.length < 5) section.errors.push(errorText(err));
  };
  try {
    result.image = await ensureBenchImage();
    result.iptables.version = (await run('iptables', ['-V'])).stdout.trim();
    // The traffic rule first: the server enforces ingress from the moment its identity arrives.
    await membrane.importTraffic();
    const prefix = (key: string) => `mbbench-${ctx.runId}-${key}`;
    containers.push(`${prefix('pm')}-srv`, `${prefix('pm')}-cli`, `${prefix('pb')}-srv`, `${prefix('pb')}-cli`);
    endpoints.membrane = await containerPair('membrane', ctx.networks.membrane, ctx.runId, ctx.labels, pin,
      { namePrefix: prefix('pm'), serverLabels: [`app=${SERVER_APP}`], clientLabels: [`app=${CLIENT_APP}`] });
    endpoints.iptables = await containerPair('bridge', ctx.networks.bridge, ctx.runId, ctx.labels, pin, { namePrefix: prefix('pb') });
    result.membrane.serverEndpoint = (await run('docker', ['inspect', '-f',
      `{{with index .NetworkSettings.Networks "${ctx.networks.membrane}"}}{{.EndpointID}}{{end}}`, `${prefix('pm')}-srv`])).stdout.trim();
    // Identities arrive from Docker's events a moment after the start: until then the server denies everything.
    for (const system of SYSTEMS) {
      const e = endpoints[system]!;
      await eventually(async () => {
        const r = await e.client(['busybox', 'ping', '-c', '1', '-W', '1', e.server], 10_000);
        if (r.code !== 0) throw new Error(`${system}: client cannot ping the server: ${r.stdout.trim().split('\n').slice(-2).join(' / ')}`);
      }, 30_000, 500);
    }
    const bridgeInterface = await bridgeInterfaceOf(ctx.networks.bridge);
    iptables = new IptablesBaseline(ctx.runId, bridgeInterface);
    Object.assign(result.iptables, { bridgeInterface, chain: iptables.chain, jump: `-I DOCKER-USER 1 ${iptables.jumpArgs.join(' ')}` });
    await iptables.install();
    result.iptables.dockerUserBefore = iptables.before;

    const visited = new Set<number>();
    const deadline = performance.now() + o.maxSeconds * 1000;
    for (let r = 0; r < o.rounds; r++) {
      if (ctx.aborted()) throw new Error('interrupted');
      if (performance.now() > deadline) {
        result.errors.push(`policy rounds hit their time limit (${o.maxSeconds} s) after ${result.roundsCompleted} rounds`);
        break;
      }
      const order = sizes.map((_, i) => sizes[(i + r) % sizes.length]!);
      const thisRound: RoundMeasures = new Map();
      for (const [i, size] of order.entries()) {
        if (ctx.aborted()) throw new Error('interrupted');
        await membrane.setSize(size);
        const loadMs = await iptables.setSize(size);
        if (size === largest) iptLoads.push(loadMs);
        if (!visited.has(size)) {
          visited.add(size);
          const read = performance.now();
          const got = await apiCall<{ entries: Array<{ direction: string }> }>('GET', `/v1/bpf/policy/${result.membrane.serverEndpoint}`);
          result.membrane.mapEntries.push({
            size, entries: got.body.entries.length, ingressEntries: got.body.entries.filter((x) => x.direction === 'ingress').length,
            readMs: round(performance.now() - read, 1),
          });
          result.iptables.chainRules.push({ size, rules: await iptables.count() });
        }
        const systems = (r + i) % 2 === 0 ? SYSTEMS : [...SYSTEMS].reverse();
        const values: Partial<Record<PolicySystem, Measures>> = {};
        for (const system of systems) {
          values[system] = { t: NaN, p50: NaN, p99: NaN };
          try {
            const x = await iperfOnce(endpoints[system]!, o.traffic, pin);
            (tput[system].get(size) ?? tput[system].set(size, []).get(size)!).push(x);
            values[system]!.t = x.gbps;
          } catch (err) {
            fail(point(size)[system].throughput, err);
          }
        }
        for (const system of systems) {
          try {
            const x = await latencyOnce(endpoints[system]!, o.traffic, pin);
            (lat[system].get(size) ?? lat[system].set(size, []).get(size)!).push(x);
            Object.assign(values[system]!, { p50: x.p50Us, p99: x.p99Us });
          } catch (err) {
            fail(point(size)[system].latency, err);
          }
        }
        thisRound.set(size, values);
      }
      perRound.push(thisRound);
      result.roundsCompleted++;
    }

    // One change at the largest size, both systems.
    if (!ctx.aborted()) {
      await membrane.setSize(largest);
      iptLoads.push(await iptables.setSize(largest));
      const add: number[] = [];
      const del: number[] = [];
      for (let k = 0; k < o.changeRepetitions && !ctx.aborted(); k++) {
        await membrane.changeOne(k);
        const x = await iptables.changeOne(k);
        add.push(x.addMs);
        del.push(x.deleteMs);
      }
      // One more sample of deleting the whole set (the rounds may have ended on the largest size).
      if (!ctx.aborted()) await membrane.setSize(0);
      result.controlPlane.iptables = { loadSet: { ...timing(iptLoads), rules: largest }, addOne: timing(add), deleteOne: timing(del) };
    }
  } catch (err) {
    result.errors.push(errorText(err));
  } finally {
    result.controlPlane.membrane = {
      importSet: membrane.importSet.summary(), deleteSet: membrane.deleteSet.summary(), addOne: membrane.addOne.summary(), deleteOne: membrane.deleteOne.summary(),
    };
    try {
      await membrane.removeAll();
    } catch (err) {
      result.cleanup.problems.push(`deleting this run's rules: ${errorText(err)}`);
    }
    if (iptables) {
      const removed = await iptables.remove();
      result.cleanup.problems.push(...removed.problems);
      result.iptables.dockerUserAfter = removed.after;
      result.iptables.dockerUserRestored = removed.after.join('\n') === iptables.before.join('\n');
    }
    for (const c of containers) {
      const r = await run('docker', ['rm', '-f', c], { allowFail: true, timeoutMs: 60_000 });
      if (r.code !== 0 && !/No such container/.test(r.stderr)) result.cleanup.problems.push(`docker rm ${c}: ${r.stderr.trim()}`);
    }
  }

  for (const p of result.points) {
    for (const system of SYSTEMS) {
      summarizeThroughput(tput[system].get(p.size) ?? [], p[system].throughput);
      summarizeLatency(lat[system].get(p.size) ?? [], p[system].latency);
    }
  }
  const measures = (system: PolicySystem) => (size: number) => {
    const p = point(size)[system];
    return { t: p.throughput.medianGbps, p50: p.latency.p50Us, p99: p.latency.p99Us };
  };
  for (const system of SYSTEMS) {
    result.ratios.flatness[system] = ratioRows(sizes, measures(system), () => measures(system)(0), perRound,
      (r, size) => [r.get(size)?.[system], r.get(0)?.[system]]);
  }
  result.ratios.membraneOverIptables = ratioRows(sizes, measures('membrane'), measures('iptables'), perRound,
    (r, size) => [r.get(size)?.membrane, r.get(size)?.iptables]);
  return result;
}

// ---- new-flow cost (BPF_PROG_TEST_RUN) ---------------------------------------------------------

const L = (...labels: string[]) => labels.map((l) => parseLabel(l));

/** The i-th filler port spec of the new-flow tries: TCP 10000-65535 first, then UDP (100k needs both). */
function fillerPort(i: number): PortProtocolSpec {
  const tcpPorts = 65536 - 10_000;
  return i < tcpPorts ? { port: 10_000 + i, protocol: 'TCP' } : { port: 10_000 + i - tcpPorts, protocol: 'UDP' };
}

/** Rules for a trie of `size` filler entries plus the traffic rule's one (TCP 5201). 100 ports per rule keeps rule ids small. */
function newFlowRules(size: number): StoredRule[] {
  const selector = { matchLabels: { app: SERVER_APP } };
  const peers = [{ matchLabels: { app: CLIENT_APP } }];
  const rules: PolicyRule[] = [{ labels: [], endpointSelector: selector, ingress: [{ endpoints: peers, toPorts: [{ ports: [{ port: IPERF_PORT, protocol: 'TCP' }] }] }] }];
  for (let first = 0; first < size; first += 100) {
    const ports = Array.from({ length: Math.min(100, size - first) }, (_, j) => fillerPort(first + j));
    rules.push({ labels: [], endpointSelector: selector, ingress: [{ endpoints: peers, toPorts: [{ ports }] }] });
  }
  return rules.map((rule, i) => ({ id: i + 1, rule, origin: 'api', revision: 1 }));
}

export async function benchPolicyNewFlow(o: PolicyBenchOptions): Promise<PolicyNewFlowResult> {
  const nl = native();
  const sizes = [...new Set(o.newFlowSizes)].sort((a, b) => a - b);
  if (sizes[0] !== 0) sizes.unshift(0);
  const trieMaxEntries = Math.max(1024, sizes[sizes.length - 1]! + 64);
  const deniedPort = 9_999; // below every filler port: no rule allows it
  const result: PolicyNewFlowResult = {
    note: 'BPF_PROG_TEST_RUN of from_container (Membrane\'s compiled object, fresh unpinned maps, trace sampling and policy verdict ' +
      'events off) on an IPv4 TCP SYN from a client endpoint to a server endpoint of the same network whose ingress is enforced. ' +
      `The server's trie (PolicyMaps, pinned under a private /sys/fs/bpf/membrane-bench-* directory) holds the entry allowing TCP ${IPERF_PORT} ` +
      'from the client plus SIZE filler entries allowing the client other ports (TCP 10000-65535, then UDP), compiled by PolicyCompiler. ' +
      'One test run per syscall, each with a fresh source port; after each allowed run its conntrack entry is deleted (untimed), so ' +
      'every timed run is a new flow: conntrack miss, policy judged (three trie lookups: the client\'s identity, its class, ID_ANY), ' +
      `conntrack entry created, redirect. "default-denied" = a SYN to TCP ${deniedPort}, which no entry allows (all lookups miss; dropped, ` +
      'nothing created). The server\'s endpoint entry is switched between one trie per size, so sizes are interleaved per batch; the ' +
      `first batch is a discarded warm-up. ns/packet = summed kernel durations / runs, median over batches. The daemon's tries hold at ` +
      'most 65,536 entries (PolicyMaps default), so 100k is beyond what it can hold today; it shows the lookup\'s scaling.',
    object: OBJECT, pinDir: `/sys/fs/bpf/membrane-bench-${randomBytes(4).toString('hex')}`, trieMaxEntries, writeMs: {}, rows: [], errors: [],
  };
  const pinDir = result.pinDir;
  const links: string[] = [];
  let obj: BpfObject | undefined;
  let maps: PolicyMaps | undefined;
  try {
    obj = nl.bpfObjectLoad(OBJECT, objectLoadOptionsForTests());
    const loaded = obj;
    const map = (name: string) => {
      const m = loaded.maps.find((x) => x.name === name);
      if (!m) throw new Error(`map ${name} not in ${OBJECT}`);
      return m.fd;
    };
    const from = loaded.programs.find((p) => p.name === 'from_container')?.fd;
    if (from === undefined) throw new Error('from_container not in the object');
    fs.mkdirSync(pinDir);
    maps = new PolicyMaps(nl, { map } as unknown as Datapath, pinDir, trieMaxEntries);
    nl.bpfMapUpdate(map('mb_config'), encodeIfindexKey(0), encodeConfig({ traceSample: 0, policyEpoch: 1, policyVerdictEvents: false }), 0);
    const veth = () => {
      const name = `mbp${randomBytes(5).toString('hex')}`;
      links.push(name);
      return nl.linkCreateVeth(name, `${name}p`, {});
    };
    const identities = new IdentityAllocator(emptyIdentityState());
    const clientLabels = L(`container:app=${CLIENT_APP}`, 'network:name=bench');
    const serverLabels = L(`container:app=${SERVER_APP}`, 'network:name=bench');
    const client = identities.forLabels(clientLabels).id;
    const server = identities.forLabels(serverLabels).id;
    const A = { mac: '02:00:00:00:00:0a', hostMac: '02:00:00:00:01:0a', ipv4: '10.20.0.10', gateway4: '10.20.0.1', ifindex: veth() };
    const B = { mac: '02:00:00:00:00:0b', hostMac: '02:00:00:00:01:0b', ipv4: '10.20.0.11', gateway4: '10.20.0.1', ifindex: veth() };
    const writeEndpoint = (e: typeof A, info: Partial<EndpointInfo>) => {
      const value = encodeEndpointInfo({ ...e, identity: 0, endpointId: 0, networkId: 1, ...info });
      nl.bpfMapUpdate(map('mb_endpoints_by_if'), encodeIfindexKey(e.ifindex), value, 0);
      nl.bpfMapUpdate(map('mb_endpoints'), encodeEndpointKey(e.ipv4), value, 0);
    };
    writeEndpoint(A, { endpointId: 1, identity: client });
    // One trie per size, under endpoint numbers 100, 101, ...: the server switches between them.
    const trieOf = new Map<number, number>();
    const entriesOf = new Map<number, number>();
    for (const [i, size] of sizes.entries()) {
      const started = performance.now();
      const compiled = new PolicyCompiler(newFlowRules(size), identities).compile({ identity: server, labels: serverLabels, mode: 'default', audit: false });
      if (!compiled.enforceIngress) throw new Error('the server does not enforce ingress');
      maps.apply(100 + i, compiled.entries);
      result.writeMs[String(size)] = round(performance.now() - started, 1);
      trieOf.set(size, 100 + i);
      entriesOf.set(size, compiled.entries.length);
    }
    const useTrie = (size: number) => writeEndpoint(B, { endpointId: trieOf.get(size)!, identity: server, enforceIngress: true });

    const ct = map('mb_conntrack');
    const ctxIn = skbCtx(A.ifindex);
    let sport = 1024;
    const nextSport = () => (sport = sport >= 65000 ? 1024 : sport + 1);
    type Counter = { bad: number; missing: number };
    const batch = (dport: number, want: number, counter: Counter): number => {
      let total = 0;
      for (let i = 0; i < o.newFlowRuns; i++) {
        const s = nextSport();
        const packet = ethernet(A.hostMac, A.mac, ETH_P_IP, ipv4(A.ipv4, B.ipv4, tcp(s, dport, TCP_SYN)));
        const r = nl.bpfProgTestRun(from, packet, { ctxIn });
        total += r.durationNs;
        if (r.retval !== want) counter.bad++;
        const removed = nl.bpfMapDelete(ct, encodeCtKey({ family: 4, proto: 6, saddr: A.ipv4, daddr: B.ipv4, sport: s, dport }));
        if (want === TC_ACT_REDIRECT && !removed) counter.missing++;
      }
      return total / o.newFlowRuns;
    };
    const paths = [
      { path: 'allowed' as const, dport: IPERF_PORT, want: TC_ACT_REDIRECT },
      { path: 'default-denied' as const, dport: deniedPort, want: TC_ACT_SHOT },
    ];
    const samples = new Map<string, number[]>();
    const counters = new Map<string, Counter>();
    for (const size of sizes) for (const p of paths) counters.set(`${size}/${p.path}`, { bad: 0, missing: 0 });
    for (let b = 0; b <= o.newFlowBatches; b++) {
      const order = sizes.map((_, i) => sizes[(i + b) % sizes.length]!);
      for (const size of order) {
        useTrie(size);
        for (const p of paths) {
          const key = `${size}/${p.path}`;
          const warmup = { bad: 0, missing: 0 };
          const ns = batch(p.dport, p.want, b === 0 ? warmup : counters.get(key)!);
          if (b > 0) (samples.get(key) ?? samples.set(key, []).get(key)!).push(ns);
        }
      }
    }
    for (const p of paths) {
      const base = median(samples.get(`0/${p.path}`) ?? []);
      for (const size of sizes) {
        const key = `${size}/${p.path}`;
        const s = summarize(samples.get(key) ?? []);
        const c = counters.get(key)!;
        result.rows.push({
          size, entries: entriesOf.get(size) ?? NaN, path: p.path, expectedRetval: p.want, unexpectedRetvals: c.bad, missingConntrack: c.missing,
          runsPerBatch: o.newFlowRuns, batches: s.n, nsPerPacket: round(s.median, 1), minNsPerPacket: round(s.min, 1), maxNsPerPacket: round(s.max, 1),
          ratioVsZero: round(ratio(s.median, base)),
        });
      }
    }
  } catch (err) {
    result.errors.push(errorText(err));
  } finally {
    maps?.close();
    obj?.close();
    deleteVeths(nl, links, result.errors);
    // Unpinning the tries frees them (nothing else holds them once the object is closed).
    fs.rmSync(pinDir, { recursive: true, force: true });
  }
  return result;
}

// ---- report ------------------------------------------------------------------------------------

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

const sizeLabel = (n: number) => n.toLocaleString('en-US');

function changeRow(what: string, c: MembraneChangeTiming): string[] {
  const writes = c.written.length ? `${Math.min(...c.written)}–${Math.max(...c.written)} / ${Math.min(...c.deleted)}–${Math.max(...c.deleted)}` : '—';
  return [what, String(c.api.n), fmt(c.api.p50Ms, 1), `${fmt(c.api.minMs, 1)}–${fmt(c.api.maxMs, 1)}`, fmt(c.regeneration.p50Ms, 1), fmt(c.wait.p50Ms, 2),
    writes + (c.reportMismatches ? ` (${c.reportMismatches} reports of a later revision)` : '')];
}

export function renderPolicy(live: PolicyLiveResult | null, newFlow: PolicyNewFlowResult | null, skipped: boolean): string[] {
  const out: string[] = ['## 6. Policy at scale', ''];
  if (skipped) return [...out, '(not run)', ''];
  out.push('### 6a. Throughput and latency with N policy entries vs N iptables rules on the path', '');
  if (live) {
    const s = live.settings.traffic;
    out.push(live.note, '');
    out.push(`${live.roundsCompleted}/${live.rounds} rounds; iperf3 -t ${s.iperfSeconds} -O ${s.iperfOmitSeconds}; sockperf ping-pong -t ${s.sockperfSeconds}, ` +
      `64-byte messages, first ${s.latencyMessages} round trips per run. Pinning: ${live.pinning}. Load average at start: ${live.loadAverageAtStart.join(' / ')}.`, '');
    const entries = (size: number) => live.membrane.mapEntries.find((x) => x.size === size);
    const rules = (size: number) => live.iptables.chainRules.find((x) => x.size === size);
    out.push(table(['N', 'Membrane map entries (ingress)', 'Membrane Gbit/s', 'Membrane p50 µs', 'Membrane p99 µs', 'iptables rules', 'iptables Gbit/s',
      'iptables p50 µs', 'iptables p99 µs', 'runs M / i', 'failed M / i'],
    live.points.map((p) => {
      const m = p.membrane;
      const i = p.iptables;
      return [sizeLabel(p.size), entries(p.size) ? `${entries(p.size)!.entries} (${entries(p.size)!.ingressEntries})` : '—', fmt(m.throughput.medianGbps, 2),
        fmt(m.latency.p50Us, 1), fmt(m.latency.p99Us, 1), rules(p.size) ? String(rules(p.size)!.rules) : '—', fmt(i.throughput.medianGbps, 2),
        fmt(i.latency.p50Us, 1), fmt(i.latency.p99Us, 1), `${m.throughput.n}+${m.latency.n} / ${i.throughput.n}+${i.latency.n}`,
        `${m.throughput.failures + m.latency.failures} / ${i.throughput.failures + i.latency.failures}`];
    })), '');
    const ratioCells = (r: RatioRow) => [`${fmt(r.throughput, 3)} (${fmt(r.pairedThroughput, 3)})`, `${fmt(r.p50, 3)} (${fmt(r.pairedP50, 3)})`, `${fmt(r.p99, 3)} (${fmt(r.pairedP99, 3)})`];
    out.push('Ratios of medians (in brackets: median of the per-round ratios). Flatness = size N / size 0 of the same system (1.0 = flat); ' +
      'Membrane/iptables at the same N (throughput above 1 and latency below 1 favour Membrane).', '');
    out.push(table(['N', 'Membrane tput N/0', 'Membrane p50 N/0', 'Membrane p99 N/0', 'iptables tput N/0', 'iptables p50 N/0', 'iptables p99 N/0',
      'M/i tput', 'M/i p50', 'M/i p99'],
    live.points.map((p) => {
      const fm = live.ratios.flatness.membrane.find((x) => x.size === p.size);
      const fi = live.ratios.flatness.iptables.find((x) => x.size === p.size);
      const mi = live.ratios.membraneOverIptables.find((x) => x.size === p.size);
      const cells = (r: RatioRow | undefined) => (r ? ratioCells(r) : ['—', '—', '—']);
      return [sizeLabel(p.size), ...cells(fm), ...cells(fi), ...cells(mi)];
    })), '');
    for (const p of live.points) {
      for (const system of SYSTEMS) {
        for (const e of [...p[system].throughput.errors, ...p[system].latency.errors]) out.push(`- ${system} N=${p.size} error: ${e}`);
      }
    }
    out.push(`Membrane map reads (GET /v1/bpf/policy/…): ${live.membrane.mapEntries.map((x) => `N=${sizeLabel(x.size)} ${fmt(x.readMs, 0)} ms`).join(', ')}. ` +
      `iptables: ${live.iptables.version}; bridge ${live.iptables.bridgeInterface}; chain ${live.iptables.chain} via \`${live.iptables.jump}\`; ` +
      `DOCKER-USER ${live.iptables.dockerUserRestored ? 'restored exactly' : 'NOT restored'} (before: ${live.iptables.dockerUserBefore.join('; ')}).`, '');
    out.push('### 6b. Control plane: importing N rules and one change at that size', '');
    out.push(live.controlPlane.note, '');
    const c = live.controlPlane.membrane;
    out.push(table(['Membrane change', 'n', 'API p50 ms', 'API min–max ms', 'regeneration p50 ms (daemon)', 'wait p50 ms', 'map writes / deletions'], [
      changeRow(`import ${sizeLabel(c.importSet.rules)} rules`, c.importSet),
      changeRow(`delete those ${sizeLabel(c.deleteSet.rules)} rules`, c.deleteSet),
      changeRow(`import 1 rule at ${sizeLabel(c.importSet.rules)}`, c.addOne),
      changeRow(`delete 1 rule at ${sizeLabel(c.importSet.rules)}`, c.deleteOne),
    ]), '');
    const ip = live.controlPlane.iptables;
    out.push(table(['iptables change', 'n', 'p50 ms', 'min–max ms'], [
      [`iptables-restore --noflush of ${sizeLabel(ip.loadSet.rules)} rules`, String(ip.loadSet.n), fmt(ip.loadSet.p50Ms, 1), `${fmt(ip.loadSet.minMs, 1)}–${fmt(ip.loadSet.maxMs, 1)}`],
      [`iptables -A 1 rule at ${sizeLabel(ip.loadSet.rules)}`, String(ip.addOne.n), fmt(ip.addOne.p50Ms, 1), `${fmt(ip.addOne.minMs, 1)}–${fmt(ip.addOne.maxMs, 1)}`],
      [`iptables -D 1 rule at ${sizeLabel(ip.loadSet.rules)}`, String(ip.deleteOne.n), fmt(ip.deleteOne.p50Ms, 1), `${fmt(ip.deleteOne.minMs, 1)}–${fmt(ip.deleteOne.maxMs, 1)}`],
    ]), '');
    out.push(`Import vs iptables-restore of the same count: ${fmt(ratio(c.importSet.api.p50Ms, ip.loadSet.p50Ms), 2)}×; one added rule: ` +
      `${fmt(ratio(c.addOne.api.p50Ms, ip.addOne.p50Ms), 2)}×; one deleted rule: ${fmt(ratio(c.deleteOne.api.p50Ms, ip.deleteOne.p50Ms), 2)}× (Membrane/iptables).`, '');
    for (const e of live.errors) out.push(`- error: ${e}`);
    for (const e of live.cleanup.problems) out.push(`- cleanup: ${e}`);
    if (live.errors.length || live.cleanup.problems.length) out.push('');
  } else {
    out.push('(section failed, see errors)', '');
  }
  out.push('### 6c. New-flow cost with N entries in the policy map (BPF_PROG_TEST_RUN)', '');
  if (newFlow) {
    out.push(newFlow.note, '');
    out.push(table(['N (filler entries)', 'trie entries', 'path', 'ns/packet (median)', 'min', 'max', 'N / 0', 'runs × batches', 'unexpected verdicts', 'flow not new'],
      newFlow.rows.map((r) => [sizeLabel(r.size), sizeLabel(r.entries), r.path, fmt(r.nsPerPacket, 1), fmt(r.minNsPerPacket, 1), fmt(r.maxNsPerPacket, 1),
        fmt(r.ratioVsZero, 3), `${r.runsPerBatch.toLocaleString('en-US')} × ${r.batches}`, String(r.unexpectedRetvals), String(r.missingConntrack)])), '');
    out.push(`Writing each trie (compile + PolicyMaps.apply): ${Object.entries(newFlow.writeMs).map(([k, v]) => `N=${sizeLabel(Number(k))} ${fmt(v, 0)} ms`).join(', ')}.`, '');
    for (const e of newFlow.errors) out.push(`- error: ${e}`);
  } else {
    out.push('(section failed, see errors)', '');
  }
  return out;
}
