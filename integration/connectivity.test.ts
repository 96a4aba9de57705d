// Containers on Membrane networks, through a real dockerd: addressing, reachability both
// families by IP and by name, host reachability, isolation, --internal, static addressing
// options, multi-network containers, and clean removal.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { allCpusMask, parseCpuMask } from '../plugin/network/cpu-mask.js';
import {
  addressesOf, apiGet, cleanupDocker, createNetwork, docker, dockerMayFail, eventually, exec,
  execMayFail, kernelLeftovers, bpfLeftovers, run, runContainer, uniqueName,
  useMembrane, twoOnOneNetwork,
  ping, CLI,
} from './harness.js';

// Receive steering is off by default (README, "Retransmits"); this file's daemon has it on, so the
// test below sees it applied (and every other test here runs with it).
process.env.MEMBRANE_RECEIVE_STEERING = '1';
useMembrane(test);

async function fetchPage(container: string, target: string): Promise<string> {
  const url = target.includes(':') && !target.startsWith('[') ? `http://[${target}]:8080/` : `http://${target}:8080/`;
  return eventually(() => exec(container, 'timeout', '5', 'wget', '-q', '-O', '-', url), 15_000);
}

test('dual-stack network: containers reach each other over IPv4 and IPv6, by IP and by name', async (t) => {
  const { a, b, addrB } = await twoOnOneNetwork('dual', '--ipv6');
  t.truthy(addrB.ipv4, 'IPv4 address assigned');
  t.truthy(addrB.ipv6, 'IPv6 address assigned');
  t.regex(addrB.ipv6!, /^fd[0-9a-f]{2}:/, 'IPv6 comes from the node ULA');

  await ping(a, 4, addrB.ipv4!);
  await ping(a, 6, addrB.ipv6!);
  t.is((await fetchPage(a, addrB.ipv4!)).trim(), 'membrane test page');
  t.is((await fetchPage(a, addrB.ipv6!)).trim(), 'membrane test page');
  // By name through Docker's embedded DNS: both record types.
  const lookup = await eventually(() => exec(a, 'nslookup', b), 10_000);
  t.true(lookup.includes(addrB.ipv4!), `A record in: ${lookup}`);
  t.true(lookup.includes(addrB.ipv6!), `AAAA record in: ${lookup}`);
  await ping(a, 4, b);
  await ping(a, 6, b);
  t.is((await fetchPage(a, b)).trim(), 'membrane test page');

  // The container sees a host route model: /32 and /128, default via the network gateway.
  const routes = await exec(a, 'ip', 'route');
  t.regex(routes, /^default via \S+ dev eth0/m);
  const addrs = await exec(a, 'ip', '-o', 'addr', 'show', 'dev', 'eth0');
  t.regex(addrs, /inet \S+\/32/);
  t.regex(addrs, /inet6 fd\S+\/128/);

  // The host reaches containers.
  await eventually(() => run('busybox', ['ping', '-4', '-c', '1', '-W', '2', addrB.ipv4!]), 10_000);
  await eventually(() => run('busybox', ['ping', '-6', '-c', '1', '-W', '2', addrB.ipv6!]), 10_000);
});

test('two Membrane networks are isolated from each other', async (t) => {
  const net1 = uniqueName('mbt-iso1');
  const net2 = uniqueName('mbt-iso2');
  await createNetwork(net1, '--ipv6');
  await createNetwork(net2, '--ipv6');
  const a = uniqueName('mbt-a');
  const b = uniqueName('mbt-b');
  const c = uniqueName('mbt-c');
  await runContainer(a, net1);
  await runContainer(b, net2);
  await runContainer(c, net1);
  const addrB = await addressesOf(b, net2);
  const addrC = await addressesOf(c, net1);
  await ping(a, 4, addrC.ipv4!); // same network works: the check below is not a broken setup
  await ping(a, 6, addrC.ipv6!);
  t.not((await execMayFail(a, 'ping', '-4', '-c', '1', '-W', '2', addrB.ipv4!)).code, 0, 'IPv4 across networks blocked');
  t.not((await execMayFail(a, 'ping', '-6', '-c', '1', '-W', '2', addrB.ipv6!)).code, 0, 'IPv6 across networks blocked');
  t.not((await execMayFail(a, 'timeout', '3', 'wget', '-q', '-O', '-', `http://${addrB.ipv4}:8080/`)).code, 0, 'TCP across networks blocked');
});

