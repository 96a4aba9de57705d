// Applies the routed model to the kernel through the native addon: veths, addresses, routes,
// rules, sysctls. Each operation is idempotent, so the same code serves Docker's retries and
// the start-up reconciliation (sync*), which makes the kernel match the persisted state: orphan
// veths, routes and rules removed, missing ones restored.

import fs from 'node:fs';
import type { Family, LinkInfo, NetlinkAddon, RouteInfo, RouteSpec, RuleSpec } from '../kernel/native.js';
import type { Logger } from '../log.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';
import {
  LINK_ALIAS_PREFIX, MEMBRANE_RTPROT, linkAlias, planEndpointAddresses, planEndpointRoutes, planNetworks,
  routeKey, ruleKey, type PlannedRoute,
} from './plan.js';
import { asMembraneError } from '../errors.js';
import type { EndpointMaps } from '../datapath/endpoint-maps.js';
import type { IdleWork } from '../idle-work.js';
import { POOL_ALIAS_PREFIX, POOL_HOST_IF, PreparedEndpoints, type PreparedPair } from './prepared.js';
import { parseCpuMask } from './cpu-mask.js';

const EEXIST = 17;
/** Host-side veth names are Membrane's namespace: 'mbr' + 12 hex digits of the endpoint id. */
const MEMBRANE_HOST_IF = /^mbr[0-9a-f]{12}$/;
const ENOENT = 2;
const ESRCH = 3;
const ENODEV = 19;

function errno(err: unknown): number | undefined {
  return typeof (err as { errno?: unknown })?.errno === 'number' ? (err as { errno: number }).errno : undefined;
}

/** What dumps of the kernel showed, for createEndpoint at start-up: the link (null: none) and what is already in place. */
export interface KernelView {
  link: LinkInfo | null;
  /** addressKey of every address. */
  addresses: ReadonlySet<string>;
  /** routeKey of every Membrane endpoint route. */
  routes: ReadonlySet<string>;
}

