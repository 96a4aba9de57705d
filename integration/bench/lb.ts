// The service load balancer at scale (`--only lb`), called by run.ts. Reports ratios; never passes
// or fails on timing.
//
//   Live (needs the run's daemon): new TCP connections per second and the p50/p99 time from
//   connect() to the first byte (crr.c: sequential connect, read one byte, reset) through a service
//   with 2 backends while 1, 1,000, 10,000 and 30,000 services exist on the host, for
//     membraneSocket  Membrane, socket-level translation (cgroup connect4; the default)
//     membranePacket  Membrane, per-packet translation in from_container (socket flag off)
//     iptables        kube-proxy-shaped nat rules on a Docker bridge pair (measured service last)
//     nftables        an nftables verdict map on the same bridge pair
//     directMembrane  the client to one backend's address on the Membrane network (floor)
//     directBridge    the same on the bridge (floor)
//   The two Membrane paths are interleaved without a restart: bit 0 (LB_CONFIG_F_SOCKET) of the
//   flags word of the pinned mb_lb_config is flipped before each Membrane run and put back as it
//   was afterwards (also from a process 'exit' hook). Sizes go up one after another (30,000 services
//   are not made and unmade per round); within a size, every round runs every variant in a rotated
//   order. The floors run in every round, so each size's numbers can be divided by the floor of the
//   same round (drift between sizes shows in the floors).
//   Control plane at 10,000 services: one more service (Membrane: POST /v1/services, with the
//   daemon's own planMs / mapWritesMs / commitMs; iptables: iptables-restore --noflush of its chains
//   and rules, and the same as single iptables commands; nftables: one `nft -f` adding its chain and
//   map element), the time until a client that keeps trying first gets a byte through the new VIP,
//   and the deletion. Memory of the mb_lb_* maps and the inner Maglev tables at every size.
//
//   Maglev (no daemon): buildTable time for M x N, and the share of slots that change when one of
//   N backends goes, against the 1/N that must change.
//
// Everything made here is removed in `finally`, also on SIGINT: the containers, the IPv4-only
// Membrane network (and with it every service of this section: the daemon deletes a network's
// services with it; checked afterwards in the API and in the kernel's maps), the iptables chains and
// their jump from PREROUTING, the nftables table, the guard route, and mb_lb_config's flags. The
// synchronous parts (flags, iptables, nftables, route) are also undone from a process 'exit' hook.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { NFT, addressesOf, apiRequest, run, sleep } from '../harness.js';
import { native } from '../../plugin/kernel/native.js';
import { mapEntries } from '../../plugin/datapath/iterate.js';
import { TABLE_SIZES, buildTable, tableDiff, tableSizeFor, type MaglevBackend } from '../../plugin/lb/maglev.js';
import { BENCH_IMAGE, ensureBenchImage, errorText, pinning, type Pinning } from './datapath.js';
import { fmt, median, ratio, rng, round, summarize, timingSummary, type TimingSummary } from './stats.js';

const PIN_DIR = '/sys/fs/bpf/membrane';
const LB_MAPS = ['mb_lb_frontends', 'mb_lb_backends', 'mb_lb_revnat', 'mb_lb_maglev', 'mb_lb_sock', 'mb_lb_config', 'mb_lb_doomed', 'mb_lb_scratch'];
/** Maps whose entries are counted (the others are LRU caches or single-entry arrays). */
const COUNTED_MAPS = ['mb_lb_frontends', 'mb_lb_backends', 'mb_lb_revnat', 'mb_lb_maglev'];
const LB_CONFIG_F_SOCKET = 1;
const SERVER_PORT = 8080;
const VIP_PORT = 80;
/** Fake service addresses of the bridge systems: iptables in the first /16, nftables in the second. */
const IPTABLES_PREFIX = '10.212';
const NFT_PREFIX = '10.213';
/** Unreachable while the section runs: a VIP no rule translates goes nowhere (never out of the default route). */
const GUARD_ROUTE = '10.212.0.0/15';
/** Index of the first single-service change's VIP (the sizes use 0 .. 30,000). */
const CHANGE_INDEX = 60_000;
/** Labels of the Membrane backends: the measured service selects both, each filler one. */
const LABEL_ALL = 'mblb=backend';
const labelOne = (i: 1 | 2) => `mblb-b=${i}`;

export type LbVariant = 'membraneSocket' | 'membranePacket' | 'iptables' | 'nftables' | 'directMembrane' | 'directBridge';
export const LB_VARIANTS: LbVariant[] = ['membraneSocket', 'membranePacket', 'iptables', 'nftables', 'directMembrane', 'directBridge'];
const FLOOR: Record<LbVariant, LbVariant> = {
  membraneSocket: 'directMembrane', membranePacket: 'directMembrane', iptables: 'directBridge', nftables: 'directBridge',
  directMembrane: 'directMembrane', directBridge: 'directBridge',
};
export const LB_VARIANT_LABELS: Record<LbVariant, string> = {
  membraneSocket: 'Membrane, socket path',
  membranePacket: 'Membrane, per-packet path',
  iptables: 'iptables (kube-proxy shape)',
  nftables: 'nftables verdict map',
  directMembrane: 'direct, Membrane network (floor)',
  directBridge: 'direct, Docker bridge (floor)',
};
/** Between-system comparisons at the same size: [numerator, denominator]. */
const PAIRS: Array<[LbVariant, LbVariant]> = [
  ['membraneSocket', 'iptables'], ['membraneSocket', 'nftables'], ['membranePacket', 'iptables'], ['membranePacket', 'nftables'],
  ['membraneSocket', 'directMembrane'], ['membranePacket', 'directMembrane'], ['iptables', 'directBridge'], ['nftables', 'directBridge'],
];

// ---- options -----------------------------------------------------------------------------------

export interface LbBenchOptions {
  smoke: boolean;
  /** Interleaved rounds per size; each runs every variant once. */
  rounds: number;
  /** Services on the host (the measured one included). */
  sizes: number[];
  /** crr client: seconds per run, untimed connections first, per-connection timeout, connection cap. */
  secondsPerRun: number;
  warmupConnections: number;
  timeoutMs: number;
  maxConnectionsPerRun: number;
  /** Services per POST /v1/services while growing. */
  bulkChunk: number;
  /** The size at which one service is added and deleted, and how often. */
  controlSize: number;
  changeRepetitions: number;
  /** Maglev: table sizes and backend counts (only where M >= N), minimum time per point. */
  maglevSizes: number[];
  maglevBackends: number[];
  maglevMinMs: number;
  maglevRemovals: number;
  /** Wall-clock limit of the live part; no new size or round starts after it. */
  maxSeconds: number;
  /**
   * CPUs of crr: `same` = the client and both servers on CPU 1 (the default), `split` = the client on
   * CPU 0 and the servers on CPU 1 (datapath.ts's pinning()), `none` = wherever the scheduler puts them.
   */
  pinning: LbPinning;
}

export type LbPinning = 'same' | 'split' | 'none';
export const LB_PINNINGS: readonly LbPinning[] = ['same', 'split', 'none'];

function lbPinning(mode: LbPinning): { pin: Pinning; text: string } {
  const none = { client: [], server: [], iperfClient: [], iperfServer: [] };
  if (os.cpus().length < 2 || mode === 'none') return { pin: none, text: os.cpus().length < 2 ? 'none (fewer than 2 CPUs)' : 'none (--lb-pinning none)' };
  if (mode === 'split') return { pin: pinning(), text: 'split: client (taskset -c 0) on CPU 0, servers (taskset -c 1) on CPU 1, as the datapath section' };
  return {
    pin: { ...none, client: ['taskset', '-c', '1'], server: ['taskset', '-c', '1'] },
    text: 'same: the client and both servers on CPU 1 (taskset -c 1), so every connection is CPU work rather than cross-CPU wake-ups ' +
      '(on this 2-vCPU VM a wake-up of the other vCPU often takes milliseconds: split pinning gave 3x fewer connections per second and ' +
      'a p99 of ~3 ms on loopback; --lb-pinning split for the datapath section\'s layout)',
  };
}

export function lbOptions(smoke: boolean, rounds?: number, pinningMode: LbPinning = 'same'): LbBenchOptions {
  return {
    pinning: pinningMode,
    smoke,
    rounds: rounds ?? (smoke ? 2 : 5),
    sizes: smoke ? [1, 1_000] : [1, 1_000, 10_000, 30_000],
    secondsPerRun: smoke ? 1.5 : 5,
    warmupConnections: smoke ? 100 : 500,
    timeoutMs: 1000,
    maxConnectionsPerRun: 2_000_000,
    bulkChunk: 2_500,
    controlSize: smoke ? 1_000 : 10_000,
    changeRepetitions: smoke ? 2 : 5,
    maglevSizes: smoke ? [251, 1021, 16381] : [251, 1021, 16381, 65521],
    maglevBackends: smoke ? [1, 10, 100] : [1, 10, 100, 1000],
    maglevMinMs: smoke ? 50 : 300,
    maglevRemovals: smoke ? 3 : 5,
    maxSeconds: smoke ? 240 : 1_800,
  };
}

// ---- results -----------------------------------------------------------------------------------

export interface CrrRun {
  connections: number;
  failures: number;
  seconds: number;
  connsPerSec: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  maxUs: number;
  firstError: string;
}

export interface VariantPoint {
  /** Runs with a result. */
  n: number;
  /** Median, min and max over rounds of conns/s; medians over rounds of each run's p50 and p99. */
  connsPerSec: number;
  minConnsPerSec: number;
  maxConnsPerSec: number;
  p50Us: number;
  p99Us: number;
  connections: number;
  failedConnections: number;
  failedRuns: number;
  errors: string[];
  runs: Array<CrrRun & { round: number }>;
}

export interface BulkReport {
  /** Services made in this step (POST /v1/services requests of `bulkChunk`). */
  created: number;
  requests: number;
  wallMs: number;
  maxRequestMs: number;
  /** Sums of the daemon's timing of each request. */
  planMs: number;
  mapWritesMs: number;
  commitMs: number;
}

export interface LbMemory {
  services: number;
  maps: Array<{ name: string; id: number; type: string; maxEntries: number; entries: number | null; bytes: number }>;
  /** Sum over the pinned mb_lb_* maps as bpftool reports it (the preallocated hash maps do not grow with services; mb_lb_maglev is not preallocated and does). */
  pinnedBytes: number;
  /** Entries of mb_lb_maglev: 256-slot groups, ceil(M / 256) per frontend. */
  maglevGroups: number;
  totalBytes: number;
  readMs: number;
}

export interface SizeSetup {
  membrane: BulkReport;
  /** Kernel view after the step: mb_lb_frontends / backends / revnat / maglev entries. */
  kernel: Record<string, number>;
  iptables: { ms: number; rules: number; chains: number } | null;
  nftables: { ms: number; elements: number; chains: number } | null;
  memory: LbMemory | null;
}

export interface LbSizePoint {
  /** Services on the host for the bridge systems (and for Membrane unless `membraneServices` says fewer). */
  services: number;
  /** Services Membrane held at this point (the same as `services` unless a step failed: see the errors). */
  membraneServices: number;
  setup: SizeSetup | null;
  roundsCompleted: number;
  variants: Record<LbVariant, VariantPoint>;
}

