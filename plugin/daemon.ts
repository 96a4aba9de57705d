// Wiring: builds every part, repairs the kernel from the persisted state, starts both servers,
// owns shutdown.

import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import type { MembraneConfig } from './config.js';
import type { Logger } from './log.js';
import { native, type Family, type NativeAddon } from './kernel/native.js';
import { JsonStore } from './state/store.js';
import { emptyState, STATE_VERSION, type MembraneState } from './state/model.js';
import { Ipam } from './ipam/ipam.js';
import { formatPrefix, generateUlaPrefix, parsePrefix, type Prefix } from './ipam/prefix.js';
import { Dataplane } from './network/dataplane.js';
import { MEMBRANE_RTPROT } from './network/plan.js';
import { Netfilter } from './netfilter/iptables.js';
import { NetworkManager, type Context } from './network/networks.js';
import { EndpointManager } from './endpoints/endpoints.js';
import { createPluginApp, type CallStats } from './docker/http.js';
import { networkRoutes, pluginActivation } from './docker/network-driver.js';
import { ipamRoutes } from './docker/ipam-driver.js';
import { reconcileWithDocker } from './docker/reconcile.js';
import { createApiApp, type StatusSource } from './api/server.js';
import { StateError } from './errors.js';

export function packageVersion(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const candidate of [path.resolve(here, '..', '..', 'package.json'), path.resolve(here, '..', 'package.json')]) {
    if (fs.existsSync(candidate)) return (JSON.parse(fs.readFileSync(candidate, 'utf8')) as { version: string }).version;
  }
  return 'unknown';
}

/** Prefixes routed on the host that automatic pools must avoid (not defaults, not Membrane's own). */
function hostPrefixes(nl: NativeAddon, family: Family): Prefix[] {
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

export interface RunningDaemon {
  stop(): Promise<void>;
  ctx: Context;
}

export async function startDaemon(config: MembraneConfig, log: Logger): Promise<RunningDaemon> {
  const startedAt = Date.now();
  const nl = native();
  const stateFile = path.join(config.stateDir, 'state.json');

  let state: MembraneState;
  let ipam: Ipam | undefined;
  const store = new JsonStore<MembraneState>(stateFile, () => {
    ipam?.syncToState();
    return state;
  });
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

  const dataplane = new Dataplane(nl, log, config.rulePriority);
  const netfilter = new Netfilter(config.manageNetfilter);
  let endpoints: EndpointManager | undefined;
  ipam = new Ipam(state, {
    defaultIPv4Ranges: config.defaultIPv4Ranges,
    defaultIPv4PoolLength: config.defaultIPv4PoolLength,
    hostPrefixes: (family) => hostPrefixes(nl, family),
    reclaim: (pool, address) => endpoints?.reclaim(pool, address) ?? false,
  });
  const ctx: Context = {
    state, store: store as JsonStore<unknown>, ipam, dataplane, netfilter, log,
    defaultMtu: config.defaultMtu, tableBase: config.tableBase,
  };
  const networks = new NetworkManager(ctx);
  endpoints = new EndpointManager(ctx, networks);

  // Kernel reconciliation: make links, routes and rules match the state before serving anyone.
  dataplane.ensureForwarding();
  const kernelReport = dataplane.syncEndpoints(endpoints.list(), new Map(networks.list().map((n) => [n.id, n])));
  for (const endpoint of kernelReport.vanished) endpoints.releaseVanished(endpoint);
  const networkReport = dataplane.syncNetworks(networks.list());
  await store.commit();
  await netfilter.sync(networks.list());
  const lastKernelSync = { ...kernelReport, ...networkReport, vanished: kernelReport.vanished.map((e) => e.id), at: new Date().toISOString() };
  log.info('kernel reconciled', lastKernelSync);

  const stats = new Map<string, CallStats>();
  const routes = {
    'Plugin.Activate': () => pluginActivation,
    ...networkRoutes(networks, endpoints),
    ...ipamRoutes(ipam, ctx.store),
  };
  const pluginServer = http.createServer(createPluginApp(routes, log, stats));
  await listenUnix(pluginServer, config.pluginSocket, 0o660);

  const status: StatusSource = { version: packageVersion(), startedAt, stateFile, pluginSocket: config.pluginSocket, stats, lastKernelSync };
  const apiServer = http.createServer(createApiApp(ctx, networks, endpoints, status));
  fs.mkdirSync(path.dirname(config.apiSocket), { recursive: true, mode: 0o700 });
  await listenUnix(apiServer, config.apiSocket, 0o600);
  log.info('membrane listening', { pluginSocket: config.pluginSocket, apiSocket: config.apiSocket, version: status.version });

  const abort = new AbortController();
  const driverName = path.basename(config.pluginSocket).replace(/\.sock$/, '');
  const dockerReconcile = reconcileWithDocker(new Docker(), driverName, startedAt, ctx, networks, endpoints!, log, abort.signal)
    .then((report) => { status.lastDockerReconcile = report ? { ...report, at: new Date().toISOString() } : null; });

  return {
    ctx,
    async stop() {
      abort.abort();
      const close = (server: http.Server) => new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await Promise.all([close(pluginServer), close(apiServer)]);
      await dockerReconcile.catch(() => undefined);
      await store.flush();
      fs.rmSync(config.pluginSocket, { force: true });
      fs.rmSync(config.apiSocket, { force: true });
      log.info('membrane stopped');
    },
  };
}
