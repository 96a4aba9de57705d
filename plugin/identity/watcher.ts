// Learns each Membrane endpoint's labels from Docker. The plugin protocol carries only network and
// endpoint ids, never container labels, so (as Cilium's plugin did after 1.7) we watch Docker's
// event stream and ask Docker about the container behind each endpoint.
//
// BACKGROUND TASK ONLY. Nothing here may be called, or awaited, from inside a plugin request
// handler: dockerd holds its network and container locks while it waits for the plugin, so a
// handler that calls the Docker API (which is what every method here does) can deadlock dockerd,
// and during dockerd's own start its API socket is not even listening yet. The watcher runs beside
// the handlers and hands its results to a callback; whoever consumes them must therefore accept
// labels for an endpoint it has not seen yet (the event can precede CreateEndpoint/Join being
// recorded) or no longer has (a container that died a moment after being read).
//
// What Docker 20.10 does (measured): `docker run --network X` emits container `create`, then
// network `connect` (Actor.Attributes: container, name, type = driver), then container `start`
// ~0.3 s later. At `connect` time:
// - GET /networks/X already lists the endpoint with its EndpointID (Join has returned);
// - GET /containers/C/json blocks until the whole start finishes (dockerd holds the container
//   lock for the entire start);
// - GET /containers/json (the list, served from a snapshot) has the labels but empty
//   NetworkID/EndpointID until the start finishes.
// So a connect event is answered from cached or listed labels plus a network inspect (labels are
// known before the container's process runs), and a start event from a container inspect.

import type Docker from 'dockerode';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger, type Logger } from '../log.js';
import type { Label } from '../policy/types.js';
import {
  containerName, healthOf, labelsFor, mergedContainerLabels,
  type ContainerHealth, type ContainerInspectLike, type ImageInspectLike, type NetworkAttachmentLike,
} from './docker-labels.js';

/** What the callback receives: one endpoint and everything Docker says about its container. */
export interface EndpointLabels {
  /** Docker's endpoint id, which is Membrane's endpoint id. */
  endpointId: string;
  /** Docker's network id, which is Membrane's network id. */
  networkId: string;
  networkName: string;
  containerId: string;
  /** Without the leading `/`. */
  containerName: string;
  /** All labels (see docker-labels.ts), unfiltered, sorted. */
  labels: Label[];
  /** The container's labels as `docker inspect` shows them (image labels included). */
  containerLabels: Record<string, string>;
  /** What made the watcher look. */
  trigger: 'connect' | 'start' | 'rename' | 'resync' | 'health';
  /** Docker's health of the container ('none' without a HEALTHCHECK). */
  health: ContainerHealth;
  /** performance.now() when the triggering event was read (resync: when the resync began). */
  receivedAt: number;
  /** performance.now() just before the callback was called. */
  emittedAt: number;
}

export type EndpointLabelsCallback = (update: EndpointLabels) => void | Promise<void>;

/** One line of GET /events (API 1.41). */
export interface DockerEvent {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> | null };
  time?: number;
  timeNano?: number;
}

/** One entry of GET /containers/json. */
export interface ContainerSummaryLike {
  Id: string;
  /** `Up 3 seconds (health: starting)`: the only health a list entry carries. */
  Status?: string;
  Names?: string[];
  ImageID?: string;
  Labels?: Record<string, string> | null;
  NetworkSettings?: { Networks?: Record<string, NetworkAttachmentLike> | null } | null;
}

/** GET /networks/{id} (and the entries of GET /networks, which lack Containers). */
export interface NetworkInspectLike {
  Id: string;
  Name: string;
  Driver: string;
  Containers?: Record<string, { EndpointID?: string }> | null;
}

/** The dockerode calls the watcher makes; a Dockerode instance fits, and so does a test fake. */
export interface DockerClient {
  getEvents(options: { filters: { type: Array<'container' | 'network'>; event: string[] }; abortSignal?: AbortSignal }): Promise<NodeJS.ReadableStream>;
  listContainers(options: { all?: boolean; filters: Record<string, string[]>; abortSignal?: AbortSignal }): Promise<ContainerSummaryLike[]>;
  listNetworks(): Promise<NetworkInspectLike[]>;
  getContainer(id: string): { inspect(options?: { abortSignal?: AbortSignal }): Promise<ContainerInspectLike> };
  getImage(id: string): { inspect(): Promise<ImageInspectLike> };
  getNetwork(id: string): { inspect(): Promise<NetworkInspectLike> };
}