export interface RatioSpread {
  /** Of medians. */
  value: number;
  /** Conservative spread over rounds: min(N) / max(1) .. max(N) / min(1) (sizes are not paired), or min..max of paired per-round ratios. */
  min: number;
  max: number;
}

export interface FlatnessRow {
  services: number;
  /** Services Membrane held at this point (see LbSizePoint). */
  membraneServices: number;
  variant: LbVariant;
  connsPerSec: RatioSpread;
  p50: number;
  p99: number;
  /** conns/s over the floor of the same round, median over rounds, at N against at 1 (drift between sizes divided out). */
  floorNormalized: number;
}

export interface PairRow {
  services: number;
  membraneServices: number;
  a: LbVariant;
  b: LbVariant;
  /** Per-round ratio a/b of conns/s: median, min, max over rounds; and the medians' ratio of p50 / p99. */
  connsPerSec: RatioSpread;
  p50: number;
  p99: number;
}

export interface ChangeSystem {
  what: string;
  add: TimingSummary;
  /** Time from the start of the change / from its return until a client that keeps trying first gets a byte through the new VIP. */
  firstConnectionFromStart: TimingSummary;
  firstConnectionFromReturn: TimingSummary;
  probeAttempts: number[];
  remove: TimingSummary;
  /** Membrane only: the daemon's own times of the add and of the delete. */
  daemon?: { planMs: TimingSummary; mapWritesMs: TimingSummary; commitMs: TimingSummary; deleteMapWritesMs: TimingSummary; deleteCommitMs: TimingSummary };
  errors: string[];
}

export interface LbLiveResult {
  note: string;
  settings: LbBenchOptions;
  image: string;
  pinning: string;
  loadAverageAtStart: number[];
  topology: {
    membraneNetwork: string;
    bridgeNetwork: string;
    bridgeNetfilter: string;
    membraneServers: string[];
    bridgeServers: string[];
    measuredVip: { membrane: string; iptables: string; nftables: string };
    guardRoute: string;
  };
  /** The daemon's open fds before and after the section: the LB keeps none per service (Maglev tables live in one map). */
  daemon: { pid: number; openFdsBefore: number; openFdsAfter: number };
  lbConfig: { flagsBefore: number | null; flagsRestored: boolean | null; switched: number };
  iptablesVersion: string;
  nftVersion: string;
  points: LbSizePoint[];
  flatness: FlatnessRow[];
  pairs: PairRow[];
  controlPlane: { services: number; note: string; systems: ChangeSystem[] } | null;
  cleanup: {
    ms: Record<string, number>; servicesLeft: number | null; frontendsLeft: number | null;
    /** Set when the first `docker network rm` failed (dockerd gave up waiting): its error; it was retried. */
    networkRmRetried?: string;
    problems: string[];
  };
  errors: string[];
}

export interface MaglevBuildRow {
  size: number;
  backends: number;
  reps: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
}

export interface MaglevDisruptionRow {
  size: number;
  backends: number;
  /** The table size the daemon would pick for this many backends. */
  daemonSize: number;
  removals: number;
  /** Changed slots / M when one backend is removed: median and max over the removals. */
  changedFraction: number;
  maxChangedFraction: number;
  /** The removed backend's own slots / M (these must change), median. */
  ownShare: number;
  /** changed − own: slots of surviving backends that moved. */
  extraFraction: number;
  ideal: number;
}

export interface LbMaglevResult {
  note: string;
  build: MaglevBuildRow[];
  disruption: MaglevDisruptionRow[];
  errors: string[];
}

// ---- helpers -----------------------------------------------------------------------------------

const timing = (values: number[]): TimingSummary => timingSummary(values, 3);

function emptyVariant(): VariantPoint {
  return {
    n: 0, connsPerSec: NaN, minConnsPerSec: NaN, maxConnsPerSec: NaN, p50Us: NaN, p99Us: NaN, connections: 0, failedConnections: 0,
    failedRuns: 0, errors: [], runs: [],
  };
}

const ipv4At = (prefix: string, index: number): string => {
  const offset = index + 1; // never .0.0
  return `${prefix}.${offset >> 8}.${offset & 255}`;
};

/** One request on the daemon's API socket; throws on an error answer. */
function api<T>(method: string, urlPath: string, body?: unknown, timeoutMs = 600_000): Promise<{ body: T; ms: number }> {
  return apiRequest<T>(method, urlPath, body, timeoutMs);
}

/** Parses crr client's JSON line (the last line of its output). */
export function parseCrr(stdout: string): CrrRun {
  const line = stdout.trim().split('\n').pop() ?? '';
  const j = JSON.parse(line) as Record<string, number | string>;
  const num = (k: string) => (typeof j[k] === 'number' && (j[k] as number) >= 0 ? (j[k] as number) : NaN);
  return {
    connections: num('connections'), failures: num('failures'), seconds: num('seconds'), connsPerSec: num('conns_per_sec'),
    p50Us: num('p50_us'), p99Us: num('p99_us'), meanUs: num('mean_us'), maxUs: num('max_us'), firstError: String(j.first_error ?? ''),
  };
}

async function crrOnce(client: string, host: string, port: number, o: LbBenchOptions, pin: Pinning, seconds = o.secondsPerRun,
  warmup = o.warmupConnections): Promise<CrrRun> {
  const args = ['exec', client, ...pin.client, 'crr', 'client', host, String(port), '--count', String(o.maxConnectionsPerRun),
    '--seconds', String(seconds), '--warmup', String(warmup), '--timeout-ms', String(o.timeoutMs)];
  const r = await run('docker', args, { allowFail: true, timeoutMs: (seconds * 2 + 60) * 1000 });
  let x: CrrRun;
  try {
    x = parseCrr(r.stdout);
  } catch {
    throw new Error(`crr client ${host}:${port} (exit ${r.code}): ${(r.stderr || r.stdout).trim().slice(0, 300)}`);
  }
  if (!(x.connections > 0)) throw new Error(`crr client ${host}:${port}: no connection succeeded (${x.failures} failed: ${x.firstError})`);
  return x;
}

/** A client in `container` that keeps trying `host:port` until it gets a byte (bounded by `seconds`). */
async function waitReachable(container: string, host: string, port: number, seconds: number): Promise<void> {
  const r = await run('docker', ['exec', container, 'crr', 'probe', host, String(port), '--seconds', String(seconds), '--timeout-ms', '200',
    '--interval-us', '20000'], { allowFail: true, timeoutMs: (seconds + 30) * 1000 });
  if (r.code !== 0) throw new Error(`${host}:${port} not reachable from ${container} within ${seconds} s: ${r.stdout.trim().split('\n').pop() ?? r.stderr.trim()}`);
}

interface ProbeResult<T> {
  value: T;
  fromStartMs: number;
  fromReturnMs: number;
  attempts: number;
}

/**
 * Starts `crr probe` in `container` against host:port, runs `change` once it is trying, and reports
 * when the probe first got a byte, against the host's CLOCK_MONOTONIC (process.hrtime; containers
 * share the clock).
 */
async function probeChange<T>(container: string, host: string, port: number, seconds: number, children: Set<ChildProcess>,
  change: () => Promise<T>): Promise<ProbeResult<T>> {
  const child = spawn('docker', ['exec', container, 'crr', 'probe', host, String(port), '--seconds', String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString('utf8');
    let i: number;
    while ((i = out.indexOf('\n')) >= 0) {
      lines.push(out.slice(0, i));
      out = out.slice(i + 1);
      for (const w of waiters.splice(0)) w();
    }
  });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString('utf8'); });
  const exited = new Promise<void>((resolve) => child.once('close', () => { for (const w of waiters.splice(0)) w(); resolve(); }));
  const waitLine = async (n: number, ms: number): Promise<string | undefined> => {
    const deadline = performance.now() + ms;
    while (lines.length < n && child.exitCode === null && performance.now() < deadline) {
      await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(Math.max(1, deadline - performance.now()))]);
    }
    return lines[n - 1];
  };
  try {
    const ready = await waitLine(1, 20_000);
    if (!ready || !ready.includes('"ready"')) throw new Error(`crr probe did not start: ${err.trim().slice(0, 200) || ready || 'no output'}`);
    const t0 = process.hrtime.bigint();
    const value = await change();
    const t1 = process.hrtime.bigint();
    const done = await waitLine(2, (seconds + 20) * 1000);
    if (!done) throw new Error(`crr probe gave no result: ${err.trim().slice(0, 200)}`);
    const j = JSON.parse(done) as { ok: boolean; first_ok_ns?: number; attempts: number; last_error?: string };
    if (!j.ok || j.first_ok_ns === undefined) throw new Error(`no connection through ${host}:${port} within ${seconds} s after the change (${j.attempts} attempts, ${j.last_error})`);
    // first_ok_ns is below 2^53 for any uptime under 104 days; BigInt for the subtraction anyway.
    const ok = BigInt(Math.round(j.first_ok_ns));
    return { value, fromStartMs: Number(ok - t0) / 1e6, fromReturnMs: Number(ok - t1) / 1e6, attempts: j.attempts };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await Promise.race([exited, sleep(5_000)]);
    children.delete(child);
  }
}

// ---- the Membrane side -------------------------------------------------------------------------

interface ServiceAnswer { name: string; vip4?: string; backends?: Array<{ state: string }>; timing?: DaemonTiming }
interface DaemonTiming { services: number; planMs: number; mapWritesMs: number; commitMs: number }

class MembraneServices {
  readonly vips = new Set<string>();
  fillers = 0;
  measuredVip = '';
  readonly created = new Set<string>();

  constructor(readonly network: string, readonly prefix: string) {}

  private request(name: string, selector: string, vip4?: string): Record<string, unknown> {
    return { name, network: this.network, ports: [`${VIP_PORT}@${SERVER_PORT}`], selector, ...(vip4 ? { vip4 } : {}) };
  }

  async createMeasured(): Promise<string> {
    const name = `${this.prefix}-m`;
    this.created.add(name);
    const { body } = await api<ServiceAnswer>('POST', '/v1/services', this.request(name, LABEL_ALL));
    if (!body.vip4) throw new Error(`service ${name} has no IPv4 VIP: ${JSON.stringify(body).slice(0, 200)}`);
    this.vips.add(body.vip4);
    this.measuredVip = body.vip4;
    return name;
  }

  /** Active backends of the measured service, as the API sees them. */
  async measuredActive(): Promise<number> {
    const { body } = await api<ServiceAnswer>('GET', `/v1/services/${this.prefix}-m?network=${encodeURIComponent(this.network)}`);
    return (body.backends ?? []).filter((b) => b.state === 'active').length;
  }

