// Applies the routed model to the kernel through the native addon: veths, addresses, routes,
// rules, sysctls. Each operation is idempotent, so the same code serves Docker's retries and
// the start-up reconciliation (sync*), which makes the kernel match the persisted state: orphan
// veths, routes and rules removed, missing ones restored.

import fs from 'node:fs';
import type { Family, NetlinkAddon, RouteSpec, RuleSpec } from '../kernel/native.js';
import type { Logger } from '../log.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';
import {
  LINK_ALIAS_PREFIX, MEMBRANE_RTPROT, linkAlias, planEndpointAddresses, planEndpointRoutes, planNetworks,
  routeKey, ruleKey, type PlannedRoute,
} from './plan.js';
import { asMembraneError } from '../errors.js';
import type { EndpointMaps } from '../datapath/endpoint-maps.js';

const EEXIST = 17;
/** Host-side veth names are Membrane's namespace: 'mbr' + 12 hex digits of the endpoint id. */
const MEMBRANE_HOST_IF = /^mbr[0-9a-f]{12}$/;
const ENOENT = 2;
const ESRCH = 3;
const ENODEV = 19;

function errno(err: unknown): number | undefined {
  return typeof (err as { errno?: unknown })?.errno === 'number' ? (err as { errno: number }).errno : undefined;
}

export interface SyncReport {
  bpfEntriesRemoved?: number;
  bpfPinsRemoved?: string[];
  linksRemoved: string[];
  linksRestored: string[];
  routesAdded: number;
  routesRemoved: number;
  rulesAdded: number;
  rulesRemoved: number;
}

export class Dataplane {
  /** The BPF datapath, when Membrane runs with datapath 'bpf'. */
  bpfMaps: EndpointMaps | undefined;
  /** The service VIP ranges (CIDR): unreachable in the main table. */
  serviceRanges: string[] = [];

  constructor(private readonly nl: NetlinkAddon, private readonly log: Logger, private readonly rulePriority: number,
    private readonly procSys = '/proc/sys') {}

  /** Forwarding on for both families: the host routes every container packet. */
  ensureForwarding(): void {
    this.writeSysctl('net/ipv4/ip_forward', '1');
    this.writeSysctl('net/ipv6/conf/all/forwarding', '1');
  }

  private writeSysctl(key: string, value: string): void {
    const file = `${this.procSys}/${key}`;
    try {
      if (fs.readFileSync(file, 'utf8').trim() !== value) fs.writeFileSync(file, value);
    } catch (err) {
      this.log.warn('cannot set sysctl', { key, value, error: (err as Error).message });
    }
  }

  linkExists(name: string): boolean {
    return this.nl.linkGetByName(name) !== null;
  }

  /** Creates (or adopts) the endpoint's veth pair and plumbs its host side. */
  createEndpoint(endpoint: EndpointRecord, network: NetworkRecord): void {
    let link = this.nl.linkGetByName(endpoint.hostIfName);
    if (link && link.alias === '') {
      // Creating a veth and naming its owner (the alias) are two requests: a kill -9 between them
      // leaves our name without the alias. Start that endpoint's link over.
      this.nl.linkDelete(link.index);
      link = null;
    }
    if (link && link.alias !== linkAlias(endpoint.id)) {
      // A link with our name that we do not own: refuse rather than hijack it.
      throw asMembraneError(Object.assign(new Error(`interface ${endpoint.hostIfName} exists and is not Membrane's ` +
        `(alias "${link.alias}"); rename or delete it`), { errno: EEXIST, code: 'EEXIST', op: 'create veth' }));
    }
    if (!link) {
      this.nl.linkCreateVeth(endpoint.hostIfName, endpoint.containerIfName, {
        mtu: endpoint.mtu, peerMac: endpoint.mac, alias: linkAlias(endpoint.id),
      });
      link = this.nl.linkGetByName(endpoint.hostIfName)!;
    }
    // IPv6 on the host side: no DAD for the gateway address (it is ours by construction), and no
    // router advertisements accepted from a container.
    this.writeSysctl(`net/ipv6/conf/${endpoint.hostIfName}/accept_dad`, '0');
    this.writeSysctl(`net/ipv6/conf/${endpoint.hostIfName}/accept_ra`, '0');
    // Published ports reached on 127.0.0.1 are DNATed out of this interface (see netfilter).
    this.writeSysctl(`net/ipv4/conf/${endpoint.hostIfName}/route_localnet`, '1');
    this.nl.linkSetUp(link.index, true);
    for (const addr of planEndpointAddresses(endpoint, network)) {
      try {
        this.nl.addrAdd(link.index, addr.family, addr.address, addr.prefixLen, { nodad: true, noprefixroute: true });
      } catch (err) {
        if (errno(err) !== EEXIST) throw err;
      }
    }
    for (const route of planEndpointRoutes(endpoint)) {
      this.nl.routeAdd(this.resolve(route), true);
    }
    endpoint.ifindex = link.index;
    this.bpfMaps?.upsert(endpoint, network, link);
  }

