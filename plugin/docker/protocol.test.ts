// Docker's plugin protocol end to end: the real express app on a unix socket, raw POSTs shaped
// like dockerd's (no Content-Type, Accept v1.2), the whole core (IPAM, networks, endpoints,
// dataplane, state file) over an in-memory kernel (FakeNetlink). No root, no iptables.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createCore, type MembraneCore } from '../daemon.js';
import { DEFAULT_CONFIG, type MembraneConfig } from '../config.js';
import { silentLogger } from '../log.js';
import { Netfilter } from '../netfilter/iptables.js';
import { FakeNetlink, fakeProcSys } from '../kernel/fake-netlink.js';
import { createPluginApp } from './http.js';
import { JsonStore } from '../state/store.js';
import { IdleWork } from '../idle-work.js';
import { DOOMED_LINK_GROUP } from '../network/dataplane.js';
import { endpointMac, MEMBRANE_RTPROT } from '../network/plan.js';
import { parsePrefix, prefixContainsPrefix } from '../ipam/prefix.js';

const ULA = 'fde3:75a:9371::/48';
const ACCEPT = 'application/vnd.docker.plugins.v1.2+json';

// ---- harness --------------------------------------------------------------------------------

interface Reply {
  status: number;
  text: string;
  json: any;
}

type Call = (method: string, body?: unknown, options?: { raw?: boolean; httpMethod?: string }) => Promise<Reply>;

interface Env {
  dir: string;
  stateDir: string;
  config: MembraneConfig;
  nl: FakeNetlink;
  core: MembraneCore;
  call: Call;
}

const tempDirs: string[] = [];
test.after.always(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-proto-'));
  tempDirs.push(dir);
  return dir;
}

function buildCore(config: MembraneConfig, nl: FakeNetlink, procSys: string, idle?: IdleWork): MembraneCore {
  return createCore(config, { nl, log: silentLogger(), netfilter: new Netfilter(false), procSys, idle });
}

/** Sends one request the way dockerd does. `body` is sent verbatim when a string, else JSON + '\n'. */
function send(socketPath: string, method: string, body: unknown, httpMethod = 'POST'): Promise<Reply> {
  const payload = body === undefined ? '' : typeof body === 'string' ? body : `${JSON.stringify(body)}\n`;
  return new Promise((resolve, reject) => {
    const req = http.request({
      socketPath, path: `/${method}`, method: httpMethod,
      // What dockerd sends: Accept and Content-Length, Host of v25+, and no Content-Type.
      headers: { Accept: ACCEPT, Host: 'plugin.moby.localhost', 'Content-Length': Buffer.byteLength(payload) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => {
        let json: unknown;
        try {
          json = text === '' ? undefined : JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

async function serve(t: ExecutionContext, core: MembraneCore, dir: string, idle?: IdleWork): Promise<Call> {
  const socketPath = path.join(dir, `p${randomBytes(3).toString('hex')}.sock`);
  const server = http.createServer(createPluginApp(core.routes, silentLogger(), new Map(), idle));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  }).then(() => fs.rmSync(socketPath, { force: true })));
  return async (method, body, options = {}) => {
    const reply = await send(socketPath, method, body, options.httpMethod);
    // Docker fails any call whose 200 answer is empty or not JSON (EOF decode error).
    if (reply.status === 200 && (reply.text === '' || reply.json === undefined)) {
      throw new Error(`${method} answered 200 with a body Docker cannot decode: ${JSON.stringify(reply.text)}`);
    }
    return reply;
  };
}

async function setup(t: ExecutionContext, overrides: Partial<MembraneConfig> = {}, idle?: IdleWork): Promise<Env> {
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const procSys = fakeProcSys(dir);
  const config: MembraneConfig = {
    ...DEFAULT_CONFIG, stateDir, ulaPrefix: ULA, defaultIPv4Ranges: ['10.210.0.0/16'], ...overrides,
  };
  const nl = new FakeNetlink();
  const core = buildCore(config, nl, procSys, idle);
  const call = await serve(t, core, dir, idle);
  return { dir, stateDir, config, nl, core, call };
}

function hexId(): string {
  return randomBytes(32).toString('hex');
}

/** Asserts a 200 answer and returns its JSON. */
async function ok(t: ExecutionContext, call: Call, method: string, body?: unknown): Promise<any> {
  const reply = await call(method, body);
  t.is(reply.status, 200, `${method} failed: ${reply.text}`);
  return reply.json;
}

/** Asserts a non-200 {"Err": "..."} answer and returns the message. */
async function fails(t: ExecutionContext, call: Call, method: string, body?: unknown): Promise<string> {
  const reply = await call(method, body);
  t.not(reply.status, 200, `${method} unexpectedly succeeded: ${reply.text}`);
  t.is(typeof reply.json?.Err, 'string', `${method} error body lacks Err: ${reply.text}`);
  t.true((reply.json?.Err ?? '').length > 0);
  return reply.json?.Err ?? '';
}

interface FamilyPool { poolId: string; pool: string; gateway: string }
interface Net { networkId: string; v4?: FamilyPool; v6?: FamilyPool }

/** network create as dockerd does it: pools, gateways, then CreateNetwork. */
async function createNetwork(t: ExecutionContext, call: Call, options: {
  v4?: boolean; v6?: boolean; subnet4?: string; range4?: string; internal?: boolean; generic?: Record<string, string>;
  enableIPv4?: boolean; extraOptions?: Record<string, unknown>;
} = {}): Promise<Net> {
  const { v4 = true, v6 = true } = options;
  const net: Net = { networkId: hexId() };
  const family = async (isV6: boolean, subnet = '', range = ''): Promise<FamilyPool> => {
    const pool = await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: subnet, SubPool: range, Options: {}, V6: isV6 });
    const gw = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: pool.PoolID, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } });
    return { poolId: pool.PoolID, pool: pool.Pool, gateway: gw.Address };
  };
  if (v4) net.v4 = await family(false, options.subnet4, options.range4);
  if (v6) net.v6 = await family(true);
  const dockerOptions: Record<string, unknown> = {
    'com.docker.network.enable_ipv6': v6, 'com.docker.network.generic': options.generic ?? {}, ...options.extraOptions,
  };
  if (options.enableIPv4 !== undefined) dockerOptions['com.docker.network.enable_ipv4'] = options.enableIPv4;
  if (options.internal) dockerOptions['com.docker.network.internal'] = true;
  await ok(t, call, 'NetworkDriver.CreateNetwork', {
    NetworkID: net.networkId, Options: dockerOptions,
    IPv4Data: net.v4 ? [{ AddressSpace: 'membrane-local', Pool: net.v4.pool, Gateway: net.v4.gateway }] : [],
    IPv6Data: net.v6 ? [{ AddressSpace: 'membrane-local', Pool: net.v6.pool, Gateway: net.v6.gateway }] : [],
  });
  return net;
}

