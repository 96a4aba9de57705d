// Wiring: builds every part, repairs the kernel from the persisted state, starts both servers,
// owns shutdown.

import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import type { MembraneConfig } from './config.js';
import type { Logger } from './log.js';
import { native, type Family, type NativeAddon, type NetlinkAddon } from './kernel/native.js';
import { findCgroup2Root, probeKfunc, probeTcx, unloadablePrograms, type ProbeResult } from './features.js';
import { Datapath, DEFAULT_GEOMETRY } from './datapath/loader.js';
import { EndpointMaps } from './datapath/endpoint-maps.js';
import { EventMonitor } from './datapath/inspect.js';
import { JsonStore } from './state/store.js';
import { IdleWork } from './idle-work.js';
import { STATE_COLLECTIONS } from './state/model.js';
import { emptyState, STATE_VERSION, type MembraneState } from './state/model.js';
import { Ipam } from './ipam/ipam.js';
import { formatPrefix, generateUlaPrefix, parsePrefix, type Prefix } from './ipam/prefix.js';
import { refusedBlocksOverlapping } from './ipam/special-purpose.js';
import { allCpusMask } from './network/cpu-mask.js';
import { LbMaps } from './datapath/lb-maps.js';
import { ServiceManager } from './lb/services.js';
import { SocketCloser, type DoomedBackend } from './lb/sockets.js';
import { DnsResponder } from './lb/dns-responder.js';
import { Dataplane } from './network/dataplane.js';
import { MEMBRANE_RTPROT } from './network/plan.js';
import { Netfilter } from './netfilter/iptables.js';
import { NetworkManager, type Context } from './network/networks.js';
import { EndpointManager } from './endpoints/endpoints.js';
import { createPluginApp, type CallStats, type Handler } from './docker/http.js';
import { networkRoutes, pluginActivation } from './docker/network-driver.js';
import { ipamRoutes } from './docker/ipam-driver.js';
import { reconcileWithDocker } from './docker/reconcile.js';
import { createApiApp, type StatusSource } from './api/server.js';
import { PolicyMaps } from './datapath/policy-maps.js';
import { PolicyEngine } from './policy/engine.js';
import { DEFAULT_LABEL_EXCLUDES } from './identity/label-filter.js';
import { DockerLabelWatcher } from './identity/watcher.js';
import { ConflictError, NotSupportedError, StateError } from './errors.js';

export function packageVersion(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const candidate of [path.resolve(here, '..', '..', 'package.json'), path.resolve(here, '..', 'package.json')]) {
    if (fs.existsSync(candidate)) return (JSON.parse(fs.readFileSync(candidate, 'utf8')) as { version: string }).version;
  }
  return 'unknown';
}

/** The BPF object built by `npm run build:bpf`; MEMBRANE_BPF_OBJECT overrides. */
export function bpfObjectPath(): string {
  if (process.env.MEMBRANE_BPF_OBJECT) return process.env.MEMBRANE_BPF_OBJECT;
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.resolve(here, '..', '..', 'bpf', 'build', 'membrane.bpf.o');
}

/** Pins need a bpffs; say how to get one instead of failing on the first pin. */
function assertBpffs(pinDir: string): void {
  const mount = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')
    .map((line) => line.split(' ')).filter((f) => f[2] === 'bpf').map((f) => f[1]!);
  if (!mount.some((m) => pinDir === m || pinDir.startsWith(`${m}/`))) {
    throw new NotSupportedError('bpffs', `${pinDir} is not on a BPF filesystem; mount one with ` +
      '`mount -t bpf bpf /sys/fs/bpf` (or set datapath to "routing")');
  }
}

/** The host's own addresses (identity host in policy), gateways on Membrane's veths included. */
function hostAddresses(nl: NetlinkAddon): string[] {
  return [...nl.addrList(4, 0), ...nl.addrList(6, 0)].map((a) => a.address).filter((a) => !a.startsWith('fe80:'));
}

/** Prefixes routed on the host that automatic pools must avoid (not defaults, not Membrane's own). */
function hostPrefixes(nl: NetlinkAddon, family: Family): Prefix[] {
  const out: Prefix[] = [];
  for (const route of nl.routeList(family, 254)) {
    if (route.protocol === MEMBRANE_RTPROT || route.dstLen === 0) continue;
    if (family === 6 && (route.dst.startsWith('fe80') || route.dst.startsWith('ff'))) continue;
    try {
      out.push(parsePrefix(`${route.dst}/${route.dstLen}`));
    } catch {
      // a route the kernel reports in a form we do not parse cannot collide with ours
    }
  }
  return out;
}

