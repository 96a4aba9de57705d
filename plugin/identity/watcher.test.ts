// The Docker label watcher against a fake dockerode: an event stream the test writes NDJSON into,
// and inspect/list answers the test controls (including "not there yet" and "dockerd is down").

import test from 'ava';
import { PassThrough, Writable } from 'node:stream';
import winston from 'winston';
import { silentLogger } from '../log.js';
import type { ContainerInspectLike, ImageInspectLike } from './docker-labels.js';
import {
  DockerLabelWatcher, linearBackoff, summaryAsInspect, takeLines,
  type ContainerSummaryLike, type DockerClient, type DockerEvent, type DockerLabelWatcherOptions, type EndpointLabels, type NetworkInspectLike,
} from './watcher.js';

const NET = 'a'.repeat(64);
const OTHER_NET = 'b'.repeat(64);
const CID = 'c'.repeat(64);
const EP = 'e'.repeat(64);
const IMAGE = 'sha256:' + 'f'.repeat(64);

interface FakeContainer {
  inspect: ContainerInspectLike;
  /** Answers for successive inspects (then `inspect`), to play "not joined yet". */
  inspectSequence?: ContainerInspectLike[];
}

class FakeDocker implements DockerClient {
  streams: PassThrough[] = [];
  /** getEvents fails this many more times (dockerd down). */
  failSubscribes = 0;
  calls: string[] = [];
  containers = new Map<string, FakeContainer>();
  networks = new Map<string, NetworkInspectLike>();
  /** Successive network inspect answers for a network, before `networks` applies. */
  networkSequence = new Map<string, NetworkInspectLike[]>();
  images = new Map<string, ImageInspectLike>();

  async getEvents(): Promise<NodeJS.ReadableStream> {
    this.calls.push('getEvents');
    if (this.failSubscribes > 0) {
      this.failSubscribes--;
      throw Object.assign(new Error('connect ECONNREFUSED /var/run/docker.sock'), { code: 'ECONNREFUSED' });
    }
    const stream = new PassThrough();
    this.streams.push(stream);
    return stream;
  }

  async listContainers(options: { all?: boolean; filters: Record<string, string[]> }): Promise<ContainerSummaryLike[]> {
    this.calls.push(`listContainers:${JSON.stringify(options.filters)}`);
    const out: ContainerSummaryLike[] = [];
    for (const { inspect } of this.containers.values()) {
      if (options.filters.id && !options.filters.id.includes(inspect.Id)) continue;
      if (!options.all && !inspect.State?.Running) continue;
      const networks = inspect.NetworkSettings?.Networks ?? {};
      if (options.filters.network && !Object.values(networks).some((n) => options.filters.network!.includes(n.NetworkID ?? ''))) continue;
      out.push({ Id: inspect.Id, Names: [inspect.Name ?? ''], ImageID: inspect.Image, Labels: inspect.Config?.Labels ?? {}, NetworkSettings: { Networks: networks } });
    }
    return out;
  }

  async listNetworks(): Promise<NetworkInspectLike[]> {
    this.calls.push('listNetworks');
    return [...this.networks.values()].map(({ Id, Name, Driver }) => ({ Id, Name, Driver }));
  }

  getContainer(id: string) {
    return {
      inspect: async (): Promise<ContainerInspectLike> => {
        this.calls.push(`inspectContainer:${id}`);
        const c = this.containers.get(id);
        if (!c) throw Object.assign(new Error('no such container'), { statusCode: 404 });
        return structuredClone(c.inspectSequence?.shift() ?? c.inspect);
      },
    };
  }

  getImage(id: string) {
    return {
      inspect: async (): Promise<ImageInspectLike> => {
        this.calls.push(`inspectImage:${id}`);
        const image = this.images.get(id);
        if (!image) throw Object.assign(new Error('no such image'), { statusCode: 404 });
        return image;
      },
    };
  }

  getNetwork(id: string) {
    return {
      inspect: async (): Promise<NetworkInspectLike> => {
        this.calls.push(`inspectNetwork:${id}`);
        const next = this.networkSequence.get(id)?.shift();
        const network = next ?? this.networks.get(id);
        if (!network) throw Object.assign(new Error('no such network'), { statusCode: 404 });
        return structuredClone(network);
      },
    };
  }

  /** Writes events to the current stream, as dockerd does (one JSON object per line). */
  push(...events: DockerEvent[]): void {
    this.current().write(Buffer.from(events.map((e) => JSON.stringify(e) + '\n').join('')));
  }

