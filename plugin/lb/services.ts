// Services: what they are (persisted records), who backs them (endpoints, by labels or selector),
// and what the datapath must hold for them (a pure plan per service, applied by LbMaps).
//
// A service belongs to one Docker network, as Docker's own names do: `api` on a compose project's
// network and `api` on another project's are two services, each resolving as api.svc.membrane
// for the containers of its own network. A service has a VIP per family its network has, frontend
// ports (TCP or UDP, each with the backends' target port), and backends: endpoints on its network
// that carry `membrane.service=NAME:...` (label services, created when the first such container
// appears, deleted with their network) or that match its selector (services made through the API).
//
// Frontend and backend ids are stable: a frontend's id names (service, family, protocol, port), a
// backend's (frontend, endpoint). Conntrack keeps them, so a change to one backend never moves the
// flows of the others. Changes are planned for the services they touch only, and applied as map
// differences: adding one service among thousands writes only that service's entries.

import type { Logger } from '../log.js';
import type { Context } from '../network/networks.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { formatAddress, parseAddress, type Prefix } from '../ipam/prefix.js';
import type { EndpointSelector } from '../policy/types.js';
import { parseLabel } from '../policy/labels.js';
import { selectorMatches, selectorToString } from '../policy/selector.js';
import type { LbMaps, PlannedBackend, PlannedFrontend } from '../datapath/lb-maps.js';
import { buildTable, tableSizeFor, type MaglevBackend } from './maglev.js';
import { checkServiceName, serviceLabelsOf, type ServiceDeclaration, type ServicePort, type ServiceProtocol } from './labels.js';
import { checkRequestedVip, pickVip } from './vips.js';

export interface ServiceRecord {
  name: string;
  networkId: string;
  /** `labels`: made by a container's membrane.service label; `api`: by `membrane service create`. */
  origin: 'labels' | 'api';
  vip4?: string;
  vip6?: string;
  /**
   * Frontend ports. API services: as created. Label services: the union of what their backends
   * declare, kept when the last backend goes, so a VIP without backends still refuses properly.
   */
  ports: ServicePort[];
  /** API services: the endpoints it selects (on its network). */
  selector?: EndpointSelector;
  createdAt: number;
  run?: number;
}

export interface ServicesState {
  /** `<network id>/<name>` -> service. */
  services: Record<string, ServiceRecord>;
  /** `<service key>/<family>/<protocol>/<port>` -> frontend id. */
  frontendIds: Record<string, number>;
  /** `<frontend id>/<endpoint id>` -> backend id. */
  backendIds: Record<string, number>;
  nextFrontendId: number;
  nextBackendId: number;
}

/** What a container's lifecycle means for the flows it gets (EndpointRecord.lifecycle). */
export type BackendLifecycle = 'ready' | 'starting' | 'unhealthy' | 'stopping';

export function emptyServicesState(): ServicesState {
  return { services: {}, frontendIds: {}, backendIds: {}, nextFrontendId: 1, nextBackendId: 1 };
}

export const serviceKey = (networkId: string, name: string) => `${networkId}/${name}`;

/** SIGINT, SIGQUIT, SIGKILL, SIGTERM: a `kill` event with one of these means the container is stopping. */
const STOP_SIGNALS = new Set([2, 3, 9, 15]);

// ---- planning (pure) ---------------------------------------------------------------------------

/** One endpoint's offer to a service: its ports (frontend -> target), weight and readiness. */
export interface BackendCandidate {
  endpoint: Pick<EndpointRecord, 'id' | 'number' | 'ipv4' | 'ipv6' | 'lifecycle'>;
  ports: ServicePort[];
  weight: number;
}

export interface ServicePlan {
  frontends: PlannedFrontend[];
  backends: PlannedBackend[];
}

/** Hands out stable ids (a persisted map and counter); `used` collects the keys a plan used. */
export interface IdSource {
  frontendId(key: string): number;
  backendId(key: string): number;
}

/** The backend state a lifecycle and weight give: only `active` backends get new flows. */
export function backendState(lifecycle: BackendLifecycle | undefined, weight: number): PlannedBackend['state'] {
  if (lifecycle === 'stopping' || weight === 0) return 'terminating';
  if (lifecycle === 'starting' || lifecycle === 'unhealthy') return 'quarantined';
  return 'active';
}