function listenUnix(server: http.Server, socket: string, mode: number): Promise<void> {
  fs.mkdirSync(path.dirname(socket), { recursive: true });
  // A socket file left by a killed daemon would make listen() fail with EADDRINUSE.
  fs.rmSync(socket, { force: true });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => {
      fs.chmodSync(socket, mode);
      server.off('error', reject);
      resolve();
    });
  });
}

export interface MembraneCore {
  ctx: Context;
  networks: NetworkManager;
  endpoints: EndpointManager;
  /** Starts keeping veth pairs prepared (after the start-up reconciliation). */
  startPreparing(): void;
  /** Removes prepared pairs and finishes queued kernel work (a clean stop). */
  stopPreparing(): Promise<void>;
  ipam: Ipam;
  store: JsonStore<MembraneState>;
  stateFile: string;
  /** Every Docker plugin call Membrane answers, by path name ('NetworkDriver.Join', ...). */
  routes: Record<string, Handler>;
  /** The BPF datapath's endpoint applier, when the datapath is 'bpf'. */
  endpointMaps?: EndpointMaps;
  /** Identities and policy (enforced only with the BPF datapath). */
  policy: PolicyEngine;
  policyMaps?: PolicyMaps;
  /** Kernel features the datapath probed and what it chose (filled by reconcileKernel). */
  features: Record<string, string>;
  /** Services and the load balancer. */
  services: ServiceManager;
  lbMaps?: LbMaps;
  /** Makes the kernel match the state; returns what it changed. */
  reconcileKernel(): Promise<Record<string, unknown>>;
}

export interface CoreDependencies {
  nl: NetlinkAddon;
  /** Closes connected sockets to removed service backends (the daemon's socket-destroy iterator). */
  destroySockets?: (backends: { address: string; port: number; protocol: 'tcp' | 'udp' }[]) => void;
  /** The whole addon for the BPF datapath (it also probes with veths); without it Membrane runs 'routing' (unit tests). */
  bpf?: NativeAddon;
  log: Logger;
  netfilter?: Netfilter;
  procSys?: string;
  /**
   * Where kernel work Docker need not wait for runs (veth deletion, prepared endpoints). Without
   * it, that work is done inline (unit tests that check the kernel right after a call).
   */
  idle?: IdleWork;
}

/**
 * Builds every part of Membrane around one state file, without opening sockets: the daemon
 * serves it, unit tests drive it with a fake netlink.
 */
/** The VIP ranges: configured, or for IPv6 the first /112 of the node ULA's subnet 0 (pools never use it). */
export function serviceRangesOf(config: MembraneConfig, ulaPrefix: string): { ipv4: Prefix; ipv6: Prefix } {
  const ula = parsePrefix(ulaPrefix);
  return {
    ipv4: parsePrefix(config.serviceIPv4Range),
    ipv6: config.serviceIPv6Range ? parsePrefix(config.serviceIPv6Range) : { family: 6, network: ula.network, length: 112 },
  };
}