  current(): PassThrough {
    const stream = this.streams.at(-1);
    if (!stream) throw new Error('nobody subscribed');
    return stream;
  }

  count(prefix: string): number {
    return this.calls.filter((c) => c.startsWith(prefix)).length;
  }
}

function runningContainer(networks: Record<string, { NetworkID: string; EndpointID: string }>): ContainerInspectLike {
  return {
    Id: CID,
    Name: '/web-1',
    Image: IMAGE,
    State: { Running: true },
    Config: { Labels: { app: 'web', 'com.docker.compose.project': 'shop', 'com.docker.compose.service': 'web' } },
    NetworkSettings: { Networks: networks },
  };
}

/**
 * A host with one Membrane network, one bridge network and (unless `withContainer` is false: the
 * test starts it later, so the watcher's first resync does not see it) one container on both.
 */
function fakeHost(withContainer = true): FakeDocker {
  const docker = new FakeDocker();
  docker.networks.set(NET, { Id: NET, Name: 'backend', Driver: 'membrane', Containers: {} });
  docker.networks.set(OTHER_NET, { Id: OTHER_NET, Name: 'bridge', Driver: 'bridge', Containers: {} });
  docker.images.set(IMAGE, { Id: IMAGE, Config: { Labels: { maintainer: 'ops', app: 'image-default' } } });
  if (withContainer) addContainer(docker);
  return docker;
}

/** The container CID, running and joined to both networks. */
function addContainer(docker: FakeDocker): void {
  docker.networks.get(NET)!.Containers![CID] = { EndpointID: EP };
  docker.networks.get(OTHER_NET)!.Containers![CID] = { EndpointID: 'x'.repeat(64) };
  docker.containers.set(CID, { inspect: runningContainer({ backend: { NetworkID: NET, EndpointID: EP }, bridge: { NetworkID: OTHER_NET, EndpointID: 'x'.repeat(64) } }) });
}

const ev = {
  create: (id = CID): DockerEvent => ({ Type: 'container', Action: 'create', Actor: { ID: id, Attributes: { name: 'web-1', image: 'img' } } }),
  start: (id = CID): DockerEvent => ({ Type: 'container', Action: 'start', Actor: { ID: id, Attributes: { name: 'web-1' } } }),
  die: (id = CID): DockerEvent => ({ Type: 'container', Action: 'die', Actor: { ID: id, Attributes: { exitCode: '0' } } }),
  destroy: (id = CID): DockerEvent => ({ Type: 'container', Action: 'destroy', Actor: { ID: id, Attributes: {} } }),
  connect: (network = NET, name = 'backend', driver = 'membrane', container = CID): DockerEvent =>
    ({ Type: 'network', Action: 'connect', Actor: { ID: network, Attributes: { container, name, type: driver } } }),
};

/** Fast settings so tests take milliseconds; no periodic resync unless a test asks. */
function watch(docker: FakeDocker, options: DockerLabelWatcherOptions = {}) {
  const seen: EndpointLabels[] = [];
  const watcher = new DockerLabelWatcher(docker, (u) => { seen.push(u); }, {
    log: silentLogger(), resyncIntervalMs: 0, endpointRetryStepMs: 2, endpointRetryTotalMs: 60,
    reconnectInitialMs: 5, reconnectMaxMs: 20, ...options,
  });
  return { watcher, seen };
}

async function until(condition: () => boolean, timeoutMs = 2_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Lets queued promise work and short timers run. */
const settle = (ms = 30) => new Promise((r) => setTimeout(r, ms));

function capturingLogger(): { log: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({ write(chunk, _enc, done) { lines.push(String(chunk)); done(); } });
  return { log: winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] }), lines };
}

const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

// Serial: the timer-leak check counts the process's timers, which concurrent tests would disturb.

test.serial('close() stops the stream, the resync timer and pending retries: no timers left', async (t) => {
  const baseline = timeouts();
  const docker = fakeHost(false);
  const { watcher } = watch(docker, { resyncIntervalMs: 10, endpointRetryStepMs: 1_000, endpointRetryTotalMs: 60_000 });
  await watcher.start();
  addContainer(docker);
  // The endpoint never shows up: the connect work is sleeping in its back-off when we close.
  docker.networks.get(NET)!.Containers = {};
  docker.push(ev.connect());
  await until(() => docker.count(`inspectNetwork:${NET}`) >= 1);
  await settle(25);
  t.true(docker.count('listNetworks') >= 2, 'periodic resync ran');
  const started = performance.now();
  await watcher.close();
  t.true(performance.now() - started < 500, 'close does not wait out back-off sleeps');
  t.is(timeouts(), baseline);
  t.true(docker.current().destroyed);
  await watcher.close(); // idempotent
});

