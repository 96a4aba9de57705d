// Reconciliation with Docker's view: what Docker no longer has and that an earlier daemon run
// created is released; what Docker has, or what this run created, is kept, whatever the clocks say.

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createCore } from '../daemon.js';
import { DEFAULT_CONFIG } from '../config.js';
import { silentLogger } from '../log.js';
import { Netfilter } from '../netfilter/iptables.js';
import { FakeNetlink } from '../kernel/fake-netlink.js';
import { reconcileWithDockerView, type DockerView } from './reconcile.js';

function hex(n: number): string {
  return n.toString(16).padStart(2, '0').repeat(32);
}

async function setup(t: { teardown: (fn: () => void) => void }) {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-reconcile-'));
  const procSys = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-procsys-'));
  t.teardown(() => {
    fs.rmSync(stateDir, { recursive: true, force: true });
    fs.rmSync(procSys, { recursive: true, force: true });
  });
  const nl = new FakeNetlink();
  const config = { ...DEFAULT_CONFIG, stateDir, ulaPrefix: 'fd11:2233:4455::/48' };
  const core = createCore(config, { nl, log: silentLogger(), netfilter: new Netfilter(false), procSys });
  await core.reconcileKernel();
  /** A new daemon on the same state and kernel, as after a restart. */
  const restart = async () => {
    await core.ctx.store.commit();
    const next = createCore(config, { nl, log: silentLogger(), netfilter: new Netfilter(false), procSys });
    await next.reconcileKernel();
    return next;
  };
  const call = (method: string, body: unknown) => core.routes[method]!(body as Record<string, unknown>) as Promise<Record<string, string>>;
  /** A network with a v4 pool and gateway, as Docker creates it. */
  const network = async (id: string) => {
    const pool = await call('IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false });
    const gw = await call('IpamDriver.RequestAddress', { PoolID: pool.PoolID, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } });
    await call('NetworkDriver.CreateNetwork', { NetworkID: id, Options: { 'com.docker.network.generic': {} }, IPv4Data: [{ Pool: pool.Pool, Gateway: gw.Address }], IPv6Data: [] });
    return pool.PoolID!;
  };
  const endpoint = async (networkId: string, poolId: string, id: string) => {
    const { Address } = await call('IpamDriver.RequestAddress', { PoolID: poolId, Address: '', Options: null });
    await call('NetworkDriver.CreateEndpoint', { NetworkID: networkId, EndpointID: id, Interface: { Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
    await call('NetworkDriver.Join', { NetworkID: networkId, EndpointID: id, SandboxKey: '/var/run/docker/netns/x', Options: {} });
    return Address!.split('/')[0]!;
  };
  return { core, call, network, endpoint, nl, restart };
}

test('releases endpoints, networks, pools and addresses Docker no longer has; keeps the rest', async (t) => {
  const { core: first, call, network, endpoint, nl, restart } = await setup(t);
  const kept = hex(1);
  const gone = hex(2);
  const keptPool = await network(kept);
  const gonePool = await network(gone);
  const live = await endpoint(kept, keptPool, hex(11));
  await endpoint(kept, keptPool, hex(12)); // Docker forgot this container
  await endpoint(gone, gonePool, hex(21));
  // An address Docker asked for and then abandoned (its CreateEndpoint never came).
  const abandoned = (await call('IpamDriver.RequestAddress', { PoolID: keptPool, Address: '', Options: null })).Address!.split('/')[0]!;
  // A pool whose network create never happened.
  const orphanPool = (await call('IpamDriver.RequestPool', { AddressSpace: 'membrane-local', Pool: '', SubPool: '', Options: {}, V6: false })).PoolID!;

  const gateway = first.networks.get(kept).ipv4[0]!.gateway!;
  const core = await restart();
  t.is(core.ctx.state.daemonRun, first.ctx.state.daemonRun! + 1, 'the run number is persisted and moves on');
  const view: DockerView = { networks: new Map([[kept, { endpoints: new Set([hex(11)]), addresses: new Set([live, gateway]) }]]) };
  const report = await reconcileWithDockerView(view, core.ctx, core.networks, core.endpoints);

  t.deepEqual(report.endpointsReleased.sort(), [hex(12), hex(21)]);
  t.deepEqual(report.networksReleased, [gone]);
  t.true(report.poolsReleased.includes(orphanPool));
  t.true(report.poolsReleased.includes(gonePool));
  t.deepEqual(report.addressesReleased, [abandoned]);
  t.deepEqual(core.endpoints.list().map((e) => e.id), [hex(11)]);
  t.deepEqual(core.networks.list().map((n) => n.id), [kept]);
  t.true(core.ipam.allocator(keptPool).isAllocated(live), 'the live container keeps its address');
  t.true(core.ipam.allocator(keptPool).isAllocated(gateway), 'the gateway stays');
  t.false(core.ipam.allocator(keptPool).isAllocated(abandoned));
  t.deepEqual(nl.userLinks().map((l) => l.name).filter((n) => n.startsWith('mbr')), [`mbr${hex(11).slice(0, 12)}`]);
});

test('nothing this run created is touched, even if Docker does not show it yet and the wall clock stepped back', async (t) => {
  const { core, network, endpoint } = await setup(t);
  const id = hex(3);
  const pool = await network(id);
  await endpoint(id, pool, hex(31));
  // NTP stepping the clock back by a day right after boot: the records look older than the start.
  for (const record of [...core.networks.list(), ...core.endpoints.list(), ...Object.values(core.ctx.state.pools)]) record.createdAt -= 86_400_000;
  for (const owner of Object.values(core.ctx.state.pools).flatMap((p) => Object.values(p.owners))) owner.since -= 86_400_000;
  const report = await reconcileWithDockerView({ networks: new Map() }, core.ctx, core.networks, core.endpoints);
  t.deepEqual(report, { endpointsReleased: [], networksReleased: [], poolsReleased: [], addressesReleased: [] });
  t.is(core.endpoints.list().length, 1);
});

test('a veth a crash left without its alias is redone when the state wants it and removed when not', async (t) => {
  const { core, call, network, nl } = await setup(t);
  const id = hex(5);
  const pool = await network(id);
  const { Address } = await call('IpamDriver.RequestAddress', { PoolID: pool, Address: '', Options: null });
  const endpointId = hex(51);
  await call('NetworkDriver.CreateEndpoint', { NetworkID: id, EndpointID: endpointId, Interface: { Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  const name = `mbr${endpointId.slice(0, 12)}`;
  // kill -9 between creating the pair and naming its owner:
  nl.linkSetAlias(nl.linkGetByName(name)!.index, '');
  // ... and one whose endpoint record never made it (or was rolled back):
  nl.linkCreateVeth('mbr0123456789ab', 'mbc0123456789ab', {});
  const report = await core.reconcileKernel() as { linksRemoved: string[] };
  t.deepEqual(report.linksRemoved, ['mbr0123456789ab']);
  t.is(nl.linkGetByName('mbr0123456789ab'), null);
  t.is(nl.linkGetByName(name)?.alias, `membrane:${endpointId}`, 'the wanted endpoint\'s link was redone with its alias');
  // DeleteEndpoint removes an alias-less link of its own too.
  nl.linkSetAlias(nl.linkGetByName(name)!.index, '');
  await call('NetworkDriver.DeleteEndpoint', { NetworkID: id, EndpointID: endpointId });
  t.is(nl.linkGetByName(name), null);
});