  /** Creates fillers (each selecting one backend) until `total` services exist, `chunk` per request. */
  async growTo(total: number, chunk: number, aborted: () => boolean): Promise<BulkReport> {
    const report: BulkReport = { created: 0, requests: 0, wallMs: 0, maxRequestMs: 0, planMs: 0, mapWritesMs: 0, commitMs: 0 };
    const started = performance.now();
    while (this.fillers + 1 < total) {
      if (aborted()) throw new Error('interrupted');
      const count = Math.min(chunk, total - 1 - this.fillers);
      const requests = Array.from({ length: count }, (_, i) => {
        const k = this.fillers + i;
        const name = `${this.prefix}-f${k}`;
        this.created.add(name);
        return this.request(name, labelOne(k % 2 === 0 ? 1 : 2));
      });
      const { body, ms } = await api<{ services: ServiceAnswer[]; timing?: DaemonTiming }>('POST', '/v1/services', requests);
      for (const s of body.services) if (s.vip4) this.vips.add(s.vip4);
      this.fillers += count;
      report.created += count;
      report.requests++;
      report.maxRequestMs = Math.max(report.maxRequestMs, ms);
      report.planMs += body.timing?.planMs ?? NaN;
      report.mapWritesMs += body.timing?.mapWritesMs ?? NaN;
      report.commitMs += body.timing?.commitMs ?? NaN;
    }
    report.wallMs = performance.now() - started;
    for (const k of ['wallMs', 'maxRequestMs', 'planMs', 'mapWritesMs', 'commitMs'] as const) report[k] = round(report[k], 1);
    return report;
  }

  /** A free VIP of the service range for a change, from the top (the range's default unless the environment sets another). */
  freeVip(k: number): string {
    const range = process.env.MEMBRANE_SERVICE_IPV4_RANGE ?? '10.211.0.0/16';
    const [base, lengthText] = range.split('/');
    const length = Number(lengthText);
    const start = base!.split('.').reduce((a, b) => a * 256 + Number(b), 0);
    const size = 2 ** (32 - length);
    for (let i = 2 + k; i < size - 1; i++) {
      const v = start + size - i;
      const address = [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
      if (!this.vips.has(address)) return address;
    }
    throw new Error(`no free address in ${range}`);
  }

  async addOne(k: number, vip4: string): Promise<DaemonTiming | undefined> {
    const name = `${this.prefix}-c${k}`;
    this.created.add(name);
    const { body } = await api<ServiceAnswer>('POST', '/v1/services', this.request(name, LABEL_ALL, vip4));
    if (body.vip4 !== vip4) throw new Error(`service ${name} got VIP ${body.vip4}, asked for ${vip4}`);
    this.vips.add(vip4);
    return body.timing;
  }

  async deleteOne(k: number): Promise<{ ms: number; timing?: DaemonTiming }> {
    const name = `${this.prefix}-c${k}`;
    const { body, ms } = await api<ServiceAnswer>('DELETE', `/v1/services/${name}?network=${encodeURIComponent(this.network)}`);
    this.created.delete(name);
    return { ms, timing: body.timing };
  }
}

/** The flags word of mb_lb_config: bit 0 switches the socket-level translation on and off at run time. */
class SocketSwitch {
  private fd: number | undefined;
  private config: Buffer | undefined;
  flagsBefore: number | null = null;
  switched = 0;
  private readonly nl = native();
  private readonly key = Buffer.alloc(4);
  private readonly exitHook = () => this.restore();

  open(): void {
    this.fd = this.nl.bpfObjGet(path.join(PIN_DIR, 'mb_lb_config'));
    const value = this.nl.bpfMapLookup(this.fd, this.key);
    if (!value) throw new Error('mb_lb_config has no entry 0');
    this.config = Buffer.from(value);
    this.flagsBefore = this.config.readUInt32LE(0);
    process.once('exit', this.exitHook);
  }

  private write(flags: number): void {
    if (this.fd === undefined || !this.config) return;
    // Read again: only bit 0 is ours, the rest is the daemon's.
    const now = Buffer.from(this.nl.bpfMapLookup(this.fd, this.key) ?? this.config);
    now.writeUInt32LE(flags >>> 0, 0);
    this.nl.bpfMapUpdate(this.fd, this.key, now, 0);
  }

  set(socket: boolean): void {
    if (this.flagsBefore === null) return;
    const flags = socket ? this.flagsBefore | LB_CONFIG_F_SOCKET : this.flagsBefore & ~LB_CONFIG_F_SOCKET;
    this.write(flags);
    this.switched++;
  }

  /** Puts the flags back as they were; true when they read back so. */
  restore(): boolean | null {
    if (this.fd === undefined || this.flagsBefore === null) return null;
    try {
      this.write(this.flagsBefore);
      return this.nl.bpfMapLookup(this.fd, this.key)?.readUInt32LE(0) === this.flagsBefore;
    } catch {
      return false;
    }
  }

  close(): boolean | null {
    const restored = this.restore();
    if (this.fd !== undefined) this.nl.bpfClose(this.fd);
    this.fd = undefined;
    process.removeListener('exit', this.exitHook);
    return restored;
  }
}

/** Entries of one pinned LB map (undefined when it is not there). */
function countEntries(name: string): number | undefined {
  const nl = native();
  const pin = path.join(PIN_DIR, name);
  if (!fs.existsSync(pin)) return undefined;
  const fd = nl.bpfObjGet(pin);
  try {
    return mapEntries(nl, fd, 1_000_000).length;
  } finally {
    nl.bpfClose(fd);
  }
}

/** Entry counts of the LB maps, and their memory (bpftool's bytes_memlock). */
async function lbMemory(services: number): Promise<{ kernel: Record<string, number>; memory: LbMemory }> {
  const nl = native();
  const started = performance.now();
  const kernel: Record<string, number> = {};
  const maps: LbMemory['maps'] = [];
  let maglevGroups = 0;
  const shown = JSON.parse((await run('bpftool', ['map', 'show', '-j'], { timeoutMs: 120_000 })).stdout) as
    Array<{ id: number; name?: string; type?: string; max_entries?: number; bytes_memlock?: number }>;
  const byId = new Map(shown.map((m) => [m.id, m]));
  for (const name of LB_MAPS) {
    const pin = path.join(PIN_DIR, name);
    if (!fs.existsSync(pin)) continue;
    const fd = nl.bpfObjGet(pin);
    try {
      const info = nl.bpfMapInfo(fd);
      let entries: number | null = null;
      if (COUNTED_MAPS.includes(name)) {
        const all = mapEntries(nl, fd, 1_000_000);
        entries = all.length;
        kernel[name] = entries;
        if (name === 'mb_lb_maglev') maglevGroups = entries;
      }
      const m = byId.get(info.id);
      maps.push({ name, id: info.id, type: m?.type ?? String(info.type), maxEntries: info.maxEntries, entries, bytes: m?.bytes_memlock ?? NaN });
    } finally {
      nl.bpfClose(fd);
    }
  }
  const pinnedBytes = maps.reduce((a, m) => a + (Number.isFinite(m.bytes) ? m.bytes : 0), 0);
  return {
    kernel,
    memory: {
      services, maps, pinnedBytes, maglevGroups, totalBytes: pinnedBytes,
      readMs: round(performance.now() - started, 0),
    },
  };
}

// ---- the bridge systems ------------------------------------------------------------------------

/** Runs `cmd ...args FILE` on a temporary file in `dir` holding `text`; its wall time in ms, the file removed. */
async function timedOnFile(dir: string, text: string, cmd: string, args: string[], timeoutMs: number): Promise<number> {
  const file = path.join(dir, `in-${randomBytes(4).toString('hex')}`);
  fs.writeFileSync(file, text);
  const started = performance.now();
  try {
    await run(cmd, [...args, file], { timeoutMs });
  } finally {
    fs.rmSync(file, { force: true });
  }
  return performance.now() - started;
}

/** Short names: iptables chain names have at most 28 characters. */
class IptablesServices {
  readonly services: string;
  readonly masq: string;
  readonly chains = new Set<string>();
  private jumped = false;
  private hooked = false;
  loaded = 0;
  private readonly exitHook = () => this.removeSync();

  constructor(private readonly tag: string, private readonly tmp: string, private readonly endpoints: [string, string]) {
    this.services = `MBLB-${tag}-SVCS`;
    this.masq = `MBLB-${tag}-MASQ`;
  }

  get jumpArgs(): string[] {
    return ['-d', `${IPTABLES_PREFIX}.0.0/16`, '-m', 'comment', '--comment', 'membrane bench kube-proxy-shaped service portals', '-j', this.services];
  }

  static vip(i: number): string {
    return ipv4At(IPTABLES_PREFIX, i);
  }

  private svc(id: string): string {
    return `MBLB-${this.tag}-V${id}`;
  }

  private sep(id: string, e: number): string {
    return `MBLB-${this.tag}-E${id}-${e}`;
  }

  /** kube-proxy's lines for one service: its rule in the services chain, its chain choosing an endpoint, the endpoint chains. */
  private serviceLines(id: string, vip: string, endpoints: string[]): { chains: string[]; portal: string; rules: string[] } {
    const name = `bench/svc-${id}:http`;
    const svc = this.svc(id);
    const chains = [svc, ...endpoints.map((_, e) => this.sep(id, e))];
    const rules: string[] = [];
    endpoints.forEach((ep, e) => {
      const left = endpoints.length - e;
      const pick = left > 1 ? ` -m statistic --mode random --probability ${(1 / left).toFixed(11)}` : '';
      rules.push(`-A ${svc} -m comment --comment "${name} -> ${ep}:${SERVER_PORT}"${pick} -j ${this.sep(id, e)}`);
    });
    endpoints.forEach((ep, e) => {
      rules.push(`-A ${this.sep(id, e)} -s ${ep}/32 -m comment --comment "${name}" -j ${this.masq}`);
      rules.push(`-A ${this.sep(id, e)} -p tcp -m comment --comment "${name}" -m tcp -j DNAT --to-destination ${ep}:${SERVER_PORT}`);
    });
    return { chains, portal: `-d ${vip}/32 -p tcp -m comment --comment "${name} cluster IP" -m tcp --dport ${VIP_PORT} -j ${svc}`, rules };
  }

  private static natTable(lines: string[]): string {
    return ['*nat', ...lines, 'COMMIT', ''].join('\n');
  }

  private write(lines: string[]): string {
    const file = path.join(this.tmp, `ipt-${randomBytes(4).toString('hex')}`);
    fs.writeFileSync(file, IptablesServices.natTable(lines));
    return file;
  }

  private restore(lines: string[]): Promise<number> {
    return timedOnFile(this.tmp, IptablesServices.natTable(lines), 'iptables-restore', ['-w', '--noflush'], 900_000);
  }

