// The Docker label watcher against the real dockerd. It does not need Membrane running: the
// watcher is told that `bridge` is "our" driver and watches a user-defined bridge network made
// here. Only what this file creates is removed (other tests may share this dockerd), even on
// failure. Latency (event read -> labels emitted) is logged, never asserted: the machine is shared.

import test, { type ExecutionContext } from 'ava';
import Docker from 'dockerode';
import { docker, dockerMayFail, IMAGE, TEST_LABEL, uniqueName } from './harness.js';
import { DockerLabelWatcher, type DockerLabelWatcherOptions, type EndpointLabels } from '../plugin/identity/watcher.js';

const client = new Docker();

test.before(async () => {
  if ((await dockerMayFail('info')).code !== 0) throw new Error('dockerd is not running: bash scripts/ensure-dockerd.sh');
  if ((await dockerMayFail('image', 'inspect', IMAGE)).code !== 0) throw new Error(`${IMAGE} is missing: bash integration/image/build.sh`);
});

/** A user-defined bridge network, removed after the test (after its containers). */
async function bridgeNetwork(t: ExecutionContext, prefix: string): Promise<{ name: string; id: string }> {
  const name = uniqueName(`mbt-lw-${prefix}`);
  const id = await docker('network', 'create', '--driver', 'bridge', '--label', TEST_LABEL, name);
  t.teardown(async () => { await dockerMayFail('network', 'rm', name); });
  return { name, id };
}

/** `docker run -d` of an httpd test container; removed after the test (registered before it runs). */
async function runDetached(t: ExecutionContext, name: string, ...args: string[]): Promise<string> {
  t.teardown(async () => { await dockerMayFail('rm', '-f', name); });
  return docker('run', '-d', '--name', name, '--label', TEST_LABEL, ...args, IMAGE, 'httpd', '-f', '-p', '8080', '-h', '/var/www');
}

/** A watcher on 'bridge' networks whose updates for `networkIds` are collected; closed after the test. */
function startWatcher(t: ExecutionContext, networkIds: () => Set<string>, options: DockerLabelWatcherOptions = {}) {
  const updates: EndpointLabels[] = [];
  const watcher = new DockerLabelWatcher(client, (u) => {
    // 'bridge' also matches the default bridge network, where other containers may come and go.
    if (networkIds().has(u.networkId)) updates.push(u);
  }, { driverName: 'bridge', resyncIntervalMs: 0, ...options });
  t.teardown(() => watcher.close());
  return { watcher, updates };
}

