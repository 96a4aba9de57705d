// Endpoint lifecycle: CreateEndpoint plans and plumbs a veth pair, Join hands it to Docker,
// Leave marks it, DeleteEndpoint removes it. The endpoint is persisted before the kernel is
// touched, so a crash at any point leaves either nothing, or a record whose veth the start-up
// reconciliation creates or removes.

import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { Context, NetworkManager } from '../network/networks.js';
import type { EndpointRecord, NetworkRecord, PoolRecord, PortMapping } from '../state/model.js';
import { containerIfName, endpointMac, hostIfName, inPool, poolEntryFor } from '../network/plan.js';
import { parseAddress, formatAddress } from '../ipam/prefix.js';

export interface CreateEndpointRequest {
  networkId: string;
  endpointId: string;
  address: string;
  addressIPv6: string;
  macAddress: string;
  ports: PortMapping[];
}

export interface StaticRoute {
  Destination: string;
  RouteType: 0 | 1;
  NextHop?: string;
}

export interface JoinResult {
  InterfaceName: { SrcName: string; DstPrefix: string };
  Gateway?: string;
  GatewayIPv6?: string;
  StaticRoutes: StaticRoute[];
  DisableGatewayService: boolean;
}

const ENDPOINT_ID = /^[0-9a-f]{12,64}$/;
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;

function plainAddress(cidr: string, family: 4 | 6, field: string): string | undefined {
  if (!cidr) return undefined;
  const [address] = cidr.split('/');
  let parsed;
  try {
    parsed = parseAddress(address!);
  } catch {
    throw new InvalidArgumentError(`${field} "${cidr}" is not an IP address`);
  }
  if (parsed.family !== family) throw new InvalidArgumentError(`${field} "${cidr}" is not an IPv${family} address`);
  return formatAddress(parsed.family, parsed.value);
}

/** What the endpoint lifecycle tells the policy engine (plugin/policy/engine.ts). */
export interface EndpointPolicyHooks {
  /** Before the veth is plumbed: identity and compiled policy, so the first packet is policed. */
  prepare(endpoint: EndpointRecord): void;
  joined(endpoint: EndpointRecord): void;
  forget(endpoint: EndpointRecord): Promise<void>;
}

/** What the endpoint lifecycle tells the service load balancer (plugin/lb/services.ts). */
export interface EndpointServiceHooks {
  /** The endpoint is gone: it backs nothing now, and its clients' sockets to it are closed. */
  endpointRemoved(endpoint: EndpointRecord): Promise<void>;
}

export class EndpointManager {
  /** Set by the daemon when policy is on; unit tests of the plugin protocol run without. */
  policy: EndpointPolicyHooks | undefined;
  services: EndpointServiceHooks | undefined;

  constructor(private readonly ctx: Context, private readonly networks: NetworkManager) {}

  list(): EndpointRecord[] {
    return Object.values(this.ctx.state.endpoints);
  }