test('--internal network: containers talk to each other but have no way out', async (t) => {
  const { a, addrB } = await twoOnOneNetwork('int', '--ipv6', '--internal');
  await ping(a, 4, addrB.ipv4!);
  await ping(a, 6, addrB.ipv6!);
  const routes = await exec(a, 'ip', 'route');
  t.notRegex(routes, /^default/m, 'no default route inside an internal network');
  // The host refuses to forward anything else out of the network (checked against a real
  // outside host in egress.test.ts).
  const ext = await execMayFail(a, 'ping', '-4', '-c', '1', '-W', '2', '192.0.2.1');
  t.not(ext.code, 0, 'outside address unreachable');
});

test('static addressing: --subnet, --ip-range, --gateway, --aux-address, --ip, --ip6', async (t) => {
  const net = uniqueName('mbt-static');
  await createNetwork(net, '--ipv6', '--subnet', '10.231.7.0/24', '--ip-range', '10.231.7.128/25', '--gateway', '10.231.7.1',
    '--aux-address', 'router=10.231.7.200', '--subnet', 'fd00:db8:77::/64', '--gateway', 'fd00:db8:77::1');
  const inspect = JSON.parse(await docker('network', 'inspect', net))[0];
  const v4 = inspect.IPAM.Config.find((c: { Subnet: string }) => c.Subnet === '10.231.7.0/24');
  t.is(v4.Gateway, '10.231.7.1');
  const a = uniqueName('mbt-a');
  const b = uniqueName('mbt-b');
  await runContainer(a, net);
  await runContainer(b, net, '--ip', '10.231.7.50', '--ip6', 'fd00:db8:77::50');
  const addrA = await addressesOf(a, net);
  const addrB = await addressesOf(b, net);
  const lastOctet = Number(addrA.ipv4!.split('.')[3]);
  t.true(lastOctet >= 128 && lastOctet !== 200, `dynamic address ${addrA.ipv4} inside --ip-range, not the aux address`);
  t.is(addrB.ipv4, '10.231.7.50');
  t.is(addrB.ipv6, 'fd00:db8:77::50');
  await ping(a, 4, '10.231.7.50');
  await ping(a, 6, 'fd00:db8:77::50');
  // The aux address is reserved: asking for it fails with a clear message.
  const clash = await dockerMayFail('run', '--rm', '--label', 'membrane.test=1', '--network', net, '--ip', '10.231.7.200', 'membrane-test:latest', 'true');
  t.not(clash.code, 0);
  t.regex(clash.stderr, /already allocated/);
  // Overlapping subnets are refused with the owner named.
  const overlap = await dockerMayFail('network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', '--label', 'membrane.test=1',
    '--subnet', '10.231.0.0/16', uniqueName('mbt-overlap'));
  t.not(overlap.code, 0);
  t.regex(overlap.stderr, /overlaps 10\.231\.7\.0\/24/);
});

test('one container on two Membrane networks reaches both', async (t) => {
  const net1 = uniqueName('mbt-m1');
  const net2 = uniqueName('mbt-m2');
  await createNetwork(net1, '--ipv6');
  await createNetwork(net2, '--ipv6');
  const multi = uniqueName('mbt-multi');
  const p1 = uniqueName('mbt-p1');
  const p2 = uniqueName('mbt-p2');
  await runContainer(p1, net1);
  await runContainer(p2, net2);
  await runContainer(multi, net1);
  await docker('network', 'connect', net2, multi);
  const a1 = await addressesOf(p1, net1);
  const a2 = await addressesOf(p2, net2);
  for (const [family, target] of [[4, a1.ipv4], [6, a1.ipv6], [4, a2.ipv4], [6, a2.ipv6]] as const) {
    await ping(multi, family, target!);
  }
  t.is((await fetchPage(multi, a2.ipv4!)).trim(), 'membrane test page');
  t.is((await fetchPage(multi, p2)).trim(), 'membrane test page');
  await docker('network', 'disconnect', net2, multi);
  await ping(multi, 4, a1.ipv4!);
  t.pass();
});