interface Container { endpointId: string; ipv4?: string; ipv6?: string; hostIf: string; created: any; joined?: any }

/** docker run on a network: addresses, CreateEndpoint, optionally Join. */
async function startContainer(t: ExecutionContext, call: Call, net: Net, options: { join?: boolean; mac?: string; ip?: string } = {}): Promise<Container> {
  const endpointId = hexId();
  let ipv4: string | undefined;
  let ipv6: string | undefined;
  if (net.v4) ipv4 = (await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4.poolId, Address: options.ip ?? '', Options: null })).Address;
  if (net.v6) ipv6 = (await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v6.poolId, Address: '', Options: null })).Address;
  const created = await ok(t, call, 'NetworkDriver.CreateEndpoint', {
    NetworkID: net.networkId, EndpointID: endpointId,
    Interface: { Address: ipv4 ?? '', AddressIPv6: ipv6 ?? '', MacAddress: options.mac ?? '' }, Options: {},
  });
  const container: Container = { endpointId, ipv4, ipv6, hostIf: `mbr${endpointId.slice(0, 12)}`, created };
  if (options.join !== false) {
    container.joined = await ok(t, call, 'NetworkDriver.Join', {
      NetworkID: net.networkId, EndpointID: endpointId, SandboxKey: `/var/run/docker/netns/${endpointId.slice(0, 12)}`, Options: {},
    });
  }
  return container;
}

const plain = (cidr: string | undefined): string => cidr!.split('/')[0]!;

