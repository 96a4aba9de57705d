// Membrane as a managed plugin (config.json + Dockerfile, built by scripts/build-plugin.sh):
// Docker runs it from its own rootfs, and containers on its networks connect as with the
// legacy socket. Nothing here may run while another Membrane daemon is up (one per namespace).

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, CLI, IMAGE, TEST_LABEL, addressesOf, cleanupDocker, detachSocketPrograms, docker, dockerMayFail, eventually, exec, run, uniqueName,
} from './harness.js';

const PLUGIN = 'membrane-test/membrane:latest';
const FORWARDING = '/proc/sys/net/ipv6/conf/all/forwarding';
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-plugin-state-'));
let forwardingBefore = '';

test.before(async () => {
  await cleanupDocker();
  await run('bash', [path.join(ROOT, 'scripts', 'build-plugin.sh'), PLUGIN], { timeoutMs: 600_000 });
  await docker('plugin', 'set', PLUGIN, `state.source=${stateDir}`);
  // Start from forwarding off, so the test proves the plugin can switch it on from inside
  // its own rootfs (through the sysctl mount in config.json).
  forwardingBefore = fs.readFileSync(FORWARDING, 'utf8').trim();
  fs.writeFileSync(FORWARDING, '0');
  await docker('plugin', 'enable', '--timeout', '60', PLUGIN);
});

test.after.always(async () => {
  await cleanupDocker();
  await dockerMayFail('plugin', 'disable', '-f', PLUGIN);
  await dockerMayFail('plugin', 'rm', '-f', PLUGIN);
  detachSocketPrograms();
  if (forwardingBefore) fs.writeFileSync(FORWARDING, forwardingBefore);
  fs.rmSync(stateDir, { recursive: true, force: true });
});

test('managed plugin: containers on its network connect over both families, and the CLI reaches it', async (t) => {
  const net = uniqueName('mbt-managed');
  await docker('network', 'create', '-d', PLUGIN, '--ipam-driver', PLUGIN, '--ipv6', '--label', TEST_LABEL, net);
  const a = uniqueName('mbt-a');
  const b = uniqueName('mbt-b');
  for (const name of [a, b]) {
    await docker('run', '-d', '--name', name, '--label', TEST_LABEL, '--network', net, IMAGE, 'httpd', '-f', '-p', '8080', '-h', '/var/www');
  }
  const addrB = await addressesOf(b, net);
  await eventually(() => exec(a, 'ping', '-4', '-c', '1', '-W', '2', addrB.ipv4!), 15_000);
  await eventually(() => exec(a, 'ping', '-6', '-c', '1', '-W', '2', addrB.ipv6!), 15_000);
  t.is((await exec(a, 'timeout', '5', 'wget', '-q', '-O', '-', `http://${b}:8080/`)).trim(), 'membrane test page');
  t.is(fs.readFileSync(FORWARDING, 'utf8').trim(), '1', 'the plugin switched IPv6 forwarding on');
  t.true(fs.existsSync(path.join(stateDir, 'state.json')), 'state persisted on the settable state mount');
  const listed = JSON.parse((await run(process.execPath, [CLI, '--api', path.join(stateDir, 'membrane.sock'), '-o', 'json', 'endpoint', 'list'])).stdout);
  t.deepEqual(listed.map((e: { ipv4: string }) => e.ipv4).sort(), [(await addressesOf(a, net)).ipv4, addrB.ipv4].sort());
});

test('managed plugin: a service by name from a container and by VIP from the host, attached at the host\'s cgroup root', async (t) => {
  const net = uniqueName('mbt-managed-svc');
  await docker('network', 'create', '-d', PLUGIN, '--ipam-driver', PLUGIN, '--ipv6', '--label', TEST_LABEL, net);
  const backend = uniqueName('mbt-msvc');
  await docker('run', '-d', '--name', backend, '--label', TEST_LABEL, '--network', net, '-l', 'membrane.service=msvc:80@8080', IMAGE,
    'httpd', '-f', '-p', '8080', '-h', '/var/www');
  const client = uniqueName('mbt-mcl');
  await docker('run', '-d', '--name', client, '--label', TEST_LABEL, '--network', net, IMAGE, 'sleep', '600');
  const api = ['--api', path.join(stateDir, 'membrane.sock'), '-o', 'json'];
  const status = JSON.parse((await run(process.execPath, [CLI, ...api, 'status'])).stdout) as { datapath: { features: Record<string, string> } };
  t.regex(status.datapath.features.socketLB!, /cgroup-v2 at \/host\/sys\/fs\/cgroup/, 'attached at the host\'s cgroup root, not the plugin\'s own');
  const service = await eventually(async () => {
    const [s] = JSON.parse((await run(process.execPath, [CLI, ...api, 'service', 'list'])).stdout) as { vip4: string; backends: { state: string }[] }[];
    if (!s || s.backends[0]?.state !== 'active') throw new Error('no active backend yet');
    return s;
  }, 20_000);
  const byName = await eventually(async () => {
    const out = await exec(client, 'sh', '-c', 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | timeout 5 nc msvc.svc.membrane 80 | tail -1');
    if (!out.includes('membrane test page')) throw new Error(`by name: ${out}`);
    return out;
  }, 15_000);
  t.regex(byName, /membrane test page/);
  const fromHost = await run('sh', ['-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 busybox nc ${service.vip4} 80 | tail -1`]);
  t.regex(fromHost.stdout, /membrane test page/, 'the host reaches the VIP through the socket-level programs');
});