test.serial('connect before Join: retries with back-off until the endpoint id appears, then emits once', async (t) => {
  const docker = fakeHost(false);
  docker.networkSequence.set(NET, [
    { Id: NET, Name: 'backend', Driver: 'membrane', Containers: {} },
    { Id: NET, Name: 'backend', Driver: 'membrane', Containers: { [CID]: { EndpointID: '' } } },
  ]);
  const { watcher, seen } = watch(docker);
  await watcher.start();
  addContainer(docker);
  docker.push(ev.create(), ev.connect());
  await until(() => seen.length >= 1);
  t.is(docker.count(`inspectNetwork:${NET}`), 3);
  docker.push(ev.start());
  await until(() => docker.count(`inspectContainer:${CID}`) === 1);
  await settle();
  t.is(seen.length, 1, 'the start event found nothing new');
  const [update] = seen;
  t.like(update, { endpointId: EP, networkId: NET, networkName: 'backend', containerId: CID, containerName: 'web-1', trigger: 'connect' });
  t.deepEqual(update!.labels.map((l) => `${l.source}:${l.key}=${l.value}`), [
    'compose:project=shop', 'compose:service=web',
    'container:app=web', 'container:com.docker.compose.project=shop', 'container:com.docker.compose.service=web', 'container:maintainer=ops',
    'network:name=backend',
  ]);
  t.is(update!.containerLabels.app, 'web');
  t.is(update!.containerLabels.maintainer, 'ops');
  t.true(update!.receivedAt <= update!.emittedAt);
  await watcher.close();
});

test.serial('create prefetch: the connect needs no container list or image inspect of its own', async (t) => {
  const docker = fakeHost(false);
  const { watcher, seen } = watch(docker);
  await watcher.start();
  addContainer(docker);
  const afterResync = docker.calls.length;
  docker.push(ev.create());
  await until(() => docker.count('inspectImage') >= 1);
  docker.push(ev.connect());
  await until(() => seen.length === 1);
  const calls = docker.calls.slice(afterResync);
  t.deepEqual(calls, [`listContainers:${JSON.stringify({ id: [CID] })}`, `inspectImage:${IMAGE}`, `inspectNetwork:${NET}`]);
  await watcher.close();
});

test.serial('without prefetch the connect lists the container by id (never a blocking inspect)', async (t) => {
  const docker = fakeHost(false);
  const { watcher, seen } = watch(docker, { prefetchOnCreate: false });
  await watcher.start();
  addContainer(docker);
  docker.push(ev.create(), ev.connect());
  await until(() => seen.length === 1);
  t.is(docker.count('inspectContainer'), 0);
  t.is(docker.count(`listContainers:${JSON.stringify({ id: [CID] })}`), 1);
  await watcher.close();
});

test.serial('endpointLookup container: inspects the container, retrying while its EndpointID is empty', async (t) => {
  const docker = fakeHost(false);
  const { watcher, seen } = watch(docker, { endpointLookup: 'container' });
  await watcher.start();
  addContainer(docker);
  const joining = runningContainer({ backend: { NetworkID: NET, EndpointID: '' } });
  docker.containers.get(CID)!.inspectSequence = [joining, joining];
  docker.push(ev.connect());
  await until(() => seen.length === 1);
  t.is(docker.count(`inspectContainer:${CID}`), 3);
  t.like(seen[0], { endpointId: EP, networkId: NET, trigger: 'connect' });
  await watcher.close();
});

test.serial('start: emits for every Membrane network of the container, not for others', async (t) => {
  const docker = fakeHost(false);
  const NET2 = 'd'.repeat(64);
  const EP2 = '9'.repeat(64);
  docker.networks.set(NET2, { Id: NET2, Name: 'frontend', Driver: 'membrane', Containers: { [CID]: { EndpointID: EP2 } } });
  const { watcher, seen } = watch(docker);
  await watcher.start();
  addContainer(docker);
  docker.containers.get(CID)!.inspect.NetworkSettings!.Networks!.frontend = { NetworkID: NET2, EndpointID: EP2 };
  docker.push(ev.start());
  await until(() => seen.length === 2);
  await settle();
  t.deepEqual(seen.map((u) => [u.networkName, u.endpointId, u.trigger]).sort(), [['backend', EP, 'start'], ['frontend', EP2, 'start']]);
  t.true(seen.every((u) => u.labels.some((l) => l.source === 'network' && l.value === u.networkName)));
  await watcher.close();
});