/** What a restarted daemon would read: the snapshot with the journal replayed. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function onDiskState(file: string): any {
  return new JsonStore<unknown>(file, () => ({})).load();
}

// ---- replay of a real dockerd 20.10 session -------------------------------------------------

interface RecordedCall { method: string; request: string; status: number; response: unknown }

function fixture(): { recordedWith: string; calls: RecordedCall[] } {
  // The fixture lives in the source tree; this file runs from dist/plugin/docker.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'fixtures', 'docker-20.10.json'),
    path.resolve(here, '..', '..', '..', 'plugin', 'docker', 'fixtures', 'docker-20.10.json')];
  const file = candidates.find((f) => fs.existsSync(f));
  if (!file) throw new Error(`fixture docker-20.10.json not found in ${candidates.join(', ')}`);
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

test('REPLAY: a recorded dockerd 20.10 session gets exactly the recorded answers and leaves nothing behind', async (t) => {
  const { calls } = fixture();
  t.is(calls.length, 46);
  const { call, core, nl } = await setup(t);
  for (const [i, recorded] of calls.entries()) {
    const reply = await call(recorded.method, recorded.request);
    t.is(reply.status, recorded.status, `call ${i} ${recorded.method}: ${reply.text}`);
    t.deepEqual(reply.json, recorded.response, `call ${i} ${recorded.method}`);
  }
  t.deepEqual(core.networks.list(), []);
  t.deepEqual(core.endpoints.list(), []);
  t.deepEqual(Object.keys(core.ctx.state.pools), []);
  t.deepEqual(nl.userLinks(), []);
  t.deepEqual(nl.allRoutes().filter((r) => r.protocol === MEMBRANE_RTPROT), []);
  t.deepEqual(nl.allRules().filter((r) => r.protocol === MEMBRANE_RTPROT), []);
  // The state file on disk agrees.
  const onDisk = onDiskState(core.stateFile);
  t.deepEqual([Object.keys(onDisk.networks), Object.keys(onDisk.endpoints), Object.keys(onDisk.pools)], [[], [], []]);
});

test('REPLAY: mid-session the kernel holds the routed model of both recorded networks', async (t) => {
  const { calls } = fixture();
  const { call, nl } = await setup(t, { defaultMtu: 1500 });
  // Up to and including the second Join (both containers running).
  const lastJoin = calls.map((c) => c.method).lastIndexOf('NetworkDriver.Join');
  for (const recorded of calls.slice(0, lastJoin + 1)) await call(recorded.method, recorded.request);
  // The recording's two endpoints: the first on recnet1 (static addresses, MAC given by Docker),
  // the second on recnet2 (automatic addresses, MAC chosen by Membrane).
  const created = calls.filter((c) => c.method === 'NetworkDriver.CreateEndpoint');
  const [ep1, ep2] = created.map((c) => JSON.parse(c.request).EndpointID as string);
  const id1 = ep1!.slice(0, 12);
  const id2 = ep2!.slice(0, 12);
  const mac2 = (created[1]!.response as { Interface: { MacAddress: string } }).Interface.MacAddress;
  const host1 = nl.linkGetByName(`mbr${id1}`)!;
  const peer1 = nl.linkGetByName(`mbc${id1}`)!;
  t.truthy(host1);
  t.is(host1.alias, `membrane:${ep1}`);
  t.is(host1.mtu, 1400, 'recnet1 has -o com.docker.network.driver.mtu=1400');
  t.is(peer1.mtu, 1400);
  t.is(peer1.mac, '02:42:ac:11:00:99', 'the container end carries the MAC Docker asked for');
  t.true(host1.up);
  const peer2 = nl.linkGetByName(`mbc${id2}`)!;
  t.is(peer2.mac, mac2);
  t.is(peer2.mtu, 1500);
  // Host routes to each container address through its veth, tagged as Membrane's.
  const unicast = nl.allRoutes().filter((r) => r.type === 'unicast' && r.protocol === MEMBRANE_RTPROT)
    .map((r) => `${r.dst}/${r.dstLen} ${nl.linkGetByIndex(r.oif)?.name}`).sort();
  t.deepEqual(unicast, [`10.210.0.2/32 mbr${id2}`, `10.77.0.140/32 mbr${id1}`,
    `fd00:77::140/128 mbr${id1}`, `fde3:75a:9371:1::2/128 mbr${id2}`]);
  // Gateways on the host veths.
  t.deepEqual(nl.addrList(4, host1.index).map((a) => `${a.address}/${a.prefixLen}`), ['10.77.0.1/32']);
  t.deepEqual(nl.addrList(6, host1.index).map((a) => `${a.address}/${a.prefixLen}`), ['fd00:77::1/128']);
  // One isolation rule per pool.
  t.is(nl.allRules().filter((r) => r.protocol === MEMBRANE_RTPROT).length, 4);
});

// ---- transport --------------------------------------------------------------------------------

test('transport: empty bodies on the argument-less calls', async (t) => {
  const { call } = await setup(t);
  t.deepEqual(await ok(t, call, 'Plugin.Activate'), { Implements: ['NetworkDriver', 'IpamDriver'] });
  const caps = await ok(t, call, 'NetworkDriver.GetCapabilities');
  t.is(caps.Scope, 'local');
  t.is(caps.ConnectivityScope, 'local');
  t.deepEqual(await ok(t, call, 'IpamDriver.GetCapabilities'), { RequiresMACAddress: false, RequiresRequestReplay: false });
  const spaces = await ok(t, call, 'IpamDriver.GetDefaultAddressSpaces');
  t.is(typeof spaces.LocalDefaultAddressSpace, 'string');
  t.is(typeof spaces.GlobalDefaultAddressSpace, 'string');
  t.true(spaces.LocalDefaultAddressSpace.length > 0);
  t.not(spaces.LocalDefaultAddressSpace, spaces.GlobalDefaultAddressSpace);
});

test('transport: no Content-Type, a "null" body and a trailing newline are all accepted', async (t) => {
  const { call } = await setup(t);
  t.deepEqual(await ok(t, call, 'Plugin.Activate', 'null'), { Implements: ['NetworkDriver', 'IpamDriver'] });
  t.is((await ok(t, call, 'NetworkDriver.GetCapabilities', 'null\n')).Scope, 'local');
  const pool = await ok(t, call, 'IpamDriver.RequestPool',
    '{"AddressSpace":"membrane-local","Pool":"","SubPool":"","Options":null,"V6":false}\n');
  t.is(pool.Pool, '10.210.0.0/24');
  t.deepEqual(await ok(t, call, 'IpamDriver.ReleasePool', `{"PoolID":${JSON.stringify(pool.PoolID)}}\r\n`), {});
});

test('transport: malformed JSON is a non-200 Err that says JSON', async (t) => {
  const { call } = await setup(t);
  const err = await fails(t, call, 'IpamDriver.RequestPool', '{"AddressSpace": ');
  t.regex(err, /JSON/);
  t.regex(await fails(t, call, 'NetworkDriver.CreateNetwork', '[1, 2]'), /object/);
});

test('transport: a wrongly typed field is a non-200 Err naming the field', async (t) => {
  const { call } = await setup(t);
  t.regex(await fails(t, call, 'IpamDriver.ReleasePool', { PoolID: 5 }), /PoolID/);
  t.regex(await fails(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', V6: 'yes' }), /V6/);
  t.regex(await fails(t, call, 'NetworkDriver.CreateNetwork', { NetworkID: hexId(), Options: {}, IPv4Data: 'x' }), /IPv4Data/);
  t.regex(await fails(t, call, 'NetworkDriver.Join', { NetworkID: hexId(), EndpointID: ['a'] }), /EndpointID/);
});

test('transport: unknown methods and non-POST requests are 404 with an Err', async (t) => {
  const { call } = await setup(t);
  const unknown = await call('VolumeDriver.Create', { Name: 'x' });
  t.is(unknown.status, 404);
  t.regex(unknown.json.Err, /VolumeDriver\.Create/);
  const get = await call('Plugin.Activate', undefined, { httpMethod: 'GET' });
  t.is(get.status, 404);
  t.is(typeof get.json?.Err, 'string');
});

test('transport: every answer has a JSON body, {} at least', async (t) => {
  const { call } = await setup(t);
  // Calls that answer "nothing" still answer {}.
  for (const method of ['NetworkDriver.FreeNetwork', 'NetworkDriver.DiscoverNew', 'NetworkDriver.DiscoverDelete',
    'NetworkDriver.RevokeExternalConnectivity', 'NetworkDriver.Leave', 'NetworkDriver.DeleteEndpoint',
    'NetworkDriver.DeleteNetwork', 'IpamDriver.ReleasePool']) {
    const reply = await call(method, { NetworkID: hexId(), EndpointID: hexId(), PoolID: 'nope' });
    t.is(reply.status, 200, method);
    t.deepEqual(reply.json, {}, method);
  }
  const failed = await call('IpamDriver.RequestAddress', '');
  t.not(failed.status, 200);
  t.not(failed.text, '');
});

// ---- newer request shapes (v28, v29) --------------------------------------------------------------

test('v28: an IPv6-only network (enable_ipv4 false) works and Join gives only GatewayIPv6', async (t) => {
  const { call, core } = await setup(t);
  const net = await createNetwork(t, call, { v4: false, v6: true, enableIPv4: false });
  t.deepEqual(core.networks.get(net.networkId).ipv4, []);
  const c = await startContainer(t, call, net);
  t.is(c.ipv4, undefined);
  t.regex(c.ipv6!, /\/128$/);
  t.is(c.joined.GatewayIPv6, plain(net.v6!.gateway));
  t.false('Gateway' in c.joined);
  t.deepEqual(c.joined.StaticRoutes, [
    { Destination: `${plain(net.v6!.gateway)}/128`, RouteType: 1 },
    { Destination: net.v6!.pool, RouteType: 0, NextHop: plain(net.v6!.gateway) },
  ]);
});

test('v28: enable_ipv4 false wins over IPv4Data Docker still sent', async (t) => {
  const { call, core } = await setup(t);
  const v6 = await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: true });
  const networkId = hexId();
  await ok(t, call, 'NetworkDriver.CreateNetwork', {
    NetworkID: networkId,
    Options: { 'com.docker.network.enable_ipv4': false, 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': {} },
    IPv4Data: [{ AddressSpace: 'membrane-local', Pool: '10.99.0.0/24' }],
    IPv6Data: [{ AddressSpace: 'membrane-local', Pool: v6.Pool }],
  });
  t.deepEqual(core.networks.get(networkId).ipv4, []);
});

test('unknown option keys in Options, the generic map and the body are tolerated', async (t) => {
  const { call, core } = await setup(t);
  const net = await createNetwork(t, call, {
    generic: { 'com.example.vendor': 'x', 'com.docker.network.bridge.name': 'br-x' },
    extraOptions: { 'com.docker.network.future_thing': { nested: [1, 2] }, 'com.docker.network.enable_ipv4': true },
  });
  t.is(core.networks.get(net.networkId).options['com.example.vendor'], 'x');
  const c = await startContainer(t, call, net, { join: false });
  t.deepEqual(await ok(t, call, 'NetworkDriver.Join', {
    NetworkID: net.networkId, EndpointID: c.endpointId, SandboxKey: '/var/run/docker/netns/abc', Options: { 'com.docker.network.portmap': [] },
    FutureField: { a: 1 },
  }).then((j) => j.InterfaceName), { SrcName: `mbc${c.endpointId.slice(0, 12)}`, DstPrefix: 'eth' });
});

test('v28: GwAllocCheck answers SkipIPv4/SkipIPv6 false', async (t) => {
  const { call } = await setup(t);
  t.deepEqual(await ok(t, call, 'NetworkDriver.GwAllocCheck', {
    Options: { 'com.docker.network.enable_ipv4': true, 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': {} },
  }), { SkipIPv4: false, SkipIPv6: false });
  t.deepEqual(await ok(t, call, 'NetworkDriver.GwAllocCheck'), { SkipIPv4: false, SkipIPv6: false });
});

test('v29: RequestAddress carrying com.docker.network.endpoint.name works', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call);
  const v4 = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: { 'com.docker.network.endpoint.name': 'web' } });
  t.is(v4.Address, '10.210.0.2/32');
  t.deepEqual(v4.Data, {});
  const v6 = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v6!.poolId, Address: '', Options: { 'com.docker.network.endpoint.name': 'web' } });
  t.regex(v6.Address, /\/128$/);
});

test('v28/v29: ProgramExternalConnectivity with no_proxy_6to4 answers {}', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call);
  const c = await startContainer(t, call, net);
  t.deepEqual(await ok(t, call, 'NetworkDriver.ProgramExternalConnectivity', {
    NetworkID: net.networkId, EndpointID: c.endpointId,
    Options: {
      'com.docker.network.endpoint.exposedports': [{ Proto: 6, Port: 80 }],
      'com.docker.network.portmap': [{ Proto: 6, IP: '', Port: 80, HostIP: '', HostPort: 8080, HostPortEnd: 8080 }],
      'com.docker.network.driver.private.no_proxy_6to4': true,
    },
  }), {});
  t.deepEqual(await ok(t, call, 'NetworkDriver.RevokeExternalConnectivity', { NetworkID: net.networkId, EndpointID: c.endpointId }), {});
});

test('AllocateNetwork, FreeNetwork, DiscoverNew and DiscoverDelete answer sanely', async (t) => {
  const { call } = await setup(t);
  const networkId = hexId();
  // The returned Options replace the network's driver options on workers: echo them.
  t.deepEqual(await ok(t, call, 'NetworkDriver.AllocateNetwork', {
    NetworkID: networkId, Options: { 'com.docker.network.driver.mtu': '1400' }, IPv4Data: [{ Pool: '10.0.9.0/24', Gateway: '10.0.9.1/24' }], IPv6Data: null,
  }), { Options: { 'com.docker.network.driver.mtu': '1400' } });
  t.deepEqual(await ok(t, call, 'NetworkDriver.FreeNetwork', { NetworkID: networkId }), {});
  const discovery = { DiscoveryType: 1, DiscoveryData: { Address: '192.0.2.10', BindAddress: '0.0.0.0', Self: true } };
  t.deepEqual(await ok(t, call, 'NetworkDriver.DiscoverNew', discovery), {});
  t.deepEqual(await ok(t, call, 'NetworkDriver.DiscoverDelete', discovery), {});
});

// ---- semantics --------------------------------------------------------------------------------

test('RequestPool with Pool "" hands out a different pool every time (v4 and v6), v6 /64s inside the ULA', async (t) => {
  const { call } = await setup(t);
  const request = (v6: boolean) => ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: v6 });
  const a4 = await request(false);
  const b4 = await request(false);
  t.not(a4.Pool, b4.Pool);
  t.not(a4.PoolID, b4.PoolID);
  for (const p of [a4, b4]) t.true(prefixContainsPrefix(parsePrefix('10.210.0.0/16'), parsePrefix(p.Pool)), p.Pool);
  const a6 = await request(true);
  const b6 = await request(true);
  t.not(a6.Pool, b6.Pool);
  for (const p of [a6, b6]) {
    const prefix = parsePrefix(p.Pool);
    t.is(prefix.length, 64);
    t.true(prefixContainsPrefix(parsePrefix(ULA), prefix), p.Pool);
  }
});

test('an explicit --subnet overlapping an existing pool is refused, naming that pool', async (t) => {
  const { call } = await setup(t);
  await createNetwork(t, call, { subnet4: '10.77.0.0/24', v6: false });
  const err = await fails(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '10.77.0.0/16', SubPool: '', Options: {}, V6: false });
  t.regex(err, /10\.77\.0\.0\/24/);
  const inside = await fails(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '10.77.0.128/25', SubPool: '', Options: {}, V6: false });
  t.regex(inside, /10\.77\.0\.0\/24/);
});

test('exhausting a small --subnet gives an Err naming the pool', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call, { subnet4: '10.99.0.0/30', v6: false });
  t.is(net.v4!.gateway, '10.99.0.1/30');
  const first = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: null });
  t.is(first.Address, '10.99.0.2/32');
  const err = await fails(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: null });
  t.regex(err, /10\.99\.0\.0\/30/);
  t.regex(err, /exhausted/);
});

test('gateways keep the pool prefix length; endpoint addresses are /32 and /128', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call);
  t.is(net.v4!.gateway, '10.210.0.1/24');
  t.is(net.v6!.gateway, 'fde3:75a:9371:1::1/64');
  const c = await startContainer(t, call, net, { join: false });
  t.is(c.ipv4, '10.210.0.2/32');
  t.is(c.ipv6, 'fde3:75a:9371:1::2/128');
});

test('CreateEndpoint: fill-only rule for the MAC', async (t) => {
  const { call, nl } = await setup(t);
  const net = await createNetwork(t, call);
  const given = await startContainer(t, call, net, { join: false, mac: '02:42:AC:11:00:99' });
  t.deepEqual(given.created, {}, 'a MAC Docker sent must not be echoed');
  t.is(nl.linkGetByName(`mbc${given.endpointId.slice(0, 12)}`)!.mac, '02:42:ac:11:00:99');
  const generated = await startContainer(t, call, net, { join: false });
  t.deepEqual(generated.created, { Interface: { MacAddress: endpointMac(generated.endpointId) } });
  t.is(nl.linkGetByName(`mbc${generated.endpointId.slice(0, 12)}`)!.mac, endpointMac(generated.endpointId));
});

test('Join: interface, gateways, static routes and DisableGatewayService', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call);
  const c = await startContainer(t, call, net);
  t.regex(c.joined.InterfaceName.SrcName, /^mbc[0-9a-f]{12}$/);
  t.deepEqual(c.joined, {
    InterfaceName: { SrcName: `mbc${c.endpointId.slice(0, 12)}`, DstPrefix: 'eth' },
    Gateway: '10.210.0.1',
    GatewayIPv6: 'fde3:75a:9371:1::1',
    StaticRoutes: [
      { Destination: '10.210.0.1/32', RouteType: 1 },
      { Destination: '10.210.0.0/24', RouteType: 0, NextHop: '10.210.0.1' },
      { Destination: 'fde3:75a:9371:1::1/128', RouteType: 1 },
      { Destination: 'fde3:75a:9371:1::/64', RouteType: 0, NextHop: 'fde3:75a:9371:1::1' },
    ],
    DisableGatewayService: true,
  });
});

test('--internal: Join gives no gateway, and the network table prohibits everything else', async (t) => {
  const { call, nl, core } = await setup(t);
  const net = await createNetwork(t, call, { internal: true });
  const c = await startContainer(t, call, net);
  t.false('Gateway' in c.joined);
  t.false('GatewayIPv6' in c.joined);
  t.true(c.joined.DisableGatewayService);
  const table = core.networks.get(net.networkId).table;
  const defaults = nl.allRoutes().filter((r) => r.table === table && r.dstLen === 0).map((r) => `${r.family} ${r.type}`).sort();
  t.deepEqual(defaults, ['4 prohibit', '6 prohibit']);
});

test('CreateNetwork naming a pool Membrane did not allocate tells the user to use --ipam-driver membrane', async (t) => {
  const { call, core } = await setup(t);
  const networkId = hexId();
  const err = await fails(t, call, 'NetworkDriver.CreateNetwork', {
    NetworkID: networkId, Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': {} },
    IPv4Data: [{ AddressSpace: 'LocalDefault', Pool: '172.18.0.0/16', Gateway: '172.18.0.1/16' }], IPv6Data: [],
  });
  t.regex(err, /--ipam-driver membrane/);
  t.deepEqual(core.networks.list(), []);
});

test('-o com.docker.network.driver.mtu: invalid values fail clearly, 1400 reaches the veth', async (t) => {
  const { call, nl, core } = await setup(t);
  const pool = await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false });
  const bad = await fails(t, call, 'NetworkDriver.CreateNetwork', {
    NetworkID: hexId(), Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': { 'com.docker.network.driver.mtu': 'abc' } },
    IPv4Data: [{ AddressSpace: 'membrane-local', Pool: pool.Pool }], IPv6Data: [],
  });
  t.regex(bad, /com\.docker\.network\.driver\.mtu/);
  t.regex(bad, /abc/);
  t.deepEqual(core.networks.list(), []);
  await ok(t, call, 'IpamDriver.ReleasePool', { PoolID: pool.PoolID });

  const net = await createNetwork(t, call, { generic: { 'com.docker.network.driver.mtu': '1400' } });
  t.is(core.networks.get(net.networkId).mtu, 1400);
  const c = await startContainer(t, call, net);
  t.is(nl.linkGetByName(c.hostIf)!.mtu, 1400);
  t.is(nl.linkGetByName(`mbc${c.endpointId.slice(0, 12)}`)!.mtu, 1400);
});

test('an unknown -o membrane.* option fails clearly', async (t) => {
  const { call, core } = await setup(t);
  const pool = await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false });
  const err = await fails(t, call, 'NetworkDriver.CreateNetwork', {
    NetworkID: hexId(), Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': { 'membrane.xyz': '1' } },
    IPv4Data: [{ AddressSpace: 'membrane-local', Pool: pool.Pool }], IPv6Data: [],
  });
  t.regex(err, /membrane\.xyz/);
  t.deepEqual(core.networks.list(), []);
});

// ---- idempotency ------------------------------------------------------------------------------

test('idempotent: CreateNetwork twice', async (t) => {
  const { call, core, nl } = await setup(t);
  const net = await createNetwork(t, call);
  const before = nl.allRoutes();
  const body = {
    NetworkID: net.networkId, Options: { 'com.docker.network.enable_ipv6': true, 'com.docker.network.generic': {} },
    IPv4Data: [{ AddressSpace: 'membrane-local', Pool: net.v4!.pool, Gateway: net.v4!.gateway }],
    IPv6Data: [{ AddressSpace: 'membrane-local', Pool: net.v6!.pool, Gateway: net.v6!.gateway }],
  };
  t.deepEqual(await ok(t, call, 'NetworkDriver.CreateNetwork', body), {});
  t.is(core.networks.list().length, 1);
  t.deepEqual(nl.allRoutes(), before);
});

test('idempotent: CreateEndpoint twice gives the same answer and one veth; Join twice too', async (t) => {
  const { call, nl } = await setup(t);
  const net = await createNetwork(t, call);
  const c = await startContainer(t, call, net, { join: false });
  const again = await ok(t, call, 'NetworkDriver.CreateEndpoint', {
    NetworkID: net.networkId, EndpointID: c.endpointId,
    Interface: { Address: c.ipv4, AddressIPv6: c.ipv6, MacAddress: '' }, Options: {},
  });
  t.deepEqual(again, c.created);
  t.is(nl.userLinks().length, 2, 'one veth pair');
  const join = { NetworkID: net.networkId, EndpointID: c.endpointId, SandboxKey: '/var/run/docker/netns/1', Options: {} };
  const first = await ok(t, call, 'NetworkDriver.Join', join);
  const second = await ok(t, call, 'NetworkDriver.Join', join);
  t.deepEqual(second, first);
  t.is(nl.userLinks().length, 2);
});

test('idempotent: Leave, DeleteEndpoint, DeleteNetwork, ReleaseAddress, ReleasePool of unknown ids answer {}', async (t) => {
  const { call } = await setup(t);
  const net = await createNetwork(t, call);
  const unknown = hexId();
  t.deepEqual(await ok(t, call, 'NetworkDriver.Leave', { NetworkID: net.networkId, EndpointID: unknown }), {});
  t.deepEqual(await ok(t, call, 'NetworkDriver.Leave', { NetworkID: unknown, EndpointID: unknown }), {});
  t.deepEqual(await ok(t, call, 'NetworkDriver.DeleteEndpoint', { NetworkID: net.networkId, EndpointID: unknown }), {});
  t.deepEqual(await ok(t, call, 'NetworkDriver.DeleteNetwork', { NetworkID: unknown }), {});
  t.deepEqual(await ok(t, call, 'IpamDriver.ReleaseAddress', { PoolID: 'no-such-pool', Address: '10.1.2.3' }), {});
  t.deepEqual(await ok(t, call, 'IpamDriver.ReleaseAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.77' }), {});
  t.deepEqual(await ok(t, call, 'IpamDriver.ReleasePool', { PoolID: 'no-such-pool' }), {});
  // And the real ones twice.
  const c = await startContainer(t, call, net);
  for (let i = 0; i < 2; i++) {
    t.deepEqual(await ok(t, call, 'NetworkDriver.Leave', { NetworkID: net.networkId, EndpointID: c.endpointId }), {});
    t.deepEqual(await ok(t, call, 'NetworkDriver.DeleteEndpoint', { NetworkID: net.networkId, EndpointID: c.endpointId }), {});
    t.deepEqual(await ok(t, call, 'IpamDriver.ReleaseAddress', { PoolID: net.v4!.poolId, Address: plain(c.ipv4) }), {});
  }
});

// ---- concurrency ------------------------------------------------------------------------------

test('concurrency: 100 concurrent RequestAddress calls on one pool get 100 distinct addresses', async (t) => {
  const { call, core } = await setup(t);
  const net = await createNetwork(t, call, { v6: false });
  const replies = await Promise.all(Array.from({ length: 100 }, () =>
    call('IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: null })));
  t.true(replies.every((r) => r.status === 200), replies.find((r) => r.status !== 200)?.text);
  const addresses = new Set(replies.map((r) => r.json.Address));
  t.is(addresses.size, 100);
  t.false(addresses.has(net.v4!.gateway.replace('/24', '/32')));
  // Each answer was given after the state holding it reached the disk.
  const onDisk = onDiskState(core.stateFile);
  const allocated = new Set<string>(onDisk.pools[net.v4!.poolId].allocator.allocated);
  for (const a of addresses) t.true(allocated.has(plain(a)), a);
});

test('concurrency: 20 concurrent CreateEndpoint calls all succeed with distinct host veths', async (t) => {
  const { call, nl, core } = await setup(t);
  const net = await createNetwork(t, call);
  const requests = [];
  for (let i = 0; i < 20; i++) {
    const v4 = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: null });
    const v6 = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v6!.poolId, Address: '', Options: null });
    requests.push({ NetworkID: net.networkId, EndpointID: hexId(), Interface: { Address: v4.Address, AddressIPv6: v6.Address, MacAddress: '' }, Options: {} });
  }
  const replies = await Promise.all(requests.map((body) => call('NetworkDriver.CreateEndpoint', body)));
  t.true(replies.every((r) => r.status === 200), replies.find((r) => r.status !== 200)?.text);
  const hostLinks = nl.userLinks().filter((l) => l.name.startsWith('mbr'));
  t.is(hostLinks.length, 20);
  t.is(new Set(hostLinks.map((l) => l.name)).size, 20);
  t.deepEqual(new Set(hostLinks.map((l) => l.name)), new Set(requests.map((r) => `mbr${r.EndpointID.slice(0, 12)}`)));
  t.is(core.endpoints.list().length, 20);
  t.is(nl.allRoutes().filter((r) => r.type === 'unicast').length, 40);
});

// ---- restart ----------------------------------------------------------------------------------

test('restart: a second core on the same state dir has everything, and allocates without collisions', async (t) => {
  const env = await setup(t);
  const { call, nl } = env;
  const net = await createNetwork(t, call);
  const other = await createNetwork(t, call, { internal: true });
  const a = await startContainer(t, call, net);
  const b = await startContainer(t, call, net, { join: false });
  const c = await startContainer(t, call, other);
  const extra = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.200', Options: null });
  // No flush and no shutdown: only what the handlers awaited is on disk.
  const core2 = buildCore(env.config, nl, path.join(env.dir, 'proc-sys'));
  const call2 = await serve(t, core2, env.dir);
  t.deepEqual(core2.networks.list().map((n) => n.id).sort(), [net.networkId, other.networkId].sort());
  t.deepEqual(core2.endpoints.list().map((e) => e.id).sort(), [a.endpointId, b.endpointId, c.endpointId].sort());
  t.true(core2.endpoints.get(a.endpointId).joined);
  t.false(core2.endpoints.get(b.endpointId).joined);
  t.deepEqual(core2.networks.get(other.networkId).internal, true);
  const held = [a.ipv4, b.ipv4, extra.Address, net.v4!.gateway].map(plain);
  for (const address of held) t.true(core2.ipam.allocator(net.v4!.poolId).isAllocated(address), address);
  t.true(core2.ipam.allocator(net.v6!.poolId).isAllocated(plain(a.ipv6)));

  const fresh = await Promise.all(Array.from({ length: 5 }, () =>
    ok(t, call2, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '', Options: null })));
  for (const f of fresh) t.false(held.includes(plain(f.Address)), f.Address);
  t.is(new Set(fresh.map((f) => f.Address)).size, 5);
  t.regex(await fails(t, call2, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.200', Options: null }), /already allocated/);
  const pool = await ok(t, call2, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false });
  t.false([net.v4!.pool, other.v4!.pool].includes(pool.Pool));
  const pool6 = await ok(t, call2, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: true });
  t.false([net.v6!.pool, other.v6!.pool].includes(pool6.Pool));
  // The restarted core keeps serving the endpoints it inherited.
  const joined = await ok(t, call2, 'NetworkDriver.Join', { NetworkID: net.networkId, EndpointID: b.endpointId, SandboxKey: '/x', Options: {} });
  t.is(joined.Gateway, '10.210.0.1');
});

test('restart: reconcileKernel releases vanished joined endpoints and deletes orphan links', async (t) => {
  const env = await setup(t);
  const { call, nl } = env;
  const net = await createNetwork(t, call);
  const gone = await startContainer(t, call, net);
  const alive = await startContainer(t, call, net);
  const idle = await startContainer(t, call, net, { join: false });
  const core2 = buildCore(env.config, nl, path.join(env.dir, 'proc-sys'));

  nl.removeLink(gone.hostIf); // its container's namespace died while we were down
  nl.removeLink(idle.hostIf); // never joined: the veth is simply restored
  const orphanId = hexId();
  nl.linkCreateVeth(`mbr${orphanId.slice(0, 12)}`, `mbc${orphanId.slice(0, 12)}`, { alias: `membrane:${orphanId}` });
  nl.linkCreateVeth('eth9', 'eth9peer', {}); // not ours: untouched

  const report = await core2.reconcileKernel();
  t.deepEqual(report.vanished, [gone.endpointId]);
  t.deepEqual(report.linksRemoved, [`mbr${orphanId.slice(0, 12)}`]);
  t.deepEqual(report.linksRestored, [idle.hostIf]);
  t.is(nl.linkGetByName(`mbr${orphanId.slice(0, 12)}`), null);
  t.is(nl.linkGetByName(`mbc${orphanId.slice(0, 12)}`), null);
  t.truthy(nl.linkGetByName('eth9'));
  t.truthy(nl.linkGetByName(alive.hostIf));
  t.truthy(nl.linkGetByName(idle.hostIf));

  t.deepEqual(core2.endpoints.list().map((e) => e.id).sort(), [alive.endpointId, idle.endpointId].sort());
  t.false(core2.ipam.allocator(net.v4!.poolId).isAllocated(plain(gone.ipv4)));
  t.false(core2.ipam.allocator(net.v6!.poolId).isAllocated(plain(gone.ipv6)));
  t.true(core2.ipam.allocator(net.v4!.poolId).isAllocated(plain(alive.ipv4)));
  t.true(core2.ipam.allocator(net.v4!.poolId).isAllocated(plain(net.v4!.gateway)));
  // The release is durable.
  const onDisk = onDiskState(core2.stateFile);
  t.false(gone.endpointId in onDisk.endpoints);
  t.false(onDisk.pools[net.v4!.poolId].allocator.allocated.includes(plain(gone.ipv4)));
  // Routes: the live endpoints' host routes exist, the vanished one's do not.
  const unicast = nl.allRoutes().filter((r) => r.type === 'unicast').map((r) => r.dst).sort();
  t.deepEqual(unicast, [alive.ipv4, alive.ipv6, idle.ipv4, idle.ipv6].map(plain).sort());
  // A second reconciliation has nothing left to do.
  const again = await core2.reconcileKernel();
  t.deepEqual([again.vanished, again.linksRemoved, again.linksRestored, again.routesAdded, again.routesRemoved, again.rulesAdded, again.rulesRemoved],
    [[], [], [], 0, 0, 0, 0]);
});

// ---- stale reclaim ----------------------------------------------------------------------------

test('stale reclaim: an address held by a vanished joined endpoint can be requested again; a live one cannot', async (t) => {
  const { call, nl, core } = await setup(t);
  const net = await createNetwork(t, call);
  const dead = await startContainer(t, call, net, { ip: '10.210.0.50' });
  const live = await startContainer(t, call, net, { ip: '10.210.0.51' });
  t.is(dead.ipv4, '10.210.0.50/32');
  nl.removeLink(dead.hostIf);

  const reclaimed = await ok(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.50', Options: null });
  t.is(reclaimed.Address, '10.210.0.50/32');
  t.false(core.endpoints.list().some((e) => e.id === dead.endpointId), 'the vanished endpoint was released');
  t.false(core.ipam.allocator(net.v6!.poolId).isAllocated(plain(dead.ipv6)), 'with its other addresses');

  const err = await fails(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.51', Options: null });
  t.regex(err, /already allocated/);
  t.regex(err, /10\.210\.0\.51/);
  t.true(core.endpoints.list().some((e) => e.id === live.endpointId));
  // The new container gets its endpoint on the reclaimed address.
  const endpointId = hexId();
  await ok(t, call, 'NetworkDriver.CreateEndpoint', {
    NetworkID: net.networkId, EndpointID: endpointId, Interface: { Address: reclaimed.Address, AddressIPv6: '', MacAddress: '' }, Options: {},
  });
  t.truthy(nl.linkGetByName(`mbr${endpointId.slice(0, 12)}`));
});

test('stale reclaim: an endpoint that never joined is not reclaimed (Docker still owns it)', async (t) => {
  const { call, nl } = await setup(t);
  const net = await createNetwork(t, call, { v6: false });
  const idle = await startContainer(t, call, net, { ip: '10.210.0.60', join: false });
  nl.removeLink(idle.hostIf);
  t.regex(await fails(t, call, 'IpamDriver.RequestAddress', { PoolID: net.v4!.poolId, Address: '10.210.0.60', Options: null }), /already allocated/);
});

test('RequestPool refuses special-purpose subnets and ranges in both families, and leaves no pool or state behind', async (t) => {
  const { call, core } = await setup(t);
  const before = JSON.stringify(core.ctx.state);
  const writes = core.ctx.store.writes;
  const refused: [pool: string, subPool: string, v6: boolean, message: RegExp][] = [
    ['::1/112', '', true, /^subnet "::1\/112" has host bits set: the network it lies in is ::\/112/],
    ['::/112', '', true, /^subnet ::\/112 lies in special-purpose address space .*::1\/128 \(loopback address.*unique local \/64/],
    ['::/64', '', true, /::\/128 \(unspecified address/],
    ['::ffff:0.0.0.0/104', '', true, /IPv4-mapped/],
    ['fe80::/64', '', true, /fe80::\/10 \(link-local unicast, RFC 4291/],
    ['ff00::/64', '', true, /ff00::\/8 \(multicast, RFC 4291/],
    ['fd00:77::/64', 'fd00:77::9/125', true, /^--ip-range "fd00:77::9\/125" has host bits set/],
    ['0.0.0.0/24', '', false, /0\.0\.0\.0\/8 \("this network", RFC 791/],
    ['127.1.0.0/24', '', false, /127\.0\.0\.0\/8 \(loopback, RFC 1122/],
    ['169.254.10.0/24', '', false, /169\.254\.0\.0\/16 \(link local, RFC 3927/],
    ['224.1.0.0/24', '', false, /224\.0\.0\.0\/4 \(multicast, RFC 5771/],
    ['240.0.0.0/24', '', false, /240\.0\.0\.0\/4 \(reserved/],
    ['255.255.255.0/24', '', false, /255\.255\.255\.255\/32 \(limited broadcast/],
    ['10.88.0.1/24', '', false, /host bits set: the network it lies in is 10\.88\.0\.0\/24/],
  ];
  for (const [pool, subPool, v6, message] of refused) {
    const err = await fails(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: pool, SubPool: subPool, Options: {}, V6: v6 });
    t.regex(err, message, pool);
  }
  t.is(JSON.stringify(core.ctx.state), before, 'no pool, serial or anything else changed');
  t.is(core.ctx.store.writes, writes, 'nothing was written');
  // The same subnets' ordinary neighbours work.
  await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: 'fd00:78::/64', SubPool: 'fd00:78::/120', Options: {}, V6: true });
  await ok(t, call, 'IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '192.0.2.0/24', SubPool: '', Options: {}, V6: false });
});

test('a pool persisted before the check keeps its containers, but hands out no special-purpose address', async (t) => {
  const env = await setup(t);
  const net = await createNetwork(t, env.call, { subnet4: '10.66.0.0/24', v6: false });
  // What an older Membrane accepted: rewrite the pool as 224.1.0.0/24 in the state file.
  const poolId = net.v4!.poolId.replaceAll('10.66.0.', '224.1.0.');
  await env.core.ctx.store.commit();
  const file = path.join(env.stateDir, 'state.json');
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replaceAll('10.66.0.', '224.1.0.'));
  const core = buildCore(env.config, env.nl, path.join(env.dir, 'proc-sys'));
  const call = await serve(t, core, env.dir);
  t.is(core.ctx.state.pools[poolId]!.pool, '224.1.0.0/24');
  const err = await fails(t, call, 'IpamDriver.RequestAddress', { PoolID: poolId, Address: '224.1.0.9', Options: null });
  t.regex(err, /^requested address \(--ip, --ip6 or --aux-address\) 224\.1\.0\.9 is a special-purpose address: 224\.0\.0\.0\/4 \(multicast/);
});

// ---- kernel work after the answer: prepared veth pairs, deferred deletion ----------------------

/**
 * A reconciled core whose background work runs only when the test drains it (the queue waits for
 * a minute of quiet, and a call has just finished), with `prepared` pairs made.
 */