  /** Deletes the endpoint's veth (its routes and addresses go with it). Idempotent. */
  deleteEndpoint(endpoint: EndpointRecord): void {
    this.bpfMaps?.remove(endpoint);
    const link = this.nl.linkGetByName(endpoint.hostIfName);
    if (link && (link.alias === linkAlias(endpoint.id) || link.alias === '')) {
      try {
        this.nl.linkDelete(link.index);
      } catch (err) {
        if (errno(err) !== ENODEV) throw err;
      }
    }
    // Routes normally vanish with the link; remove any that outlived it (e.g. the link was
    // already gone and the route was restored to a different index).
    for (const route of planEndpointRoutes(endpoint)) {
      this.deleteRouteQuietly({ ...route, oif: undefined });
    }
  }

  private resolve(route: PlannedRoute): RouteSpec {
    const { oifName, ...spec } = route;
    if (oifName) {
      const link = this.nl.linkGetByName(oifName);
      if (!link) throw asMembraneError(Object.assign(new Error(`interface ${oifName} does not exist`), { errno: ENODEV, code: 'ENODEV', op: 'resolve route device' }));
      spec.oif = link.index;
    }
    return spec;
  }

  private deleteRouteQuietly(route: RouteSpec): boolean {
    try {
      this.nl.routeDel(route);
      return true;
    } catch (err) {
      const e = errno(err);
      if (e === ESRCH || e === ENOENT || e === ENODEV) return false;
      throw err;
    }
  }

  /** Makes the per-network routes and rules match `networks` exactly. */
  syncNetworks(networks: NetworkRecord[]): Pick<SyncReport, 'routesAdded' | 'routesRemoved' | 'rulesAdded' | 'rulesRemoved'> {
    const plan = planNetworks(networks, this.rulePriority, this.serviceRanges);
    const report = { routesAdded: 0, routesRemoved: 0, rulesAdded: 0, rulesRemoved: 0 };
    const wanted = new Map(plan.routes.map((r) => [routeKey(r), r]));
    for (const family of [4, 6] as Family[]) {
      for (const route of this.nl.routeList(family, 0)) {
        // Unicast routes are per endpoint and handled by syncEndpoints.
        if (route.protocol !== MEMBRANE_RTPROT || route.type === 'unicast') continue;
        const key = routeKey({ ...route, oif: undefined });
        if (wanted.has(key)) {
          wanted.delete(key);
        } else if (this.deleteRouteQuietly({ family, dst: route.dst, dstLen: route.dstLen, table: route.table,
          type: route.type as RouteSpec['type'], protocol: MEMBRANE_RTPROT })) {
          report.routesRemoved++;
        }
      }
    }
    for (const route of wanted.values()) {
      this.nl.routeAdd(this.resolve(route), true);
      report.routesAdded++;
    }
    const wantedRules = new Map(plan.rules.map((r) => [ruleKey(r), r]));
    for (const family of [4, 6] as Family[]) {
      for (const rule of this.nl.ruleList(family)) {
        if (rule.protocol !== MEMBRANE_RTPROT) continue;
        const spec: RuleSpec = { family, priority: rule.priority, src: rule.src || undefined, srcLen: rule.srcLen,
          table: rule.table, action: rule.action as RuleSpec['action'], protocol: MEMBRANE_RTPROT };
        const key = ruleKey(spec);
        if (wantedRules.has(key)) {
          wantedRules.delete(key);
        } else {
          try {
            this.nl.ruleDel(spec);
            report.rulesRemoved++;
          } catch (err) {
            if (errno(err) !== ENOENT) throw err;
          }
        }
      }
    }
    for (const rule of wantedRules.values()) {
      try {
        this.nl.ruleAdd(rule);
        report.rulesAdded++;
      } catch (err) {
        if (errno(err) !== EEXIST) throw err;
      }
    }
    return report;
  }

