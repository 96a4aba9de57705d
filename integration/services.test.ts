// The service load balancer with real containers, a real dockerd and docker-compose, socket-level
// translation on (the default): a scaled compose service reached by name from a client container
// and by VIP from the host, weights, an API service, `docker stop` of a backend under load with no
// failed request, a HEALTHCHECK that fails, no backend, UDP, closing sockets of removed backends,
// policy on the backend's identity, and a transfer through a VIP across a kill -9 of the daemon.

import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import os from 'node:os';
import path from 'node:path';
import {
  IMAGE, MembraneProcess, TEST_LABEL, apiGet, cleanupDocker, composeProject, createNetwork, detachSocketPrograms, docker,
  eventually, exec, execMayFail, firstMonitorEvent, restartDaemon, run, sleep, uniqueName,
} from './harness.js';

interface Backend { container?: string; endpointId: string; addresses: string[]; weight: number; state: string; connections: number | null }
interface Service { name: string; network: string; networkName?: string; vip4?: string; vip6?: string; ports: { port: number; protocol: string; targetPort: number }[]; backends: Backend[] }

let membrane = new MembraneProcess();
const PROJECT = `mbtlb${process.pid.toString(36)}`;
const composeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-lb-compose-'));

const { compose, down: composeDown } = composeProject(PROJECT, path.join(composeDir, 'docker-compose.yml'));

test.before(async () => {
  await cleanupDocker();
  await membrane.start();
});

test.after.always(async () => {
  await composeDown();
  await cleanupDocker();
  await membrane.stop();
  detachSocketPrograms();
  fs.rmSync(composeDir, { recursive: true, force: true });
});

async function service(name: string, network?: string): Promise<Service> {
  return eventually(async () => {
    const all = await apiGet<Service[]>('/v1/services');
    const found = all.find((s) => s.name === name && (!network || s.networkName === network || s.network === network));
    if (!found) throw new Error(`no service ${name} yet`);
    return found;
  }, 20_000);
}

/** Waits until `want` backends of the service are active. */
async function activeBackends(name: string, want: number, network?: string): Promise<Service> {
  return eventually(async () => {
    const s = await service(name, network);
    const active = s.backends.filter((b) => b.state === 'active').length;
    if (active !== want) throw new Error(`service ${name}: ${active} active backends, want ${want}`);
    return s;
  }, 30_000);
}

/** An HTTP request with busybox nc from a container; the body's last line (the backend's name). */
async function fetchFrom(container: string, host: string, port = 80): Promise<string> {
  const r = await execMayFail(container, 'sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc ${host} ${port} | tail -1`);
  return r.stdout.trim();
}

/** `count` requests from a container in one shell loop (fast: one docker exec); the bodies, counted. */
async function fetchMany(container: string, host: string, count: number, port = 80): Promise<Map<string, number>> {
  const script = `i=0; while [ $i -lt ${count} ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc ${host} ${port} | tail -1; i=$((i+1)); done`;
  const out = (await execMayFail(container, 'sh', '-c', script)).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  const counts = new Map<string, number>();
  for (const line of out) counts.set(line, (counts.get(line) ?? 0) + 1);
  return counts;
}

/** An HTTP request from the host (this process: the socket-level balancer sees it too); the peer it saw and the body. */
function fetchFromHost(host: string, port = 80): Promise<{ remote: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, timeout: 5000 });
    let body = '';
    let remote = '';
    socket.on('connect', () => {
      remote = socket.remoteAddress ?? '';
      socket.end('GET / HTTP/1.0\r\n\r\n');
    });
    socket.on('data', (d) => { body += d; });
    socket.on('timeout', () => socket.destroy(new Error('timeout')));
    socket.on('error', reject);
    socket.on('close', () => resolve({ remote, body: body.trim().split('\n').pop() ?? '' }));
  });
}

/** A backend: httpd on 8080 serving its own name. */
async function backend(name: string, network: string, ...args: string[]): Promise<string> {
  return docker('run', '-d', '--name', name, '--label', TEST_LABEL, '--network', network, ...args, IMAGE,
    'sh', '-c', `mkdir -p /w && echo ${name} > /w/index.html && exec httpd -f -p 8080 -h /w`);
}