  get(endpointId: string): EndpointRecord {
    const endpoint = this.ctx.state.endpoints[endpointId];
    if (!endpoint) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} is unknown to Membrane`);
    return endpoint;
  }

  /** Returns the MAC to report to Docker, or undefined when Docker chose it. */
  async create(request: CreateEndpointRequest): Promise<{ macAddress?: string }> {
    const { ctx } = this;
    if (!ENDPOINT_ID.test(request.endpointId)) {
      throw new InvalidArgumentError(`EndpointID "${request.endpointId}" is not a hex id`);
    }
    const network = this.networks.get(request.networkId);
    const existing = ctx.state.endpoints[request.endpointId];
    if (existing) {
      // Docker retried a call we may have answered already: make sure the kernel side exists and
      // that the first call's record is on disk before answering again.
      ctx.dataplane.createEndpoint(existing, network);
      await ctx.store.flush();
      return { macAddress: existing.macGenerated ? existing.mac : undefined };
    }
    const ipv4 = plainAddress(request.address, 4, 'Interface.Address');
    const ipv6 = plainAddress(request.addressIPv6, 6, 'Interface.AddressIPv6');
    if (!ipv4 && !ipv6) {
      throw new InvalidArgumentError('CreateEndpoint carried no address; Membrane networks need `--ipam-driver membrane`');
    }
    for (const [family, address] of [[4, ipv4], [6, ipv6]] as const) {
      if (address && !poolEntryFor(network, family, address)) {
        throw new InvalidArgumentError(`address ${address} is outside network ${network.id.slice(0, 12)}'s subnets`);
      }
    }
    let mac = request.macAddress.toLowerCase();
    if (mac && !MAC.test(mac)) throw new InvalidArgumentError(`Interface.MacAddress "${request.macAddress}" is not a MAC address`);
    const macGenerated = !mac;
    if (!mac) mac = endpointMac(request.endpointId);
    // A veth pair prepared ahead (programs attached, policy map ready) if there is one: its
    // endpoint number was reserved with it.
    const pair = ctx.dataplane.takePrepared();
    const endpoint: EndpointRecord = {
      id: request.endpointId, networkId: network.id, hostIfName: hostIfName(request.endpointId),
      containerIfName: containerIfName(request.endpointId), mac, macGenerated, ipv4, ipv6, mtu: network.mtu,
      joined: false, ports: request.ports.length ? request.ports : undefined, createdAt: Date.now(), run: ctx.state.daemonRun,
      number: pair?.number ?? ctx.state.nextEndpointNumber ?? 1,
    };
    if (!pair) ctx.state.nextEndpointNumber = endpoint.number! + 1;
    ctx.state.endpoints[endpoint.id] = endpoint;
    try {
      await ctx.store.commit([['endpoints', endpoint.id]]);
    } catch (err) {
      delete ctx.state.endpoints[endpoint.id];
      if (pair) ctx.dataplane.prepared?.spoil(pair);
      throw err;
    }
    try {
      this.policy?.prepare(endpoint);
      ctx.dataplane.createEndpoint(endpoint, network, pair);
    } catch (err) {
      // Nothing was acknowledged: undo so that Docker's rollback or retry starts clean.
      try {
        ctx.dataplane.deleteEndpoint(endpoint);
      } catch (cleanupError) {
        ctx.log.warn('cleanup after failed CreateEndpoint failed', { endpoint: endpoint.id, error: String(cleanupError) });
      }
      delete ctx.state.endpoints[endpoint.id];
      if (pair && ctx.dataplane.prepared?.names.has(pair.hostName)) ctx.dataplane.prepared.spoil(pair);
      await ctx.store.commit([['endpoints', endpoint.id]]);
      throw err;
    }
    ctx.log.info('endpoint created', { endpoint: endpoint.id, network: network.id, ipv4, ipv6, hostIf: endpoint.hostIfName });
    return { macAddress: macGenerated ? mac : undefined };
  }

  async join(networkId: string, endpointId: string, sandboxKey: string): Promise<JoinResult> {
    const { ctx } = this;
    const network = this.networks.get(networkId);
    const endpoint = this.get(endpointId);
    if (!ctx.dataplane.linkExists(endpoint.hostIfName)) {
      ctx.dataplane.createEndpoint(endpoint, network);
    }
    if (!endpoint.joined || endpoint.sandboxKey !== sandboxKey) {
      endpoint.joined = true;
      endpoint.sandboxKey = sandboxKey || undefined;
      await ctx.store.commit([['endpoints', endpoint.id]]);
    }
    this.policy?.joined(endpoint);
    return joinResult(network, endpoint);
  }

  async leave(networkId: string, endpointId: string): Promise<void> {
    const endpoint = this.ctx.state.endpoints[endpointId];
    if (!endpoint || endpoint.networkId !== networkId || !endpoint.joined) return;
    endpoint.joined = false;
    endpoint.sandboxKey = undefined;
    await this.ctx.store.commit([['endpoints', endpoint.id]]);
  }

  /** Idempotent: deleting an unknown endpoint succeeds. */
  async delete(endpointId: string): Promise<void> {
    const endpoint = this.ctx.state.endpoints[endpointId];
    if (!endpoint) return;
    this.deleteNow(endpointId);
    await this.ctx.store.commit([]);
    if (endpoint.published) await this.networks.syncNetfilter();
  }

  /**
   * The endpoint became its container's way out: publish its ports (Docker sends the portmap
   * again here; an empty one keeps what CreateEndpoint carried).
   */
  async program(networkId: string, endpointId: string, ports: PortMapping[] | undefined): Promise<void> {
    const { ctx } = this;
    const endpoint = this.get(endpointId);
    if (endpoint.networkId !== networkId) throw new NotFoundError(`endpoint ${endpointId.slice(0, 12)} is not on network ${networkId.slice(0, 12)}`);
    const wanted = ports ?? endpoint.ports ?? [];
    for (const other of this.list()) {
      if (other.id === endpoint.id || !other.published) continue;
      for (const mine of wanted) {
        const clash = other.ports?.find((p) => p.protocol === mine.protocol && p.hostPort === mine.hostPort &&
          (p.hostIP === '' || mine.hostIP === '' || p.hostIP === mine.hostIP));
        if (clash) {
          throw new ConflictError(`host port ${mine.hostPort}/${mine.protocol} is already published by endpoint ` +
            `${other.id.slice(0, 12)} (${other.ipv4 ?? other.ipv6}); pick another host port`);
        }
      }
    }
    endpoint.ports = wanted.length ? wanted : undefined;
    endpoint.published = true;
    await ctx.store.commit([['endpoints', endpoint.id]]);
    if (wanted.length) await this.networks.syncNetfilter();
  }

  async revoke(networkId: string, endpointId: string): Promise<void> {
    const endpoint = this.ctx.state.endpoints[endpointId];
    if (!endpoint || endpoint.networkId !== networkId || !endpoint.published) return;
    endpoint.published = false;
    await this.ctx.store.commit([['endpoints', endpoint.id]]);
    if (endpoint.ports?.length) await this.networks.syncNetfilter();
  }

  /** Removes the endpoint's kernel side and record; the caller commits. */
  deleteNow(endpointId: string): void {
    const endpoint = this.ctx.state.endpoints[endpointId];
    if (!endpoint) return;
    this.ctx.dataplane.deleteEndpoint(endpoint);
    delete this.ctx.state.endpoints[endpointId];
    this.ctx.store.touch(['endpoints', endpointId]);
    this.policy?.forget(endpoint).catch((err: unknown) =>
      this.ctx.log.warn('removing a deleted endpoint\'s policy failed', { endpoint: endpointId, error: String(err) }));
    this.services?.endpointRemoved(endpoint).catch((err: unknown) =>
      this.ctx.log.warn('removing a deleted endpoint from its services failed', { endpoint: endpointId, error: String(err) }));
    this.ctx.log.info('endpoint deleted', { endpoint: endpointId, network: endpoint.networkId });
  }

  /**
   * Frees an endpoint that died without Docker telling us: it had joined a container and its
   * veth is gone (the container's namespace was destroyed while dockerd or Membrane was down).
   * Its addresses go back to their pools. Used at start and when Docker asks for an address
   * such an endpoint still holds (a container with a static --ip restarted after a crash).
   */
  releaseVanished(endpoint: EndpointRecord): void {
    const { ctx } = this;
    for (const address of [endpoint.ipv4, endpoint.ipv6]) {
      if (!address) continue;
      const pool = ctx.ipam.poolContaining(address);
      if (pool && pool.owners[address]?.kind === 'endpoint') ctx.ipam.releaseAddress(pool.id, address);
    }
    this.deleteNow(endpoint.id);
    ctx.log.warn('released endpoint whose container vanished', { endpoint: endpoint.id, ipv4: endpoint.ipv4, ipv6: endpoint.ipv6 });
  }

  /** IPAM reclaim hook: true when `address` belonged to a vanished endpoint and is now free. */
  reclaim(pool: PoolRecord, address: string): boolean {
    if (pool.owners[address]?.kind !== 'endpoint') return false;
    const owner = this.list().find((e) => e.ipv4 === address || e.ipv6 === address);
    if (!owner || !owner.joined || this.ctx.dataplane.linkExists(owner.hostIfName)) return false;
    this.releaseVanished(owner);
    return !pool.owners[address];
  }
}