  /**
   * Start-up reconciliation of endpoints: veths Membrane owns (alias 'membrane:<id>') that the
   * state does not know are deleted; endpoints whose veth is missing are restored when they were
   * never joined (Docker has not moved the peer yet) and returned as `vanished` when they were
   * joined (the container's namespace died, taking the pair with it).
   */
  syncEndpoints(endpoints: EndpointRecord[], networks: Map<string, NetworkRecord>): SyncReport & { vanished: EndpointRecord[] } {
    const report: SyncReport & { vanished: EndpointRecord[] } = {
      linksRemoved: [], linksRestored: [], routesAdded: 0, routesRemoved: 0, rulesAdded: 0, rulesRemoved: 0, vanished: [],
    };
    const byId = new Map(endpoints.map((e) => [e.id, e]));
    const byHostIf = new Map(endpoints.map((e) => [e.hostIfName, e]));
    for (const link of this.nl.linkList()) {
      // A Membrane-named link without its alias is a creation a crash interrupted: ours to remove
      // unless the state still wants that endpoint (then createEndpoint below redoes it).
      if (link.alias === '' && MEMBRANE_HOST_IF.test(link.name) && !byHostIf.has(link.name)) {
        this.nl.linkDelete(link.index);
        report.linksRemoved.push(link.name);
        continue;
      }
      if (!link.alias.startsWith(LINK_ALIAS_PREFIX)) continue;
      const id = link.alias.slice(LINK_ALIAS_PREFIX.length);
      const endpoint = byId.get(id);
      if (!endpoint || endpoint.hostIfName !== link.name) {
        this.nl.linkDelete(link.index);
        report.linksRemoved.push(link.name);
      }
    }
    const wantedRoutes = new Map<string, PlannedRoute>();
    for (const endpoint of endpoints) {
      const network = networks.get(endpoint.networkId);
      if (!this.nl.linkGetByName(endpoint.hostIfName)) {
        if (endpoint.joined || !network) {
          report.vanished.push(endpoint);
          continue;
        }
        report.linksRestored.push(endpoint.hostIfName);
      }
      if (network) this.createEndpoint(endpoint, network);
      for (const route of planEndpointRoutes(endpoint)) wantedRoutes.set(routeKey(route), route);
    }
    // Remove endpoint routes that no endpoint wants any more.
    for (const family of [4, 6] as Family[]) {
      for (const route of this.nl.routeList(family, 0)) {
        if (route.protocol !== MEMBRANE_RTPROT || route.type !== 'unicast') continue;
        const link = this.nl.linkGetByIndex(route.oif);
        const key = routeKey({ ...route, oif: undefined, oifName: link?.name ?? '' });
        if (!wantedRoutes.has(key) && this.deleteRouteQuietly({ family, dst: route.dst, dstLen: route.dstLen,
          table: route.table, oif: route.oif, protocol: MEMBRANE_RTPROT })) {
          report.routesRemoved++;
        }
      }
    }
    if (this.bpfMaps) {
      const vanished = new Set(report.vanished.map((e) => e.id));
      const pruned = this.bpfMaps.prune(endpoints.filter((e) => !vanished.has(e.id)));
      report.bpfEntriesRemoved = pruned.entries;
      report.bpfPinsRemoved = pruned.pins;
    }
    return report;
  }
}