/** The frontends and backends of one service (pure: ids come from `ids`). */
export function planService(service: ServiceRecord, networkNumber: number, candidates: BackendCandidate[], ids: IdSource): ServicePlan {
  const plan: ServicePlan = { frontends: [], backends: [] };
  const key = serviceKey(service.networkId, service.name);
  for (const [family, vip] of [[4, service.vip4], [6, service.vip6]] as const) {
    if (!vip) continue;
    for (const port of service.ports) {
      const frontendId = ids.frontendId(`${key}/${family}/${port.protocol}/${port.port}`);
      const inTable: MaglevBackend[] = [];
      for (const c of candidates) {
        const offer = c.ports.find((p) => p.port === port.port && p.protocol === port.protocol);
        const address = family === 4 ? c.endpoint.ipv4 : c.endpoint.ipv6;
        if (!offer || !address || c.endpoint.number === undefined) continue;
        const backendId = ids.backendId(`${frontendId}/${c.endpoint.id}`);
        const state = backendState(c.endpoint.lifecycle, c.weight);
        plan.backends.push({ backendId, frontendId, address, port: offer.targetPort, state, endpointId: c.endpoint.number });
        if (state === 'active') inTable.push({ id: backendId, key: `${c.endpoint.id}:${offer.targetPort}`, weight: c.weight });
      }
      plan.frontends.push({
        frontendId, vip, port: port.port, protocol: port.protocol, networkId: networkNumber,
        table: buildTable(inTable, tableSizeFor(inTable.length)), backendCount: inTable.length,
      });
    }
  }
  return plan;
}

/** The ports a label service offers: the union of its backends' declarations, in a stable order. */
export function unionPorts(declarations: ServicePort[][]): ServicePort[] {
  const byKey = new Map<string, ServicePort>();
  for (const list of declarations) for (const p of list) byKey.set(`${p.port}/${p.protocol}`, { port: p.port, protocol: p.protocol, targetPort: p.port });
  return [...byKey.values()].sort((a, b) => a.port - b.port || (a.protocol < b.protocol ? -1 : a.protocol > b.protocol ? 1 : 0));
}

// ---- the manager -------------------------------------------------------------------------------

export interface ServiceManagerOptions {
  lb?: LbMaps;
  log: Logger;
  ipv4Range: Prefix;
  ipv6Range: Prefix;
  zone: string;
  /** Closes connected sockets of backends that were removed (their container died). */
  destroySockets?: (backends: { address: string; port: number; protocol: ServiceProtocol }[]) => void;
}

export interface CreateServiceRequest {
  name: string;
  /** Network id or name; may be omitted when there is one Membrane network. */
  network?: string;
  ports: ServicePort[];
  selector: EndpointSelector;
  vip4?: string;
  vip6?: string;
}

export interface ServiceView {
  name: string;
  network: string;
  networkName?: string;
  origin: ServiceRecord['origin'];
  dnsName: string;
  vip4?: string;
  vip6?: string;
  ports: ServicePort[];
  selector?: string;
  backends: {
    endpointId: string;
    container?: string;
    addresses: string[];
    weight: number;
    state: PlannedBackend['state'];
    lifecycle: BackendLifecycle;
    ports: ServicePort[];
    error?: string;
  }[];
}

/** A backend as applied: where its sockets point, and its endpoint (whose disappearance closes them). */
interface AppliedBackend {
  address: string;
  port: number;
  protocol: ServiceProtocol;
  endpointNumber: number;
}

export class ServiceManager {
  /** Service key -> the ids its applied plan uses (what to remove when it changes). */
  private readonly applied = new Map<string, { frontends: Set<number>; backends: Map<number, AppliedBackend> }>();
  private queue: Promise<unknown> = Promise.resolve();
  /** How long the last change took: planning, the map writes, the state write (shown with API answers). */
  lastChange: { services: number; planMs: number; mapWritesMs: number; commitMs: number } | undefined;

  constructor(private readonly ctx: Context, private readonly options: ServiceManagerOptions) {}