async function setupWithIdleWork(t: ExecutionContext, prepared: number): Promise<Env & { idle: IdleWork }> {
  const idle = new IdleWork(silentLogger(), 60_000);
  const env = await setup(t, { preparedEndpoints: prepared }, idle);
  await env.core.reconcileKernel();
  env.core.startPreparing();
  await idle.drain();
  idle.requestStarted();
  idle.requestFinished();
  return { ...env, idle };
}

test('prepared pairs: CreateEndpoint takes a pair made ahead, renamed and re-addressed, with its reserved number', async (t) => {
  const { call, nl, core, idle } = await setupWithIdleWork(t, 3);
  const pool = nl.linkList().filter((l) => l.alias.startsWith('membrane-pool:'));
  t.is(pool.length, 3);
  t.true(pool.every((l) => /^mbp[0-9a-f]{12}$/.test(l.name) && !l.up));
  const net = await createNetwork(t, call);
  const reserved = pool.map((l) => Number(l.alias.split(':')[1]));
  const c = await startContainer(t, call, net, { mac: '02:42:0a:00:00:09' });
  const host = nl.linkGetByName(c.hostIf)!;
  t.truthy(host, 'the endpoint has its usual name');
  t.is(host.index, pool[0]!.index, 'and it is the first prepared pair');
  t.is(host.alias, `membrane:${c.endpointId}`);
  t.true(host.up);
  const peer = nl.linkGetByIndex(host.linkIndex)!;
  t.is(peer.name, `mbc${c.endpointId.slice(0, 12)}`);
  t.is(peer.mac, '02:42:0a:00:00:09');
  t.is(c.joined.InterfaceName.SrcName, peer.name);
  t.is(core.ctx.state.endpoints[c.endpointId]!.number, reserved[0]);
  // Refilled in the background, with a new number.
  await idle.drain();
  const after = nl.linkList().filter((l) => l.alias.startsWith('membrane-pool:'));
  t.is(after.length, 3);
  t.false(after.some((l) => Number(l.alias.split(':')[1]) === reserved[0]));
  t.is(core.ctx.dataplane.prepared!.taken, 1);
  // A clean stop removes them.
  await core.stopPreparing();
  t.is(nl.linkList().filter((l) => l.alias.startsWith('membrane-pool:')).length, 0);
  t.truthy(nl.linkGetByName(c.hostIf), 'the endpoint\'s own pair stays');
});

