// Pure planning of the kernel state Membrane's routed model needs. No I/O here: the applier
// (dataplane.ts) diffs this plan against what the kernel reports and repairs the difference.
//
// The routed model, per network:
//   - every container address is a /32 or /128, routed on the host to the container's host-side
//     veth; the host is every container's next hop (the gateway address sits on each host veth,
//     so the host itself answers the container's ARP/NDP for it);
//   - `unreachable <pool>` in the main table, so host traffic to an unused address of a pool
//     fails at once instead of leaking out of the default route;
//   - a rule `from <pool> lookup <table>` whose table prohibits every other Membrane pool (the
//     isolation between networks) and, for --internal networks, everything but its own pool;
//   - `unreachable <service range>` in the main table: VIPs are translated before they reach a
//     route, so anything still addressed to one (a port no service has) fails at once too.

import { createHash } from 'node:crypto';
import type { Family, RouteSpec, RuleSpec } from '../kernel/native.js';
import { parsePrefix } from '../ipam/prefix.js';
import type { EndpointRecord, NetworkFamilyRecord, NetworkRecord } from '../state/model.js';

/** rtm_protocol / FRA_PROTOCOL tag on every route and rule Membrane installs (unassigned number). */
export const MEMBRANE_RTPROT = 201;
export const MAIN_TABLE = 254;

/** A route that names its output device; the applier resolves the name to an ifindex. */
export interface PlannedRoute extends RouteSpec {
  oifName?: string;
}

export interface KernelPlan {
  routes: PlannedRoute[];
  rules: RuleSpec[];
}

export function hostIfName(endpointId: string): string {
  return `mbr${endpointId.slice(0, 12)}`;
}

export function containerIfName(endpointId: string): string {
  return `mbc${endpointId.slice(0, 12)}`;
}

export const LINK_ALIAS_PREFIX = 'membrane:';

export function linkAlias(endpointId: string): string {
  return `${LINK_ALIAS_PREFIX}${endpointId}`;
}

/** A stable, locally administered unicast MAC derived from the endpoint id. */
export function endpointMac(endpointId: string): string {
  const digest = createHash('sha256').update(endpointId).digest();
  const bytes = [0x02, digest[0]!, digest[1]!, digest[2]!, digest[3]!, digest[4]!];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function split(cidr: string): { family: Family; dst: string; dstLen: number } {
  const [dst, len] = cidr.split('/');
  return { family: cidr.includes(':') ? 6 : 4, dst: dst!, dstLen: Number(len) };
}

function pools(network: NetworkRecord, family: Family): string[] {
  return (family === 4 ? network.ipv4 : network.ipv6).map((f) => f.pool);
}

export function planNetworks(networks: NetworkRecord[], rulePriority: number, serviceRanges: readonly string[] = []): KernelPlan {
  const routes: PlannedRoute[] = [];
  const rules: RuleSpec[] = [];
  const base = { protocol: MEMBRANE_RTPROT } as const;
  // Only while there is a network: a host without Membrane networks keeps no trace of Membrane.
  if (networks.length) for (const range of serviceRanges) routes.push({ ...base, ...split(range), table: MAIN_TABLE, type: 'unreachable' });
  for (const network of networks) {
    for (const family of [4, 6] as const) {
      const own = pools(network, family);
      if (own.length === 0) continue;
      for (const pool of own) {
        routes.push({ ...base, ...split(pool), table: MAIN_TABLE, type: 'unreachable' });
        routes.push({ ...base, ...split(pool), table: network.table, type: 'throw' });
        const p = split(pool);
        rules.push({ ...base, family, priority: rulePriority, src: p.dst, srcLen: p.dstLen, table: network.table, action: 'lookup' });
      }
      for (const other of networks) {
        if (other.id === network.id) continue;
        for (const pool of pools(other, family)) {
          routes.push({ ...base, ...split(pool), table: network.table, type: 'prohibit' });
        }
      }
      if (network.internal) {
        routes.push({ ...base, family, dst: family === 4 ? '0.0.0.0' : '::', dstLen: 0, table: network.table, type: 'prohibit' });
      }
    }
  }
  return { routes: dedupe(routes, routeKey), rules: dedupe(rules, ruleKey) };
}

/** Host-side routes of one endpoint: its addresses, on-link through its host veth. */
export function planEndpointRoutes(endpoint: EndpointRecord): PlannedRoute[] {
  const routes: PlannedRoute[] = [];
  if (endpoint.ipv4) {
    routes.push({ family: 4, dst: endpoint.ipv4, dstLen: 32, table: MAIN_TABLE, type: 'unicast', scope: 'link',
      oifName: endpoint.hostIfName, protocol: MEMBRANE_RTPROT });
  }
  if (endpoint.ipv6) {
    routes.push({ family: 6, dst: endpoint.ipv6, dstLen: 128, table: MAIN_TABLE, type: 'unicast',
      oifName: endpoint.hostIfName, protocol: MEMBRANE_RTPROT });
  }
  return routes;
}

/** Addresses on the host-side veth: the network gateways, so the host answers ARP/NDP for them. */
export function planEndpointAddresses(endpoint: EndpointRecord, network: NetworkRecord): { family: Family; address: string; prefixLen: number }[] {
  const out: { family: Family; address: string; prefixLen: number }[] = [];
  if (endpoint.ipv4) {
    const gw = gatewayFor(network, 4, endpoint.ipv4);
    if (gw) out.push({ family: 4, address: gw, prefixLen: 32 });
  }
  if (endpoint.ipv6) {
    const gw = gatewayFor(network, 6, endpoint.ipv6);
    if (gw) out.push({ family: 6, address: gw, prefixLen: 128 });
  }
  return out;
}

/** The network's pool entry (pool, gateway) that holds `address`. */
export function poolEntryFor(network: NetworkRecord, family: Family, address: string): NetworkFamilyRecord | undefined {
  return (family === 4 ? network.ipv4 : network.ipv6).find((entry) => inPool(entry.pool, address));
}

export function gatewayFor(network: NetworkRecord, family: Family, address: string): string | undefined {
  return poolEntryFor(network, family, address)?.gateway;
}

export function inPool(pool: string, address: string): boolean {
  const prefix = parsePrefix(pool);
  const bits = prefix.family === 4 ? 32 : 128;
  const value = parsePrefix(`${address}/${bits}`);
  if (value.family !== prefix.family) return false;
  const shift = BigInt(bits - prefix.length);
  return (value.network >> shift) << shift === prefix.network;
}

export function routeKey(r: { family: Family; table?: number; type?: string; dst: string; dstLen: number; oif?: number; oifName?: string }): string {
  return [r.family, r.table ?? MAIN_TABLE, r.type ?? 'unicast', `${r.dst}/${r.dstLen}`, r.oifName ?? r.oif ?? ''].join('|');
}

export function ruleKey(r: RuleSpec): string {
  return [r.family, r.priority, `${r.src ?? ''}/${r.srcLen ?? 0}`, r.table ?? 0, r.action ?? 'lookup'].join('|');
}

function dedupe<T>(items: T[], key: (item: T) => string): T[] {
  const seen = new Map<string, T>();
  for (const item of items) seen.set(key(item), item);
  return [...seen.values()];
}