test('docker network rm leaves no veth, route, rule or state behind', async (t) => {
  await cleanupDocker();
  const net = uniqueName('mbt-rm');
  await createNetwork(net, '--ipv6');
  const a = uniqueName('mbt-a');
  await runContainer(a, net);
  const during = await kernelLeftovers();
  t.true(during.links.length >= 1 && during.routes.length >= 1 && during.rules.length >= 1, 'plumbing exists while the network is in use');
  await docker('rm', '-f', a);
  await docker('network', 'rm', net);
  // What could carry traffic goes before Docker's answer; the veth itself goes right after it,
  // once the plugin is idle (deleting a veth waits for RCU grace periods; see "Attaching").
  t.deepEqual((await kernelLeftovers()).routes, []);
  t.deepEqual((await kernelLeftovers()).rules, []);
  await eventually(async () => {
    const left = { ...(await kernelLeftovers()), ...(await bpfLeftovers()) };
    if (left.links.length || left.linkPins.length) throw new Error(`not yet deleted: ${JSON.stringify(left)}`);
  }, 5_000);
  t.deepEqual(await kernelLeftovers(), { links: [], routes: [], rules: [] });
  t.deepEqual(await bpfLeftovers(), { linkPins: [], endpointEntries: 0 });
  const status = await apiGet<{ backgroundWork: { pending: number; failed: number } }>('/v1/status');
  t.is(status.backgroundWork.failed, 0);
  t.deepEqual(await apiGet('/v1/endpoints'), []);
  t.deepEqual(await apiGet('/v1/networks'), []);
  const ipam = await apiGet<{ pools: unknown[] }>('/v1/ipam');
  t.deepEqual(ipam.pools, []);
});