test('deferred deletion: DeleteEndpoint answers before the veth goes; the veths go in one batch when idle', async (t) => {
  const { call, nl, idle } = await setupWithIdleWork(t, 0);
  const net = await createNetwork(t, call);
  const containers = [await startContainer(t, call, net), await startContainer(t, call, net)];
  for (const c of containers) {
    await ok(t, call, 'NetworkDriver.Leave', { NetworkID: net.networkId, EndpointID: c.endpointId });
    await ok(t, call, 'NetworkDriver.DeleteEndpoint', { NetworkID: net.networkId, EndpointID: c.endpointId });
    t.truthy(nl.linkGetByName(c.hostIf), 'still there right after the answer');
    // What could carry traffic is gone already: its routes.
    t.false(nl.routeList(4, 0).some((r) => r.dst === plain(c.ipv4)));
  }
  const before = nl.calls.filter((c) => c === 'linkDeleteGroup').length;
  await idle.drain();
  for (const c of containers) t.is(nl.linkGetByName(c.hostIf), null);
  t.is(nl.calls.filter((c) => c === 'linkDeleteGroup').length - before, 1, 'one request for both');
  t.is(nl.linkList().filter((l) => l.group === DOOMED_LINK_GROUP).length, 0);
});

test('a prepared pair whose creation a kill -9 cut before its alias is removed by the next start', async (t) => {
  const { nl, config, dir } = await setupWithIdleWork(t, 0);
  // The veth exists, its alias (a second request) was never set.
  nl.linkCreateVeth('mbp0123456789ab', 'mbq0123456789ab', {});
  const core2 = buildCore(config, nl, path.join(dir, 'proc-sys'), new IdleWork(silentLogger(), 60_000));
  const report = await core2.reconcileKernel();
  t.is(nl.linkGetByName('mbp0123456789ab'), null);
  t.true((report.linksRemoved as string[]).includes('mbp0123456789ab'));
});