  get state(): ServicesState {
    if (!this.ctx.state.services) {
      this.ctx.state.services = emptyServicesState();
      // Written whole once, so that later commits naming single services have a section to land in.
      this.ctx.store.touch(['services']);
    }
    return this.ctx.state.services;
  }

  /** Changes run one at a time: a plan and its map writes are never interleaved with another. */
  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private network(id: string): NetworkRecord | undefined {
    return this.ctx.state.networks[id];
  }

  /** Resolves a network given by id, id prefix or Docker name. */
  resolveNetwork(ref: string | undefined): NetworkRecord {
    const networks = Object.values(this.ctx.state.networks);
    if (ref === undefined || ref === '') {
      if (networks.length === 1) return networks[0]!;
      throw new InvalidArgumentError(networks.length === 0
        ? 'there is no Membrane network yet: create one with docker network create -d membrane ... first'
        : `name the service's network with --network (one of ${networks.map((n) => n.name ?? n.id.slice(0, 12)).join(', ')})`);
    }
    const matches = networks.filter((n) => n.id === ref || n.name === ref || (ref.length >= 4 && n.id.startsWith(ref)));
    if (matches.length === 1) return matches[0]!;
    throw new NotFoundError(matches.length === 0 ? `no Membrane network ${JSON.stringify(ref)}` : `${JSON.stringify(ref)} names several networks; give more of the id`);
  }

  /**
   * The persisted id maps, indexed by service and by frontend, so that planning one service
   * among thousands looks at that service's ids only (built once from the state).
   */
  private index: {
    frontendKeys: Map<string, Set<string>>;
    backendKeys: Map<number, Set<string>>;
    frontendById: Map<number, string>;
  } | undefined;

  private ensureIndex() {
    if (this.index) return this.index;
    const s = this.state;
    const index = { frontendKeys: new Map<string, Set<string>>(), backendKeys: new Map<number, Set<string>>(), frontendById: new Map<number, string>() };
    for (const [k, id] of Object.entries(s.frontendIds)) this.indexFrontend(index, k, id);
    for (const k of Object.keys(s.backendIds)) this.indexBackend(index, k);
    this.index = index;
    return index;
  }

  private indexFrontend(index: NonNullable<ServiceManager['index']>, key: string, id: number): void {
    const service = key.split('/', 2).join('/');
    let set = index.frontendKeys.get(service);
    if (!set) index.frontendKeys.set(service, set = new Set());
    set.add(key);
    index.frontendById.set(id, key);
  }

  private indexBackend(index: NonNullable<ServiceManager['index']>, key: string): void {
    const frontendId = Number(key.slice(0, key.indexOf('/')));
    let set = index.backendKeys.get(frontendId);
    if (!set) index.backendKeys.set(frontendId, set = new Set());
    set.add(key);
  }

  private ids(used: { frontends: Set<string>; backends: Set<string> }): IdSource {
    const s = this.state;
    const index = this.ensureIndex();
    return {
      frontendId: (key) => {
        used.frontends.add(key);
        if (s.frontendIds[key] === undefined) {
          s.frontendIds[key] = s.nextFrontendId++;
          this.ctx.store.touch(['services', 'frontendIds', key]);
          this.indexFrontend(index, key, s.frontendIds[key]);
        }
        return s.frontendIds[key]!;
      },
      backendId: (key) => {
        used.backends.add(key);
        if (s.backendIds[key] === undefined) {
          s.backendIds[key] = s.nextBackendId++;
          this.ctx.store.touch(['services', 'backendIds', key]);
          this.indexBackend(index, key);
        }
        return s.backendIds[key]!;
      },
    };
  }

  private takenVips(): Set<string> {
    const taken = new Set<string>();
    for (const s of Object.values(this.state.services)) {
      if (s.vip4) taken.add(s.vip4);
      if (s.vip6) taken.add(s.vip6);
    }
    return taken;
  }

  /** The candidates of a service: its network's endpoints that declare it (labels) or match it (selector). */
  private candidates(service: ServiceRecord): BackendCandidate[] {
    const out: BackendCandidate[] = [];
    for (const endpoint of Object.values(this.ctx.state.endpoints)) {
      if (endpoint.networkId !== service.networkId) continue;
      const offer = this.offerOf(endpoint, service);
      if (offer) out.push(offer);
    }
    return out;
  }