export interface DockerLabelWatcherOptions {
  /** Networks of this driver are Membrane's (integration tests use 'bridge'). Default 'membrane'. */
  driverName?: string;
  /**
   * Decides which networks are Membrane's instead of driverName. A managed plugin does not know
   * the name Docker gives its driver (`user/membrane:tag`); the daemon knows its networks' ids.
   */
  isMembraneNetwork?: (networkId: string, driver: string) => boolean;
  log?: Logger;
  /** Full resync period; 0 = only after (re)connecting and on explicit resync(). Default 30 s. */
  resyncIntervalMs?: number;
  /** Linear back-off step while an endpoint id is not visible yet (n-th wait = n x step). Default 50 ms. */
  endpointRetryStepMs?: number;
  /** Give up waiting for an endpoint id after this much waiting (then warn). Default 5 s. */
  endpointRetryTotalMs?: number;
  /** Event stream reconnect back-off: first wait, doubled up to the maximum. Default 0.5 s .. 10 s. */
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /** Read a container's labels when it is created, so its connect needs one call less. Default true. */
  prefetchOnCreate?: boolean;
  /**
   * How a connect event finds the endpoint id. 'network' (default): inspect the network, which
   * answers as soon as Join returned (cost grows with the containers on that network).
   * 'container': inspect the container, which dockerd answers only once the start (or
   * `docker network connect`) operation has finished.
   */
  endpointLookup?: 'network' | 'container';
  /** Called with the Docker name of each Membrane network the watcher learns about (the plugin protocol never says it). */
  onNetworkName?: (networkId: string, name: string) => void;
  /** Called for the lifecycle events the load balancer follows: start, kill (`docker stop` begins), die, health_status. */
  onContainerEvent?: (event: ContainerEvent) => void;
}

export interface ContainerEvent {
  containerId: string;
  action: 'start' | 'kill' | 'die' | 'health_status';
  /** health_status only. */
  health?: 'healthy' | 'unhealthy';
  /** kill only: the signal number Docker sent (`docker stop` sends the stop signal, then SIGKILL). */
  signal?: number;
}

const EVENT_FILTERS = {
  type: ['container', 'network'] as Array<'container' | 'network'>,
  event: ['create', 'start', 'die', 'destroy', 'rename', 'connect', 'disconnect', 'kill', 'health_status'],
};

/** Container/image caches are bounded so a host churning through containers cannot grow them. */
const CACHE_LIMIT = 4096;

/** Waits of n x step (n = 1, 2, ...) whose sum stays within `totalMs`; the last one takes the rest. */
export function linearBackoff(stepMs: number, totalMs: number): number[] {
  const delays: number[] = [];
  let sum = 0;
  for (let n = 1; stepMs > 0 && sum + n * stepMs <= totalMs; n++) {
    delays.push(n * stepMs);
    sum += n * stepMs;
  }
  if (totalMs - sum > 0) delays.push(totalMs - sum);
  return delays;
}

/** Complete lines of an NDJSON stream: appends `chunk` to `pending`, returns lines and the rest. */
export function takeLines(pending: string, chunk: string): { lines: string[]; rest: string } {
  const parts = (pending + chunk).split('\n');
  const rest = parts.pop()!;
  return { lines: parts.map((l) => l.trim()).filter(Boolean), rest };
}

/** A list entry in the shape of an inspect result (what labelsFor reads). */
export function summaryAsInspect(summary: ContainerSummaryLike): ContainerInspectLike {
  // With legacy links a container has several names (`/other/alias`); its own has one slash.
  const name = summary.Names?.find((n) => n.lastIndexOf('/') === 0) ?? summary.Names?.[0];
  const health = healthOf(summary);
  return {
    Id: summary.Id, Name: name, Image: summary.ImageID, Config: { Labels: summary.Labels ?? {} }, NetworkSettings: summary.NetworkSettings ?? {},
    State: health === 'none' ? undefined : { Health: { Status: health } },
  };
}

/** Map with a size bound: the oldest insertion goes first. */
class BoundedMap<K, V> extends Map<K, V> {
  constructor(private readonly limit: number) {
    super();
  }

