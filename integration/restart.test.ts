// State that survives anything: graceful restarts, kill -9 in the middle of container starts,
// and Docker's ungraceful-restart scenario (dockerd and Membrane both killed, both started).

import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import {
  MembraneProcess, addressesOf, apiGet, cleanupDocker, createNetwork, docker, dockerMayFail, eventually,
  kernelLeftovers, run, runContainer, sleep, uniqueName,
  ping, twoOnOneNetwork,
} from './harness.js';

// One state directory for the whole file: every restart below must find what the last one left.
const stateDir = fs.mkdtempSync('/tmp/membrane-restart-');
let membrane = new MembraneProcess(stateDir);

test.before(async () => {
  await cleanupDocker();
  await membrane.start();
});

test.after.always(async () => {
  if (membrane.child?.exitCode !== null || membrane.child?.signalCode !== null) {
    membrane = new MembraneProcess(stateDir);
    await membrane.start().catch(() => undefined);
  }
  await cleanupDocker();
  await membrane.stop();
});

test.serial('plugin restart with containers running keeps them connected; later containers get unique addresses', async (t) => {
  const { net, a, b, addrB } = await twoOnOneNetwork('rs', '--ipv6');
  await ping(a, 4, addrB.ipv4!);

  await membrane.stop();
  // With the daemon down, the kernel keeps forwarding.
  await ping(a, 4, addrB.ipv4!);
  await ping(a, 6, addrB.ipv6!);
  membrane = new MembraneProcess(stateDir);
  await membrane.start();
  await ping(a, 6, addrB.ipv6!);

  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  const all = await Promise.all([a, b, c].map((n) => addressesOf(n, net)));
  t.is(new Set(all.map((x) => x.ipv4)).size, 3, 'IPv4 addresses unique after restart');
  t.is(new Set(all.map((x) => x.ipv6)).size, 3, 'IPv6 addresses unique after restart');
  await ping(c, 4, addrB.ipv4!);
  await ping(c, 6, all[0]!.ipv6!);
});

test.serial('kill -9 during parallel container starts loses nothing and leaks nothing', async (t) => {
  await cleanupDocker();
  const net = uniqueName('mbt-k9');
  await createNetwork(net, '--ipv6');
  const names = Array.from({ length: 8 }, () => uniqueName('mbt-k'));
  // Start them all; kill the plugin while Docker is in the middle of calling it. Docker retries
  // failed connections for ~15 s, so most starts succeed against the restarted daemon.
  const starts = names.map((n) => dockerMayFail('run', '-d', '--name', n, '--label', 'membrane.test=1', '--network', net,
    'membrane-test:latest', 'httpd', '-f', '-p', '8080', '-h', '/var/www'));
  await sleep(300);
  await membrane.kill9();
  await sleep(500);
  membrane = new MembraneProcess(stateDir);
  await membrane.start();
  const results = await Promise.all(starts);
  const started = names.filter((_, i) => results[i]!.code === 0);
  t.log(`${started.length}/${names.length} containers started across the kill`);
  // Every running container has distinct addresses and works.
  const running = [];
  for (const n of started) {
    const state = (await dockerMayFail('inspect', '-f', '{{.State.Running}}', n)).stdout.trim();
    if (state === 'true') running.push(n);
  }
  const addrs = await Promise.all(running.map((n) => addressesOf(n, net)));
  t.is(new Set(addrs.map((x) => x.ipv4)).size, running.length, 'distinct IPv4');
  t.is(new Set(addrs.map((x) => x.ipv6)).size, running.length, 'distinct IPv6');
  if (running.length >= 2) {
    await ping(running[0]!, 6, addrs[1]!.ipv6!);
    await ping(running[1]!, 4, addrs[0]!.ipv4!);
  }
  // Membrane's endpoints are exactly Docker's.
  const endpoints = await apiGet<{ ipv4?: string }[]>('/v1/endpoints');
  t.deepEqual(endpoints.map((e) => e.ipv4).sort(), addrs.map((x) => x.ipv4).sort());
  // Remove everything: nothing may stay behind in the kernel or in Membrane's state.
  await cleanupDocker();
  await eventually(async () => {
    t.deepEqual(await kernelLeftovers(), { links: [], routes: [], rules: [] });
  }, 10_000).catch(() => undefined);
  t.deepEqual(await kernelLeftovers(), { links: [], routes: [], rules: [] });
  const ipam = await apiGet<{ pools: unknown[] }>('/v1/ipam');
  t.deepEqual(ipam.pools, [], 'no pool or address leaked');
  t.deepEqual(await apiGet('/v1/endpoints'), []);
});