test.serial('connects to other drivers\' networks are ignored', async (t) => {
  const docker = fakeHost(false);
  const { watcher, seen } = watch(docker);
  await watcher.start();
  addContainer(docker);
  docker.push(ev.connect(OTHER_NET, 'bridge', 'bridge'));
  await settle();
  t.is(seen.length, 0);
  t.is(docker.count(`inspectNetwork:${OTHER_NET}`), 0);
  await watcher.close();
});

test.serial('a container that dies while we wait for its endpoint is dropped without a warning', async (t) => {
  const docker = fakeHost(false);
  const { log, lines } = capturingLogger();
  const { watcher, seen } = watch(docker, { log, endpointRetryStepMs: 5, endpointRetryTotalMs: 200 });
  await watcher.start();
  addContainer(docker);
  docker.networks.get(NET)!.Containers = {};
  docker.push(ev.create(), ev.connect());
  await until(() => docker.count(`inspectNetwork:${NET}`) >= 2);
  docker.push(ev.die(), ev.destroy());
  const inspectsAtDeath = docker.count(`inspectNetwork:${NET}`);
  await settle(250);
  t.is(seen.length, 0);
  t.true(docker.count(`inspectNetwork:${NET}`) <= inspectsAtDeath + 1);
  t.false(lines.some((l) => l.includes('never appeared')), lines.join(''));
  await watcher.close();
});

test.serial('gives up after the bounded back-off and warns', async (t) => {
  const docker = fakeHost(false);
  const { log, lines } = capturingLogger();
  const { watcher, seen } = watch(docker, { log, endpointRetryStepMs: 5, endpointRetryTotalMs: 50 });
  await watcher.start();
  addContainer(docker);
  docker.networks.get(NET)!.Containers = {};
  docker.push(ev.connect());
  await until(() => lines.some((l) => l.includes('never appeared')));
  t.is(seen.length, 0);
  t.is(docker.count(`inspectNetwork:${NET}`), linearBackoff(5, 50).length + 1);
  await watcher.close();
});

test.serial('resync: every endpoint on a Membrane network, every time, even unchanged', async (t) => {
  const docker = fakeHost();
  const stopped = 'e0'.repeat(32);
  docker.containers.set(stopped, { inspect: { ...runningContainer({ backend: { NetworkID: NET, EndpointID: '' } }), Id: stopped, State: { Running: false } } });
  const { watcher, seen } = watch(docker);
  await watcher.start(); // subscribes, then resyncs
  t.deepEqual(seen.map((u) => [u.endpointId, u.trigger]), [[EP, 'resync']]);
  t.is(await watcher.resync(), 1);
  t.is(seen.length, 2);
  t.deepEqual(seen[1]!.labels, seen[0]!.labels);
  // Concurrent calls share one pass.
  const [a, b] = await Promise.all([watcher.resync(), watcher.resync()]);
  t.is(a + b, 2);
  t.is(seen.length, 3);
  await watcher.close();
});

test.serial('resync with no Membrane network lists no containers', async (t) => {
  const docker = fakeHost();
  docker.networks.delete(NET);
  const { watcher, seen } = watch(docker);
  await watcher.start();
  t.is(docker.count('listContainers'), 0);
  t.is(seen.length, 0);
  await watcher.close();
});

test.serial('the periodic resync runs on its timer', async (t) => {
  const docker = fakeHost();
  const { watcher, seen } = watch(docker, { resyncIntervalMs: 15 });
  await watcher.start();
  await until(() => seen.length >= 3);
  t.true(seen.every((u) => u.trigger === 'resync'));
  await watcher.close();
});

test.serial('stream end (dockerd restart): resubscribes with back-off, resyncs, handles new events', async (t) => {
  const docker = fakeHost();
  const { log, lines } = capturingLogger();
  const { watcher, seen } = watch(docker, { log });
  await watcher.start();
  t.is(seen.length, 1);
  docker.failSubscribes = 2; // dockerd is still down for two attempts
  docker.current().end();
  await until(() => docker.streams.length === 2 && seen.length === 2);
  t.is(docker.count('getEvents'), 4);
  t.is(seen[1]!.trigger, 'resync');
  t.true(lines.some((l) => l.includes('ended')));
  // The new stream works.
  docker.containers.get(CID)!.inspect.Config!.Labels!.app = 'web-v2';
  docker.push(ev.start());
  await until(() => seen.length === 3);
  t.is(seen[2]!.labels.find((l) => l.key === 'app')!.value, 'web-v2');
  await watcher.close();
});