  private offerOf(endpoint: EndpointRecord, service: ServiceRecord): BackendCandidate | undefined {
    const labels = endpoint.serviceLabels;
    if (service.origin === 'labels') {
      const declaration = labels?.services.find((d) => d.name === service.name);
      return declaration ? { endpoint, ports: declaration.ports, weight: labels!.weight } : undefined;
    }
    if (!service.selector || endpoint.identity === undefined || endpoint.labels === undefined) return undefined;
    const all = [...(endpoint.labels ?? []), ...(endpoint.infoLabels ?? [])].map((l) => parseLabel(l));
    if (!selectorMatches(service.selector, all)) return undefined;
    return { endpoint, ports: service.ports, weight: labels?.weight ?? 1 };
  }

  /** Plans the services and writes what changed. Persists ids and records. */
  private async sync(changed: Iterable<string>): Promise<void> {
    const started = performance.now();
    const keys = [...new Set(changed)];
    const lb = this.options.lb;
    const upsertFrontends: PlannedFrontend[] = [];
    const upsertBackends: PlannedBackend[] = [];
    const removeFrontends: number[] = [];
    const removeBackends: number[] = [];
    const removedSockets: { address: string; port: number; protocol: ServiceProtocol }[] = [];
    for (const key of keys) {
      const service = this.state.services[key];
      const network = service ? this.network(service.networkId) : undefined;
      const used = { frontends: new Set<string>(), backends: new Set<string>() };
      const plan: ServicePlan = service && network
        ? planService(service, network.number ?? 0, this.candidates(service), this.ids(used))
        : { frontends: [], backends: [] };
      const before = this.applied.get(key) ?? { frontends: new Set<number>(), backends: new Map() };
      const after = {
        frontends: new Set(plan.frontends.map((f) => f.frontendId)),
        backends: new Map(plan.backends.map((b) => {
          const protocol = plan.frontends.find((f) => f.frontendId === b.frontendId)!.protocol;
          return [b.backendId, { address: b.address, port: b.port, protocol, endpointNumber: b.endpointId }] as const;
        })),
      };
      upsertFrontends.push(...plan.frontends);
      upsertBackends.push(...plan.backends);
      for (const id of before.frontends) if (!after.frontends.has(id)) removeFrontends.push(id);
      const liveEndpoints = new Set(Object.values(this.ctx.state.endpoints).map((e) => e.number));
      for (const [id, backend] of before.backends) {
        if (after.backends.has(id)) continue;
        removeBackends.push(id);
        // Only a backend whose container is gone has its clients' sockets closed: one that merely
        // left a service (deleted, relabelled) is a live container those connections still reach.
        if (!liveEndpoints.has(backend.endpointNumber)) removedSockets.push({ address: backend.address, port: backend.port, protocol: backend.protocol });
      }
      this.applied.set(key, after);
      if (!service) this.applied.delete(key);
      this.forgetIds(key, used);
    }
    const planned = performance.now();
    if (lb) {
      lb.update({ frontends: upsertFrontends, backends: upsertBackends, removeFrontendIds: removeFrontends, removeBackendIds: removeBackends });
    }
    const written = performance.now();
    // Only the services that changed (their ids were touched as they changed).
    await this.ctx.store.commit([...keys.map((key) => ['services', 'services', key]), ['services', 'nextFrontendId'], ['services', 'nextBackendId']]);
    this.lastChange = {
      services: keys.length, planMs: planned - started, mapWritesMs: written - planned, commitMs: performance.now() - written,
    };
    if (removedSockets.length && this.options.destroySockets) {
      try {
        this.options.destroySockets(removedSockets);
      } catch (err) {
        this.options.log.warn('closing sockets of removed backends failed', { error: String(err) });
      }
    }
  }