  /** The whole set for `total` services in one iptables-restore --noflush (declared chains are flushed first); the measured service's rule last. */
  async load(total: number): Promise<{ ms: number; rules: number; chains: number }> {
    if (!this.hooked) process.once('exit', this.exitHook);
    this.hooked = true;
    const declared: string[] = [this.services, this.masq];
    const portals: string[] = [];
    const rules: string[] = [`-A ${this.masq} -j MARK --set-xmark 0x4000/0x4000`];
    for (let i = 1; i < total; i++) {
      const s = this.serviceLines(String(i), IptablesServices.vip(i), [this.endpoints[(i - 1) % 2]!]);
      declared.push(...s.chains);
      portals.push(`-A ${this.services} ${s.portal}`);
      rules.push(...s.rules);
    }
    const measured = this.serviceLines('0', IptablesServices.vip(0), this.endpoints);
    declared.push(...measured.chains);
    portals.push(`-A ${this.services} ${measured.portal}`);
    rules.push(...measured.rules);
    for (const c of declared) this.chains.add(c);
    const ms = await this.restore([...declared.map((c) => `:${c} - [0:0]`), ...portals, ...rules]);
    if (!this.jumped) {
      this.jumped = true;
      await run('iptables', ['-w', '-t', 'nat', '-I', 'PREROUTING', '1', ...this.jumpArgs]);
    }
    this.loaded = total;
    return { ms, rules: portals.length + rules.length, chains: declared.length };
  }

  /** One more service, as kube-proxy writes a change: one iptables-restore --noflush. */
  async addOneRestore(k: number, vip: string): Promise<void> {
    const s = this.serviceLines(`c${k}`, vip, this.endpoints);
    for (const c of s.chains) this.chains.add(c);
    await this.restore([...s.chains.map((c) => `:${c} - [0:0]`), `-A ${this.services} ${s.portal}`, ...s.rules]);
  }

  async removeOneRestore(k: number, vip: string): Promise<void> {
    const s = this.serviceLines(`c${k}`, vip, this.endpoints);
    await this.restore([`-D ${this.services} ${s.portal}`, ...s.chains.map((c) => `:${c} - [0:0]`), ...s.chains.map((c) => `-X ${c}`)]);
    for (const c of s.chains) this.chains.delete(c);
  }

  /** The same service as single iptables commands (-N, -A ...). */
  async addOneCommands(k: number, vip: string): Promise<void> {
    const s = this.serviceLines(`k${k}`, vip, this.endpoints);
    for (const c of s.chains) {
      this.chains.add(c);
      await run('iptables', ['-w', '-t', 'nat', '-N', c]);
    }
    for (const rule of [...s.rules, `-A ${this.services} ${s.portal}`]) await run('iptables', ['-w', '-t', 'nat', ...splitRule(rule)]);
  }

  async removeOneCommands(k: number, vip: string): Promise<void> {
    const s = this.serviceLines(`k${k}`, vip, this.endpoints);
    await run('iptables', ['-w', '-t', 'nat', ...splitRule(`-D ${this.services} ${s.portal}`)]);
    for (const c of s.chains) await run('iptables', ['-w', '-t', 'nat', '-F', c]);
    for (const c of s.chains) {
      await run('iptables', ['-w', '-t', 'nat', '-X', c]);
      this.chains.delete(c);
    }
  }

  private cleanupLines(): string[] {
    const chains = [...this.chains];
    return [...chains.map((c) => `:${c} - [0:0]`), ...chains.map((c) => `-X ${c}`)];
  }

  async remove(): Promise<string[]> {
    const problems: string[] = [];
    if (this.jumped) {
      for (let i = 0; i < 5; i++) {
        if ((await run('iptables', ['-w', '-t', 'nat', '-C', 'PREROUTING', ...this.jumpArgs], { allowFail: true })).code !== 0) break;
        const r = await run('iptables', ['-w', '-t', 'nat', '-D', 'PREROUTING', ...this.jumpArgs], { allowFail: true });
        if (r.code !== 0) problems.push(`iptables -t nat -D PREROUTING: ${r.stderr.trim()}`);
      }
      this.jumped = false;
    }
    if (this.chains.size) {
      try {
        await this.restore(this.cleanupLines());
        this.chains.clear();
      } catch (err) {
        problems.push(`removing the iptables chains: ${errorText(err)}`);
      }
    }
    const left = (await run('iptables', ['-w', '-t', 'nat', '-S'], { allowFail: true, timeoutMs: 300_000 })).stdout
      .split('\n').filter((l) => l.includes(`MBLB-${this.tag}-`));
    if (left.length) problems.push(`${left.length} iptables lines of this run are left, e.g. ${left[0]}`);
    process.removeListener('exit', this.exitHook);
    this.hooked = false;
    return problems;
  }

  /** Last resort from the 'exit' hook: synchronous, best effort. */
  private removeSync(): void {
    const quiet = (cmd: string, args: string[]) => {
      try {
        execFileSync(cmd, args, { stdio: 'ignore', timeout: 300_000 });
        return true;
      } catch {
        return false;
      }
    };
    if (this.jumped) for (let i = 0; i < 5 && quiet('iptables', ['-w', '-t', 'nat', '-D', 'PREROUTING', ...this.jumpArgs]); i++) { /* until gone */ }
    if (this.chains.size) {
      try {
        quiet('iptables-restore', ['-w', '--noflush', this.write(this.cleanupLines())]);
      } catch {
        // best effort
      }
    }
  }
}

/** An iptables rule line (as in a restore file) split into arguments, quoted comments kept whole. */
function splitRule(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) out.push(m[1] ?? m[2]!);
  return out;
}

class NftServices {
  readonly table: string;
  private made = false;
  loaded = 0;
  private readonly exitHook = () => this.removeSync();

  constructor(tag: string, private readonly tmp: string, private readonly endpoints: [string, string]) {
    this.table = `mblb_${tag}`;
  }

  static vip(i: number): string {
    return ipv4At(NFT_PREFIX, i);
  }

  private chain(id: string, endpoints: string[]): string {
    const dnat = endpoints.length === 1 ? `dnat to ${endpoints[0]}:${SERVER_PORT}`
      : `dnat to numgen random mod ${endpoints.length} map { ${endpoints.map((e, i) => `${i} : ${e} . ${SERVER_PORT}`).join(', ')} }`;
    return `  chain svc_${id} {\n    meta l4proto tcp ${dnat}\n  }`;
  }

  private apply(text: string): Promise<number> {
    return timedOnFile(this.tmp, text, NFT, ['-f'], 600_000);
  }

  /** The whole table for `total` services, replaced in one transaction. */
  async load(total: number): Promise<{ ms: number; elements: number; chains: number }> {
    if (!this.made) process.once('exit', this.exitHook);
    this.made = true;
    const elements = [`${NftServices.vip(0)} . ${VIP_PORT} : goto svc_0`];
    const chains = [this.chain('0', this.endpoints)];
    for (let i = 1; i < total; i++) {
      elements.push(`${NftServices.vip(i)} . ${VIP_PORT} : goto svc_${i}`);
      chains.push(this.chain(String(i), [this.endpoints[(i - 1) % 2]!]));
    }
    const text = [
      `table ip ${this.table}`, `delete table ip ${this.table}`,
      `table ip ${this.table} {`,
      '  map services {', '    type ipv4_addr . inet_service : verdict', `    elements = { ${elements.join(', ')} }`, '  }',
      '  chain prerouting {', '    type nat hook prerouting priority dstnat; policy accept;',
      `    ip daddr ${NFT_PREFIX}.0.0/16 ip daddr . tcp dport vmap @services`, '  }',
      ...chains, '}', '',
    ].join('\n');
    const ms = await this.apply(text);
    this.loaded = total;
    return { ms, elements: elements.length, chains: chains.length + 1 };
  }

  async addOne(k: number, vip: string): Promise<void> {
    const dnat = `dnat to numgen random mod 2 map { 0 : ${this.endpoints[0]} . ${SERVER_PORT}, 1 : ${this.endpoints[1]} . ${SERVER_PORT} }`;
    await this.apply(`add chain ip ${this.table} svc_c${k} { meta l4proto tcp ${dnat} ; }\n` +
      `add element ip ${this.table} services { ${vip} . ${VIP_PORT} : goto svc_c${k} }\n`);
  }

  async removeOne(k: number, vip: string): Promise<void> {
    await this.apply(`delete element ip ${this.table} services { ${vip} . ${VIP_PORT} }\ndelete chain ip ${this.table} svc_c${k}\n`);
  }

  async remove(): Promise<string[]> {
    if (!this.made) return [];
    const problems: string[] = [];
    const r = await run(NFT, ['delete', 'table', 'ip', this.table], { allowFail: true, timeoutMs: 300_000 });
    if (r.code !== 0 && !/No such file/.test(r.stderr)) problems.push(`nft delete table ip ${this.table}: ${r.stderr.trim()}`);
    if ((await run(NFT, ['list', 'table', 'ip', this.table], { allowFail: true })).code === 0) problems.push(`nft table ${this.table} still exists`);
    this.made = false;
    process.removeListener('exit', this.exitHook);
    return problems;
  }

  private removeSync(): void {
    if (!this.made) return;
    try {
      execFileSync(NFT, ['delete', 'table', 'ip', this.table], { stdio: 'ignore', timeout: 300_000 });
    } catch {
      // best effort
    }
  }
}

/** `unreachable 10.212.0.0/15` in the main table while the section runs; refuses if something routes there. */
class GuardRoute {
  private added = false;
  private readonly exitHook = () => this.removeSync();

  async add(): Promise<void> {
    const routes = (await run('ip', ['-4', 'route', 'show', 'table', 'all'])).stdout.split('\n')
      .filter((l) => /^(unreachable |blackhole |prohibit )?10\.21[23]\./.test(l.trim()) || l.includes(GUARD_ROUTE));
    if (routes.length) throw new Error(`something already routes into ${GUARD_ROUTE} (${routes[0]!.trim()}); the bridge systems need it unused`);
    await run('ip', ['-4', 'route', 'add', 'unreachable', GUARD_ROUTE]);
    this.added = true;
    process.once('exit', this.exitHook);
  }

  async remove(): Promise<string[]> {
    if (!this.added) return [];
    const r = await run('ip', ['-4', 'route', 'del', 'unreachable', GUARD_ROUTE], { allowFail: true });
    this.added = false;
    process.removeListener('exit', this.exitHook);
    return r.code === 0 ? [] : [`ip route del unreachable ${GUARD_ROUTE}: ${r.stderr.trim()}`];
  }

  private removeSync(): void {
    if (!this.added) return;
    try {
      execFileSync('ip', ['-4', 'route', 'del', 'unreachable', GUARD_ROUTE], { stdio: 'ignore', timeout: 30_000 });
    } catch {
      // best effort
    }
  }
}