async function client(network: string): Promise<string> {
  const name = uniqueName('mbt-client');
  await docker('run', '-d', '--name', name, '--label', TEST_LABEL, '--network', network, IMAGE, 'sleep', '3600');
  return name;
}

test.serial('scaled compose services (scale:, deploy.replicas, --scale) are reached by name from a client container and by VIP from the host; every backend serves', async (t) => {
  fs.writeFileSync(path.join(composeDir, 'docker-compose.yml'), [
    'version: "2.4"',
    'services:',
    '  web:',
    `    image: ${IMAGE}`,
    '    command: ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"]',
    '    init: true',
    '    scale: 3',
    '    labels:',
    '      membrane.service: "web:80@8080"',
    '  echo:',
    `    image: ${IMAGE}`,
    '    command: ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"]',
    '    init: true',
    '    deploy:',
    '      replicas: 2',
    '    labels:',
    '      membrane.service: "echo:80@8080"',
    '  client:',
    `    image: ${IMAGE}`,
    '    command: ["sleep", "3600"]',
    '    init: true',
    'networks:',
    '  default:',
    '    driver: membrane',
    '    enable_ipv6: true',
    '    ipam:',
    '      driver: membrane',
    '',
  ].join('\n'));
  await compose('up', '-d');
  const clientId = (await compose('ps', '-q', 'client')).stdout.trim();
  const web = await activeBackends('web', 3, `${PROJECT}_default`);
  t.truthy(web.vip4 && web.vip6, 'a dual-stack network gives the service both VIPs');
  t.deepEqual(web.ports.map((p) => `${p.port}/${p.protocol}`), ['80/tcp'], 'the frontend port the labels declare');
  // Names: NAME.svc.membrane through Docker's embedded resolver, which still answers container names.
  const lookup = await eventually(async () => {
    const r = await exec(clientId, 'nslookup', 'web.svc.membrane');
    if (!r.includes(web.vip4!)) throw new Error(`nslookup: ${r}`);
    return r;
  });
  t.regex(lookup, new RegExp(web.vip6!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'AAAA too');
  t.regex(await exec(clientId, 'nslookup', 'web'), /Address: 10\./, 'Docker\'s own names keep working');
  t.not((await execMayFail(clientId, 'nslookup', 'nothere.svc.membrane')).code, 0, 'an unknown service name is NXDOMAIN');
  const byName = await fetchMany(clientId, 'web.svc.membrane', 30);
  const byVip6 = await fetchMany(clientId, web.vip6!, 15);
  t.log(`by name, 30 requests: ${JSON.stringify([...byName])}; by IPv6 VIP, 15: ${JSON.stringify([...byVip6])}`);
  t.is(byName.size, 3, 'every backend served a request by name');
  t.is([...byName.values()].reduce((a, b) => a + b, 0), 30, 'no request failed');
  t.is([...byVip6.values()].reduce((a, b) => a + b, 0), 15);
  // From the host, over both families: the application sees the VIP as its peer (getpeername).
  const seen = new Set<string>();
  for (let i = 0; i < 12; i++) {
    const viaV4 = await fetchFromHost(web.vip4!);
    t.is(viaV4.remote, web.vip4!);
    seen.add(viaV4.body);
  }
  const viaV6 = await fetchFromHost(web.vip6!);
  t.is(viaV6.remote, web.vip6!);
  t.true(seen.size >= 2, `the host reached ${seen.size} backends in 12 connections`);
  const lb = await apiGet<{ frontends: { vip: string; backendCount: number; tableSize: number }[] }>('/v1/bpf/lb');
  t.like(lb.frontends.find((f) => f.vip === web.vip4)!, { backendCount: 3, tableSize: 509 });
  // deploy.replicas: 2 gives two backends; `up --scale` adds one more to web, and it serves too.
  await activeBackends('echo', 2, `${PROJECT}_default`);
  t.is((await fetchMany(clientId, 'echo.svc.membrane', 20)).size, 2, 'both deploy.replicas backends served');
  await compose('up', '-d', '--no-recreate', '--scale', 'web=4');
  await activeBackends('web', 4, `${PROJECT}_default`);
  t.is((await fetchMany(clientId, 'web.svc.membrane', 40)).size, 4, 'the backend --scale added serves too');
});

test.serial('weights: a backend of weight 3 gets about three times the new connections of one of weight 1', async (t) => {
  const net1 = uniqueName('mbt-w');
  await createNetwork(net1, '--ipv6');
  const light = uniqueName('mbt-light');
  const heavy = uniqueName('mbt-heavy');
  await backend(light, net1, '-l', 'membrane.service=wt:80@8080', '-l', 'membrane.service.weight=1');
  await backend(heavy, net1, '-l', 'membrane.service=wt:80@8080', '-l', 'membrane.service.weight=3');
  const c = await client(net1);
  const wt = await activeBackends('wt', 2, net1);
  const counts = await fetchMany(c, wt.vip4!, 300);
  const share = (counts.get(heavy) ?? 0) / 300;
  t.log(`300 connections, weights 1:3 -> ${counts.get(light) ?? 0}:${counts.get(heavy) ?? 0} (heavy share ${share.toFixed(3)})`);
  t.is((counts.get(light) ?? 0) + (counts.get(heavy) ?? 0), 300);
  t.true(share > 0.65 && share < 0.85, `heavy share ${share}`);
  // Weight 0 drains: no new connection goes there.
  await docker('rm', '-f', light);
  const drained = uniqueName('mbt-drained');
  await backend(drained, net1, '-l', 'membrane.service=wt:80@8080', '-l', 'membrane.service.weight=0');
  await eventually(async () => {
    const s = await service('wt', net1);
    if (s.backends.find((b) => b.container === drained)?.state !== 'terminating') throw new Error('not drained yet');
  });
  const after = await fetchMany(c, wt.vip4!, 40);
  t.is(after.get(drained), undefined, 'weight 0: no new connections');
  t.is(after.get(heavy), 40);
});

test.serial('an API service with a selector, shown in the lists, reached over its VIP, then deleted', async (t) => {
  const net1 = uniqueName('mbt-api');
  await createNetwork(net1, '--ipv6');
  const a = uniqueName('mbt-sel');
  await backend(a, net1, '-l', 'app=selected');
  await backend(uniqueName('mbt-other'), net1, '-l', 'app=other');
  const c = await client(net1);
  const cli = path.join(process.cwd(), 'dist', 'plugin', 'cli', 'main.js');
  const created = JSON.parse((await run(process.execPath, [cli, '-o', 'json', 'service', 'create', 'sel', '--selector', 'app=selected',
    '--port', '80@8080', '--port', '8443/udp', '--network', net1])).stdout) as Service;
  t.deepEqual(created.ports.map((p) => `${p.port}/${p.protocol}@${p.targetPort}`), ['80/tcp@8080', '8443/udp@8443']);
  await activeBackends('sel', 1, net1);
  t.is(await fetchFrom(c, created.vip4!), a);
  const table = (await run(process.execPath, [cli, 'service', 'list'])).stdout;
  t.regex(table, new RegExp(`^sel\\s+${net1}\\s+${created.vip4!.replace(/\./g, '\\.')}`, 'm'));
  t.regex((await run(process.execPath, [cli, 'bpf', 'lb', 'list'])).stdout, new RegExp(`${created.vip4!.replace(/\./g, '\\.')}:80/tcp\\s+sel`));
  const dup = await run(process.execPath, [cli, 'service', 'create', 'sel', '--selector', 'app=x', '--port', '80', '--network', net1], { allowFail: true });
  t.not(dup.code, 0);
  t.regex(dup.stderr, /already exists/);
  await run(process.execPath, [cli, 'service', 'delete', 'sel', '--network', net1]);
  t.false((await apiGet<Service[]>('/v1/services')).some((s) => s.name === 'sel'));
  t.not((await execMayFail(c, 'sh', '-c', `printf x | timeout 3 nc ${created.vip4} 80`)).code, 0, 'the VIP answers nothing any more');
});

test.serial('docker stop of a backend while a client runs requests: no request fails (the client retries on a reset), and the stopped backend gets no new flows', async (t) => {
  const net1 = uniqueName('mbt-drain');
  await createNetwork(net1, '--ipv6');
  const names = [uniqueName('mbt-d1'), uniqueName('mbt-d2'), uniqueName('mbt-d3')];
  for (const n of names) await backend(n, net1, '--init', '-l', 'membrane.service=drain:80@8080');
  const c = await client(net1);
  const s = await activeBackends('drain', 3, net1);
  // Requests for 12 s, each retried up to 3 times, 100 ms apart, on a failure (a reset or refusal);
  // counts what failed anyway. Docker reports the kill only after the signal is delivered, so a
  // backend can reset new connections before Membrane hears of it: a client retrying at once
  // can land on it three times; waiting 100 ms between tries gives Membrane time to take it out.
  const loop = `end=$(( $(date +%s) + 12 )); n=0; failed=0; retries=0; by3=0
    while [ $(date +%s) -lt $end ] && [ $n -lt 5000 ]; do
      ok=0; for attempt in 1 2 3; do
        out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc ${s.vip4} 80 | tail -1)
        if [ -n "$out" ]; then ok=1; [ "$out" = "${names[2]}" ] && by3=$((by3+1)); break; fi; retries=$((retries+1)); sleep 0.1
      done
      [ $ok = 1 ] || failed=$((failed+1)); n=$((n+1))
    done; echo "$n $failed $retries"`;
  const running = execMayFail(c, 'sh', '-c', loop);
  await sleep(3000);
  const stopped = performance.now();
  await docker('stop', '-t', '2', names[2]!);
  const stopMs = performance.now() - stopped;
  const after = await fetchMany(c, s.vip4!, 20);
  const [n, failed, retries] = (await running).stdout.trim().split(' ').map(Number);
  t.log(`${n} requests in 12 s, ${failed} failed, ${retries} retried; docker stop took ${Math.round(stopMs)} ms`);
  t.true(n! > 50, 'the client kept going');
  t.is(failed, 0, 'no request failed');
  t.is(after.get(names[2]!), undefined, 'the stopped backend gets no new flows');
  t.is([...after.values()].reduce((a, b) => a + b, 0), 20);
  await eventually(async () => {
    const now = await service('drain', net1);
    if (now.backends.some((b) => b.container === names[2])) throw new Error('the stopped backend is still listed');
  });
});

test.serial('a HEALTHCHECK: no flows before the container is healthy, none once it fails', async (t) => {
  const net1 = uniqueName('mbt-health');
  await createNetwork(net1, '--ipv6');
  const steady = uniqueName('mbt-steady');
  const checked = uniqueName('mbt-checked');
  await backend(steady, net1, '-l', 'membrane.service=hc:80@8080');
  await backend(checked, net1, '-l', 'membrane.service=hc:80@8080', '--health-cmd', 'test ! -f /tmp/sick', '--health-interval', '1s',
    '--health-retries', '1', '--health-start-period', '0s');
  const c = await client(net1);
  const s = await activeBackends('hc', 2, net1);
  const both = await fetchMany(c, s.vip4!, 40);
  t.true((both.get(checked) ?? 0) > 0, 'healthy: it serves');
  await docker('exec', checked, 'touch', '/tmp/sick');
  await eventually(async () => {
    const now = await service('hc', net1);
    if (now.backends.find((b) => b.container === checked)?.state !== 'quarantined') throw new Error('still active');
  }, 20_000);
  const sick = await fetchMany(c, s.vip4!, 30);
  t.is(sick.get(checked), undefined, 'unhealthy: no new flows');
  t.is(sick.get(steady), 30);
  await docker('exec', checked, 'rm', '/tmp/sick');
  await activeBackends('hc', 2, net1);
  t.pass('healthy again: back in the table');
});

test.serial('no ready backend: TCP is refused at once (a reset), UDP datagrams are answered with ICMP unreachable; UDP works with a backend', async (t) => {
  const net1 = uniqueName('mbt-none');
  await createNetwork(net1, '--ipv6');
  const udpBackend = uniqueName('mbt-udp');
  await docker('run', '-d', '--name', udpBackend, '--label', TEST_LABEL, '--network', net1, '-l', 'membrane.service=echo:53/udp@5353,80@8080',
    IMAGE, 'sh', '-c', 'udpecho serve 5353 & exec httpd -f -p 8080 -h /var/www');
  const c = await client(net1);
  const s = await activeBackends('echo', 1, net1);
  t.regex(await exec(c, 'udpecho', 'send', s.vip4!, '53', '3000'), /echo/, 'UDP through the VIP, IPv4');
  t.regex(await exec(c, 'udpecho', 'send', s.vip6!, '53', '3000'), /echo/, 'UDP through the VIP, IPv6');
  await new Promise<void>((resolve, reject) => {
    // From the host, unconnected UDP: the reply's source must be the VIP (recvmsg).
    const socket = dgram.createSocket('udp4');
    const timer = setTimeout(() => { socket.close(); reject(new Error('no UDP echo from the VIP')); }, 5000);
    socket.on('message', (_msg, rinfo) => {
      clearTimeout(timer);
      t.is(rinfo.address, s.vip4!, "recvmsg shows the VIP as the sender");
      t.is(rinfo.port, 53);
      socket.close();
      resolve();
    });
    socket.send('membrane', 53, s.vip4!);
  });
  await docker('stop', '-t', '1', udpBackend);
  await eventually(async () => { if ((await service('echo', net1)).backends.length) throw new Error('backend still there'); });
  const started = performance.now();
  const refused = await execMayFail(c, 'sh', '-c', `printf x | timeout 5 nc ${s.vip4} 80`);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /refused/i, 'a reset, not a timeout');
  t.true(performance.now() - started < 3000, 'at once');
  t.not((await execMayFail(c, 'udpecho', 'send', s.vip4!, '53', '1500')).code, 0);
  const metrics = await apiGet<{ reason: string; packets: string }[]>('/v1/bpf/metrics');
  t.true(Number(metrics.find((m) => m.reason === 'service-no-backend')?.packets ?? 0) >= 2, 'counted as a drop reason');
});