export function createCore(config: MembraneConfig, deps: CoreDependencies): MembraneCore {
  const { nl, log } = deps;
  const stateFile = path.join(config.stateDir, 'state.json');
  let state: MembraneState;
  let ipam: Ipam | undefined;
  const store = new JsonStore<MembraneState>(stateFile, (touched) => {
    ipam?.syncToState(touched?.filter((t) => t[0] === 'pools' && t[1]).map((t) => t[1]!));
    return state;
  }, { touchable: STATE_COLLECTIONS });
  const loaded = store.load();
  if (loaded) {
    if (loaded.version !== STATE_VERSION) {
      throw new StateError(`state file ${stateFile} has version ${loaded.version}; this Membrane reads version ${STATE_VERSION}`);
    }
    state = loaded;
    if (config.ulaPrefix && formatPrefix(parsePrefix(config.ulaPrefix)) !== state.ulaPrefix) {
      log.warn('configured ulaPrefix differs from the persisted one; keeping the persisted prefix (existing pools use it)',
        { configured: config.ulaPrefix, persisted: state.ulaPrefix });
    }
  } else {
    const ula = config.ulaPrefix ? parsePrefix(config.ulaPrefix) : generateUlaPrefix();
    state = emptyState(formatPrefix(ula));
    log.info('no state yet; generated node ULA prefix', { ulaPrefix: state.ulaPrefix });
  }
  // Pools persisted before special-purpose ranges were refused: kept (containers may use them),
  // but said plainly, since new containers on them cannot get addresses.
  for (const pool of Object.values(state.pools)) {
    const blocks = refusedBlocksOverlapping(parsePrefix(pool.pool));
    if (blocks.length) {
      log.warn('a pool lies in special-purpose address space; containers on it cannot get addresses: recreate its network with another --subnet',
        { pool: pool.pool, network: pool.networkId?.slice(0, 12), blocks: blocks.map((b) => `${b.cidr} (${b.name})`) });
    }
  }
  // This daemon's run number: records it creates carry it (see fromEarlierRun). Committed with
  // the kernel reconciliation, before the plugin socket listens.
  state.daemonRun = (state.daemonRun ?? 0) + 1;

  const dataplane = new Dataplane(nl, log, config.rulePriority, deps.procSys ?? config.procSys, deps.idle,
    config.receiveSteering ? { sysClassNet: config.sysClassNet, cpuMask: allCpusMask() } : undefined);
  const netfilter = deps.netfilter ?? new Netfilter(config.manageNetfilter);
  let endpoints: EndpointManager | undefined;
  const serviceRanges = serviceRangesOf(config, state.ulaPrefix);
  ipam = new Ipam(state, {
    reserved: (family) => [family === 4 ? serviceRanges.ipv4 : serviceRanges.ipv6],
    defaultIPv4Ranges: config.defaultIPv4Ranges,
    defaultIPv4PoolLength: config.defaultIPv4PoolLength,
    hostPrefixes: (family) => hostPrefixes(nl, family),
    reclaim: (pool, address) => endpoints?.reclaim(pool, address) ?? false,
    touch: (t) => store.touch(t),
  });
  const ctx: Context = {
    state, store: store as JsonStore<unknown>, ipam, dataplane, netfilter, log,
    defaultMtu: config.defaultMtu, tableBase: config.tableBase,
  };
  const networks = new NetworkManager(ctx);
  endpoints = new EndpointManager(ctx, networks);

  // Numeric ids for the BPF maps, for records written before they existed.
  for (const record of [...Object.values(state.networks), ...Object.values(state.endpoints)]) {
    if (record.number !== undefined) continue;
    const isNetwork = 'table' in record;
    record.number = (isNetwork ? state.nextNetworkNumber : state.nextEndpointNumber) ?? 1;
    if (isNetwork) state.nextNetworkNumber = record.number + 1;
    else state.nextEndpointNumber = record.number + 1;
  }
  let endpointMaps: EndpointMaps | undefined;
  let policyMaps: PolicyMaps | undefined;
  let lbMaps: LbMaps | undefined;
  let socketCloser: SocketCloser | undefined;
  let tcxProbe: ((tcProgFd: number) => ProbeResult) | undefined;
  const bpfAddon = deps.bpf;
  if (config.datapath === 'bpf' && bpfAddon) {
    assertBpffs(config.bpfPinDir);
    const datapath = new Datapath(bpfAddon, bpfObjectPath(), log, config.bpfPinDir);
    endpointMaps = new EndpointMaps(bpfAddon, datapath);
    policyMaps = new PolicyMaps(bpfAddon, datapath, config.bpfPinDir);
    policyMaps.idle = deps.idle;
    lbMaps = new LbMaps(bpfAddon, datapath);
    socketCloser = new SocketCloser(bpfAddon, datapath, log);
    tcxProbe = (fd) => probeTcx(bpfAddon, fd);
  }
  // Closing sockets of removed backends: in the host's namespace and every container's.
  const closeSockets = deps.destroySockets ?? (socketCloser ? (backends: DoomedBackend[]) => {
    const namespaces = new Set(['/proc/self/ns/net']);
    for (const e of Object.values(state.endpoints)) {
      // Docker names sandboxes by host path (/var/run/docker/netns/<id>); the host's /run may be elsewhere here.
      const key = e.sandboxKey?.replace(/^\/(var\/)?run\//, `${config.hostRun.replace(/\/$/, '')}/`);
      if (e.joined && key && fs.existsSync(key)) namespaces.add(key);
    }
    if (features.socketDestroy === 'yes') socketCloser!.close(backends, [...namespaces]);
  } : undefined);
  dataplane.serviceRanges = [formatPrefix(serviceRanges.ipv4), formatPrefix(serviceRanges.ipv6)];
  const services = new ServiceManager(ctx, {
    lb: lbMaps, log, ipv4Range: serviceRanges.ipv4, ipv6Range: serviceRanges.ipv6, zone: config.serviceZone,
    destroySockets: closeSockets,
  });
  endpoints.services = services;
  networks.onDeleted = (id) => services.networkRemoved(id);
  const policy = new PolicyEngine(ctx, {
    enforcement: config.policyEnforcement, audit: config.policyAudit, initFailOpen: config.initPolicy === 'allow',
    labelFilter: { include: config.labelInclude, exclude: config.labelExclude.length ? config.labelExclude : [...DEFAULT_LABEL_EXCLUDES] },
  }, policyMaps, endpointMaps, () => hostAddresses(nl));
  endpoints.policy = policy;
  /** What the datapath found and chose, for `membrane status`. */
  const features: Record<string, string> = {};
  const routes: Record<string, Handler> = {
    'Plugin.Activate': () => pluginActivation,
    ...networkRoutes(networks, endpoints),
    ...ipamRoutes(ipam, ctx.store),
  };

  return {
    ctx, networks, endpoints, ipam, store, stateFile, routes, endpointMaps, features, policy, policyMaps, services, lbMaps,
    startPreparing() {
      dataplane.preparePairs(config.preparedEndpoints, {
        // Reserved now, persisted by the next commit; a number never reaches an endpoint before then.
        reserveNumber: () => {
          const number = state.nextEndpointNumber ?? 1;
          state.nextEndpointNumber = number + 1;
          return number;
        },
        datapathSteps: (pair) => endpointMaps ? [
          () => endpointMaps!.datapath.attachDirection(pair.hostName, pair.hostIndex, 'ingress'),
          () => endpointMaps!.datapath.attachDirection(pair.hostName, pair.hostIndex, 'egress'),
          () => policyMaps?.prepareAsync(pair.number),
        ] : [],
        release: (pair) => policyMaps?.remove(pair.number),
      });
      dataplane.prepared?.fill();
    },
    async stopPreparing() {
      dataplane.prepared?.discardAll();
      await deps.idle?.drain();
    },
    async reconcileKernel() {
      // Where a start's time goes (ms per step), reported with what the reconcile changed.
      const phaseMs: Record<string, number> = {};
      let phaseStart = performance.now();
      const phase = (name: string) => {
        const now = performance.now();
        phaseMs[name] = Math.round((now - phaseStart) * 10) / 10;
        phaseStart = now;
      };
      dataplane.ensureForwarding();
      let migrations: unknown[] = [];
      if (endpointMaps) {
        // Geometry is persisted: only an explicit configuration change resizes (and migrates) maps.
        const geometry = { conntrackMax: config.conntrackMax, endpointsMax: DEFAULT_GEOMETRY.endpointsMax };
        if (state.datapathGeometry && state.datapathGeometry.conntrackMax !== geometry.conntrackMax) {
          log.warn('conntrackMax changed; migrating the conntrack map', { from: state.datapathGeometry.conntrackMax, to: geometry.conntrackMax });
        }
        state.datapathGeometry = geometry;
        // Closing sockets of removed backends needs bpf_sock_destroy (Linux 6.5+): without it those programs stay out.
        const socketDestroy = probeKfunc('bpf_sock_destroy');
        socketCloser?.reset();
        phase('probes');
        Object.assign(features, endpointMaps.datapath.start({
          geometry, attachMode: config.attachMode, traceSample: config.traceSample, probeTcx: tcxProbe!,
          policyVerdictEvents: config.policyVerdictEvents,
          skipPrograms: unloadablePrograms(),
        }));
        features.socketDestroy = socketDestroy;
        features.programs = endpointMaps.datapath.programsReused ? 'reused from their pins (same build as the last start)' : 'loaded (verified)';
        phase('objectLoad');
        const cgroupRoot = findCgroup2Root(config.cgroupRoot);
        if (cgroupRoot) {
          endpointMaps.datapath.attachSockets(cgroupRoot);
          features.socketLB = config.serviceSocketLB ? `cgroup-v2 at ${cgroupRoot}` : `off (serviceSocketLB: false), programs at ${cgroupRoot}`;
        } else {
          features.socketLB = 'no cgroup-v2 mount: services are translated per packet, and the host cannot reach VIPs';
          log.warn('no cgroup-v2 mount found: the socket-level service load balancer is off (per-packet translation only)');
        }
        migrations = endpointMaps.datapath.migrations;
        dataplane.bpfMaps = endpointMaps;
        policyMaps!.close();
        policyMaps!.prune(new Set(endpoints!.list().map((e) => e.number!)));
        phase('socketPrograms');
      }
      lbMaps?.setConfig({
        socket: config.serviceSocketLB, events: config.serviceEvents,
        dns: config.serviceDns ? { zone: config.serviceZone, port: config.serviceDnsPort } : undefined, vipRanges: serviceRanges,
      });
      // Identities and policy before any endpoint entry is (re)written: entries carry both.
      const policyReport = await policy.regenerate();
      phase('policy');
      const kernelReport = dataplane.syncEndpoints(endpoints!.list(), new Map(networks.list().map((n) => [n.id, n])));
      for (const endpoint of kernelReport.vanished) endpoints!.releaseVanished(endpoint);
      phase('endpoints');
      const networkReport = dataplane.syncNetworks(networks.list());
      phase('networks');
      await services.start();
      phase('services');
      await store.commit();
      phase('stateWrite');
      await networks.syncNetfilter();
      phase('netfilter');
      return { ...kernelReport, ...networkReport, vanished: kernelReport.vanished.map((e) => e.id), migrations, policy: policyReport,
        datapath: endpointMaps ? 'bpf' : 'routing', phaseMs, at: new Date().toISOString() };
    },
  };
}

/**
 * One daemon per network namespace: two would each treat the other's veths and routes as
 * orphans. An abstract unix socket is scoped to the network namespace, exactly the scope of
 * what Membrane manages, and vanishes with the process however it dies.
 */
function lockNamespace(): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'EADDRINUSE'
      ? new ConflictError('another Membrane daemon is already running in this network namespace; stop it first')
      : err));
    server.listen('\0membrane-daemon', () => resolve(server));
  });
}

