import test from 'ava';
import { randomBytes } from 'node:crypto';
import {
  MAIN_TABLE, MEMBRANE_RTPROT, containerIfName, endpointMac, hostIfName, inPool, linkAlias, planEndpointAddresses,
  planEndpointRoutes, planNetworks, routeKey, type PlannedRoute,
} from './plan.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';

const PRIORITY = 9000;

function network(id: string, table: number, ipv4: string[], ipv6: string[], internal = false): NetworkRecord {
  const entry = (pool: string) => ({ pool, poolId: pool, gateway: undefined, aux: {} });
  return { id, ipv4: ipv4.map(entry), ipv6: ipv6.map(entry), internal, mtu: 1500, table, options: {}, createdAt: 0 };
}

const A = network('a'.repeat(64), 1000, ['10.210.0.0/24'], ['fde3:75a:9371:1::/64']);
const B = network('b'.repeat(64), 1001, ['10.210.1.0/24'], ['fde3:75a:9371:2::/64'], true);

function describeRoute(r: PlannedRoute): string {
  return `${r.table} ${r.type} ${r.dst}/${r.dstLen}`;
}

test('planNetworks: unreachable pools in main, throw own + prohibit others per table, prohibit default when internal', (t) => {
  const plan = planNetworks([A, B], PRIORITY);
  t.deepEqual(plan.routes.map(describeRoute).sort(), [
    // main: every pool unreachable, so host traffic to an unused address fails fast
    `${MAIN_TABLE} unreachable 10.210.0.0/24`,
    `${MAIN_TABLE} unreachable 10.210.1.0/24`,
    `${MAIN_TABLE} unreachable fde3:75a:9371:1::/64`,
    `${MAIN_TABLE} unreachable fde3:75a:9371:2::/64`,
    // A's table: own pools fall through to main, B's are prohibited, the rest of the world is reachable
    '1000 prohibit 10.210.1.0/24',
    '1000 prohibit fde3:75a:9371:2::/64',
    '1000 throw 10.210.0.0/24',
    '1000 throw fde3:75a:9371:1::/64',
    // B (internal): own pools fall through, A's prohibited, and so is everything else
    '1001 prohibit 0.0.0.0/0',
    '1001 prohibit 10.210.0.0/24',
    '1001 prohibit ::/0',
    '1001 prohibit fde3:75a:9371:1::/64',
    '1001 throw 10.210.1.0/24',
    '1001 throw fde3:75a:9371:2::/64',
  ].sort());
  for (const route of plan.routes) {
    t.is(route.protocol, MEMBRANE_RTPROT, describeRoute(route));
    t.is(route.family, route.dst.includes(':') ? 6 : 4, describeRoute(route));
    t.is(route.oif, undefined);
    t.is(route.oifName, undefined);
  }
});

test('planNetworks: one rule per pool, from the pool to its network table, tagged with protocol 201', (t) => {
  const plan = planNetworks([A, B], PRIORITY);
  t.deepEqual(plan.rules.map((r) => `${r.family} ${r.priority} from ${r.src}/${r.srcLen} ${r.action} ${r.table} proto ${r.protocol}`).sort(), [
    `4 ${PRIORITY} from 10.210.0.0/24 lookup 1000 proto 201`,
    `4 ${PRIORITY} from 10.210.1.0/24 lookup 1001 proto 201`,
    `6 ${PRIORITY} from fde3:75a:9371:1::/64 lookup 1000 proto 201`,
    `6 ${PRIORITY} from fde3:75a:9371:2::/64 lookup 1001 proto 201`,
  ].sort());
  for (const rule of plan.rules) t.is(rule.dst, undefined);
});

test('planNetworks: several pools per family and a family a network lacks', (t) => {
  const multi = network('c'.repeat(64), 1002, ['10.1.0.0/24', '10.2.0.0/24'], []);
  const v6only = network('d'.repeat(64), 1003, [], ['fd00:1::/64'], true);
  const plan = planNetworks([multi, v6only], PRIORITY);
  t.is(plan.rules.length, 3);
  const routes = plan.routes.map(describeRoute);
  t.true(routes.includes('1002 throw 10.1.0.0/24'));
  t.true(routes.includes('1002 throw 10.2.0.0/24'));
  // The internal IPv6-only network forbids only the family it has.
  t.true(routes.includes('1003 prohibit ::/0'));
  t.false(routes.includes('1003 prohibit 0.0.0.0/0'));
  // No cross-family prohibits.
  t.false(routes.some((r) => r.startsWith('1002 prohibit')));
  t.false(routes.some((r) => r.startsWith('1003 prohibit 10.')));
  // Keys are unique: the applier can diff by key.
  t.is(new Set(plan.routes.map(routeKey)).size, plan.routes.length);
});