/** How this machine runs dockerd: under systemd, or as a plain background process. */
async function dockerdUnderSystemd(): Promise<boolean> {
  return (await run('systemctl', ['is-active', '--quiet', 'docker'], { allowFail: true })).code === 0;
}

async function killDockerd(): Promise<void> {
  if (await dockerdUnderSystemd()) {
    await run('systemctl', ['kill', '-s', 'KILL', 'docker']);
    return;
  }
  const pid = Number((await run('pidof', ['dockerd'])).stdout.trim().split(' ')[0]);
  process.kill(pid, 'SIGKILL');
  // Until its parent reaps it, a killed dockerd stays in /proc, and a new dockerd refuses to
  // start while the pid in /var/run/docker.pid exists.
  await eventually(async () => {
    if (fs.existsSync(`/proc/${pid}`)) throw new Error(`dockerd ${pid} has not been reaped yet`);
  }, 30_000);
}

async function startDockerd(): Promise<void> {
  if ((await run('systemctl', ['cat', 'docker'], { allowFail: true })).code === 0 && (await run('systemctl', ['is-system-running'], { allowFail: true })).stdout.trim() !== 'offline') {
    await run('systemctl', ['start', 'docker'], { allowFail: true });
  }
  if ((await run('docker', ['info'], { allowFail: true })).code !== 0) {
    const log = fs.openSync('/var/log/membrane-dockerd.log', 'a');
    spawn('dockerd', [], { detached: true, stdio: ['ignore', log, log] }).unref();
    fs.closeSync(log);
  }
  await eventually(() => run('docker', ['info']), 60_000, 500);
}

/**
 * Waits for dockerd to have restarted a --restart always container. If it does not, the failure
 * carries why: the container's state, what dockerd logged about it, and Membrane's warnings.
 */
async function comesBack(t: ExecutionContext, name: string): Promise<void> {
  try {
    await eventually(async () => {
      const state = await docker('inspect', '-f', '{{.State.Running}}', name);
      if (state !== 'true') throw new Error(`container ${name} is not running`);
    }, 60_000, 500);
  } catch (err) {
    const state = (await dockerMayFail('inspect', '-f', '{{json .State}}', name)).stdout.trim();
    const id = (await dockerMayFail('inspect', '-f', '{{.Id}}', name)).stdout.trim();
    let dockerdLog = '(no dockerd log)';
    try {
      const lines = fs.readFileSync('/var/log/membrane-dockerd.log', 'utf8').split('\n');
      dockerdLog = lines.filter((l) => (id && l.includes(id.slice(0, 12))) || /level=(error|warning)/.test(l)).slice(-15).join('\n');
    } catch {
      // dockerd under systemd logs to the journal
    }
    const membraneLog = membrane.tail(200).split('\n').filter((l) => /"level":"(warn|error)"/.test(l)).slice(-15).join('\n');
    t.log(`state of ${name}: ${state}\ndockerd:\n${dockerdLog}\nmembrane:\n${membraneLog}`);
    throw err;
  }
}

test.serial('ungraceful restart of dockerd and Membrane: a container with a static --ip comes back with the same address', async (t) => {
  await cleanupDocker();
  const net = uniqueName('mbt-ur');
  await createNetwork(net, '--ipv6', '--subnet', '10.232.9.0/24', '--subnet', 'fd00:db8:99::/64');
  const fixed = uniqueName('mbt-fixed');
  const peer = uniqueName('mbt-peer');
  await runContainer(fixed, net, '--ip', '10.232.9.9', '--ip6', 'fd00:db8:99::9', '--restart', 'always');
  await runContainer(peer, net, '--restart', 'always');
  await ping(peer, 4, '10.232.9.9');

  await membrane.kill9();
  try {
    await killDockerd();
  } finally {
    // Membrane first, as the README says (Docker looks for its plugins at start).
    membrane = new MembraneProcess(stateDir);
    await membrane.start();
    await startDockerd();
  }
  await comesBack(t, fixed);
  const addr = await addressesOf(fixed, net);
  t.is(addr.ipv4, '10.232.9.9');
  t.is(addr.ipv6, 'fd00:db8:99::9');
  await comesBack(t, peer);
  await ping(peer, 4, '10.232.9.9');
  await ping(peer, 6, 'fd00:db8:99::9');
  await docker('update', '--restart', 'no', fixed, peer);
});