test('deferred deletion: a daemon that dies before the batch leaves orphans the next start removes, with leftover prepared pairs', async (t) => {
  const { call, nl, core, config, dir } = await setupWithIdleWork(t, 2);
  const net = await createNetwork(t, call);
  const gone = await startContainer(t, call, net);
  const kept = await startContainer(t, call, net);
  await ok(t, call, 'NetworkDriver.Leave', { NetworkID: net.networkId, EndpointID: gone.endpointId });
  await ok(t, call, 'NetworkDriver.DeleteEndpoint', { NetworkID: net.networkId, EndpointID: gone.endpointId });
  await core.store.flush();
  // kill -9 now: nothing queued runs. A new daemon on the same kernel and state:
  const core2 = buildCore(config, nl, path.join(dir, 'proc-sys'), new IdleWork(silentLogger(), 60_000));
  const report = await core2.reconcileKernel();
  t.is(nl.linkGetByName(gone.hostIf), null, 'the deleted endpoint\'s veth is gone');
  t.truthy(nl.linkGetByName(kept.hostIf), 'the live one stays');
  t.is(nl.linkList().filter((l) => l.alias.startsWith('membrane-pool:')).length, 0, 'the dead daemon\'s prepared pairs are gone');
  t.true((report.linksRemoved as string[]).includes(gone.hostIf));
  t.deepEqual(Object.keys(onDiskState(core2.stateFile).endpoints), [kept.endpointId]);
});