test('planNetworks: nothing for no networks', (t) => {
  t.deepEqual(planNetworks([], PRIORITY), { routes: [], rules: [] });
});

test('interface names fit IFNAMSIZ and differ between host and container side', (t) => {
  for (let i = 0; i < 50; i++) {
    const id = randomBytes(32).toString('hex');
    const host = hostIfName(id);
    const container = containerIfName(id);
    t.true(host.length <= 15, host);
    t.true(container.length <= 15, container);
    t.regex(host, /^mbr[0-9a-f]{12}$/);
    t.regex(container, /^mbc[0-9a-f]{12}$/);
    t.not(host, container);
  }
  t.is(linkAlias('abc'), 'membrane:abc');
});

test('endpointMac: locally administered unicast, stable, distinct per endpoint', (t) => {
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const id = randomBytes(32).toString('hex');
    const mac = endpointMac(id);
    t.regex(mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    const first = parseInt(mac.slice(0, 2), 16);
    t.is(first & 0x01, 0, `${mac} is unicast`);
    t.is(first & 0x02, 0x02, `${mac} is locally administered`);
    t.is(endpointMac(id), mac, 'stable');
    seen.add(mac);
  }
  t.is(seen.size, 200);
  // The value dockerd 20.10 recorded for this endpoint (plugin/docker/fixtures/docker-20.10.json).
  t.is(endpointMac('bacc85ddf23252d3d69f91bdeb3933ea4ddd2bb265b52a16c72c12da73bbb820'), '02:67:d5:cd:31:12');
});

test('endpoint routes and host-side addresses', (t) => {
  const net = network('e'.repeat(64), 1004, [], []);
  net.ipv4 = [{ pool: '10.210.0.0/24', gateway: '10.210.0.1', aux: {} }];
  net.ipv6 = [{ pool: 'fd00:1::/64', gateway: 'fd00:1::1', aux: {} }];
  const id = 'f'.repeat(64);
  const endpoint: EndpointRecord = {
    id, networkId: net.id, hostIfName: hostIfName(id), containerIfName: containerIfName(id), mac: endpointMac(id),
    macGenerated: true, ipv4: '10.210.0.7', ipv6: 'fd00:1::7', mtu: 1500, joined: false, createdAt: 0,
  };
  t.deepEqual(planEndpointRoutes(endpoint).map((r) => [r.family, `${r.dst}/${r.dstLen}`, r.table, r.type, r.oifName, r.protocol]), [
    [4, '10.210.0.7/32', MAIN_TABLE, 'unicast', endpoint.hostIfName, MEMBRANE_RTPROT],
    [6, 'fd00:1::7/128', MAIN_TABLE, 'unicast', endpoint.hostIfName, MEMBRANE_RTPROT],
  ]);
  t.deepEqual(planEndpointAddresses(endpoint, net), [
    { family: 4, address: '10.210.0.1', prefixLen: 32 },
    { family: 6, address: 'fd00:1::1', prefixLen: 128 },
  ]);
  // Without a gateway (e.g. GwAllocCheck skipped it) nothing goes on the host veth.
  net.ipv4[0]!.gateway = undefined;
  t.deepEqual(planEndpointAddresses(endpoint, net).map((a) => a.family), [6]);
});

test('inPool', (t) => {
  t.true(inPool('10.210.0.0/24', '10.210.0.255'));
  t.false(inPool('10.210.0.0/24', '10.210.1.0'));
  t.true(inPool('fd00:1::/64', 'fd00:1::ffff'));
  t.false(inPool('fd00:1::/64', 'fd00:2::1'));
  t.false(inPool('10.0.0.0/8', 'fd00::1'));
});