test.serial('a host socket connected to a backend that is removed is closed at once, so the client reconnects', async (t) => {
  const net1 = uniqueName('mbt-close');
  await createNetwork(net1, '--ipv6');
  const only = uniqueName('mbt-only');
  await backend(only, net1, '-l', 'membrane.service=closing:80@8080');
  const s = await activeBackends('closing', 1, net1);
  const socket = net.connect({ host: s.vip4!, port: 80 });
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  t.is(socket.remoteAddress, s.vip4);
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(performance.now())));
  socket.on('error', () => undefined);
  const removed = performance.now();
  await docker('rm', '-f', only);
  const at = await Promise.race([closed, sleep(10_000).then(() => -1)]);
  t.not(at, -1, 'the socket was closed');
  t.log(`socket closed ${Math.round(at - removed)} ms after docker rm -f began`);
});

test.serial('policy judges the backend: a client not allowed to reach the backend cannot reach it through the VIP', async (t) => {
  const net1 = uniqueName('mbt-lbpol');
  await createNetwork(net1, '--ipv6');
  await backend(uniqueName('mbt-guarded'), net1, '-l', 'membrane.service=guarded:80@8080', '-l', 'role=guarded',
    '-l', 'membrane.ingress=from role=friend on 8080/tcp');
  const friend = uniqueName('mbt-friend');
  const stranger = uniqueName('mbt-stranger');
  for (const [name, role] of [[friend, 'friend'], [stranger, 'stranger']] as const) {
    await docker('run', '-d', '--name', name, '--label', TEST_LABEL, '--network', net1, '-l', `role=${role}`, IMAGE, 'sleep', '3600');
  }
  const s = await activeBackends('guarded', 1, net1);
  await eventually(async () => { if (!(await fetchFrom(friend, s.vip4!))) throw new Error('friend not through yet'); }, 20_000);
  t.truthy(await fetchFrom(friend, s.vip4!));
  t.is(await fetchFrom(stranger, s.vip4!), '', 'denied by the backend\'s ingress policy');
  // `membrane policy trace` follows the VIP (and the name) to the backend and its target port.
  const cli = path.join(process.cwd(), 'dist', 'plugin', 'cli', 'main.js');
  const trace = async (src: string, dst: string) => JSON.parse((await run(process.execPath, [cli, '-o', 'json', 'policy', 'trace', '--src', src, '--dst', dst, '--dport', '80/tcp'])).stdout) as
    { service: string; verdict: string; backends: { targetPort: number; trace: { verdict: string } }[] };
  t.like(await trace('role=friend', s.vip4!), { service: 'guarded', verdict: 'allowed' });
  t.is((await trace('role=friend', s.vip4!)).backends[0]!.targetPort, 8080);
  t.like(await trace('role=stranger', 'guarded.svc.membrane'), { service: 'guarded', verdict: 'default-denied' });
});