  /** Drops the persisted ids of `key` that its plan no longer uses. */
  private forgetIds(key: string, used: { frontends: Set<string>; backends: Set<string> }): void {
    const s = this.state;
    const index = this.ensureIndex();
    const frontendKeys = index.frontendKeys.get(key) ?? new Set<string>();
    for (const k of [...frontendKeys]) {
      const id = s.frontendIds[k]!;
      const backendKeys = index.backendKeys.get(id) ?? new Set<string>();
      const gone = !used.frontends.has(k);
      for (const b of [...backendKeys]) {
        if (gone || !used.backends.has(b)) {
          delete s.backendIds[b];
          this.ctx.store.touch(['services', 'backendIds', b]);
          backendKeys.delete(b);
        }
      }
      if (gone) {
        delete s.frontendIds[k];
        this.ctx.store.touch(['services', 'frontendIds', k]);
        frontendKeys.delete(k);
        index.frontendById.delete(id);
        index.backendKeys.delete(id);
      }
    }
    if (frontendKeys.size === 0) index.frontendKeys.delete(key);
  }

  /** At start: the kernel's LB maps are made to hold exactly what the persisted services plan. */
  async start(): Promise<void> {
    return this.serial(async () => {
      const used = { frontends: new Set<string>(), backends: new Set<string>() };
      const ids = this.ids(used);
      const frontends: PlannedFrontend[] = [];
      const backends: PlannedBackend[] = [];
      this.applied.clear();
      for (const [key, service] of Object.entries(this.state.services)) {
        const network = this.network(service.networkId);
        if (!network) continue;
        const plan = planService(service, network.number ?? 0, this.candidates(service), ids);
        frontends.push(...plan.frontends);
        backends.push(...plan.backends);
        this.applied.set(key, {
          frontends: new Set(plan.frontends.map((f) => f.frontendId)),
          backends: new Map(plan.backends.map((b) => [b.backendId, {
            address: b.address, port: b.port, protocol: plan.frontends.find((f) => f.frontendId === b.frontendId)!.protocol, endpointNumber: b.endpointId,
          }])),
        });
      }
      const report = this.options.lb?.apply({ frontends, backends });
      if (report && (report.frontendsWritten || report.frontendsDeleted || report.backendsWritten || report.backendsDeleted)) {
        this.options.log.info('service maps reconciled', { ...report });
      }
      await this.ctx.store.commit();
    });
  }

  /** The services an endpoint backs or is selected by (before a change, to know what it touches). */
  private servicesOf(endpoint: EndpointRecord): string[] {
    return Object.entries(this.state.services)
      .filter(([, s]) => s.networkId === endpoint.networkId && this.offerOf(endpoint, s) !== undefined)
      .map(([key]) => key);
  }

  /**
   * A container's labels (and health) arrived for one of its endpoints: label services appear,
   * the endpoint's offers change, and the services it touches are planned again.
   */
  endpointLabels(update: { endpointId: string; containerLabels: Record<string, string>; health?: 'none' | 'starting' | 'healthy' | 'unhealthy' }): Promise<void> {
    return this.serial(async () => {
      const endpoint = this.ctx.state.endpoints[update.endpointId];
      if (!endpoint) return;
      const touched = new Set(this.servicesOf(endpoint));
      const parsed = serviceLabelsOf(update.containerLabels);
      endpoint.serviceLabels = parsed;
      this.ctx.store.touch(['endpoints', endpoint.id]);
      if (parsed.error) this.options.log.warn('invalid service labels; the container backs no service', { endpoint: endpoint.id.slice(0, 12), error: parsed.error });
      if (endpoint.lifecycle !== 'stopping') {
        endpoint.lifecycle = update.health === 'starting' ? 'starting' : update.health === 'unhealthy' ? 'unhealthy' : 'ready';
      }
      for (const declaration of parsed.services) {
        try {
          touched.add(this.ensureLabelService(endpoint.networkId, declaration));
        } catch (err) {
          // No VIP left for it: the container backs the services that could be made, and says why not this one.
          const message = `service ${declaration.name}: ${(err as Error).message}`;
          parsed.services = parsed.services.filter((d) => d !== declaration);
          parsed.error = parsed.error ? `${parsed.error}; ${message}` : message;
          this.options.log.error('a label service could not be created', { endpoint: endpoint.id.slice(0, 12), error: message });
        }
      }
      for (const key of this.servicesOf(endpoint)) touched.add(key);
      this.refreshLabelPorts(touched);
      await this.sync(touched);
    });
  }