/** How many fds a process has open (NaN when /proc does not say). */
function openFdsOf(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

// ---- the live section --------------------------------------------------------------------------

export interface LbContext {
  runId: string;
  labels: string[];
  networks: { bridge: string };
  aborted: () => boolean;
}

function summarizeVariant(v: VariantPoint): void {
  const cps = v.runs.map((x) => x.connsPerSec);
  const s = summarize(cps);
  v.n = s.n;
  v.connsPerSec = round(s.median, 1);
  v.minConnsPerSec = round(s.min, 1);
  v.maxConnsPerSec = round(s.max, 1);
  v.p50Us = round(median(v.runs.map((x) => x.p50Us)), 2);
  v.p99Us = round(median(v.runs.map((x) => x.p99Us)), 2);
  v.connections = v.runs.reduce((a, x) => a + x.connections, 0);
  v.failedConnections = v.runs.reduce((a, x) => a + x.failures, 0);
}

/** Per-round ratio a/b of conns/s at one size (both measured in the same round). */
function pairedRatios(p: LbSizePoint, a: LbVariant, b: LbVariant): number[] {
  const out: number[] = [];
  for (const x of p.variants[a].runs) {
    const y = p.variants[b].runs.find((r) => r.round === x.round);
    if (y) out.push(ratio(x.connsPerSec, y.connsPerSec));
  }
  return out.filter(Number.isFinite);
}

export function lbRatios(points: LbSizePoint[]): { flatness: FlatnessRow[]; pairs: PairRow[] } {
  const base = points.find((p) => p.services === 1);
  const flatness: FlatnessRow[] = [];
  const pairs: PairRow[] = [];
  for (const p of points) {
    for (const v of LB_VARIANTS) {
      const x = p.variants[v];
      const b = base?.variants[v];
      if (!b || !x.n || !b.n) continue;
      const floorAt = (point: LbSizePoint) => median(pairedRatios(point, v, FLOOR[v]));
      flatness.push({
        services: p.services, membraneServices: p.membraneServices, variant: v,
        connsPerSec: {
          value: round(ratio(x.connsPerSec, b.connsPerSec)),
          min: round(ratio(x.minConnsPerSec, b.maxConnsPerSec)), max: round(ratio(x.maxConnsPerSec, b.minConnsPerSec)),
        },
        p50: round(ratio(x.p50Us, b.p50Us)), p99: round(ratio(x.p99Us, b.p99Us)),
        floorNormalized: FLOOR[v] === v ? NaN : round(ratio(floorAt(p), floorAt(base!))),
      });
    }
    for (const [a, b] of PAIRS) {
      const r = pairedRatios(p, a, b);
      if (!r.length) continue;
      pairs.push({
        services: p.services, membraneServices: p.membraneServices, a, b,
        connsPerSec: { value: round(median(r)), min: round(Math.min(...r)), max: round(Math.max(...r)) },
        p50: round(ratio(p.variants[a].p50Us, p.variants[b].p50Us)), p99: round(ratio(p.variants[a].p99Us, p.variants[b].p99Us)),
      });
    }
  }
  return { flatness, pairs };
}

export async function benchLbLive(o: LbBenchOptions, ctx: LbContext): Promise<LbLiveResult> {
  const { pin, text: pinText } = lbPinning(o.pinning);
  const sizes = [...new Set(o.sizes)].sort((a, b) => a - b);
  if (sizes[0] !== 1) sizes.unshift(1);
  const largest = sizes[sizes.length - 1]!;
  const tag = randomBytes(3).toString('hex');
  const prefix = `mbbench-${ctx.runId}-lb`;
  const names = {
    m1: `${prefix}-m1`, m2: `${prefix}-m2`, mcs: `${prefix}-mcs`, mcp: `${prefix}-mcp`, mcd: `${prefix}-mcd`,
    b1: `${prefix}-b1`, b2: `${prefix}-b2`, bc: `${prefix}-bc`,
  };
  const result: LbLiveResult = {
    note: 'crr (integration/bench/crr.c): one client process, sequential connections, each connect() → read one byte → close with ' +
      'SO_LINGER 0 (a reset, so no TIME_WAIT piles up); time to first byte = connect() to the byte read. Servers accept, write one ' +
      `byte and close (crr serve ${SERVER_PORT}, one process per backend). Membrane: an IPv4-only Membrane network (one frontend per ` +
      'service) with two backends and three client containers, one per Membrane variant (Membrane\'s conntrack keeps a closed ' +
      'flow\'s entry, NAT included, for 10 s, and a new connection reusing its tuple inherits it: a per-packet-translated and a ' +
      `direct connection from one client to one backend must not share source ports); the measured service (${VIP_PORT}@${SERVER_PORT}, selector ${LABEL_ALL}) plus N−1 filler ` +
      `services made in bulk through POST /v1/services, each selecting one backend (${labelOne(1)} or ${labelOne(2)}), each with its own ` +
      'VIP, frontend, backend and Maglev table (251 slots); measured by VIP from its client container. Socket path = the default ' +
      '(cgroup connect4 rewrites the destination once per connection); per-packet path = bit 0 of mb_lb_config\'s flags cleared at run ' +
      'time (from_container translates every packet; the bench flips the bit before each Membrane run and puts it back afterwards). ' +
      `iptables: kube-proxy's nat layout on a Docker bridge pair, loaded with iptables-restore --noflush: a services chain jumped to ` +
      `from the top of PREROUTING (for ${IPTABLES_PREFIX}.0.0/16 only, so the other variants' connections do not walk it), one ` +
      '`-d VIP -p tcp --dport 80 -j SVC` rule per service with the measured one LAST (the worst case), each service chain choosing an ' +
      'endpoint chain with `-m statistic --mode random --probability`, each endpoint chain marking hairpin traffic and DNATing; ' +
      `fillers have one endpoint. nftables: table ip mblb_…, a prerouting nat chain \`ip daddr ${NFT_PREFIX}.0.0/16 ip daddr . tcp dport ` +
      'vmap @services`, each element going to a per-service chain with `dnat to numgen random mod 2 map {…}` (fillers: one `dnat to`); ' +
      'loaded with `nft -f`. Both bridge systems translate only the first packet of a connection (conntrack NAT; bridge-nf-call-iptables ' +
      'brings the bridged replies through conntrack). Floors: the client straight to one backend on each network. Sizes go up one after ' +
      'another; within a size every round runs every variant once in a rotated order.',
    settings: o,
    image: '',
    pinning: pinText,
    loadAverageAtStart: os.loadavg().map((x) => round(x, 2)),
    topology: {
      membraneNetwork: `${prefix}-net`, bridgeNetwork: ctx.networks.bridge, bridgeNetfilter: '', membraneServers: [], bridgeServers: [],
      measuredVip: { membrane: '', iptables: IptablesServices.vip(0), nftables: NftServices.vip(0) }, guardRoute: `unreachable ${GUARD_ROUTE}`,
    },
    daemon: { pid: 0, openFdsBefore: NaN, openFdsAfter: NaN },
    lbConfig: { flagsBefore: null, flagsRestored: null, switched: 0 },
    iptablesVersion: '',
    nftVersion: '',
    points: sizes.map((services) => ({
      services, membraneServices: services, setup: null, roundsCompleted: 0,
      variants: Object.fromEntries(LB_VARIANTS.map((v) => [v, emptyVariant()])) as Record<LbVariant, VariantPoint>,
    })),
    flatness: [],
    pairs: [],
    controlPlane: null,
    cleanup: { ms: {}, servicesLeft: null, frontendsLeft: null, problems: [] },
    errors: [],
  };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-lb-'));
  const containers: string[] = [];
  const children = new Set<ChildProcess>();
  const sw = new SocketSwitch();
  const guard = new GuardRoute();
  let networkMade = false;
  let membrane: MembraneServices | undefined;
  let ipt: IptablesServices | undefined;
  let nft: NftServices | undefined;
  let frontendsBefore: number | null = null;
  let groupsBefore: number | null = null;
  const available = new Set<LbVariant>(LB_VARIANTS);
  const skip = (variants: LbVariant[], why: string) => {
    for (const v of variants) available.delete(v);
    result.errors.push(why);
  };
  const sectionStart = performance.now();
  const deadline = sectionStart + o.maxSeconds * 1000;
  try {
    result.image = await ensureBenchImage();
    const status = (await api<{ pid: number }>('GET', '/v1/status')).body;
    result.daemon.pid = status.pid;
    result.daemon.openFdsBefore = openFdsOf(status.pid);

    result.topology.bridgeNetfilter = `net.bridge.bridge-nf-call-iptables=${(() => {
      try {
        return fs.readFileSync('/proc/sys/net/bridge/bridge-nf-call-iptables', 'utf8').trim();
      } catch {
        return 'absent';
      }
    })()}`;
    result.iptablesVersion = (await run('iptables', ['-V'], { allowFail: true })).stdout.trim();
    const nftV = await run(NFT, ['--version'], { allowFail: true });
    result.nftVersion = nftV.code === 0 ? nftV.stdout.trim() : 'missing';
    if (nftV.code !== 0) skip(['nftables'], 'nft is missing (apt-get install nftables; scripts/install-deps.sh should list it): the nftables variant is left out');
    if (!result.topology.bridgeNetfilter.endsWith('=1')) {
      skip(['iptables', 'nftables'], `${result.topology.bridgeNetfilter}: replies bridged between two containers would bypass conntrack, so DNAT on the bridge cannot work; iptables and nftables are left out`);
    }

    // Topology. Containers are listed before they exist, so half-made ones are removed too.
    const labelArgs = (extra: string[] = []) => [...ctx.labels, ...extra].flatMap((l) => ['--label', l]);
    await run('docker', ['network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', ...labelArgs(), result.topology.membraneNetwork]);
    networkMade = true;
    const serve = `exec ${pin.server.join(' ')} crr serve ${SERVER_PORT}`.replace(/\s+/g, ' ');
    const sleepSeconds = String(Math.ceil(o.maxSeconds + 1800));
    const start = async (name: string, network: string, extra: string[], cmd: string[]) => {
      containers.push(name);
      await run('docker', ['run', '-d', '--name', name, ...labelArgs(extra), '--network', network, BENCH_IMAGE, ...cmd], { timeoutMs: 120_000 });
    };
    await start(names.m1, result.topology.membraneNetwork, [LABEL_ALL, labelOne(1)], ['sh', '-c', serve]);
    await start(names.m2, result.topology.membraneNetwork, [LABEL_ALL, labelOne(2)], ['sh', '-c', serve]);
    // One client per Membrane variant: Membrane's conntrack keeps a closed flow's entry (and its NAT)
    // for 10 s and a new connection that reuses the tuple inherits it, so a per-packet-translated and
    // an untranslated connection from one client to one backend must not share source ports.
    for (const c of [names.mcs, names.mcp, names.mcd]) await start(c, result.topology.membraneNetwork, [], ['sleep', sleepSeconds]);
    await start(names.b1, ctx.networks.bridge, [], ['sh', '-c', serve]);
    await start(names.b2, ctx.networks.bridge, [], ['sh', '-c', serve]);
    await start(names.bc, ctx.networks.bridge, [], ['sleep', sleepSeconds]);
    const ip = async (c: string, network: string) => {
      const a = (await addressesOf(c, network)).ipv4;
      if (!a) throw new Error(`${c} has no IPv4 address on ${network}`);
      return a;
    };
    const mServers: [string, string] = [await ip(names.m1, result.topology.membraneNetwork), await ip(names.m2, result.topology.membraneNetwork)];
    const bServers: [string, string] = [await ip(names.b1, ctx.networks.bridge), await ip(names.b2, ctx.networks.bridge)];
    result.topology.membraneServers = mServers;
    result.topology.bridgeServers = bServers;
    // Identities arrive from Docker's events: until then (initPolicy deny) nothing gets through.
    // The per-packet client only ever goes through the VIP (below): no direct tuple of its own to collide with.
    for (const c of [names.mcs, names.mcd]) for (const s of mServers) await waitReachable(c, s, SERVER_PORT, 60);
    for (const s of bServers) await waitReachable(names.bc, s, SERVER_PORT, 60);

    frontendsBefore = countEntries('mb_lb_frontends') ?? null;
    groupsBefore = countEntries('mb_lb_maglev') ?? null;
    membrane = new MembraneServices(result.topology.membraneNetwork, `mbl${ctx.runId.slice(-6).toLowerCase()}`);
    await membrane.createMeasured();
    result.topology.measuredVip.membrane = membrane.measuredVip;
    {
      const until = performance.now() + 60_000;
      let active = 0;
      while (performance.now() < until && (active = await membrane.measuredActive()) < 2) await sleep(250);
      if (active < 2) throw new Error(`the measured service has ${active} active backends after 60 s, want 2`);
    }
    sw.open();
    result.lbConfig.flagsBefore = sw.flagsBefore;
    sw.set(false);
    try {
      await waitReachable(names.mcp, membrane.measuredVip, VIP_PORT, 60);
    } finally {
      sw.restore();
    }
    if (available.has('iptables') || available.has('nftables')) {
      try {
        await guard.add();
      } catch (err) {
        skip(['iptables', 'nftables'], errorText(err));
      }
    }
    if (available.has('iptables')) ipt = new IptablesServices(tag, tmp, bServers);
    if (available.has('nftables')) nft = new NftServices(tag, tmp, bServers);

    const target: Record<LbVariant, { client: string; host: string; port: number }> = {
      membraneSocket: { client: names.mcs, host: membrane.measuredVip, port: VIP_PORT },
      membranePacket: { client: names.mcp, host: membrane.measuredVip, port: VIP_PORT },
      iptables: { client: names.bc, host: IptablesServices.vip(0), port: VIP_PORT },
      nftables: { client: names.bc, host: NftServices.vip(0), port: VIP_PORT },
      directMembrane: { client: names.mcd, host: mServers[0], port: SERVER_PORT },
      directBridge: { client: names.bc, host: bServers[0], port: SERVER_PORT },
    };
    const measure = async (v: LbVariant, seconds?: number, warmup?: number): Promise<CrrRun> => {
      if (v === 'membraneSocket') sw.set(true);
      else if (v === 'membranePacket') sw.set(false);
      try {
        const t = target[v];
        return await crrOnce(t.client, t.host, t.port, o, pin, seconds, warmup);
      } finally {
        if (v === 'membraneSocket' || v === 'membranePacket') sw.restore();
      }
    };

    for (const [si, point] of result.points.entries()) {
      if (ctx.aborted()) throw new Error('interrupted');
      if (performance.now() > deadline) {
        result.errors.push(`lb section hit its time limit (${o.maxSeconds} s) before ${point.services.toLocaleString('en-US')} services`);
        break;
      }
      const n = point.services;
      console.error(`bench: lb: ${n.toLocaleString('en-US')} services: setting up`);
      const nm = point.membraneServices;
      const setup: SizeSetup = { membrane: await membrane.growTo(nm, o.bulkChunk, ctx.aborted), kernel: {}, iptables: null, nftables: null, memory: null };
      point.setup = setup;
      if (ipt && available.has('iptables')) {
        try {
          setup.iptables = await ipt.load(n);
          setup.iptables.ms = round(setup.iptables.ms, 1);
        } catch (err) {
          skip(['iptables'], `iptables at ${n}: ${errorText(err)}`);
        }
      }
      if (nft && available.has('nftables')) {
        try {
          setup.nftables = await nft.load(n);
          setup.nftables.ms = round(setup.nftables.ms, 1);
        } catch (err) {
          skip(['nftables'], `nftables at ${n}: ${errorText(err)}`);
        }
      }
      try {
        const m = await lbMemory(nm);
        setup.kernel = m.kernel;
        setup.memory = m.memory;
      } catch (err) {
        result.errors.push(`reading the LB maps at ${n}: ${errorText(err)}`);
      }
      // Every path works before anything is timed (and warms conntrack and neighbours).
      for (const v of LB_VARIANTS) {
        if (!available.has(v)) continue;
        try {
          const x = await measure(v, 1, 20);
          if (x.failures) point.variants[v].errors.push(`check run: ${x.failures} failed (${x.firstError})`);
        } catch (err) {
          point.variants[v].errors.push(`check run: ${errorText(err)}`);
        }
      }
      console.error(`bench: lb: ${n.toLocaleString('en-US')} services: ${o.rounds} rounds`);
      for (let r = 0; r < o.rounds; r++) {
        if (ctx.aborted()) throw new Error('interrupted');
        if (performance.now() > deadline) {
          result.errors.push(`lb section hit its time limit (${o.maxSeconds} s) after ${r} rounds at ${n.toLocaleString('en-US')} services`);
          break;
        }
        const order = LB_VARIANTS.map((_, i) => LB_VARIANTS[(i + r + si) % LB_VARIANTS.length]!);
        for (const v of order) {
          if (!available.has(v)) continue;
          const point_ = point.variants[v];
          try {
            point_.runs.push({ ...await measure(v), round: r });
          } catch (err) {
            point_.failedRuns++;
            if (point_.errors.length < 5) point_.errors.push(errorText(err));
          }
        }
        point.roundsCompleted++;
      }
      for (const v of LB_VARIANTS) summarizeVariant(point.variants[v]);
      if (n === o.controlSize || (n === largest && !result.controlPlane && !sizes.includes(o.controlSize))) {
        result.controlPlane = await controlPlane(o, n, {
          membrane, ipt: available.has('iptables') ? ipt : undefined, nft: available.has('nftables') ? nft : undefined,
          clients: { membrane: names.mcs, bridge: names.bc }, children, aborted: ctx.aborted,
        });
      }
    }
    const r = lbRatios(result.points);
    result.flatness = r.flatness;
    result.pairs = r.pairs;
  } catch (err) {
    result.errors.push(errorText(err));
  } finally {
    for (const child of children) child.kill('SIGTERM');
    result.lbConfig.switched = sw.switched;
    result.lbConfig.flagsRestored = sw.close();
    if (result.lbConfig.flagsRestored === false) result.cleanup.problems.push('mb_lb_config flags could not be restored');
    const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      const started = performance.now();
      try {
        return await fn();
      } finally {
        result.cleanup.ms[what] = round(performance.now() - started, 0);
      }
    };
    // Netfilter first: Docker's own iptables calls would walk a nat table this big.
    if (ipt) result.cleanup.problems.push(...await timed('iptables', () => ipt!.remove()));
    if (nft) result.cleanup.problems.push(...await timed('nftables', () => nft!.remove()));
    result.cleanup.problems.push(...await guard.remove());
    await timed('containers', async () => {
      if (!containers.length) return;
      const r = await run('docker', ['rm', '-f', ...containers], { allowFail: true, timeoutMs: 600_000 });
      if (r.code !== 0 && !/No such container/.test(r.stderr)) result.cleanup.problems.push(`docker rm: ${r.stderr.trim().slice(0, 300)}`);
    });
    // The daemon deletes a network's services with it: one change for all of them. It answers
    // DeleteNetwork only when their maps are written, which may outlast dockerd's patience with a
    // plugin call at tens of thousands of services: then wait until the frontends are gone and ask again.
    if (networkMade) {
      await timed('network', async () => {
        const rm = () => run('docker', ['network', 'rm', result.topology.membraneNetwork], { allowFail: true, timeoutMs: 900_000 });
        let r = await rm();
        if (r.code !== 0) {
          result.cleanup.networkRmRetried = r.stderr.trim().slice(0, 300);
          const until = performance.now() + 20 * 60_000;
          let left = Infinity;
          while (performance.now() < until && left > (frontendsBefore ?? 0)) {
            await sleep(5_000);
            left = countEntries('mb_lb_frontends') ?? 0;
          }
          for (let i = 0; i < 5 && r.code !== 0; i++) {
            r = await rm();
            if (r.code !== 0) await sleep(5_000);
          }
        }
        if (r.code !== 0) result.cleanup.problems.push(`docker network rm ${result.topology.membraneNetwork}: ${r.stderr.trim()}`);
      });
    }
    if (membrane) {
      await timed('servicesCheck', async () => {
        try {
          const left = (await api<Array<{ name: string; networkName?: string; network: string }>>('GET', '/v1/services')).body
            .filter((s) => membrane!.created.has(s.name));
          // Fallback, bounded: whatever survived the network's deletion goes one by one.
          for (const s of left.slice(0, 200)) {
            await api('DELETE', `/v1/services/${s.name}?network=${encodeURIComponent(s.network)}`).catch((err: unknown) =>
              result.cleanup.problems.push(`DELETE /v1/services/${s.name}: ${errorText(err)}`));
          }
          const after = (await api<Array<{ name: string }>>('GET', '/v1/services')).body.filter((s) => membrane!.created.has(s.name));
          result.cleanup.servicesLeft = after.length;
          if (left.length) result.cleanup.problems.push(`${left.length} services of this section outlived their network`);
          if (after.length) result.cleanup.problems.push(`${after.length} services of this section are left`);
          result.cleanup.frontendsLeft = countEntries('mb_lb_frontends') ?? null;
          if (frontendsBefore !== null && result.cleanup.frontendsLeft !== null && result.cleanup.frontendsLeft > frontendsBefore) {
            result.cleanup.problems.push(`mb_lb_frontends holds ${result.cleanup.frontendsLeft} entries, ${frontendsBefore} before the section`);
          }
          const groupsLeft = countEntries('mb_lb_maglev') ?? null;
          if (groupsBefore !== null && groupsLeft !== null && groupsLeft > groupsBefore) {
            result.cleanup.problems.push(`mb_lb_maglev holds ${groupsLeft} groups, ${groupsBefore} before the section`);
          }
          if (result.daemon.pid) result.daemon.openFdsAfter = openFdsOf(result.daemon.pid);
        } catch (err) {
          result.cleanup.problems.push(`checking the services after cleanup: ${errorText(err)}`);
        }
      });
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return result;
}

// ---- control plane -----------------------------------------------------------------------------

interface ControlContext {
  membrane: MembraneServices;
  ipt?: IptablesServices;
  nft?: NftServices;
  clients: { membrane: string; bridge: string };
  children: Set<ChildProcess>;
  aborted: () => boolean;
}

type ChangeKind = 'membrane' | 'iptablesRestore' | 'iptablesCommands' | 'nftables';

async function controlPlane(o: LbBenchOptions, services: number, c: ControlContext): Promise<NonNullable<LbLiveResult['controlPlane']>> {
  console.error(`bench: lb: control plane at ${services.toLocaleString('en-US')} services`);
  const kinds: ChangeKind[] = ['membrane'];
  if (c.ipt) kinds.push('iptablesRestore', 'iptablesCommands');
  if (c.nft) kinds.push('nftables');
  const what: Record<ChangeKind, string> = {
    membrane: 'Membrane: POST /v1/services (one service, 2 backends), DELETE to remove',
    iptablesRestore: 'iptables: iptables-restore --noflush of its 3 chains and 7 rules (as kube-proxy writes a change)',
    iptablesCommands: 'iptables: the same as 10 single iptables commands (3 × -N, 7 × -A)',
    nftables: 'nftables: one nft -f adding its chain and its map element',
  };
  const samples = Object.fromEntries(kinds.map((k) => [k, {
    add: [] as number[], fromStart: [] as number[], fromReturn: [] as number[], attempts: [] as number[], remove: [] as number[],
    plan: [] as number[], writes: [] as number[], commit: [] as number[], delWrites: [] as number[], delCommit: [] as number[], errors: [] as string[],
  }])) as Record<ChangeKind, { add: number[]; fromStart: number[]; fromReturn: number[]; attempts: number[]; remove: number[]; plan: number[];
    writes: number[]; commit: number[]; delWrites: number[]; delCommit: number[]; errors: string[] }>;
  for (let k = 0; k < o.changeRepetitions; k++) {
    const order = kinds.map((_, i) => kinds[(i + k) % kinds.length]!);
    for (const kind of order) {
      if (c.aborted()) throw new Error('interrupted');
      const s = samples[kind];
      const index = CHANGE_INDEX + k;
      try {
        const vip = kind === 'membrane' ? c.membrane.freeVip(k) : kind === 'nftables' ? NftServices.vip(index) : IptablesServices.vip(kind === 'iptablesRestore' ? index : index + 1000);
        const client = kind === 'membrane' ? c.clients.membrane : c.clients.bridge;
        let addMs = 0;
        const probed = await probeChange(client, vip, VIP_PORT, 30, c.children, async () => {
          const started = performance.now();
          let t: DaemonTiming | undefined;
          if (kind === 'membrane') t = await c.membrane.addOne(k, vip);
          else if (kind === 'iptablesRestore') await c.ipt!.addOneRestore(k, vip);
          else if (kind === 'iptablesCommands') await c.ipt!.addOneCommands(k, vip);
          else await c.nft!.addOne(k, vip);
          addMs = performance.now() - started;
          return t;
        });
        s.add.push(addMs);
        s.fromStart.push(probed.fromStartMs);
        s.fromReturn.push(probed.fromReturnMs);
        s.attempts.push(probed.attempts);
        if (probed.value) {
          s.plan.push(probed.value.planMs);
          s.writes.push(probed.value.mapWritesMs);
          s.commit.push(probed.value.commitMs);
        }
        const started = performance.now();
        if (kind === 'membrane') {
          const d = await c.membrane.deleteOne(k);
          if (d.timing) {
            s.delWrites.push(d.timing.mapWritesMs);
            s.delCommit.push(d.timing.commitMs);
          }
        } else if (kind === 'iptablesRestore') await c.ipt!.removeOneRestore(k, vip);
        else if (kind === 'iptablesCommands') await c.ipt!.removeOneCommands(k, vip);
        else await c.nft!.removeOne(k, vip);
        s.remove.push(performance.now() - started);
      } catch (err) {
        if (s.errors.length < 5) s.errors.push(errorText(err));
      }
    }
  }
  return {
    services,
    note: `At ${services.toLocaleString('en-US')} services on the host, ${o.changeRepetitions} times, the systems in a rotated order: one more ` +
      'service with 2 backends, then its removal. add = wall time of the change as its client sees it (the API round trip; the ' +
      'command\'s run time, process start included). First connection = the moment a client in the client container that keeps ' +
      'connecting to the new VIP (crr probe: a new connection every 0.2 ms, 5 ms each) first reads a byte, from the start and from ' +
      'the return of the change (negative: the path worked before the change had answered). Membrane\'s own times come from the ' +
      'answer\'s timing: planMs (plan of the touched service), mapWritesMs (LB map writes), commitMs (the state file written, fsync ' +
      'included). The VIPs of the changes are unused before (unreachable: the guard route for the bridge systems, Membrane\'s own ' +
      'unreachable route for its range).',
    systems: kinds.map((kind) => {
      const s = samples[kind];
      return {
        what: what[kind], add: timing(s.add), firstConnectionFromStart: timing(s.fromStart), firstConnectionFromReturn: timing(s.fromReturn),
        probeAttempts: s.attempts, remove: timing(s.remove), errors: s.errors,
        ...(kind === 'membrane' ? {
          daemon: {
            planMs: timing(s.plan), mapWritesMs: timing(s.writes), commitMs: timing(s.commit), deleteMapWritesMs: timing(s.delWrites),
            deleteCommitMs: timing(s.delCommit),
          },
        } : {}),
      };
    }),
  };
}

// ---- Maglev ------------------------------------------------------------------------------------

function backendsFor(n: number, seed: number): MaglevBackend[] {
  const r = rng(seed);
  const hex = () => Array.from({ length: 8 }, () => Math.floor(r() * 2 ** 32).toString(16).padStart(8, '0')).join('');
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, key: `${hex()}:${SERVER_PORT}`, weight: 1 }));
}