export interface RunningDaemon {
  stop(): Promise<void>;
  core: MembraneCore;
}

/** How long a stop waits for work that depends on dockerd answering. */
const STOP_WAIT_MS = 5_000;

/** Waits for `work` to settle, at most `ms`; says so when it gives up. */
async function settleWithin(work: Promise<unknown>, ms: number, what: string, log: Logger): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = await Promise.race([
    work.then(() => false, () => false),
    new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(true), ms); }),
  ]);
  clearTimeout(timer);
  if (gaveUp) log.warn(`stopping without waiting any longer for ${what} (dockerd has not answered for ${ms / 1000} s)`);
}

export async function startDaemon(config: MembraneConfig, log: Logger): Promise<RunningDaemon> {
  const startedAt = Date.now();
  // Since the process started: module loading is part of a restart too.
  const loadedMs = performance.now();
  const lock = await lockNamespace();
  const nl = native();
  const idle = new IdleWork(log);
  const stateStarted = performance.now();
  const core = createCore(config, { nl, bpf: nl, log, idle });
  const stateMs = performance.now() - stateStarted;
  const { ctx, networks, endpoints, stateFile } = core;
  const lastKernelSync = await core.reconcileKernel();
  lastKernelSync.phaseMs = {
    modules: Math.round(loadedMs), state: Math.round(stateMs * 10) / 10, ...(lastKernelSync.phaseMs as Record<string, number>),
  };
  log.info('kernel reconciled', lastKernelSync);

  const stats = new Map<string, CallStats>();
  const pluginServer = http.createServer(createPluginApp(core.routes, log, stats, idle));
  await listenUnix(pluginServer, config.pluginSocket, 0o660);

  const status: StatusSource = {
    version: packageVersion(), startedAt, stateFile, pluginSocket: config.pluginSocket, stats, lastKernelSync, idle,
    datapath: core.endpointMaps ? {
      bpf: nl, maps: core.endpointMaps, monitor: new EventMonitor(nl, core.endpointMaps.datapath), pinDir: config.bpfPinDir,
      // What the datapath found and chose; the load above would have failed without them.
      features: { ...core.features, redirect: 'bpf_redirect_peer', conntrack: 'LRU hash', events: 'ring buffer' },
    } : undefined,
  };
  const apiServer = http.createServer(createApiApp(ctx, networks, endpoints, status, core.policy, core.policyMaps, core.services, core.lbMaps));
  fs.mkdirSync(path.dirname(config.apiSocket), { recursive: true, mode: 0o700 });
  await listenUnix(apiServer, config.apiSocket, 0o600);
  log.info('membrane listening', {
    pluginSocket: config.pluginSocket, apiSocket: config.apiSocket, version: status.version, sinceProcessStartMs: Math.round(performance.now()),
  });
  core.startPreparing();

  // Conntrack garbage collection: expired entries go, however full the table is. Once now (the
  // daemon may have been down for a while), then every 30 s.
  const collect = () => {
    try {
      const result = core.endpointMaps!.collectConntrack(config.conntrackMax);
      if (result.deleted) log.debug('conntrack gc', result);
    } catch (err) {
      log.warn('conntrack gc failed', { error: (err as Error).message });
    }
  };
  if (core.endpointMaps) collect();
  const gc = core.endpointMaps ? setInterval(collect, 30_000) : undefined;
  gc?.unref();

  const abort = new AbortController();
  const driverName = path.basename(config.pluginSocket).replace(/\.sock$/, '');
  // Container labels -> identities: from Docker's event stream, never inside a plugin handler
  // (dockerd may be waiting on this plugin while it holds the locks an inspect would need).
  // Loaded only now, after both sockets listen: dockerode brings ssh2 and gRPC along (about a
  // fifth of the daemon's module loading), and nothing before this point talks to Docker.
  const { default: Docker } = await import('dockerode');
  const watcher = new DockerLabelWatcher(new Docker(), async (update) => {
    await core.policy.endpointLabels(update).catch((err: unknown) => {
      log.error('applying container labels failed', { endpoint: update.endpointId.slice(0, 12), error: String(err) });
    });
    await core.services.endpointLabels(update).catch((err: unknown) => {
      log.error('applying container service labels failed', { endpoint: update.endpointId.slice(0, 12), error: String(err) });
    });
  }, {
    onContainerEvent: (event) => {
      core.services.containerEvent(event).catch((err: unknown) => log.error('applying a container event to its services failed', { ...event, error: String(err) }));
    },
    driverName, log, isMembraneNetwork: (id, driver) => driver === driverName || id in ctx.state.networks,
    onNetworkName: (id, name) => {
      const network = ctx.state.networks[id];
      if (!network || network.name === name) return;
      network.name = name;
      ctx.store.commit([['networks', id]]).catch((err: unknown) => log.warn('saving a network name failed', { error: String(err) }));
    },
  });
  void watcher.start();
  // Service names: queries the datapath redirects (dns.h) arrive here, from the containers' own addresses.
  let dns: DnsResponder | undefined;
  if (config.serviceDns && core.lbMaps) {
    dns = new DnsResponder({ zone: config.serviceZone, log, resolve: (client, name) => core.services.resolveName(client, name) });
    try {
      await dns.listen(['0.0.0.0', '::'], config.serviceDnsPort);
    } catch (err) {
      log.error('the DNS responder for service names could not listen; NAME.' + config.serviceZone + ' will not resolve',
        { port: config.serviceDnsPort, error: (err as Error).message });
      dns = undefined;
    }
  }
  // The host's addresses are identity "host": follow them when they change (DHCP, new links).
  let knownHostAddresses = JSON.stringify(hostAddresses(nl).sort());
  const hostWatch = setInterval(() => {
    const now = JSON.stringify(hostAddresses(nl).sort());
    if (now === knownHostAddresses) return;
    knownHostAddresses = now;
    core.policy.regenerate().catch((err: unknown) => log.warn('policy regeneration failed', { error: String(err) }));
  }, 10_000);
  hostWatch.unref();
  const dockerReconcile = reconcileWithDocker(new Docker(), driverName, ctx, networks, endpoints, log, abort.signal)
    .then((report) => { status.lastDockerReconcile = report ? { ...report, at: new Date().toISOString() } : null; });

  return {
    core,
    async stop() {
      abort.abort();
      if (gc) clearInterval(gc);
      clearInterval(hostWatch);
      // Bounded: the watcher's background work waits on Docker's API, and a dockerd that hangs
      // (it can, in its own locks) must not keep Membrane from stopping.
      await settleWithin(watcher.close(), STOP_WAIT_MS, 'the Docker label watcher', log);
      await dns?.close();
      status.datapath?.monitor.close();
      const close = (server: http.Server) => new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await Promise.all([close(pluginServer), close(apiServer)]);
      await settleWithin(dockerReconcile, STOP_WAIT_MS, 'the reconcile with Docker', log);
      await core.stopPreparing();
      await core.store.close();
      fs.rmSync(config.pluginSocket, { force: true });
      fs.rmSync(config.apiSocket, { force: true });
      lock.close();
      log.info('membrane stopped');
    },
  };
}