test('docker network create with a special-purpose or host-bit --subnet fails with Membrane\'s reason, and leaves nothing behind', async (t) => {
  const poolsBefore = (await apiGet<{ pools: { pool: string }[] }>('/v1/ipam')).pools.map((p) => p.pool).sort();
  const networksBefore = (await apiGet<{ id: string }[]>('/v1/networks')).map((n) => n.id).sort();
  const cases: [string[], RegExp][] = [
    [['--ipv6', '--subnet', '::1/112'], /subnet "::1\/112" has host bits set: the network it lies in is ::\/112/],
    [['--ipv6', '--subnet', 'fe80::/64'], /fe80::\/10 \(link-local unicast, RFC 4291.*unique local \/64/],
    [['--subnet', '224.1.0.0/24'], /224\.0\.0\.0\/4 \(multicast, RFC 5771.*private range/],
    [['--subnet', '127.1.0.0/24'], /127\.0\.0\.0\/8 \(loopback/],
  ];
  for (const [args, message] of cases) {
    const name = uniqueName('mbt-special');
    const result = await dockerMayFail('network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', '--label', 'membrane.test=1', ...args, name);
    t.not(result.code, 0, args.join(' '));
    t.regex(result.stderr, message, args.join(' '));
    t.is((await dockerMayFail('network', 'inspect', name)).code, 1, 'Docker has no such network');
  }
  t.deepEqual((await apiGet<{ pools: { pool: string }[] }>('/v1/ipam')).pools.map((p) => p.pool).sort(), poolsBefore, 'no pool left behind');
  t.deepEqual((await apiGet<{ id: string }[]>('/v1/networks')).map((n) => n.id).sort(), networksBefore, 'no network left behind');
});

test('receiveSteering: every endpoint\'s host-side veth steers received packets by flow to all CPUs (no reordering between backlogs)', async (t) => {
  const net = uniqueName('mbt-rps');
  await createNetwork(net);
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  const containerMac = (await exec(c, 'cat', '/sys/class/net/eth0/address')).trim();
  const endpoint = (await apiGet<{ hostIfName: string; mac: string }[]>('/v1/endpoints')).find((e) => e.mac === containerMac);
  t.truthy(endpoint);
  const mask = fs.readFileSync(`/sys/class/net/${endpoint!.hostIfName}/queues/rx-0/rps_cpus`, 'utf8');
  t.is(parseCpuMask(mask), parseCpuMask(allCpusMask() || '0'), `rps_cpus of ${endpoint!.hostIfName}: ${mask.trim()}`);
});

test('-o com.docker.network.driver.mtu sets the MTU on both ends of the veth', async (t) => {
  const net = uniqueName('mbt-mtu');
  await createNetwork(net, '--ipv6', '-o', 'com.docker.network.driver.mtu=1400');
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  t.regex(await exec(c, 'ip', 'link', 'show', 'eth0'), /mtu 1400/);
  const containerMac = (await exec(c, 'cat', '/sys/class/net/eth0/address')).trim();
  const endpoint = (await apiGet<{ hostIfName: string; mac: string }[]>('/v1/endpoints')).find((e) => e.mac === containerMac);
  t.truthy(endpoint, 'the endpoint Membrane created carries the container\'s MAC');
  t.regex((await run('ip', ['-o', 'link', 'show', endpoint!.hostIfName])).stdout, /mtu 1400/, 'host side');
  const bad = await dockerMayFail('network', 'create', '-d', 'membrane', '--ipam-driver', 'membrane', '--label', 'membrane.test=1',
    '-o', 'com.docker.network.driver.mtu=big', uniqueName('mbt-badmtu'));
  t.not(bad.code, 0);
  t.regex(bad.stderr, /is not a valid MTU; give an integer/);
});

test('membrane CLI: status, network list, endpoint list, ipam show, as tables and as JSON', async (t) => {
  const net = uniqueName('mbt-cli');
  await createNetwork(net, '--ipv6');
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  const addr = await addressesOf(c, net);
  const netId = (await docker('network', 'inspect', '-f', '{{.Id}}', net));
  const cli = async (...args: string[]) => (await run(process.execPath, [CLI, ...args])).stdout;
  const status = await cli('status');
  t.regex(status, /^version\s+\S+/m);
  t.regex(status, /NetworkDriver\.CreateEndpoint\s+\d+\s+0\s+[\d.]+\s+[\d.]+/, 'per-call counts and p50/p99');
  t.regex(await cli('network', 'list'), new RegExp(`^${netId.slice(0, 12)}\\s+${net}\\s`, 'm'));
  const endpoints = await cli('endpoint', 'list');
  t.regex(endpoints, /^ENDPOINT ID\s+NETWORK\s+CONTAINER\s+HOST IF\s+IPV4\s+IPV6\s+IDENTITY\s+POLICY IN\/OUT\s+LABELS\s+ERROR$/m);
  t.true(endpoints.includes(addr.ipv4!) && endpoints.includes(addr.ipv6!));
  t.regex(endpoints, new RegExp(`^[0-9a-f]{12}\\s+${net}\\s+${c}\\s`, 'm'), 'the NETWORK column shows the Docker network\'s name');
  const json = JSON.parse(await cli('-o', 'json', 'endpoint', 'list')) as { ipv4: string; networkId: string; networkName: string }[];
  t.true(json.some((e) => e.ipv4 === addr.ipv4 && e.networkId === netId && e.networkName === net), 'JSON has the id and the name');
  const ipam = JSON.parse(await cli('-o', 'json', 'ipam', 'show')) as { pools: { networkId: string; allocated: number }[] };
  t.true(ipam.pools.filter((p) => p.networkId === netId).every((p) => p.allocated >= 2), 'gateway and container allocated');
  t.regex(await cli('ipam', 'show'), /^node ULA prefix: fd/m);
  // A command against a daemon that is not there says what to do.
  const down = await run(process.execPath, [CLI, '--api', '/run/membrane/nothing.sock', 'status'], { allowFail: true });
  t.not(down.code, 0);
  t.regex(down.stderr, /cannot reach the Membrane daemon .* is it running\?/);
});

// Named probe: Docker 28 (API 1.48) added --ipv4=false; older engines always request an IPv4 pool.
const dockerApi = execFileSync('docker', ['version', '-f', '{{.Server.APIVersion}}']).toString().trim();
const hasIPv6OnlyNetworks = Number(dockerApi.split('.')[1]) >= 48;
(hasIPv6OnlyNetworks ? test : test.skip)(
  `IPv6-only network (--ipv4=false)${hasIPv6OnlyNetworks ? '' : ` [skip: Docker API ${dockerApi} < 1.48; --ipv4=false needs Docker 28+]`}`,
  async (t) => {
    const net = uniqueName('mbt-v6only');
    await createNetwork(net, '--ipv6', '--ipv4=false');
    const a = uniqueName('mbt-a');
    const b = uniqueName('mbt-b');
    await runContainer(a, net);
    await runContainer(b, net);
    const addrB = await addressesOf(b, net);
    t.falsy(addrB.ipv4);
    await ping(a, 6, addrB.ipv6!);
    t.notRegex(await exec(a, 'ip', '-4', 'addr', 'show', 'dev', 'eth0'), /inet /);
  });