export function benchMaglev(o: LbBenchOptions): LbMaglevResult {
  const result: LbMaglevResult = {
    note: 'plugin/lb/maglev.ts in this process, no daemon: buildTable for M slots and N backends of weight 1 (keys like the daemon\'s, ' +
      '"<64 hex>:8080"), only where M ≥ N; one warm-up build, then builds until ' + `${o.maglevMinMs} ms have passed (at least 3, at most 500); ` +
      'median per build. Disruption: the table of N backends against the table without one of them (up to ' +
      `${o.maglevRemovals} different ones removed, tableDiff): changed slots / M, of which the removed backend's own share must change; ` +
      '"extra" = slots that moved between surviving backends. Ideal = 1/N (only the removed backend\'s share moves). The daemon picks ' +
      `M = tableSizeFor(N) (the smallest of ${TABLE_SIZES.slice(0, 4).join(', ')}, … that is ≥ 100·N).`,
    build: [], disruption: [], errors: [],
  };
  try {
    for (const size of o.maglevSizes) {
      for (const n of o.maglevBackends) {
        if (n > size) continue;
        const backends = backendsFor(n, size * 7919 + n);
        buildTable(backends, size);
        const times: number[] = [];
        const started = performance.now();
        while (times.length < 500 && (times.length < 3 || performance.now() - started < o.maglevMinMs)) {
          const t0 = performance.now();
          buildTable(backends, size);
          times.push(performance.now() - t0);
        }
        const s = summarize(times);
        result.build.push({ size, backends: n, reps: s.n, medianMs: round(s.median, 4), minMs: round(s.min, 4), maxMs: round(s.max, 4) });
        const full = buildTable(backends, size);
        const changed: number[] = [];
        const own: number[] = [];
        const removals = Math.min(n, o.maglevRemovals);
        for (let j = 0; j < removals; j++) {
          const victim = Math.floor((j * n) / removals);
          const without = buildTable(backends.filter((_, i) => i !== victim), size);
          changed.push(tableDiff(full, without).indices.length / size);
          let mine = 0;
          for (const id of full) if (id === backends[victim]!.id) mine++;
          own.push(mine / size);
        }
        const c = median(changed);
        const w = median(own);
        result.disruption.push({
          size, backends: n, daemonSize: tableSizeFor(n), removals, changedFraction: round(c, 5), maxChangedFraction: round(Math.max(...changed), 5),
          ownShare: round(w, 5), extraFraction: round(c - w, 5), ideal: round(1 / n, 5),
        });
      }
    }
  } catch (err) {
    result.errors.push(errorText(err));
  }
  return result;
}