  /** A Docker event about a container: `docker stop` began (kill), it died, became (un)healthy or started. */
  containerEvent(event: { containerId: string; action: 'start' | 'kill' | 'die' | 'health_status'; health?: 'healthy' | 'unhealthy'; signal?: number }): Promise<void> {
    // `docker kill -s HUP` asks a process to reload, not to stop: only signals that end a process drain it.
    if (event.action === 'kill' && event.signal !== undefined && !STOP_SIGNALS.has(event.signal)) return Promise.resolve();
    return this.serial(async () => {
      const touched = new Set<string>();
      for (const endpoint of Object.values(this.ctx.state.endpoints)) {
        if (endpoint.containerId !== event.containerId) continue;
        const next: BackendLifecycle | undefined = event.action === 'kill' || event.action === 'die' ? 'stopping'
          : event.action === 'health_status' ? (event.health === 'healthy' ? 'ready' : 'unhealthy')
            : undefined;
        // A stopping container stays stopping: a last health check during `docker stop` must not bring it back.
        if (!next || next === endpoint.lifecycle || endpoint.lifecycle === 'stopping') continue;
        endpoint.lifecycle = next;
        this.ctx.store.touch(['endpoints', endpoint.id]);
        for (const key of this.servicesOf(endpoint)) touched.add(key);
      }
      if (touched.size) await this.sync(touched);
    });
  }

  /** An endpoint is going away: it stops backing anything, and its clients' sockets to it are closed. */
  endpointRemoved(endpoint: EndpointRecord): Promise<void> {
    return this.serial(async () => {
      const touched = this.servicesOf(endpoint);
      endpoint.serviceLabels = undefined;
      this.refreshLabelPorts(touched);
      if (touched.length) await this.sync(touched);
    });
  }

  /** A network was deleted: its services go with it. */
  networkRemoved(networkId: string): Promise<void> {
    return this.serial(async () => {
      const keys = Object.entries(this.state.services).filter(([, s]) => s.networkId === networkId).map(([key]) => key);
      for (const key of keys) delete this.state.services[key];
      if (keys.length) await this.sync(keys);
    });
  }

  private ensureLabelService(networkId: string, declaration: ServiceDeclaration): string {
    const key = serviceKey(networkId, declaration.name);
    const existing = this.state.services[key];
    if (existing) return key;
    const network = this.network(networkId);
    const taken = this.takenVips();
    const record: ServiceRecord = {
      name: declaration.name, networkId, origin: 'labels', ports: [], createdAt: Date.now(), run: this.ctx.state.daemonRun,
      vip4: network?.ipv4.length ? pickVip(this.options.ipv4Range, key, taken) : undefined,
      vip6: network?.ipv6.length ? pickVip(this.options.ipv6Range, key, taken) : undefined,
    };
    this.state.services[key] = record;
    this.options.log.info('service created from labels', { service: declaration.name, network: network?.name ?? networkId.slice(0, 12), vip4: record.vip4, vip6: record.vip6 });
    return key;
  }

  /** Label services offer the union of their backends' ports (kept when the last backend goes). */
  private refreshLabelPorts(keys: Iterable<string>): void {
    for (const key of keys) {
      const service = this.state.services[key];
      if (!service || service.origin !== 'labels') continue;
      const offers = this.candidates(service).map((c) => c.ports);
      if (offers.length) service.ports = unionPorts(offers);
    }
  }

  // ---- the API ---------------------------------------------------------------------------------

  create(request: CreateServiceRequest): Promise<ServiceView> {
    return this.createMany([request]).then((views) => views[0]!);
  }

  /**
   * Creates services all or nothing (a bad one refuses the lot, nothing is written), with one
   * plan, one batch of map writes and one state write for all of them.
   */
  createMany(requests: CreateServiceRequest[]): Promise<ServiceView[]> {
    return this.serial(async () => {
      const keys: string[] = [];
      const taken = this.takenVips();
      try {
        for (const request of requests) keys.push(this.addServiceRecord(request, taken));
      } catch (err) {
        for (const key of keys) delete this.state.services[key];
        throw err;
      }
      try {
        await this.sync(keys);
      } catch (err) {
        // Refused by the maps (CapacityError: nothing written) or failed part-way: the services
        // go again, with whatever of them reached the maps, and their ids.
        for (const key of keys) delete this.state.services[key];
        await this.sync(keys);
        throw err;
      }
      return keys.map((key) => this.view(key)!);
    });
  }