/**
 * Join's answer. Container addresses are /32 and /128, so the gateway is made on-link with a
 * connected route, and the network's pool is routed through it explicitly: a container on
 * several Membrane networks then reaches each network through that network's interface, not
 * through whichever interface holds the default route.
 */
export function joinResult(network: NetworkRecord, endpoint: EndpointRecord): JoinResult {
  const result: JoinResult = {
    InterfaceName: { SrcName: endpoint.containerIfName, DstPrefix: 'eth' },
    StaticRoutes: [],
    // Membrane routes egress itself (or, for --internal, forbids it): never Docker's gwbridge.
    DisableGatewayService: true,
  };
  for (const [family, address] of [[4, endpoint.ipv4], [6, endpoint.ipv6]] as const) {
    if (!address) continue;
    const entry = poolEntryFor(network, family, address);
    if (!entry?.gateway) continue;
    const hostBits = family === 4 ? 32 : 128;
    result.StaticRoutes.push({ Destination: `${entry.gateway}/${hostBits}`, RouteType: 1 });
    if (!inPool(entry.pool, entry.gateway) || entry.pool.endsWith(`/${hostBits}`)) continue;
    result.StaticRoutes.push({ Destination: entry.pool, RouteType: 0, NextHop: entry.gateway });
    if (!network.internal) {
      if (family === 4) result.Gateway = entry.gateway;
      else result.GatewayIPv6 = entry.gateway;
    }
  }
  return result;
}