// ---- report ------------------------------------------------------------------------------------

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

const count = (n: number) => n.toLocaleString('en-US');
const MEMBRANE_SIDE = new Set<LbVariant>(['membraneSocket', 'membranePacket', 'directMembrane']);
/** The size cell: N, and Membrane's own count where it held fewer services than the bridge systems. */
const sizeCell = (x: { services: number; membraneServices: number }, variants: LbVariant[]) =>
  x.membraneServices < x.services && variants.some((v) => MEMBRANE_SIDE.has(v) && v !== 'directMembrane')
    ? `${count(x.services)} (Membrane ${count(x.membraneServices)})` : count(x.services);
const spread = (r: RatioSpread, digits = 3) => `${fmt(r.value, digits)} (${fmt(r.min, 2)}–${fmt(r.max, 2)})`;
const bytes = (b: number) => (Number.isFinite(b) ? (b >= 2 ** 20 ? `${fmt(b / 2 ** 20, 1)} MiB` : `${fmt(b / 1024, 1)} KiB`) : '—');
const ms = (t: TimingSummary, digits = 1) => (t.n ? `${fmt(t.p50Ms, digits)} (${fmt(t.maxMs, digits)})` : '—');

export function renderLb(live: LbLiveResult | null, maglev: LbMaglevResult | null, skipped: boolean): string[] {
  const out: string[] = ['## 7. Service load balancer at scale', ''];
  if (skipped) return [...out, '(not run)', ''];
  out.push('How to read: every number is from this machine in this run; compare ratios, not absolute rates. "N/1" divides a ' +
    'variant\'s median connections per second at N services by its own at 1 service (1.0 = flat; the issue asks Membrane to stay ' +
    'within 5 %, i.e. ≥ 0.95, at 30,000); in brackets the widest spread the rounds allow (worst round at N over best at 1, and the ' +
    'reverse), since sizes are measured one after another and cannot be paired. "÷ floor" divides each round by the direct ' +
    'connection of the same round first, which takes out drift of the machine between sizes. Between systems, ratios are paired ' +
    'per round (median, min–max). Conns/s above 1 and time to first byte below 1 favour the numerator. Timings of a change are ' +
    'p50 (max). Nothing here asserts a number.', '');
  if (live) {
    const last = live.points.filter((p) => p.roundsCompleted > 0).pop();
    const lines: string[] = [];
    if (last && last.services > 1) {
      const f = (v: LbVariant) => live.flatness.find((x) => x.services === last.services && x.variant === v);
      const cells = LB_VARIANTS.filter((v) => FLOOR[v] !== v && f(v)).map((v) =>
        `${LB_VARIANT_LABELS[v]}${MEMBRANE_SIDE.has(v) && last.membraneServices < last.services ? ` (at ${count(last.membraneServices)})` : ''} ` +
        `${fmt(f(v)!.connsPerSec.value, 3)} (÷ floor ${fmt(f(v)!.floorNormalized, 3)})`);
      if (cells.length) lines.push(`- conns/s at ${count(last.services)} services over at 1: ${cells.join('; ')}.`);
      const pair = (a: LbVariant, b: LbVariant) => live.pairs.find((x) => x.services === last.services && x.a === a && x.b === b);
      const ps = ([['membraneSocket', 'iptables'], ['membraneSocket', 'nftables'], ['membranePacket', 'iptables'], ['membranePacket', 'nftables']] as Array<[LbVariant, LbVariant]>)
        .filter(([a, b]) => pair(a, b)).map(([a, b]) => `${LB_VARIANT_LABELS[a]} / ${LB_VARIANT_LABELS[b]} ${fmt(pair(a, b)!.connsPerSec.value, 3)}`);
      if (ps.length) lines.push(`- conns/s between systems at ${count(last.services)}: ${ps.join('; ')}.`);
    }
    const m = live.controlPlane?.systems.find((x) => x.daemon)?.daemon;
    if (m && live.controlPlane) lines.push(`- One service added at ${count(live.controlPlane.services)}: Membrane map writes p50 ${fmt(m.mapWritesMs.p50Ms, 2)} ms (max ${fmt(m.mapWritesMs.maxMs, 2)}).`);
    const made = live.points.filter((p) => p.setup);
    if (made.length) {
      const total = made.reduce((a, p) => a + p.setup!.membrane.wallMs, 0);
      lines.push(`- Making ${count(made[made.length - 1]!.membraneServices)} Membrane services through the API: ${fmt(total / 1000, 1)} s; deleting them with their network: ` +
        `${fmt((live.cleanup.ms.network ?? NaN) / 1000, 1)} s.`);
    }
    if (lines.length) out.push('Summary:', '', ...lines, '');
  }
  out.push('### 7a. New connections per second and time to first byte through a service', '');
  if (live) {
    const s = live.settings;
    out.push(live.note, '');
    out.push(`Per size ${s.rounds} rounds of ${s.secondsPerRun} s per variant (after ${s.warmupConnections} untimed connections per run), ` +
      `a connection failing after ${s.timeoutMs} ms. Pinning: ${live.pinning}. Load average at start: ${live.loadAverageAtStart.join(' / ')}. ` +
      `Membrane network ${live.topology.membraneNetwork} (IPv4 only), backends ${live.topology.membraneServers.join(', ')}, measured VIP ` +
      `${live.topology.measuredVip.membrane}; bridge ${live.topology.bridgeNetwork}, backends ${live.topology.bridgeServers.join(', ')}, VIPs ` +
      `${live.topology.measuredVip.iptables} (iptables) and ${live.topology.measuredVip.nftables} (nftables), ${live.topology.bridgeNetfilter}; ` +
      `guard route \`${live.topology.guardRoute}\`. ${live.iptablesVersion}; ${live.nftVersion}. mb_lb_config flags were ` +
      `${live.lbConfig.flagsBefore ?? '—'} and were switched ${live.lbConfig.switched} times (bit 0 only), ` +
      `${live.lbConfig.flagsRestored ? 'restored afterwards' : 'NOT restored'}. Daemon open fds: ${live.daemon.openFdsBefore} before the section, ${live.daemon.openFdsAfter} after it (no fd per service).`, '');
    const rows: string[][] = [];
    for (const p of live.points) {
      for (const v of LB_VARIANTS) {
        const x = p.variants[v];
        if (!x.n && !x.failedRuns && !x.errors.length) continue;
        rows.push([sizeCell(p, [v]), LB_VARIANT_LABELS[v], x.n ? `${Math.round(x.connsPerSec).toLocaleString('en-US')} (${Math.round(x.minConnsPerSec).toLocaleString('en-US')}–${Math.round(x.maxConnsPerSec).toLocaleString('en-US')})` : '—',
          fmt(x.p50Us, 1), fmt(x.p99Us, 1), `${x.n}/${p.roundsCompleted}`, count(x.connections), `${x.failedConnections} / ${x.failedRuns}`]);
      }
    }
    out.push(table(['services', 'variant', 'conns/s median (min–max)', 'TTFB p50 µs', 'TTFB p99 µs', 'runs', 'connections', 'failed conns / runs'], rows), '');
    const flatRows = live.flatness.filter((f) => f.services !== 1).map((f) => [sizeCell(f, [f.variant]), LB_VARIANT_LABELS[f.variant], spread(f.connsPerSec),
      fmt(f.floorNormalized, 3), fmt(f.p50, 3), fmt(f.p99, 3)]);
    if (flatRows.length) {
      out.push('**N/1, the same variant at N services against 1 service** (conns/s: ratio of medians, spread in brackets; ÷ floor: per-round ' +
        'ratio to the direct connection on the same network, median, at N over at 1):', '');
      out.push(table(['services', 'variant', 'conns/s N/1', 'conns/s ÷ floor, N/1', 'p50 N/1', 'p99 N/1'], flatRows), '');
    }
    const pairRows = live.pairs.map((p) => [sizeCell(p, [p.a, p.b]), `${LB_VARIANT_LABELS[p.a]} / ${LB_VARIANT_LABELS[p.b]}`, spread(p.connsPerSec), fmt(p.p50, 3), fmt(p.p99, 3)]);
    if (pairRows.length) {
      out.push('**Between systems at the same N** (conns/s: per-round ratios, median (min–max); p50/p99: ratio of the medians):', '');
      out.push(table(['services', 'a / b', 'conns/s a/b', 'p50 a/b', 'p99 a/b'], pairRows), '');
    }
    for (const p of live.points) {
      for (const v of LB_VARIANTS) for (const e of p.variants[v].errors) out.push(`- ${count(p.services)} services, ${v}: ${e}`);
    }
    out.push('', '### 7b. Making N services', '');
    out.push('Membrane: POST /v1/services with lists of ' + `${s.bulkChunk} services (all or nothing, one plan and one state write per request); ` +
      'the daemon\'s plan, map-write and state-write (commit) times summed over the requests. iptables: one iptables-restore --noflush of the ' +
      'whole set (all chains declared, so flushed and rewritten). nftables: one nft -f replacing the table. Kernel: entries of ' +
      'mb_lb_frontends / backends / maglev afterwards.', '');
    out.push(table(['services', 'Membrane: services / made now', 'requests', 'wall s', 'max request s', 'plan s', 'map writes s', 'commit s', 'kernel frontends / backends / tables',
      'iptables-restore s (rules, chains)', 'nft -f s (elements)'],
    live.points.filter((p) => p.setup).map((p) => {
      const u = p.setup!;
      const k = u.kernel;
      return [count(p.services), `${count(p.membraneServices)} / ${count(u.membrane.created)}`, String(u.membrane.requests), fmt(u.membrane.wallMs / 1000, 2), fmt(u.membrane.maxRequestMs / 1000, 2),
        fmt(u.membrane.planMs / 1000, 2), fmt(u.membrane.mapWritesMs / 1000, 2), fmt(u.membrane.commitMs / 1000, 2),
        `${k.mb_lb_frontends ?? '—'} / ${k.mb_lb_backends ?? '—'} / ${k.mb_lb_maglev ?? '—'}`,
        u.iptables ? `${fmt(u.iptables.ms / 1000, 2)} (${count(u.iptables.rules)}, ${count(u.iptables.chains)})` : '—',
        u.nftables ? `${fmt(u.nftables.ms / 1000, 2)} (${count(u.nftables.elements)})` : '—'];
    })), '');
    const reached = live.points.filter((p) => p.setup);
    const totalWall = reached.reduce((a, p) => a + p.setup!.membrane.wallMs, 0);
    if (reached.length) {
      out.push(`Reaching ${count(reached[reached.length - 1]!.membraneServices)} Membrane services through the API took ${fmt(totalWall / 1000, 1)} s in all (the steps above added up).`, '');
    }
    out.push('### 7c. Memory of the LB maps', '');
    const mem = live.points.filter((p) => p.setup?.memory).map((p) => p.setup!.memory!);
    const base = mem.find((m) => m.services === 1);
    if (mem.length) {
      out.push('bytes_memlock as bpftool reports it, of the pinned mb_lb_* maps. The preallocated hash maps do not grow with services; ' +
        'mb_lb_maglev (not preallocated) holds ceil(M / 256) groups of 256 u32 slots per frontend and grows with them. Per service = growth ' +
        'against 1 service / (N − 1).', '');
      out.push(table(['services', 'pinned mb_lb_* maps', 'Maglev groups', 'total', 'bytes per added service', 'read ms'],
        mem.map((m) => [count(m.services), bytes(m.pinnedBytes), count(m.maglevGroups), bytes(m.totalBytes),
          base && m.services > 1 ? fmt((m.totalBytes - base.totalBytes) / (m.services - 1), 0) : '—', String(m.readMs)])), '');
      const last = mem[mem.length - 1]!;
      out.push(`Pinned maps at ${count(last.services)} services: ${last.maps.map((m) => `${m.name} ${bytes(m.bytes)}${m.entries !== null ? ` (${count(m.entries)} of ${count(m.maxEntries)})` : ''}`).join(', ')}.`, '');
    } else {
      out.push('(not measured)', '');
    }
    out.push('### 7d. Control plane: one more service', '');
    const c = live.controlPlane;
    if (c) {
      out.push(c.note, '');
      out.push(table(['system', 'n', 'add ms p50 (max)', 'first connection after start ms', 'after return ms', 'remove ms', 'errors'],
        c.systems.map((x) => [x.what, String(x.add.n), ms(x.add), ms(x.firstConnectionFromStart), ms(x.firstConnectionFromReturn), ms(x.remove),
          x.errors.length ? x.errors.join(' / ') : '—'])), '');
      const m = c.systems.find((x) => x.daemon)?.daemon;
      if (m) {
        out.push(`Membrane's own times of one added service at ${count(c.services)}: plan ${ms(m.planMs, 3)} ms, **map writes ${ms(m.mapWritesMs, 3)} ms**, ` +
          `state write ${ms(m.commitMs, 1)} ms; of its deletion: map writes ${ms(m.deleteMapWritesMs, 3)} ms, state write ${ms(m.deleteCommitMs, 1)} ms ` +
          '(p50 (max)).', '');
      }
    } else {
      out.push('(not run)', '');
    }
    out.push(`Cleanup: ${Object.entries(live.cleanup.ms).map(([k, v]) => `${k} ${v} ms`).join(', ')}; services of this section left: ` +
      `${live.cleanup.servicesLeft ?? '—'}; mb_lb_frontends entries after: ${live.cleanup.frontendsLeft ?? '—'}` +
      `${live.cleanup.networkRmRetried ? `; the first docker network rm failed (${live.cleanup.networkRmRetried}) and was retried once the daemon had deleted the services` : ''}.`, '');
    for (const e of live.errors) out.push(`- error: ${e}`);
    for (const e of live.cleanup.problems) out.push(`- cleanup: ${e}`);
    if (live.errors.length || live.cleanup.problems.length) out.push('');
  } else {
    out.push('(section failed, see errors)', '');
  }
  out.push('### 7e. Maglev table build time and disruption (in-process)', '');
  if (maglev) {
    out.push(maglev.note, '');
    out.push(table(['M', 'N', 'build ms median', 'min', 'max', 'builds'],
      maglev.build.map((b) => [count(b.size), count(b.backends), fmt(b.medianMs, 3), fmt(b.minMs, 3), fmt(b.maxMs, 3), String(b.reps)])), '');
    out.push(table(['M', 'N', 'changed / M (median)', 'max', 'removed backend\'s share', 'extra (survivors moved)', '1/N', 'daemon\'s M for N'],
      maglev.disruption.map((d) => [count(d.size), count(d.backends), fmt(d.changedFraction, 4), fmt(d.maxChangedFraction, 4), fmt(d.ownShare, 4),
        fmt(d.extraFraction, 4), fmt(d.ideal, 4), count(d.daemonSize)])), '');
    for (const e of maglev.errors) out.push(`- error: ${e}`);
  } else {
    out.push('(not run)', '');
  }
  return out;
}