async function waitFor<T>(find: () => T | undefined, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const found = find();
    if (found !== undefined) return found;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const printed = (u: EndpointLabels) => u.labels.map((l) => `${l.source}:${l.key}=${l.value}`);
const latency = (u: EndpointLabels) => u.emittedAt - u.receivedAt;

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function endpointIdOf(container: string, network: string): Promise<string> {
  return docker('inspect', '-f', `{{(index .NetworkSettings.Networks "${network}").EndpointID}}`, container);
}

test.serial('docker run: container, image, compose-like and network labels arrive with the endpoint id', async (t) => {
  const net = await bridgeNetwork(t, 'run');
  const { watcher, updates } = startWatcher(t, () => new Set([net.id]));
  await watcher.start();
  const imageHash = await docker('image', 'inspect', '-f', '{{index .Config.Labels "membrane.image.hash"}}', IMAGE);

  const name = uniqueName('mbt-lw-web');
  const id = await runDetached(t, name, '--network', net.name, '-l', 'app=web',
    '-l', 'com.docker.compose.project=p', '-l', 'com.docker.compose.service=s');
  const runReturned = performance.now();
  const update = await waitFor(() => updates.find((u) => u.containerId === id), 'labels of the new container');

  t.is(update.endpointId, await endpointIdOf(name, net.name));
  t.is(update.networkId, net.id);
  t.is(update.networkName, net.name);
  t.is(update.containerName, name);
  t.is(update.trigger, 'connect');
  const labels = printed(update);
  for (const expected of ['container:app=web', `container:membrane.image.hash=${imageHash}`, 'container:membrane.test=1',
    'compose:project=p', 'compose:service=s', 'container:com.docker.compose.project=p', `network:name=${net.name}`]) {
    t.true(labels.includes(expected), `${expected} in ${labels.join(' ')}`);
  }
  t.is(update.containerLabels.app, 'web');
  // The start event comes next; it must not produce a second, identical update.
  await new Promise((r) => setTimeout(r, 300));
  t.is(updates.filter((u) => u.containerId === id).length, 1);
  t.log(`event -> labels ${latency(update).toFixed(1)} ms; labels emitted ${(update.emittedAt - runReturned).toFixed(0)} ms relative to \`docker run\` returning`);
});

test.serial('docker network connect of a running container; docker restart gives a new endpoint id', async (t) => {
  const first = await bridgeNetwork(t, 'a');
  const second = await bridgeNetwork(t, 'b');
  const { watcher, updates } = startWatcher(t, () => new Set([first.id, second.id]));
  await watcher.start();
  const name = uniqueName('mbt-lw-multi');
  const id = await runDetached(t, name, '--network', first.name, '-l', 'role=multi');
  await waitFor(() => updates.find((u) => u.containerId === id && u.networkId === first.id), 'first network');

  await docker('network', 'connect', second.name, name);
  const onSecond = await waitFor(() => updates.find((u) => u.networkId === second.id), 'second network');
  t.is(onSecond.endpointId, await endpointIdOf(name, second.name));
  t.true(printed(onSecond).includes(`network:name=${second.name}`));
  t.true(printed(onSecond).includes('container:role=multi'));
  t.log(`network connect: event -> labels ${latency(onSecond).toFixed(1)} ms`);

  const before = updates.length;
  const oldEndpoint = onSecond.endpointId;
  await docker('restart', '-t', '0', name);
  await waitFor(() => (updates.slice(before).filter((u) => u.containerId === id).length >= 2 ? true : undefined), 'both endpoints after restart');
  const after = updates.slice(before);
  const newSecond = after.find((u) => u.networkId === second.id)!;
  t.not(newSecond.endpointId, oldEndpoint, 'a restarted container gets new endpoints');
  t.is(newSecond.endpointId, await endpointIdOf(name, second.name));
});

test.serial('resync: a container started before the watcher is reported', async (t) => {
  const net = await bridgeNetwork(t, 'resync');
  const name = uniqueName('mbt-lw-old');
  const id = await runDetached(t, name, '--network', net.name, '-l', 'era=before');
  const { watcher, updates } = startWatcher(t, () => new Set([net.id]));
  await watcher.start();
  const update = updates.find((u) => u.containerId === id);
  t.truthy(update, 'emitted by the initial resync');
  t.is(update!.trigger, 'resync');
  t.is(update!.endpointId, await endpointIdOf(name, net.name));
  t.true(printed(update!).includes('container:era=before'));
  // Every resync reports every endpoint again, changed or not.
  t.true(await watcher.resync() >= 1);
  t.is(updates.filter((u) => u.containerId === id && u.trigger === 'resync').length, 2);
});

test.serial('latency: event read -> labels emitted, for each lookup strategy (logged, not asserted)', async (t) => {
  const net = await bridgeNetwork(t, 'lat');
  const networks = () => new Set([net.id]);
  // All variants watch the same containers at the same time, so they see identical conditions.
  const variants: Record<string, DockerLabelWatcherOptions> = {
    'network lookup + create prefetch (default)': {},
    'network lookup, no prefetch': { prefetchOnCreate: false },
    'container inspect + create prefetch': { endpointLookup: 'container' },
    'container inspect, no prefetch': { endpointLookup: 'container', prefetchOnCreate: false },
  };
  const watchers = Object.entries(variants).map(([label, options]) => ({ label, ...startWatcher(t, networks, options) }));
  await Promise.all(watchers.map((w) => w.watcher.start()));
  const rounds = Number(process.env.MEMBRANE_LATENCY_ROUNDS ?? 10);
  const inspectLag: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const name = uniqueName('mbt-lw-lat');
    const id = await runDetached(t, name, '--network', net.name, '-l', `round=${i}`);
    for (const w of watchers) await waitFor(() => w.updates.find((u) => u.containerId === id), `${w.label} round ${i}`);
    await docker('rm', '-f', name);
    // The container-inspect variant answers when dockerd releases the container after start.
    const inspectVariant = watchers[2]!.updates.find((u) => u.containerId === id)!;
    const networkVariant = watchers[0]!.updates.find((u) => u.containerId === id)!;
    inspectLag.push(inspectVariant.emittedAt - networkVariant.emittedAt);
  }
  for (const w of watchers) {
    // The first update per container, whichever event produced it (connect or start).
    const firsts = [...new Map(w.updates.map((u) => [u.containerId, u] as const).reverse()).values()];
    t.is(firsts.length, rounds, w.label);
    const values = firsts.map(latency);
    const triggers: Record<string, number> = {};
    for (const u of firsts) triggers[u.trigger] = (triggers[u.trigger] ?? 0) + 1;
    t.log(`${w.label}: n=${values.length} p50=${percentile(values, 0.5).toFixed(1)} ms max=${Math.max(...values).toFixed(1)} ms (first update from: ${JSON.stringify(triggers)})`);
  }
  t.log(`labels via network lookup arrive before those via container inspect by p50=${percentile(inspectLag, 0.5).toFixed(0)} ms (max ${Math.max(...inspectLag).toFixed(0)} ms)`);
});
