// Reconciliation with Docker, run in the background after start and never inside a plugin
// request (dockerd holds locks while it waits for a plugin, and its API may not even be up when
// the plugin starts). It releases what Docker no longer knows about: endpoints of containers
// that are gone, networks removed while Membrane was down, pools and addresses whose request
// Docker abandoned. Only records of earlier daemon runs are considered, so a call that is in
// flight right now can never be mistaken for a leftover. "Earlier" is the run number each record
// carries, never a clock: the wall clock may step backwards right after boot (NTP), and a
// timestamp comparison would then release what this very run just created.

import type Docker from 'dockerode';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import type { Context, NetworkManager } from '../network/networks.js';
import type { EndpointManager } from '../endpoints/endpoints.js';
import { fromEarlierRun } from '../state/model.js';

export interface DockerView {
  /** Network id -> its Docker name, and the endpoint ids and addresses Docker has on it. */
  networks: Map<string, { name?: string; endpoints: Set<string>; addresses: Set<string> }>;
}

/**
 * Docker's view of Membrane's networks: those of driver `driverName`, and those whose id
 * Membrane knows. The second matters for the managed plugin, whose driver Docker names after the
 * plugin reference (`user/membrane:tag`): filtering by name alone would see no networks at all,
 * and reconciliation would then release every one of them.
 */
export async function readDockerView(docker: Docker, driverName: string, knownNetworkIds: ReadonlySet<string> = new Set()): Promise<DockerView> {
  const view: DockerView = { networks: new Map() };
  const list = (await docker.listNetworks()).filter((n) => n.Driver === driverName || knownNetworkIds.has(n.Id));
  for (const summary of list) {
    const detail = await docker.getNetwork(summary.Id).inspect();
    const endpoints = new Set<string>();
    const addresses = new Set<string>();
    for (const container of Object.values((detail.Containers ?? {}) as Record<string, { EndpointID?: string; IPv4Address?: string; IPv6Address?: string }>)) {
      if (container.EndpointID) endpoints.add(container.EndpointID);
      for (const a of [container.IPv4Address, container.IPv6Address]) if (a) addresses.add(a.split('/')[0]!.toLowerCase());
    }
    for (const config of (detail.IPAM?.Config ?? []) as { Gateway?: string; AuxiliaryAddresses?: Record<string, string> }[]) {
      if (config.Gateway) addresses.add(config.Gateway.split('/')[0]!.toLowerCase());
      for (const a of Object.values(config.AuxiliaryAddresses ?? {})) addresses.add(a.split('/')[0]!.toLowerCase());
    }
    view.networks.set(summary.Id, { name: summary.Name, endpoints, addresses });
  }
  return view;
}

export interface ReconcileReport {
  endpointsReleased: string[];
  networksReleased: string[];
  poolsReleased: string[];
  addressesReleased: string[];
}

/** Pure decision plus application: what Docker does not know and an earlier daemon run created goes. */
export async function reconcileWithDockerView(view: DockerView, ctx: Context,
  networks: NetworkManager, endpoints: EndpointManager): Promise<ReconcileReport> {
  const report: ReconcileReport = { endpointsReleased: [], networksReleased: [], poolsReleased: [], addressesReleased: [] };
  // Names, for people: networks that have no container yet are named here, not by the label watcher.
  for (const [id, seen] of view.networks) {
    const network = ctx.state.networks[id];
    if (network && seen.name) network.name = seen.name;
  }
  for (const endpoint of endpoints.list()) {
    if (!fromEarlierRun(endpoint, ctx.state)) continue;
    if (view.networks.get(endpoint.networkId)?.endpoints.has(endpoint.id)) continue;
    endpoints.releaseVanished(endpoint);
    report.endpointsReleased.push(endpoint.id);
  }
  for (const network of networks.list()) {
    if (!fromEarlierRun(network, ctx.state) || view.networks.has(network.id)) continue;
    await networks.delete(network.id, (id) => endpoints.deleteNow(id));
    report.networksReleased.push(network.id);
  }
  for (const pool of Object.values(ctx.state.pools)) {
    if (!fromEarlierRun(pool, ctx.state)) continue;
    const network = pool.networkId ? view.networks.get(pool.networkId) : undefined;
    if (!network) {
      ctx.ipam.releasePool(pool.id);
      report.poolsReleased.push(pool.id);
      continue;
    }
    const held = new Set(endpoints.list().flatMap((e) => [e.ipv4, e.ipv6]).filter(Boolean));
    for (const [address, owner] of Object.entries(pool.owners)) {
      if (!fromEarlierRun(owner, ctx.state) || held.has(address) || network.addresses.has(address)) continue;
      ctx.ipam.releaseAddress(pool.id, address);
      report.addressesReleased.push(address);
    }
  }
  await ctx.store.commit();
  return report;
}

/** Waits for dockerd (it may start after us), then reconciles once. Stops when `signal` aborts. */
export async function reconcileWithDocker(docker: Docker, driverName: string, ctx: Context,
  networks: NetworkManager, endpoints: EndpointManager, log: Logger, signal: AbortSignal): Promise<ReconcileReport | undefined> {
  let delay = 500;
  while (!signal.aborted) {
    try {
      await docker.ping();
      break;
    } catch {
      await sleep(delay, undefined, { signal }).catch(() => undefined);
      delay = Math.min(delay * 2, 10_000);
    }
  }
  if (signal.aborted) return undefined;
  try {
    const view = await readDockerView(docker, driverName, new Set(Object.keys(ctx.state.networks)));
    if (signal.aborted) return undefined;
    const report = await reconcileWithDockerView(view, ctx, networks, endpoints);
    log.info('reconciled with docker', report);
    return report;
  } catch (err) {
    log.warn('reconciliation with docker failed; will not retry until the next start', { error: (err as Error).message });
    return undefined;
  }
}