test.serial('stream error: reconnects too', async (t) => {
  const docker = fakeHost();
  const { watcher } = watch(docker);
  await watcher.start();
  docker.current().destroy(new Error('socket hang up'));
  await until(() => docker.streams.length === 2);
  t.pass();
  await watcher.close();
});

test.serial('dockerd down at start: start() resolves once it is up', async (t) => {
  const docker = fakeHost();
  docker.failSubscribes = 3;
  const { watcher, seen } = watch(docker);
  await watcher.start();
  t.is(docker.count('getEvents'), 4);
  t.is(seen.length, 1);
  await watcher.close();
});

test.serial('NDJSON split across chunks, several events per chunk, garbage lines: all handled', async (t) => {
  const docker = fakeHost(false);
  const { watcher, seen } = watch(docker);
  await watcher.start();
  addContainer(docker);
  const text = 'not json\n' + JSON.stringify(ev.create()) + '\n' + JSON.stringify(ev.connect()) + '\n';
  const cut = text.length - 20;
  docker.current().write(Buffer.from(text.slice(0, cut)));
  await settle(5);
  docker.current().write(Buffer.from(text.slice(cut)));
  await until(() => seen.length === 1);
  t.is(seen[0]!.trigger, 'connect');
  await watcher.close();
});

test.serial('a throwing callback is logged and does not stop the watcher', async (t) => {
  const docker = fakeHost();
  let calls = 0;
  const watcher = new DockerLabelWatcher(docker, () => { calls++; throw new Error('consumer bug'); },
    { log: silentLogger(), resyncIntervalMs: 0 });
  await watcher.start();
  await watcher.resync();
  t.is(calls, 2);
  await watcher.close();
});

test.serial('die drops the dedup state: the restarted container is emitted again', async (t) => {
  const docker = fakeHost();
  const { watcher, seen } = watch(docker);
  await watcher.start();
  seen.length = 0;
  docker.push(ev.start());
  await settle();
  t.is(seen.length, 0, 'unchanged since the resync emitted it');
  docker.push(ev.die(), ev.start());
  await until(() => seen.length === 1);
  t.is(seen[0]!.trigger, 'start');
  await watcher.close();
});

test('linearBackoff: n x step, bounded total, remainder last', (t) => {
  t.deepEqual(linearBackoff(50, 5_000).slice(0, 3), [50, 100, 150]);
  t.is(linearBackoff(50, 5_000).reduce((a, b) => a + b, 0), 5_000);
  t.deepEqual(linearBackoff(10, 35), [10, 20, 5]);
  t.deepEqual(linearBackoff(10, 0), []);
});

test('takeLines keeps the incomplete tail', (t) => {
  t.deepEqual(takeLines('{"a"', ':1}\n{"b":2}\n{"c'), { lines: ['{"a":1}', '{"b":2}'], rest: '{"c' });
  t.deepEqual(takeLines('', '\n\n'), { lines: [], rest: '' });
});

test('summaryAsInspect picks the container\'s own name among link aliases', (t) => {
  const s = summaryAsInspect({ Id: CID, Names: ['/other/alias', '/web-1'], ImageID: IMAGE, Labels: null });
  t.is(s.Name, '/web-1');
  t.deepEqual(s.Config, { Labels: {} });
});

test.serial('the names of Membrane networks are reported as the watcher learns them; other drivers\' are not', async (t) => {
  const docker = fakeHost(false);
  const names: [string, string][] = [];
  const { watcher } = watch(docker, { onNetworkName: (id, name) => names.push([id, name]) });
  await watcher.start();
  docker.push({ Type: 'network', Action: 'create', Actor: { ID: 'd'.repeat(64), Attributes: { name: 'fresh', type: 'membrane' } } });
  docker.push({ Type: 'network', Action: 'create', Actor: { ID: 'e'.repeat(64), Attributes: { name: 'elsewhere', type: 'bridge' } } });
  await until(() => names.length >= 1);
  await settle();
  t.deepEqual(names, [['d'.repeat(64), 'fresh']]);
  await watcher.close();
});