function addressKey(index: number, family: Family, address: string, prefixLen: number): string {
  return `${index}/${family}/${address}/${prefixLen}`;
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

/**
 * IFLA_GROUP of links waiting to be deleted ('memb'): they are deleted together with one
 * RTM_DELLINK for the group, which pays the kernel's grace periods once for the batch (16 veths
 * in about 20 ms here, against 260 ms one by one).
 */
export const DOOMED_LINK_GROUP = 0x6d656d62;

/**
 * Deletes links after Docker has its answer, in batches, while the plugin is idle. Only links
 * that no longer carry anything the state promises are queued: their routes and datapath entries
 * are already gone, and if the daemon dies first, the start-up reconciliation deletes them as
 * orphans (they still carry Membrane's alias).
 */
export class LinkJanitor {
  private readonly doomed = new Map<number, { name: string; then?: () => void }>();
  private queued = false;
  /** Links deleted since start, and batches. */
  deleted = 0;
  batches = 0;

  constructor(private readonly nl: NetlinkAddon, private readonly idle: IdleWork | undefined) {}

  get pending(): number {
    return this.doomed.size;
  }

  /** Queues the link `index` (named `name` now) for deletion; `then` runs after it is gone. */
  delete(index: number, name: string, then?: () => void): void {
    this.doomed.set(index, { name, then });
    if (!this.idle) {
      this.run();
      return;
    }
    if (this.queued) return;
    this.queued = true;
    this.idle.add({ name: 'delete links', steps: [() => this.runInBackground()] });
  }

  /** Deletes everything queued now, waiting for the kernel (start-up: a restored endpoint may need a name an orphan holds). */
  run(): void {
    const batch = this.mark();
    if (!batch.length) return;
    this.nl.linkDeleteGroup(DOOMED_LINK_GROUP);
    this.finish(batch);
  }

  /** Deletes everything queued now on a worker thread: Docker's calls are served meanwhile. */
  private async runInBackground(): Promise<void> {
    const batch = this.mark();
    if (!batch.length) return;
    await this.nl.linkDeleteGroupAsync(DOOMED_LINK_GROUP);
    this.finish(batch);
  }

  /** Takes the queue and puts its links in the doomed group (no grace period: a plain attribute change). */
  private mark(): Array<{ name: string; then?: () => void }> {
    this.queued = false;
    const batch = [...this.doomed.entries()];
    this.doomed.clear();
    const grouped: Array<{ name: string; then?: () => void }> = [];
    for (const [index, doomed] of batch) {
      // An ifindex is only reused after the counter wraps, but check the name anyway.
      const link = this.nl.linkGetByIndex(index);
      if (link && link.name === doomed.name) {
        try {
          this.nl.linkSet(index, { group: DOOMED_LINK_GROUP });
        } catch (err) {
          if (errno(err) !== ENODEV) throw err;
        }
      }
      grouped.push(doomed);
    }
    return grouped;
  }

  private finish(batch: Array<{ name: string; then?: () => void }>): void {
    this.deleted += batch.length;
    this.batches++;
    for (const doomed of batch) doomed.then?.();
  }
}

export class Dataplane {
  /** The BPF datapath, when Membrane runs with datapath 'bpf'. */
  bpfMaps: EndpointMaps | undefined;
  /** The service VIP ranges (CIDR): unreachable in the main table. */
  serviceRanges: string[] = [];
  readonly janitor: LinkJanitor;
  /** Veth pairs prepared ahead of CreateEndpoint (see prepared.ts); set up by preparePairs. */
  prepared: PreparedEndpoints | undefined;
  /** A failed rps_cpus write was logged at warn (later ones at debug). */
  private steeringWarned = false;

  constructor(private readonly nl: NetlinkAddon, private readonly log: Logger, private readonly rulePriority: number,
    private readonly procSys = '/proc/sys', private readonly idle?: IdleWork,
    /** Receive packet steering on host-side veths (config receiveSteering); undefined: left as the kernel makes it. */
    private readonly steering?: { sysClassNet: string; cpuMask: string }) {
    this.janitor = new LinkJanitor(nl, idle);
  }

  /**
   * Starts keeping `target` veth pairs prepared (0: none). `reserveNumber` takes an endpoint
   * number from the state; the datapath's programs and policy map are readied when there is one.
   */
  preparePairs(target: number, hooks: { reserveNumber: () => number; datapathSteps: (pair: PreparedPair) => Array<() => void>;
    release: (pair: PreparedPair) => void; }): void {
    if (!this.idle) return;
    this.prepared = new PreparedEndpoints(this.nl, this.idle, target, {
      reserveNumber: hooks.reserveNumber,
      configure: (pair) => this.configureHostSide(pair.hostName),
      datapathSteps: hooks.datapathSteps,
      release: hooks.release,
      deleteLink: (index) => {
        const link = this.nl.linkGetByIndex(index);
        if (link) this.deleteLinkLater(index, link.name);
      },
    });
  }

  /** A prepared pair for a new endpoint, if one is ready. */
  takePrepared(): PreparedPair | undefined {
    return this.prepared?.take();
  }

  /** Host-side settings of an endpoint's veth; sysctls follow the device through a rename. */
  private configureHostSide(name: string): void {
    // IPv6 on the host side: no DAD for the gateway address (it is ours by construction), and no
    // router advertisements accepted from a container.
    this.writeSysctl(`net/ipv6/conf/${name}/accept_dad`, '0');
    this.writeSysctl(`net/ipv6/conf/${name}/accept_ra`, '0');
    // Published ports reached on 127.0.0.1 are DNATed out of this interface (see netfilter).
    this.writeSysctl(`net/ipv4/conf/${name}/route_localnet`, '1');
    // What the container sends enters the host through this device's only receive queue, queued
    // on the backlog of the CPU that sent it (veth_xmit → netif_rx). A TCP sender transmits from
    // its own CPU and, ACK-clocked, from the CPU its ACKs arrive on: two backlogs, drained
    // independently, reorder its segments, and the receiver's duplicate ACKs make the sender
    // retransmit what was never lost (measured: thousands per 5 s iperf3 run, mostly answered
    // by D-SACKs). Steering keeps one flow on one CPU (by flow hash), so its order holds.
    // Also in sysfs, so it follows the device through a rename.
    if (this.steering?.cpuMask) this.writeRpsCpus(`${this.steering.sysClassNet}/${name}/queues/rx-0/rps_cpus`, this.steering.cpuMask);
  }

  private writeRpsCpus(file: string, value: string): void {
    try {
      if (parseCpuMask(fs.readFileSync(file, 'utf8')) !== parseCpuMask(value)) fs.writeFileSync(file, value);
    } catch (err) {
      // Said once (a read-only /sys, as runc gives a managed plugin, fails for every endpoint);
      // traffic flows either way, only with the reordering described above.
      const level = this.steeringWarned ? 'debug' : 'warn';
      this.steeringWarned = true;
      this.log[level]('cannot set receive packet steering; set sysClassNet to a writable view of the host\'s /sys/class/net, or receiveSteering false',
        { file, value, error: (err as Error).message });
    }
  }

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

  /**
   * Creates (or adopts) the endpoint's veth pair and plumbs its host side. With a prepared pair,
   * that pair becomes the endpoint's: renamed and re-addressed, its programs already attached.
   */
  createEndpoint(endpoint: EndpointRecord, network: NetworkRecord, pair?: PreparedPair, known?: KernelView): void {
    // `known`: what dumps just found (a start with many endpoints asks for nothing one by one,
    // and writes only what is missing).
    let link = known ? known.link : this.nl.linkGetByName(endpoint.hostIfName);
    const dumped = link;
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
    if (!link && pair) link = this.adoptPrepared(endpoint, pair);
    if (!link) {
      this.nl.linkCreateVeth(endpoint.hostIfName, endpoint.containerIfName, {
        mtu: endpoint.mtu, peerMac: endpoint.mac, alias: linkAlias(endpoint.id),
      });
      link = this.nl.linkGetByName(endpoint.hostIfName)!;
    }
    this.configureHostSide(endpoint.hostIfName);
    const seen = known && dumped === link ? known : undefined;
    if (!seen || !link.up) this.nl.linkSetUp(link.index, true);
    for (const addr of planEndpointAddresses(endpoint, network)) {
      if (seen?.addresses.has(addressKey(link.index, addr.family, addr.address, addr.prefixLen))) continue;
      try {
        this.nl.addrAdd(link.index, addr.family, addr.address, addr.prefixLen, { nodad: true, noprefixroute: true });
      } catch (err) {
        if (errno(err) !== EEXIST) throw err;
      }
    }
    for (const route of planEndpointRoutes(endpoint)) {
      if (seen?.routes.has(routeKey(route))) continue;
      this.nl.routeAdd(this.resolve(route), true);
    }
    endpoint.ifindex = link.index;
    this.bpfMaps?.upsert(endpoint, network, link);
  }

  /**
   * Makes a prepared pair the endpoint's. The order is what a crash between two steps needs: the
   * alias first (a pair that carries it under its old name is an orphan to the start-up
   * reconciliation, which then makes the endpoint a fresh one), the link pins before the link
   * (so no pin names a link that has the endpoint's name but not its programs).
   */
  private adoptPrepared(endpoint: EndpointRecord, pair: PreparedPair): LinkInfo | null {
    const host = this.nl.linkGetByIndex(pair.hostIndex);
    if (!host || host.name !== pair.hostName) return null;
    try {
      this.nl.linkSetAlias(pair.hostIndex, linkAlias(endpoint.id));
      this.bpfMaps?.datapath.renameLinkPins(pair.hostName, endpoint.hostIfName);
      this.nl.linkSet(pair.peerIndex, { name: endpoint.containerIfName, mac: endpoint.mac, mtu: endpoint.mtu });
      this.nl.linkSet(pair.hostIndex, { name: endpoint.hostIfName, mtu: endpoint.mtu });
    } catch (err) {
      this.log.warn('a prepared veth pair could not be adopted; creating one', { endpoint: endpoint.id, pair: pair.hostName, error: String(err) });
      const now = this.nl.linkGetByIndex(pair.hostIndex);
      if (now) this.deleteLinkLater(pair.hostIndex, now.name);
      return null;
    } finally {
      this.prepared?.names.delete(pair.hostName);
    }
    return this.nl.linkGetByIndex(pair.hostIndex);
  }

  /**
   * Removes the endpoint from the kernel. Idempotent. What could carry traffic for it goes now:
   * its datapath entries and its routes. The veth itself (whose deletion waits for RCU grace
   * periods) and its program links go after Docker has the answer, batched (LinkJanitor).
   */
  deleteEndpoint(endpoint: EndpointRecord): void {
    this.bpfMaps?.remove(endpoint);
    const link = this.nl.linkGetByName(endpoint.hostIfName);
    for (const route of planEndpointRoutes(endpoint)) {
      this.deleteRouteQuietly({ ...route, oif: undefined });
    }
    if (link && (link.alias === linkAlias(endpoint.id) || link.alias === '')) this.deleteLinkLater(link.index, link.name);
    else this.bpfMaps?.datapath.detach(endpoint.hostIfName);
  }

  /** Queues a host-side veth for the janitor; its program link pins go once it is gone. */
  private deleteLinkLater(index: number, name: string): void {
    this.janitor.delete(index, name, () => this.bpfMaps?.datapath.detach(name));
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

  /** Membrane's per-endpoint routes in the kernel, by routeKey (the link named as `nameOf` says). */
  private endpointRoutes(nameOf: Map<number, string>): [string, RouteInfo][] {
    const routes: [string, RouteInfo][] = [];
    for (const family of [4, 6] as Family[]) {
      for (const route of this.nl.routeList(family, 0)) {
        if (route.protocol !== MEMBRANE_RTPROT || route.type !== 'unicast') continue;
        routes.push([routeKey({ ...route, oif: undefined, oifName: nameOf.get(route.oif) ?? '' }), route]);
      }
    }
    return routes;
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
    const remove = (link: LinkInfo): void => {
      removed.add(link.name);
      this.janitor.delete(link.index, link.name);
      report.linksRemoved.push(link.name);
    };
    const links = this.nl.linkList();
    const removed = new Set<string>();
    for (const link of links) {
      // A Membrane-named link without its alias is a creation a crash interrupted: ours to remove
      // unless the state still wants that endpoint (then createEndpoint below redoes it).
      if (link.alias === '' && MEMBRANE_HOST_IF.test(link.name) && !byHostIf.has(link.name)) {
        remove(link);
        continue;
      }
      // Prepared pairs of a daemon that died (their numbers were never handed out), links a
      // deletion batch had marked when the daemon died, and a pair whose creation a kill -9
      // interrupted before its alias was set (the alias is a second request).
      const unnamedPool = link.alias === '' && POOL_HOST_IF.test(link.name);
      if ((unnamedPool || link.alias.startsWith(POOL_ALIAS_PREFIX)) && !this.prepared?.names.has(link.name)) {
        remove(link);
        continue;
      }
      if (!link.alias.startsWith(LINK_ALIAS_PREFIX)) continue;
      const id = link.alias.slice(LINK_ALIAS_PREFIX.length);
      const endpoint = byId.get(id);
      if (!endpoint || endpoint.hostIfName !== link.name) remove(link);
    }
    // Now, in one batch: an orphan may hold a name an endpoint restored below needs.
    this.janitor.run();
    const byName = new Map(links.filter((l) => !removed.has(l.name)).map((l) => [l.name, l]));
    const addresses = new Set(([4, 6] as Family[]).flatMap((family) => this.nl.addrList(family, 0))
      .map((a) => addressKey(a.index, a.family, a.address, a.prefixLen)));
    // One route dump for both the repair below and the clean-up after it: routes the repair adds
    // are wanted ones, and those of links the janitor removed went with their links.
    const routes = this.endpointRoutes(new Map(links.map((l) => [l.index, l.name])));
    const routeKeys = new Set(routes.map(([key]) => key));
    const wantedRoutes = new Map<string, PlannedRoute>();
    for (const endpoint of endpoints) {
      const network = networks.get(endpoint.networkId);
      const link = byName.get(endpoint.hostIfName) ?? null;
      if (!link) {
        if (endpoint.joined || !network) {
          report.vanished.push(endpoint);
          continue;
        }
        report.linksRestored.push(endpoint.hostIfName);
      }
      if (network) this.createEndpoint(endpoint, network, undefined, { link, addresses, routes: routeKeys });
      for (const route of planEndpointRoutes(endpoint)) wantedRoutes.set(routeKey(route), route);
    }
    // Remove endpoint routes that no endpoint wants any more.
    for (const [key, route] of routes) {
      if (!wantedRoutes.has(key) && this.deleteRouteQuietly({ family: route.family, dst: route.dst, dstLen: route.dstLen,
        table: route.table, oif: route.oif, protocol: MEMBRANE_RTPROT })) {
        report.routesRemoved++;
      }
    }
    if (this.bpfMaps) {
      const vanished = new Set(report.vanished.map((e) => e.id));
      const pruned = this.bpfMaps.prune(endpoints.filter((e) => !vanished.has(e.id)), this.prepared?.names ?? []);
      report.bpfEntriesRemoved = pruned.entries;
      report.bpfPinsRemoved = pruned.pins;
    }
    return report;
  }
}