  /** Validates a request and records the service (no map writes yet); returns its key. */
  private addServiceRecord(request: CreateServiceRequest, taken: Set<string>): string {
    {
      const name = checkServiceName(request.name);
      const network = this.resolveNetwork(request.network);
      const key = serviceKey(network.id, name);
      const existing = this.state.services[key];
      if (existing) {
        throw new ConflictError(`service ${name} already exists on network ${network.name ?? network.id.slice(0, 12)}` +
          (existing.origin === 'labels' ? ' (made by container labels)' : '') + '; delete it first, or pick another name');
      }
      if (request.ports.length === 0) throw new InvalidArgumentError('a service needs at least one port: give --port 80/tcp (or 80@8080/tcp)');
      const seen = new Set<string>();
      for (const p of request.ports) {
        const k = `${p.port}/${p.protocol}`;
        if (seen.has(k)) throw new InvalidArgumentError(`port ${k} is given twice`);
        seen.add(k);
      }
      if (request.vip4 && !network.ipv4.length) throw new InvalidArgumentError(`network ${network.name ?? network.id.slice(0, 12)} has no IPv4: it cannot have an IPv4 VIP`);
      if (request.vip6 && !network.ipv6.length) throw new InvalidArgumentError(`network ${network.name ?? network.id.slice(0, 12)} has no IPv6: it cannot have an IPv6 VIP`);
      const record: ServiceRecord = {
        name, networkId: network.id, origin: 'api', ports: request.ports, selector: request.selector, createdAt: Date.now(),
        run: this.ctx.state.daemonRun,
        vip4: network.ipv4.length ? (request.vip4 ? checkRequestedVip(this.options.ipv4Range, request.vip4, taken, '--vip') : pickVip(this.options.ipv4Range, key, taken)) : undefined,
        vip6: network.ipv6.length ? (request.vip6 ? checkRequestedVip(this.options.ipv6Range, request.vip6, taken, '--vip') : pickVip(this.options.ipv6Range, key, taken)) : undefined,
      };
      this.state.services[key] = record;
      if (record.vip4) taken.add(record.vip4);
      if (record.vip6) taken.add(record.vip6);
      return key;
    }
  }

  delete(name: string, networkRef?: string): Promise<ServiceView> {
    return this.serial(async () => {
      const key = this.find(name, networkRef);
      const view = this.view(key)!;
      delete this.state.services[key];
      await this.sync([key]);
      return view;
    });
  }

  /** The key of a service by name (and network, when the name is on several). */
  find(name: string, networkRef?: string): string {
    const matches = Object.entries(this.state.services).filter(([, s]) => s.name === name &&
      (networkRef === undefined || networkRef === '' || s.networkId === networkRef || this.network(s.networkId)?.name === networkRef ||
        (networkRef.length >= 4 && s.networkId.startsWith(networkRef))));
    if (matches.length === 1) return matches[0]![0];
    if (matches.length === 0) throw new NotFoundError(`no service ${JSON.stringify(name)}${networkRef ? ` on network ${networkRef}` : ''}`);
    throw new InvalidArgumentError(`service ${name} exists on several networks (${matches.map(([, s]) => this.network(s.networkId)?.name ?? s.networkId.slice(0, 12)).join(', ')}); give --network`);
  }

  view(key: string): ServiceView | undefined {
    const service = this.state.services[key];
    if (!service) return undefined;
    const network = this.network(service.networkId);
    return {
      name: service.name, network: service.networkId, networkName: network?.name, origin: service.origin,
      dnsName: `${service.name}.${this.options.zone}`, vip4: service.vip4, vip6: service.vip6, ports: service.ports,
      selector: service.selector ? selectorToString(service.selector) : undefined,
      backends: this.candidates(service).map((c) => {
        const e = this.ctx.state.endpoints[c.endpoint.id]!;
        return {
          endpointId: e.id, container: e.containerName, addresses: [e.ipv4, e.ipv6].filter((a): a is string => !!a), weight: c.weight,
          state: backendState(e.lifecycle, c.weight),
          lifecycle: (e.lifecycle ?? 'ready') as BackendLifecycle, ports: c.ports, error: e.serviceLabels?.error,
        };
      }),
    };
  }

