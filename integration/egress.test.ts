// The way out: containers reach an "outside" host that this test builds in its own network
// namespace, IPv4 masqueraded behind the host and IPv6 routed with the container's own source;
// --internal networks have no way out; the outside cannot open connections to containers.

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  MembraneProcess, addressesOf, apiGet, cleanupDocker, createNetwork, docker, dockerMayFail, eventually, exec, execMayFail, run,
  runContainer, uniqueName,
} from './harness.js';

const NS = `mbt-out-${process.pid.toString(36)}`;
const HOST_IF = `mbto${process.pid.toString(36)}`.slice(0, 15);
// Documentation prefixes (RFC 5737, RFC 3849), the first one this host does not route already
// (machines here have been seen with 192.0.2.0/24 on their own eth0).
const hostRoutes = execFileSync('ip', ['-4', 'route', 'show', 'table', 'all']).toString();
const V4_NET = ['198.51.100', '203.0.113', '192.0.2'].find((net) => !hostRoutes.includes(`${net}.`));
if (!V4_NET) throw new Error('every IPv4 documentation prefix is routed on this host; cannot build an outside host');
const HOST_V4 = `${V4_NET}.1`;
const OUT_V4 = `${V4_NET}.2`;
const HOST_V6 = '2001:db8:ff::1';
const OUT_V6 = '2001:db8:ff::2';

const membrane = new MembraneProcess();
let server: ChildProcess | undefined;
let webRoot: string;