test.serial('membrane monitor shows the service and backend of translated flows; bpf ct list marks them', async (t) => {
  const net1 = uniqueName('mbt-mon');
  await createNetwork(net1, '--ipv6');
  await backend(uniqueName('mbt-watched'), net1, '-l', 'membrane.service=watched:80@8080');
  const c = await client(net1);
  const s = await activeBackends('watched', 1, net1);
  const cli = path.join(process.cwd(), 'dist', 'plugin', 'cli', 'main.js');
  const first = firstMonitorEvent(t, 'service', (event) => (event.service as { service?: string } | undefined)?.service === 'watched');
  await sleep(500);
  t.truthy(await fetchFrom(c, s.vip4!));
  const event = await first;
  t.like(event, { type: 'service', service: { service: 'watched', port: 80, protocol: 'tcp' } });
  t.truthy((event.service as { backendId?: number }).backendId);
  const flows = JSON.parse((await run(process.execPath, [cli, '-o', 'json', 'bpf', 'ct', 'list'])).stdout) as { dport: number; dst: string }[];
  t.true(flows.some((f) => f.dport === 8080), 'the connection to the backend is tracked');
});

test.serial('a long transfer through the VIP survives kill -9 and a restart of the daemon', async (t) => {
  const net1 = uniqueName('mbt-long');
  await createNetwork(net1, '--ipv6');
  const src = uniqueName('mbt-stream');
  // Streams a line every 100 ms to whoever connects, for 12 s.
  await docker('run', '-d', '--name', src, '--label', TEST_LABEL, '--network', net1, '-l', 'membrane.service=stream:9000',
    IMAGE, 'sh', '-c', 'printf "#!/bin/sh\ni=0; while [ \\$i -lt 120 ]; do echo line\\$i; i=\\$((i+1)); sleep 0.1; done\n" > /stream.sh && ' +
      'chmod +x /stream.sh && exec nc -ll -p 9000 -e /stream.sh');
  const c = await client(net1);
  const s = await activeBackends('stream', 1, net1);
  // The stream server listens once its first line comes back.
  await eventually(async () => { if (!(await exec(c, 'sh', '-c', `timeout 2 nc ${s.vip4} 9000 | head -1`)).includes('line0')) throw new Error('not listening yet'); });
  const received = execMayFail(c, 'sh', '-c', `timeout 20 nc ${s.vip4} 9000 | wc -l`);
  await sleep(2500);
  await membrane.kill9();
  membrane = await restartDaemon(membrane);
  const lines = Number((await received).stdout.trim());
  t.log(`${lines} of 120 lines through the VIP across kill -9 and restart`);
  t.is(lines, 120);
  t.is((await service('stream', net1)).vip4, s.vip4, 'the VIP stays');
});