  list(): ServiceView[] {
    return Object.keys(this.state.services).sort().map((key) => this.view(key)!);
  }

  /** For the DNS responder: the VIPs of `name` for the client at `clientAddress` (its network's service). */
  resolveName(clientAddress: string, name: string): { ipv4: string[]; ipv6: string[] } | undefined {
    let canonical: string;
    try {
      // An IPv4 client may arrive on a dual-stack socket as ::ffff:a.b.c.d.
      const parsed = parseAddress(clientAddress.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1'));
      canonical = formatAddress(parsed.family, parsed.value);
    } catch {
      return undefined;
    }
    const endpoint = Object.values(this.ctx.state.endpoints).find((e) => e.ipv4 === canonical || e.ipv6 === canonical);
    if (!endpoint) return undefined;
    const service = this.state.services[serviceKey(endpoint.networkId, name)];
    if (!service) return undefined;
    return { ipv4: service.vip4 ? [service.vip4] : [], ipv6: service.vip6 ? [service.vip6] : [] };
  }

  /** Frontend id -> its service and port, for events and traces. */
  describeFrontend(frontendId: number): { service: string; network: string; family: number; protocol: string; port: number } | undefined {
    const key = this.ensureIndex().frontendById.get(frontendId);
    if (!key) return undefined;
    const [networkId, name, family, protocol, port] = key.split('/');
    return { service: name!, network: this.network(networkId!)?.name ?? networkId!.slice(0, 12), family: Number(family), protocol: protocol!, port: Number(port) };
  }

  /** The service a VIP names. */
  byVip(address: string): ServiceRecord | undefined {
    let canonical = address;
    try {
      const parsed = parseAddress(address);
      canonical = formatAddress(parsed.family, parsed.value);
    } catch {
      return undefined;
    }
    return Object.values(this.state.services).find((s) => s.vip4 === canonical || s.vip6 === canonical);
  }

  /**
   * For `membrane policy trace --dst VIP` (or NAME.<zone>): the backends a flow to that frontend
   * port reaches, with their labels and target port. Undefined when `destination` is neither.
   */
  traceTarget(destination: string, port: number, protocol: string) {
    const zoneSuffix = `.${this.options.zone}`;
    let service = this.byVip(destination);
    if (!service && destination.toLowerCase().endsWith(zoneSuffix)) {
      const name = destination.toLowerCase().slice(0, -zoneSuffix.length);
      const matches = Object.values(this.state.services).filter((s) => s.name === name);
      if (matches.length > 1) throw new InvalidArgumentError(`${destination} names a service on several networks; trace its VIP instead`);
      service = matches[0];
      if (!service) throw new NotFoundError(`no service ${name}`);
    }
    if (!service) return undefined;
    const offered = service.ports.find((p) => p.port === port && p.protocol === protocol.toLowerCase());
    if (!offered) {
      throw new InvalidArgumentError(`service ${service.name} has no frontend port ${port}/${protocol}; it offers ${service.ports.map((p) => `${p.port}/${p.protocol}`).join(', ') || 'no port yet'}`);
    }
    return {
      service: service.name, vip: service.vip4 ?? service.vip6 ?? '',
      backends: this.candidates(service).map((c) => {
        const e = this.ctx.state.endpoints[c.endpoint.id]!;
        const target = c.ports.find((p) => p.port === port && p.protocol === offered.protocol)?.targetPort ?? offered.targetPort;
        return { container: e.containerName, endpointId: e.id, labels: (e.labels ?? []).join(','), targetPort: target, state: backendState(e.lifecycle, c.weight) };
      }),
    };
  }

  /** Waits for every queued change. */
  idle(): Promise<void> {
    return this.serial(async () => undefined);
  }
}