test.before(async () => {
  await cleanupDocker();
  await membrane.start();
  await run('ip', ['netns', 'add', NS]);
  await run('ip', ['link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NS]);
  await run('ip', ['addr', 'add', `${HOST_V4}/24`, 'dev', HOST_IF]);
  await run('ip', ['-6', 'addr', 'add', `${HOST_V6}/64`, 'dev', HOST_IF, 'nodad']);
  await run('ip', ['link', 'set', HOST_IF, 'up']);
  const inNs = (...args: string[]) => run('ip', ['netns', 'exec', NS, ...args]);
  await inNs('ip', 'link', 'set', 'lo', 'up');
  await inNs('ip', 'addr', 'add', `${OUT_V4}/24`, 'dev', 'eth0');
  await inNs('ip', '-6', 'addr', 'add', `${OUT_V6}/64`, 'dev', 'eth0', 'nodad');
  await inNs('ip', 'link', 'set', 'eth0', 'up');
  // IPv6 is routed, not translated: the outside host needs a route back to the node's ULA.
  const { ulaPrefix } = await apiGet<{ ulaPrefix: string }>('/v1/status');
  await inNs('ip', '-6', 'route', 'add', ulaPrefix, 'via', HOST_V6);
  // A web server on the outside host whose CGI echoes the peer address it sees.
  webRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-outside-'));
  fs.mkdirSync(path.join(webRoot, 'cgi-bin'));
  fs.writeFileSync(path.join(webRoot, 'cgi-bin', 'peer'), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$REMOTE_ADDR"\n', { mode: 0o755 });
  server = spawn('ip', ['netns', 'exec', NS, 'busybox', 'httpd', '-f', '-p', '8081', '-h', webRoot], { stdio: ['ignore', 'ignore', 'pipe'] });
  let serverErrors = '';
  server.stderr?.on('data', (chunk) => { serverErrors += chunk; });
  await eventually(() => run('ip', ['netns', 'exec', NS, 'busybox', 'wget', '-q', '-O', '-', 'http://127.0.0.1:8081/cgi-bin/peer']), 10_000)
    .catch((err) => { throw new Error(`outside web server did not come up: ${serverErrors} ${err}`); });
});

test.after.always(async () => {
  server?.kill('SIGKILL');
  await cleanupDocker();
  await membrane.stop();
  await run('ip', ['link', 'del', HOST_IF], { allowFail: true });
  await run('ip', ['netns', 'del', NS], { allowFail: true });
  if (webRoot) fs.rmSync(webRoot, { recursive: true, force: true });
});

function peerSeenBy(container: string, url: string): Promise<string> {
  return eventually(async () => (await exec(container, 'timeout', '5', 'wget', '-q', '-O', '-', url)).trim(), 15_000);
}

test('containers reach the outside: IPv4 masqueraded behind the host, IPv6 routed with its own address', async (t) => {
  const net = uniqueName('mbt-egress');
  await createNetwork(net, '--ipv6');
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  const addr = await addressesOf(c, net);
  // busybox httpd reports peers as [::ffff:a.b.c.d] from its dual-stack socket.
  t.is(await peerSeenBy(c, `http://${OUT_V4}:8081/cgi-bin/peer`), `[::ffff:${HOST_V4}]`, 'IPv4 source is the host (masquerade)');
  const seen6 = await peerSeenBy(c, `http://[${OUT_V6}]:8081/cgi-bin/peer`);
  t.is(seen6.toLowerCase(), `[${addr.ipv6}]`, 'IPv6 source is the container (routed)');
});

test('the outside cannot open connections to containers', async (t) => {
  const net = uniqueName('mbt-inbound');
  await createNetwork(net, '--ipv6');
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  const addr = await addressesOf(c, net);
  // The container itself answers from the host: the block below is the forward rule, not a dead server.
  await eventually(() => run('busybox', ['wget', '-q', '-O', '-', `http://[${addr.ipv6}]:8080/`]), 10_000);
  const attempt = await run('ip', ['netns', 'exec', NS, 'timeout', '4', 'busybox', 'wget', '-q', '-O', '-', `http://[${addr.ipv6}]:8080/`], { allowFail: true });
  t.not(attempt.code, 0, 'unsolicited inbound IPv6 connection is dropped');
});

test('--internal network has no way out, in either family', async (t) => {
  const net = uniqueName('mbt-internal');
  await createNetwork(net, '--ipv6', '--internal');
  const c = uniqueName('mbt-c');
  await runContainer(c, net, '--cap-add', 'NET_ADMIN');
  const v4 = await execMayFail(c, 'timeout', '4', 'wget', '-q', '-O', '-', `http://${OUT_V4}:8081/cgi-bin/peer`);
  t.not(v4.code, 0, 'IPv4 out is impossible');
  const v6 = await execMayFail(c, 'timeout', '4', 'wget', '-q', '-O', '-', `http://[${OUT_V6}]:8081/cgi-bin/peer`);
  t.not(v6.code, 0, 'IPv6 out is impossible');
  // Even a container that adds its own default route is refused by the host.
  const gw = (await exec(c, 'ip', 'route')).match(/^(\S+) dev eth0 scope link/m)?.[1];
  t.truthy(gw, 'connected route to the gateway exists');
  await exec(c, 'ip', 'route', 'add', 'default', 'via', gw ?? '');
  const forced = await execMayFail(c, 'timeout', '4', 'wget', '-q', '-O', '-', `http://${OUT_V4}:8081/cgi-bin/peer`);
  t.not(forced.code, 0, 'host refuses to forward out of an internal network');
});

test('published ports (-p) are reachable from outside (both families), from the host and by the container itself', async (t) => {
  const net = uniqueName('mbt-ports');
  await createNetwork(net, '--ipv6');
  const web = uniqueName('mbt-web');
  await runContainer(web, net, '-p', '18080:8080');
  const fromOutside = (url: string) => run('ip', ['netns', 'exec', NS, 'timeout', '5', 'busybox', 'wget', '-q', '-O', '-', url]);
  t.is((await eventually(() => fromOutside(`http://${HOST_V4}:18080/`), 10_000)).stdout.trim(), 'membrane test page');
  t.is((await eventually(() => fromOutside(`http://[${HOST_V6}]:18080/`), 10_000)).stdout.trim(), 'membrane test page');
  t.is((await run('busybox', ['wget', '-q', '-O', '-', 'http://127.0.0.1:18080/'])).stdout.trim(), 'membrane test page', 'host loopback');
  t.is((await exec(web, 'timeout', '5', 'wget', '-q', '-O', '-', `http://${HOST_V4}:18080/`)).trim(), 'membrane test page', 'hairpin');
  // The same host port cannot be published twice.
  const clash = await dockerMayFail('run', '-d', '--label', 'membrane.test=1', '--network', net, '-p', '18080:8080', 'membrane-test:latest', 'sleep', '60');
  t.not(clash.code, 0);
  t.regex(clash.stderr, /host port 18080\/tcp is already published/);
  // A random host port cannot be reported back to Docker: refused with what to write instead.
  const random = await dockerMayFail('run', '-d', '--label', 'membrane.test=1', '--network', net, '-p', '8080', 'membrane-test:latest', 'sleep', '60');
  t.not(random.code, 0);
  t.regex(random.stderr, /give one: -p HOSTPORT:8080\/tcp/);
  // Stopping the container withdraws the port.
  await docker('stop', '-t', '1', web);
  t.not((await run('ip', ['netns', 'exec', NS, 'timeout', '3', 'busybox', 'wget', '-q', '-O', '-', `http://${HOST_V4}:18080/`], { allowFail: true })).code, 0);
  const dnat = (await run('iptables', ['-t', 'nat', '-S', 'MEMBRANE-DNAT'])).stdout;
  t.notRegex(dnat, /18080/, 'DNAT rule removed');
});