  override set(key: K, value: V): this {
    super.delete(key);
    super.set(key, value);
    if (this.size > this.limit) super.delete(this.keys().next().value as K);
    return this;
  }
}

function isNotFound(err: unknown): boolean {
  return (err as { statusCode?: number }).statusCode === 404;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The labels-side of a container: everything but its network attachments, which change. */
type ContainerLabelsSource = Pick<ContainerInspectLike, 'Id' | 'Name' | 'Image' | 'Config' | 'State'>;

export class DockerLabelWatcher {
  private readonly docker: DockerClient;
  private readonly log: Logger;
  private readonly driverName: string;
  private readonly ours: (networkId: string, driver: string) => boolean;
  private readonly resyncIntervalMs: number;
  private readonly endpointRetry: number[];
  private readonly reconnectInitialMs: number;
  private readonly reconnectMaxMs: number;
  private readonly prefetchOnCreate: boolean;
  private readonly endpointLookup: 'network' | 'container';

  private readonly closing = new AbortController();
  private started: Promise<void> | undefined;
  private markFirstSync: () => void = () => undefined;
  private readonly background = new Set<Promise<unknown>>();
  private stream: NodeJS.ReadableStream | undefined;
  private resyncInFlight: Promise<number> | undefined;

  /** Counts events read; work remembers the count it started at (see diedSince). */
  private seq = 0;
  private readonly deathSeq = new BoundedMap<string, number>(CACHE_LIMIT);
  /** Network id -> name and driver (ids are never reused, so entries only go on destroy). */
  private networks = new Map<string, { name: string; driver: string }>();
  private readonly containers = new BoundedMap<string, ContainerLabelsSource>(CACHE_LIMIT);
  private readonly prefetches = new Map<string, Promise<ContainerLabelsSource | undefined>>();
  private readonly images = new BoundedMap<string, Promise<ImageInspectLike | undefined>>(CACHE_LIMIT);
  /** Container id -> network id -> what was last emitted, so two events for one change emit once. */
  private readonly emitted = new Map<string, Map<string, string>>();

  constructor(docker: DockerClient | Docker, private readonly onEndpointLabels: EndpointLabelsCallback,
    options: DockerLabelWatcherOptions = {}) {
    this.docker = docker;
    this.log = options.log ?? silentLogger();
    this.driverName = options.driverName ?? 'membrane';
    this.ours = options.isMembraneNetwork ?? ((_id, driver) => driver === this.driverName);
    this.resyncIntervalMs = options.resyncIntervalMs ?? 30_000;
    this.endpointRetry = linearBackoff(options.endpointRetryStepMs ?? 50, options.endpointRetryTotalMs ?? 5_000);
    this.reconnectInitialMs = options.reconnectInitialMs ?? 500;
    this.reconnectMaxMs = options.reconnectMaxMs ?? 10_000;
    this.prefetchOnCreate = options.prefetchOnCreate ?? true;
    this.endpointLookup = options.endpointLookup ?? 'network';
    this.onNetworkName = options.onNetworkName;
    this.onContainerEvent = options.onContainerEvent;
  }

  private readonly onNetworkName?: (networkId: string, name: string) => void;
  private readonly onContainerEvent?: (event: ContainerEvent) => void;

  private containerEvent(event: ContainerEvent): void {
    if (!this.onContainerEvent) return;
    try {
      this.onContainerEvent(event);
    } catch (err) {
      this.log.warn('container event callback failed', { containerId: event.containerId, error: message(err) });
    }
  }

  /** Caches a network's name and driver, and reports the name of a Membrane network. */
  private rememberNetwork(id: string, info: { name: string; driver: string }): void {
    this.networks.set(id, info);
    if (this.onNetworkName && this.ours(id, info.driver)) this.onNetworkName(id, info.name);
  }

  private get closed(): boolean {
    return this.closing.signal.aborted;
  }

  /**
   * Subscribes to Docker's events and starts the periodic resync. Never rejects; resolves once
   * the first subscription and its resync are done (or on close). Waits for dockerd if it is not
   * up yet, so do not await this where dockerd may be waiting for us.
   */
  start(): Promise<void> {
    if (!this.started) {
      this.started = new Promise((resolve) => { this.markFirstSync = resolve; });
      this.spawn(this.eventLoop());
      if (this.resyncIntervalMs > 0) this.spawn(this.periodicResync());
    }
    return this.started;
  }

  /** Stops everything: stream, timers, retries. Resolves when nothing of the watcher is left running. */
  async close(): Promise<void> {
    this.closing.abort();
    this.markFirstSync();
    (this.stream as { destroy?: () => void } | undefined)?.destroy?.();
    while (this.background.size) await Promise.allSettled([...this.background]);
  }

  /**
   * Emits every endpoint of every running container on a Membrane network (even unchanged ones:
   * the consumer repairs from this). Returns how many were emitted; concurrent calls share one pass.
   */
  resync(): Promise<number> {
    if (this.closed) return Promise.resolve(0);
    this.resyncInFlight ??= this.spawn(this.doResync().finally(() => { this.resyncInFlight = undefined; }));
    return this.resyncInFlight;
  }

  /** Tracks a background promise so close() can wait for it. */
  private spawn<T>(work: Promise<T>): Promise<T> {
    this.background.add(work);
    void work.finally(() => this.background.delete(work)).catch(() => undefined);
    return work;
  }

  /** Runs event-driven work in the background; a bug in it is logged, never thrown at anyone. */
  private task(work: Promise<unknown>, what: string, containerId: string): void {
    this.spawn(work.catch((err: unknown) => this.log.warn(`docker label watcher: ${what} failed`, { containerId, error: message(err) })));
  }

  private async eventLoop(): Promise<void> {
    let delay = this.reconnectInitialMs;
    while (!this.closed) {
      try {
        this.stream = await this.docker.getEvents({ filters: EVENT_FILTERS, abortSignal: this.closing.signal });
      } catch (err) {
        if (this.closed) break;
        this.log.warn('docker event stream: cannot subscribe; retrying', { error: message(err), retryInMs: delay });
        await sleep(delay, undefined, { signal: this.closing.signal }).catch(() => undefined);
        delay = Math.min(delay * 2, this.reconnectMaxMs);
        continue;
      }
      this.log.debug('docker event stream: subscribed');
      // Subscribed first, then listed: whatever changes after the list is in the stream.
      void this.resync().catch(() => 0).then(() => this.markFirstSync());
      const before = this.seq;
      try {
        await this.consume(this.stream);
        if (!this.closed) this.log.warn('docker event stream ended (dockerd restarted?); reconnecting', { retryInMs: delay });
      } catch (err) {
        if (!this.closed) this.log.warn('docker event stream failed; reconnecting', { error: message(err), retryInMs: delay });
      }
      this.stream = undefined;
      if (this.closed) break;
      // A stream that delivered events was a good connection: start the back-off afresh.
      if (this.seq > before) delay = this.reconnectInitialMs;
      await sleep(delay, undefined, { signal: this.closing.signal }).catch(() => undefined);
      delay = Math.min(delay * 2, this.reconnectMaxMs);
    }
  }

  private async consume(stream: NodeJS.ReadableStream): Promise<void> {
    const decoder = new StringDecoder('utf8');
    let pending = '';
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      const receivedAt = performance.now();
      const { lines, rest } = takeLines(pending, typeof chunk === 'string' ? chunk : decoder.write(chunk));
      pending = rest;
      for (const line of lines) {
        let event: DockerEvent;
        try {
          event = JSON.parse(line) as DockerEvent;
        } catch {
          this.log.warn('docker event stream: unparsable line skipped', { line: line.slice(0, 200) });
          continue;
        }
        this.handleEvent(event, receivedAt);
      }
    }
  }

  private async periodicResync(): Promise<void> {
    while (!this.closed) {
      await sleep(this.resyncIntervalMs, undefined, { signal: this.closing.signal }).catch(() => undefined);
      if (this.closed) break;
      // While unsubscribed (dockerd down) the reconnect resyncs anyway; trying now would only fail.
      if (this.stream) await this.resync();
    }
  }

  /** Synchronous dispatch; the Docker calls it leads to run in the background. */
  private handleEvent(event: DockerEvent, receivedAt: number): void {
    this.seq++;
    const id = event.Actor?.ID ?? '';
    const attributes = event.Actor?.Attributes ?? {};
    if (!id) return;
    if (event.Type === 'container') {
      // "health_status: healthy" is the action; the event filter matches its first word.
      const action = event.Action ?? '';
      if (action.startsWith('health_status')) {
        const health = action.includes('unhealthy') ? 'unhealthy' : action.includes('healthy') ? 'healthy' : undefined;
        if (health) this.containerEvent({ containerId: id, action: 'health_status', health });
        return;
      }
      if (action === 'kill' || action === 'die' || action === 'start') {
        const signal = action === 'kill' && attributes.signal !== undefined ? Number(attributes.signal) : undefined;
        this.containerEvent({ containerId: id, action, signal: Number.isInteger(signal) ? signal : undefined });
      }
      switch (event.Action) {
        case 'create':
          if (this.prefetchOnCreate) this.prefetch(id);
          return;
        case 'start':
          this.task(this.resolveByInspect(id, 'start', receivedAt), 'start', id);
          return;
        case 'rename':
          this.containers.delete(id);
          if (this.emitted.has(id)) this.task(this.resolveByInspect(id, 'rename', receivedAt), 'rename', id);
          return;
        case 'die':
        case 'destroy':
          this.forgetContainer(id);
          return;
      }
      return;
    }
    if (event.Type !== 'network') return;
    if (attributes.name !== undefined && attributes.type !== undefined) {
      this.rememberNetwork(id, { name: attributes.name, driver: attributes.type });
    }
    const containerId = attributes.container;
    switch (event.Action) {
      case 'destroy':
        this.networks.delete(id);
        return;
      case 'connect':
        if (!containerId || !this.ours(id, attributes.type ?? '')) return;
        this.task(this.endpointLookup === 'network'
          ? this.resolveConnect(containerId, id, attributes.name ?? id, receivedAt)
          : this.resolveByInspect(containerId, 'connect', receivedAt, id), 'connect', containerId);
        return;
      case 'disconnect':
        if (containerId) this.emitted.get(containerId)?.delete(id);
        return;
    }
  }

  private forgetContainer(id: string): void {
    this.deathSeq.set(id, this.seq);
    this.containers.delete(id);
    this.prefetches.delete(id);
    this.emitted.delete(id);
  }

  /** True when the container died (or was removed) after work that started at `since` began. */
  private diedSince(containerId: string, since: number): boolean {
    return (this.deathSeq.get(containerId) ?? -1) > since;
  }

  /** Whether work on the container that started at `since` should still go on. */
  private stillWanted(containerId: string, since: number): boolean {
    return !this.closed && !this.diedSince(containerId, since);
  }

  private prefetch(containerId: string): void {
    const work = this.listContainerLabels(containerId).then(async (source) => {
      if (source) await this.imageOf(source.Image);
      return source;
    }).finally(() => {
      if (this.prefetches.get(containerId) === work) this.prefetches.delete(containerId);
    });
    this.prefetches.set(containerId, work);
    this.spawn(work);
  }

  /**
   * The container's labels from the container list: served from a snapshot, so unlike inspect it
   * never waits for a start in progress. Undefined when the container is gone.
   */
  private async listContainerLabels(containerId: string): Promise<ContainerLabelsSource | undefined> {
    const since = this.seq;
    try {
      const [summary] = await this.docker.listContainers({ all: true, filters: { id: [containerId] }, abortSignal: this.closing.signal });
      if (!summary || this.diedSince(containerId, since)) return undefined;
      const source = summaryAsInspect(summary);
      this.containers.set(containerId, source);
      return source;
    } catch (err) {
      if (!this.closed) this.log.debug('container list by id failed', { containerId, error: message(err) });
      return undefined;
    }
  }

  /** Image inspect, cached by image id (ids are content hashes: an image never changes). */
  private imageOf(imageId: string | undefined): Promise<ImageInspectLike | undefined> {
    if (!imageId) return Promise.resolve(undefined);
    let image = this.images.get(imageId);
    if (!image) {
      image = this.docker.getImage(imageId).inspect().catch((err: unknown) => {
        // A removed image (`docker rmi -f`) leaves its containers running; their own labels suffice.
        this.log.debug('image inspect failed; using the container labels alone', { imageId, error: message(err) });
        this.images.delete(imageId);
        return undefined;
      });
      this.images.set(imageId, image);
    }
    return image;
  }

  /** Driver of a network, from the cache or by asking Docker once. */
  private async networkInfo(networkId: string): Promise<{ name: string; driver: string } | undefined> {
    const known = this.networks.get(networkId);
    if (known) return known;
    try {
      const network = await this.docker.getNetwork(networkId).inspect();
      const info = { name: network.Name, driver: network.Driver };
      this.rememberNetwork(network.Id, info);
      return info;
    } catch (err) {
      this.log.debug('network inspect failed', { networkId, error: message(err) });
      return undefined;
    }
  }

  /** A connect to one of our networks: labels from cache/prefetch/list, endpoint id from the network. */
  private async resolveConnect(containerId: string, networkId: string, networkName: string, receivedAt: number): Promise<void> {
    const since = this.seq;
    const source = this.containers.get(containerId) ?? await this.prefetches.get(containerId) ?? await this.listContainerLabels(containerId);
    if (!source || !this.stillWanted(containerId, since)) return;
    const image = await this.imageOf(source.Image);
    for (let attempt = 0; ; attempt++) {
      let endpointId: string | undefined;
      try {
        const network = await this.docker.getNetwork(networkId).inspect();
        networkName = network.Name;
        endpointId = network.Containers?.[containerId]?.EndpointID;
      } catch (err) {
        if (isNotFound(err)) return;
        this.log.debug('network inspect failed', { networkId, error: message(err) });
      }
      if (!this.stillWanted(containerId, since)) return;
      if (endpointId) {
        await this.emit(source, image, { networkId, networkName, endpointId }, 'connect', receivedAt, since, false);
        return;
      }
      if (!(await this.waitForEndpoint(attempt, containerId, since))) {
        if (!this.stillWanted(containerId, since)) return;
        this.log.warn('endpoint id of a connected container never appeared; the next resync will pick it up',
          { containerId, networkId, waitedMs: this.endpointRetry.reduce((a, b) => a + b, 0) });
        return;
      }
    }
  }

  /**
   * Inspects the container and emits every endpoint it has on our networks (or only on `onlyNetwork`).
   * Endpoints whose id is not there yet are retried with linear back-off.
   */
  private async resolveByInspect(containerId: string, trigger: 'start' | 'connect' | 'rename', receivedAt: number, onlyNetwork?: string): Promise<void> {
    const since = this.seq;
    for (let attempt = 0; ; attempt++) {
      let container: ContainerInspectLike;
      try {
        container = await this.docker.getContainer(containerId).inspect({ abortSignal: this.closing.signal });
      } catch (err) {
        if (!this.closed && !isNotFound(err)) this.log.warn('container inspect failed', { containerId, error: message(err) });
        return;
      }
      if (!this.stillWanted(containerId, since)) return;
      if (!container.State?.Running && !container.State?.Restarting) return;
      this.containers.set(containerId, container);
      const image = await this.imageOf(container.Image);
      let waiting = 0;
      for (const [name, attachment] of Object.entries(container.NetworkSettings?.Networks ?? {})) {
        const ours = await this.attachmentState(name, attachment, onlyNetwork);
        if (ours === 'pending') waiting++;
        else if (ours) await this.emit(container, image, ours, trigger, receivedAt, since, false);
      }
      if (onlyNetwork && !Object.values(container.NetworkSettings?.Networks ?? {}).some((a) => a.NetworkID === onlyNetwork)) waiting++;
      if (!waiting) return;
      if (!(await this.waitForEndpoint(attempt, containerId, since))) {
        if (!this.stillWanted(containerId, since)) return;
        this.log.warn('endpoint ids of a running container never appeared; the next resync will pick them up',
          { containerId, trigger, networks: waiting });
        return;
      }
    }
  }

  /** Whether an inspect's network entry is one of our endpoints, ready (ids), or not ready yet. */
  private async attachmentState(name: string, attachment: NetworkAttachmentLike, onlyNetwork: string | undefined):
    Promise<{ networkId: string; networkName: string; endpointId: string } | 'pending' | undefined> {
    const networkId = attachment.NetworkID || [...this.networks].find(([, n]) => n.name === name)?.[0];
    if (!networkId || (onlyNetwork && networkId !== onlyNetwork)) return undefined;
    const info = await this.networkInfo(networkId);
    if (!info || !this.ours(networkId, info.driver)) return undefined;
    if (!attachment.NetworkID || !attachment.EndpointID) return 'pending';
    return { networkId, networkName: name, endpointId: attachment.EndpointID };
  }

  /** Sleeps the attempt-th back-off step; false when out of attempts or the work became pointless. */
  private async waitForEndpoint(attempt: number, containerId: string, since: number): Promise<boolean> {
    const delay = this.endpointRetry[attempt];
    if (delay === undefined) return false;
    await sleep(delay, undefined, { signal: this.closing.signal }).catch(() => undefined);
    return this.stillWanted(containerId, since);
  }

  private async doResync(): Promise<number> {
    const receivedAt = performance.now();
    const since = this.seq;
    try {
      const networks = await this.docker.listNetworks();
      this.networks = new Map(networks.map((n) => [n.Id, { name: n.Name, driver: n.Driver }]));
      const ours = new Set(networks.filter((n) => this.ours(n.Id, n.Driver)).map((n) => n.Id));
      const running = ours.size === 0 ? [] : await this.docker.listContainers({
        filters: { status: ['running'], network: [...ours] }, abortSignal: this.closing.signal,
      });
      let count = 0;
      for (const summary of running) {
        if (this.closed) break;
        const source = summaryAsInspect(summary);
        this.containers.set(summary.Id, source);
        const image = await this.imageOf(source.Image);
        for (const [networkName, attachment] of Object.entries(summary.NetworkSettings?.Networks ?? {})) {
          // An entry without ids belongs to a container still starting; its events cover it.
          if (!attachment.NetworkID || !attachment.EndpointID || !ours.has(attachment.NetworkID)) continue;
          const endpoint = { networkId: attachment.NetworkID, networkName, endpointId: attachment.EndpointID };
          if (await this.emit(source, image, endpoint, 'resync', receivedAt, since, true)) count++;
        }
      }
      // Drop dedup state of containers no longer running (their die event may have been lost).
      const seen = new Set(running.map((c) => c.Id));
      for (const id of this.emitted.keys()) if (!seen.has(id)) this.emitted.delete(id);
      this.log.debug('docker label resync done', { endpoints: count, ms: Math.round(performance.now() - receivedAt) });
      return count;
    } catch (err) {
      if (!this.closed) this.log.warn('docker label resync failed', { error: message(err) });
      return 0;
    }
  }

  /** Calls the callback unless the container died meanwhile or (event-driven) nothing changed. */
  private async emit(source: ContainerLabelsSource, image: ImageInspectLike | undefined,
    endpoint: { networkId: string; networkName: string; endpointId: string },
    trigger: EndpointLabels['trigger'], receivedAt: number, since: number, force: boolean): Promise<boolean> {
    const containerId = source.Id;
    if (!this.stillWanted(containerId, since)) return false;
    const labels = labelsFor(source, image, endpoint.networkName);
    const name = containerName(source);
    // A list entry made before the start knows no health yet: an image HEALTHCHECK means "starting"
    // (the start event's inspect then says exactly).
    let health = healthOf(source);
    const check = image?.Config?.Healthcheck?.Test;
    if (health === 'none' && trigger === 'connect' && check?.length && check[0] !== 'NONE') health = 'starting';
    const signature = JSON.stringify([endpoint.endpointId, name, labels, health]);
    let perNetwork = this.emitted.get(containerId);
    if (!force && perNetwork?.get(endpoint.networkId) === signature) return false;
    if (!perNetwork) this.emitted.set(containerId, perNetwork = new Map());
    perNetwork.set(endpoint.networkId, signature);
    const update: EndpointLabels = {
      ...endpoint, containerId, containerName: name, labels, health,
      containerLabels: mergedContainerLabels(source, image), trigger, receivedAt, emittedAt: performance.now(),
    };
    this.log.debug('endpoint labels', { endpointId: update.endpointId, containerId, trigger, latencyMs: +(update.emittedAt - receivedAt).toFixed(1) });
    try {
      await this.onEndpointLabels(update);
    } catch (err) {
      this.log.warn('endpoint labels callback failed', { endpointId: update.endpointId, error: message(err) });
    }
    return true;
  }
}
