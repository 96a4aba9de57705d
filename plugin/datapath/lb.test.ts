// The per-packet service load balancer through BPF_PROG_TEST_RUN: DNAT to a backend and reverse
// translation of its replies (IPv4 and IPv6, TCP and UDP, checksums verified), hairpin, a drained
// backend keeping its flows, a removed backend's flows reset, weights, policy on the backend's
// identity, and the refusal of a VIP with no backend (a reset, ICMP port unreachable).

import fs from 'node:fs';
import test from 'ava';
import { native } from '../kernel/native.js';
import type { Datapath } from './loader.js';
import { LbMaps, type PlannedBackend, type PlannedFrontend } from './lb-maps.js';
import { buildTable, tableSizeFor, type MaglevBackend } from '../lb/maglev.js';
import { CT_KEY_F_SERVICE, CT_LB_F_HAIRPIN, CT_LB_F_TRANSLATED, LB_MAGLEV_KEY } from './maps.js';
import { mapEntries } from './iterate.js';
import { CapacityError } from '../errors.js';
import { ID_FIRST_ENDPOINT, POLICY_ALLOW, POLICY_EGRESS } from './codec.js';
import { PolicyMaps } from './policy-maps.js';
import { A, B, OTHER_NET, TC_ACT_REDIRECT, TC_ACT_SHOT, fromA, setup, type Fixture } from './test-fixture.js';
import { ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_RST, TCP_SYN, ethernet, ipv4, ipv6, parseFrame, tcp, udp } from './packets.js';

const VIP4 = '10.211.0.10';
const VIP6 = 'fd00:96::10';
const DROP_CROSS_NETWORK = 69;
const DROP_POLICY_DEFAULT = 73;
const DROP_NO_SERVICE_BACKEND = 74;
const DROP_SERVICE_BACKEND_GONE = 75;

interface Backend { id: number; address: string; port: number; weight?: number; endpointId: number; state?: PlannedBackend['state'] }

function lbSetup(t: Parameters<typeof setup>[0]) {
  const f = setup(t);
  const bpf = native();
  const datapath = { map: (name: string) => f.map(name) } as unknown as Datapath;
  const lb = new LbMaps(bpf, datapath);
  t.teardown(() => lb.close());
  /** Writes one frontend per (vip, port, protocol) with these backends (weight 0 or a non-active state: out of the table). */
  const service = (frontends: { id: number; vip: string; port: number; protocol: 'tcp' | 'udp'; networkId?: number; backends: Backend[] }[]) => {
    const planned: PlannedFrontend[] = [];
    const backends: PlannedBackend[] = [];
    for (const fe of frontends) {
      const inTable: MaglevBackend[] = fe.backends.filter((b) => (b.weight ?? 1) > 0 && (b.state ?? 'active') === 'active')
        .map((b) => ({ id: b.id, key: `${b.address}:${b.port}`, weight: b.weight ?? 1 }));
      const table = buildTable(inTable, tableSizeFor(inTable.length));
      planned.push({ frontendId: fe.id, vip: fe.vip, port: fe.port, protocol: fe.protocol, networkId: fe.networkId ?? 1, table, backendCount: inTable.length });
      for (const b of fe.backends) {
        backends.push({ backendId: b.id, frontendId: fe.id, address: b.address, port: b.port, state: b.state ?? ((b.weight ?? 1) > 0 ? 'active' : 'terminating'), endpointId: b.endpointId });
      }
    }
    return lb.apply({ frontends: planned, backends });
  };
  return { ...f, lb, service };
}

const fromB = (payload: Buffer, type = ETH_P_IP) => ethernet(B.hostMac, B.mac, type, payload);

function serviceEntry(f: Fixture, family: 4 | 6, proto: number, saddr: string, sport: number, vip: string, vport: number) {
  return f.ct({ family, proto, saddr, daddr: vip, sport, dport: vport, flags: CT_KEY_F_SERVICE });
}

test('TCP over IPv4: a SYN to the VIP goes to the backend, its reply comes back from the VIP, checksums right', (t) => {
  const f = lbSetup(t);
  f.service([{ id: 7, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 70, address: B.ipv4, port: 8080, endpointId: 2 }] }]);
  const syn = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(40000, 80, TCP_SYN))));
  t.is(syn.retval, TC_ACT_REDIRECT, 'delivered straight into B');
  const out = parseFrame(syn.data);
  t.like(out, { saddr: A.ipv4, daddr: B.ipv4, sport: 40000, dport: 8080, dstMac: B.mac, ipChecksumOk: true, l4ChecksumOk: true });
  t.like(serviceEntry(f, 4, 6, A.ipv4, 40000, VIP4, 80)!, { frontendId: 7, backendId: 70, lbFlags: CT_LB_F_TRANSLATED });
  t.like(f.ct({ family: 4, proto: 6, saddr: A.ipv4, daddr: B.ipv4, sport: 40000, dport: 8080 })!, { frontendId: 7, backendId: 70, lbFlags: CT_LB_F_TRANSLATED });
  const synAck = f.run('from_container', f.ifindex.b, fromB(ipv4(B.ipv4, A.ipv4, tcp(8080, 40000, TCP_SYN | TCP_ACK))));
  t.is(synAck.retval, TC_ACT_REDIRECT);
  t.like(parseFrame(synAck.data), { saddr: VIP4, daddr: A.ipv4, sport: 80, dport: 40000, dstMac: A.mac, ipChecksumOk: true, l4ChecksumOk: true });
  // The rest of the flow sticks to the backend the service entry remembers.
  const ack = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(40000, 80, TCP_ACK, Buffer.from('GET / HTTP/1.0\r\n\r\n')))));
  t.like(parseFrame(ack.data), { daddr: B.ipv4, dport: 8080, l4ChecksumOk: true });
  t.is(serviceEntry(f, 4, 6, A.ipv4, 40000, VIP4, 80)!.state, 'established', 'the handshake completed');
});

test('IPv6, TCP and UDP: translated both ways with valid checksums', (t) => {
  const f = lbSetup(t);
  f.service([
    { id: 8, vip: VIP6, port: 443, protocol: 'tcp', backends: [{ id: 80, address: B.ipv6, port: 8443, endpointId: 2 }] },
    { id: 9, vip: VIP6, port: 53, protocol: 'udp', backends: [{ id: 90, address: B.ipv6, port: 5353, endpointId: 2 }] },
    { id: 10, vip: VIP4, port: 53, protocol: 'udp', backends: [{ id: 100, address: B.ipv4, port: 5353, endpointId: 2 }] },
  ]);
  const syn = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, tcp(41000, 443, TCP_SYN)), ETH_P_IPV6)).data);
  t.like(syn, { daddr: B.ipv6, dport: 8443, l4ChecksumOk: true });
  const reply6 = parseFrame(f.run('from_container', f.ifindex.b, fromB(ipv6(B.ipv6, A.ipv6, tcp(8443, 41000, TCP_SYN | TCP_ACK)), ETH_P_IPV6)).data);
  t.like(reply6, { saddr: VIP6, sport: 443, daddr: A.ipv6, l4ChecksumOk: true });
  const query6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, udp(5000, 53)), ETH_P_IPV6)).data);
  t.like(query6, { daddr: B.ipv6, dport: 5353, l4ChecksumOk: true });
  const answer6 = parseFrame(f.run('from_container', f.ifindex.b, fromB(ipv6(B.ipv6, A.ipv6, udp(5353, 5000)), ETH_P_IPV6)).data);
  t.like(answer6, { saddr: VIP6, sport: 53, l4ChecksumOk: true });
  const query4 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, udp(5001, 53)))).data);
  t.like(query4, { daddr: B.ipv4, dport: 5353, ipChecksumOk: true, l4ChecksumOk: true });
  const answer4 = parseFrame(f.run('from_container', f.ifindex.b, fromB(ipv4(B.ipv4, A.ipv4, udp(5353, 5001)))).data);
  t.like(answer4, { saddr: VIP4, sport: 53, ipChecksumOk: true, l4ChecksumOk: true });
});

test('hairpin: a client that is its own backend gets the VIP as source, and its answer comes back from the VIP', (t) => {
  const f = lbSetup(t);
  f.service([{ id: 11, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 110, address: A.ipv4, port: 8080, endpointId: 1 }] }]);
  const syn = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(42000, 80, TCP_SYN))));
  t.is(syn.retval, TC_ACT_REDIRECT, 'back into A');
  t.like(parseFrame(syn.data), { saddr: VIP4, sport: 42000, daddr: A.ipv4, dport: 8080, dstMac: A.mac, ipChecksumOk: true, l4ChecksumOk: true });
  t.like(f.ct({ family: 4, proto: 6, saddr: VIP4, daddr: A.ipv4, sport: 42000, dport: 8080 })!, { lbFlags: CT_LB_F_TRANSLATED | CT_LB_F_HAIRPIN });
  // A, as the server, answers the VIP; A, as the client, must see it come from VIP:80.
  const synAck = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(8080, 42000, TCP_SYN | TCP_ACK))));
  t.is(synAck.retval, TC_ACT_REDIRECT);
  t.like(parseFrame(synAck.data), { saddr: VIP4, sport: 80, daddr: A.ipv4, dport: 42000, ipChecksumOk: true, l4ChecksumOk: true });
  const ipv6Hairpin = () => f.service([{ id: 12, vip: VIP6, port: 80, protocol: 'tcp', backends: [{ id: 120, address: A.ipv6, port: 8080, endpointId: 1 }] }]);
  ipv6Hairpin();
  const syn6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, tcp(42001, 80, TCP_SYN)), ETH_P_IPV6)).data);
  t.like(syn6, { saddr: VIP6, daddr: A.ipv6, dport: 8080, l4ChecksumOk: true });
  const back6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, tcp(8080, 42001, TCP_SYN | TCP_ACK)), ETH_P_IPV6)).data);
  t.like(back6, { saddr: VIP6, sport: 80, daddr: A.ipv6, dport: 42001, l4ChecksumOk: true });
});

test('a drained backend keeps its established flows; new flows go to the backends left in the table', (t) => {
  const f = lbSetup(t);
  const c = { id: 131, address: '10.20.0.12', port: 8080, endpointId: 4 };
  f.service([{ id: 13, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 130, address: B.ipv4, port: 8080, endpointId: 2 }] }]);
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(43000, 80, TCP_SYN))));
  // `docker stop` of B begins: out of the table (terminating), still in the backends map.
  f.service([{ id: 13, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 130, address: B.ipv4, port: 8080, endpointId: 2, state: 'terminating' }, c] }]);
  const old = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(43000, 80, TCP_ACK)))).data);
  t.is(old.daddr, B.ipv4, 'the established flow stays with B');
  for (let port = 43001; port < 43021; port++) {
    t.is(parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(port, 80, TCP_SYN)))).data).daddr, c.address, `new flow from port ${port}`);
  }
});

test('a flow whose backend was removed is reset, so the client reconnects; its new connection gets a live backend', (t) => {
  const f = lbSetup(t);
  const c = { id: 141, address: '10.20.0.12', port: 8080, endpointId: 4 };
  f.service([{ id: 14, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 140, address: B.ipv4, port: 8080, endpointId: 2 }] }]);
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(44000, 80, TCP_SYN))));
  f.service([{ id: 14, vip: VIP4, port: 80, protocol: 'tcp', backends: [c] }]);
  const r = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(44000, 80, TCP_ACK))));
  t.is(r.retval, TC_ACT_REDIRECT, 'answered into A');
  const rst = parseFrame(r.data);
  t.like(rst, { saddr: VIP4, sport: 80, daddr: A.ipv4, dport: 44000, tcpFlags: TCP_RST, seq: 2000, ipChecksumOk: true, l4ChecksumOk: true });
  t.is(f.metric(DROP_SERVICE_BACKEND_GONE, 0), 1n);
  t.is(parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(44000, 80, TCP_SYN)))).data).daddr, c.address);
});

test('no ready backend: a SYN gets a reset and a datagram ICMP port unreachable, from the VIP, counted', (t) => {
  const f = lbSetup(t);
  f.service([
    { id: 15, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 150, address: B.ipv4, port: 8080, endpointId: 2, state: 'quarantined' }] },
    { id: 16, vip: VIP4, port: 53, protocol: 'udp', backends: [] },
    { id: 17, vip: VIP6, port: 80, protocol: 'tcp', backends: [] },
    { id: 18, vip: VIP6, port: 53, protocol: 'udp', backends: [] },
  ]);
  const rst = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(45000, 80, TCP_SYN))));
  t.is(rst.retval, TC_ACT_REDIRECT);
  // The SYN carried seq 1000: the reset acknowledges it (RST|ACK, ack 1001).
  t.like(parseFrame(rst.data), { saddr: VIP4, daddr: A.ipv4, sport: 80, dport: 45000, tcpFlags: TCP_RST | TCP_ACK, ack: 1001,
    dstMac: A.mac, srcMac: A.hostMac, ipChecksumOk: true, l4ChecksumOk: true, length: 54 });
  const sent = ipv4(A.ipv4, VIP4, udp(5002, 53));
  const icmp = f.run('from_container', f.ifindex.a, fromA(sent));
  t.is(icmp.retval, TC_ACT_REDIRECT);
  const unreachable = parseFrame(icmp.data);
  t.like(unreachable, { saddr: VIP4, daddr: A.ipv4, proto: 1, icmpType: 3, icmpCode: 3, ipChecksumOk: true, l4ChecksumOk: true });
  t.deepEqual(unreachable.quoted, sent.subarray(0, 28), 'quotes the datagram\'s IP header and 8 bytes');
  const rst6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, tcp(45001, 80, TCP_SYN)), ETH_P_IPV6)).data);
  t.like(rst6, { saddr: VIP6, daddr: A.ipv6, tcpFlags: TCP_RST | TCP_ACK, ack: 1001, l4ChecksumOk: true });
  const sent6 = ipv6(A.ipv6, VIP6, udp(5003, 53));
  const unreachable6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(sent6, ETH_P_IPV6)).data);
  t.like(unreachable6, { saddr: VIP6, daddr: A.ipv6, proto: 58, icmpType: 1, icmpCode: 4, l4ChecksumOk: true });
  t.deepEqual(unreachable6.quoted, sent6.subarray(0, 48));
  t.is(f.metric(DROP_NO_SERVICE_BACKEND, 0), 4n);
  // A reset is never answered with a reset.
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(45002, 80, TCP_RST)))).retval, TC_ACT_SHOT);
});

test('weights: new flows spread over the backends in proportion to their weights', (t) => {
  const f = lbSetup(t);
  const c = { id: 191, address: '10.20.0.12', port: 8080, endpointId: 4, weight: 3 };
  f.service([{ id: 19, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 190, address: B.ipv4, port: 8080, endpointId: 2, weight: 1 }, c] }]);
  const counts = new Map<string, number>();
  const flows = 400;
  for (let i = 0; i < flows; i++) {
    const daddr = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(20000 + i, 80, TCP_SYN)))).data).daddr;
    counts.set(daddr, (counts.get(daddr) ?? 0) + 1);
  }
  const share = (counts.get(c.address) ?? 0) / flows;
  t.log(`weight 1:3 over ${flows} flows: ${counts.get(B.ipv4)}:${counts.get(c.address)} (share of the heavier ${share.toFixed(3)})`);
  t.true(share > 0.65 && share < 0.85, `share ${share}`);
});

test('policy judges the backend: a client whose egress does not allow the backend cannot use the VIP to reach it', (t) => {
  const f = lbSetup(t);
  const pinDir = `/sys/fs/bpf/mbt-lb-${process.pid}`;
  const policy = new PolicyMaps(native(), { map: (name: string) => f.map(name) } as unknown as Datapath, pinDir);
  t.teardown(() => {
    policy.remove(1);
    policy.close();
    fs.rmSync(pinDir, { recursive: true, force: true });
  });
  f.endpoint(A, { identity: ID_FIRST_ENDPOINT, enforceEgress: true });
  f.endpoint(B, { identity: ID_FIRST_ENDPOINT + 1 });
  // A may reach identity 300 only; B is 257.
  policy.apply(1, [{ key: { identity: 300, direction: POLICY_EGRESS, protocol: 6, port: 0, portBits: 0 }, entry: { ruleId: 1, verdict: POLICY_ALLOW } }]);
  f.service([{ id: 20, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 200, address: B.ipv4, port: 8080, endpointId: 2 }] }]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(46000, 80, TCP_SYN)))).retval, TC_ACT_SHOT);
  t.is(f.metric(DROP_POLICY_DEFAULT, 0), 1n, 'denied as the backend, not allowed as a VIP');
});

test('a client on another network is not translated: dropped as cross-network', (t) => {
  const f = lbSetup(t);
  f.service([{ id: 21, vip: VIP4, port: 80, protocol: 'tcp', networkId: 1, backends: [{ id: 210, address: B.ipv4, port: 8080, endpointId: 2 }] }]);
  const other = ethernet(OTHER_NET.hostMac, OTHER_NET.mac, ETH_P_IP, ipv4(OTHER_NET.ipv4, VIP4, tcp(47000, 80, TCP_SYN)));
  t.is(f.run('from_container', f.ifindex.other, other).retval, TC_ACT_SHOT);
  t.is(f.metric(DROP_CROSS_NETWORK, 0), 1n);
});

/** mb_lb_maglev's entries as (frontend, generation, group) strings. */
function maglevGroups(f: ReturnType<typeof lbSetup>): string[] {
  return mapEntries(native(), f.map('mb_lb_maglev'), 1_000_000).map(([key]) => {
    const k = LB_MAGLEV_KEY.decode(key);
    return `${k.frontendId}/${k.generation}/${k.group}`;
  }).sort();
}

test('the maps as the kernel holds them, read back; a table that changes size is written whole under the next generation, one that keeps it only where it changed', (t) => {
  const f = lbSetup(t);
  const backends = (n: number) => Array.from({ length: n }, (_, i) => ({ id: 300 + i, address: `10.20.1.${i + 1}`, port: 80, endpointId: 10 + i }));
  const first = f.service([{ id: 30, vip: VIP4, port: 80, protocol: 'tcp', backends: backends(2) }]);
  t.like(first, { tablesCreated: 1, slotsWritten: 251, groupsWritten: 1, frontendsWritten: 1, backendsWritten: 2 });
  t.deepEqual(maglevGroups(f), ['30/0/0'], '251 slots: one group of 256');
  const third = f.service([{ id: 30, vip: VIP4, port: 80, protocol: 'tcp', backends: backends(3) }]);
  t.like(third, { tablesCreated: 1, groupsWritten: 2 }, '3 backends need 509 slots: a new table');
  t.deepEqual(maglevGroups(f), ['30/1/0', '30/1/1'], 'generation 1 in two groups; generation 0 is gone');
  const same = f.service([{ id: 30, vip: VIP4, port: 80, protocol: 'tcp', backends: backends(3) }]);
  t.like(same, { tablesCreated: 0, slotsWritten: 0, groupsWritten: 0, frontendsWritten: 0, backendsWritten: 0 }, 'nothing changed, nothing written');
  const weighted = f.service([{ id: 30, vip: VIP4, port: 80, protocol: 'tcp', backends: backends(3).map((b, i) => ({ ...b, weight: i === 0 ? 2 : 1 })) }]);
  t.is(weighted.tablesCreated, 0);
  t.true(weighted.slotsWritten > 0 && weighted.slotsWritten < 509, `${weighted.slotsWritten} slots rewritten in place`);
  t.is(weighted.frontendsWritten, 0, 'the frontend already names this table');
  const held = f.lb.read();
  t.is(held.frontends.length, 1);
  t.like(held.frontends[0]!, { vip: VIP4, port: 80, protocol: 'tcp', frontendId: 30, backendCount: 3, tableSize: 509, tableGeneration: 1 });
  t.deepEqual(Object.keys(held.frontends[0]!.slotsPerBackend).sort(), ['300', '301', '302']);
  t.is(Object.values(held.frontends[0]!.slotsPerBackend).reduce((a, b) => a + b, 0), 509, 'every slot names a backend');
  t.is(held.backends.length, 3);
  const gone = f.service([]);
  t.like(gone, { frontendsDeleted: 1, backendsDeleted: 3 });
  t.deepEqual(f.lb.read(), { frontends: [], backends: [] });
  t.deepEqual(maglevGroups(f), [], 'no group is left behind');
});

test('a daemon that starts again reads the tables back, writes nothing for an unchanged plan, and deletes groups no frontend names (a crash mid-switch)', (t) => {
  const f = lbSetup(t);
  const backends = Array.from({ length: 4 }, (_, i) => ({ id: 400 + i, address: `10.20.2.${i + 1}`, port: 80, endpointId: 20 + i }));
  f.service([{ id: 40, vip: VIP4, port: 80, protocol: 'tcp', backends }]);
  const before = f.lb.read();
  // What a crash leaves: a next generation written but never switched to, and groups of a frontend that was removed.
  const group = Buffer.alloc(1024, 0x11);
  native().bpfMapUpdate(f.map('mb_lb_maglev'), LB_MAGLEV_KEY.encode({ frontendId: 40, generation: 1, group: 0 }), group, 0);
  native().bpfMapUpdate(f.map('mb_lb_maglev'), LB_MAGLEV_KEY.encode({ frontendId: 99, generation: 0, group: 0 }), group, 0);
  f.lb.close(); // forgets everything: the next change reads the maps again, as a new daemon does
  const rerun = f.service([{ id: 40, vip: VIP4, port: 80, protocol: 'tcp', backends }]);
  t.like(rerun, { tablesCreated: 0, slotsWritten: 0, groupsWritten: 0, frontendsWritten: 0, backendsWritten: 0 });
  t.deepEqual(maglevGroups(f), ['40/0/0', '40/0/1'], 'only the generation the frontend names is left');
  t.deepEqual(f.lb.read(), before);
});

test('a change the maps cannot hold is refused before anything is written, with what to do', (t) => {
  const f = lbSetup(t);
  const table = buildTable([{ id: 1, key: 'a', weight: 1 }], 251);
  const frontends: PlannedFrontend[] = Array.from({ length: 65537 }, (_, i) => ({
    frontendId: i + 1, vip: `10.211.${(i >> 8) & 255}.${i & 255}`, port: 1 + (i >> 16), protocol: 'tcp', networkId: 1, table, backendCount: 1,
  }));
  const err = t.throws(() => f.lb.update({ frontends, backends: [], removeFrontendIds: [], removeBackendIds: [] }), { instanceOf: CapacityError });
  t.is(err!.code, 'MEMBRANE_CAPACITY');
  t.regex(err!.message, /needs 65537 service frontends .* mb_lb_frontends holds at most 65536; nothing was written: delete services/);
  t.deepEqual(f.lb.read(), { frontends: [], backends: [] });
  t.deepEqual(maglevGroups(f), []);
});

/** A DNS query (one question, RD set) for `name`, as a UDP payload. */
function dnsQuery(name: string, id = 0x1234, flags = 0x0100): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(flags, 2);
  header.writeUInt16BE(1, 4);
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

const UPSTREAM = '10.255.0.53';

test('DNS: a query for the service zone goes to the responder on the gateway, the answer comes back from the server it was sent to', (t) => {
  const f = lbSetup(t);
  f.lb.setConfig({ socket: false, events: false, dns: { zone: 'svc.membrane', port: 15353 } });
  const query = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, UPSTREAM, udp(40500, 53, dnsQuery('web.svc.membrane')))));
  t.is(query.retval, 0, 'to the host stack');
  t.like(parseFrame(query.data), { saddr: A.ipv4, sport: 40500, daddr: A.gateway4, dport: 15353, ipChecksumOk: true, l4ChecksumOk: true });
  // The responder answers from the gateway; the container must see the upstream server answer.
  const answer = f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4(A.gateway4, A.ipv4, udp(15353, 40500, dnsQuery('web.svc.membrane', 0x1234, 0x8580)))));
  t.is(answer.retval, 0);
  t.like(parseFrame(answer.data), { saddr: UPSTREAM, sport: 53, daddr: A.ipv4, dport: 40500, ipChecksumOk: true, l4ChecksumOk: true });
  // IPv6, and names in any case (0x20 randomisation).
  const query6 = parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, 'fd00:99::53', udp(40501, 53, dnsQuery('Web.SVC.Membrane'))), ETH_P_IPV6)).data);
  t.like(query6, { daddr: A.gateway6, dport: 15353, l4ChecksumOk: true });
  const answer6 = parseFrame(f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IPV6, ipv6(A.gateway6, A.ipv6, udp(15353, 40501, dnsQuery('web.svc.membrane', 1, 0x8580))))).data);
  t.like(answer6, { saddr: 'fd00:99::53', sport: 53, l4ChecksumOk: true });
});

test('DNS: other names, the zone apex, responses and TCP pass untouched; nothing is redirected when DNS is off', (t) => {
  const f = lbSetup(t);
  f.lb.setConfig({ socket: false, events: false, dns: { zone: 'svc.membrane', port: 15353 } });
  for (const payload of [dnsQuery('example.com'), dnsQuery('svc.membrane'), dnsQuery('web.svc.membrane.evil'), dnsQuery('websvc.membrane'),
    dnsQuery('web.svc.membrane', 1, 0x8180) /* a response */]) {
    const sent = fromA(ipv4(A.ipv4, UPSTREAM, udp(40600, 53, payload)));
    const r = f.run('from_container', f.ifindex.a, sent);
    t.deepEqual(r.data, sent, `${payload.subarray(12).toString('latin1')} untouched`);
  }
  const tcpQuery = fromA(ipv4(A.ipv4, UPSTREAM, tcp(40601, 53, TCP_SYN)));
  t.deepEqual(f.run('from_container', f.ifindex.a, tcpQuery).data, tcpQuery);
  f.lb.setConfig({ socket: false, events: false });
  const off = fromA(ipv4(A.ipv4, UPSTREAM, udp(40602, 53, dnsQuery('web.svc.membrane'))));
  t.deepEqual(f.run('from_container', f.ifindex.a, off).data, off, 'serviceDns off');
});

test('with the VIP ranges configured, only packets into them are looked up as VIPs', (t) => {
  const f = lbSetup(t);
  f.lb.setConfig({ socket: false, events: false, vipRanges: { ipv4: { family: 4, network: 0x0ad30000n, length: 16 }, ipv6: { family: 6, network: 0xfd000096n << 96n, length: 112 } } });
  f.service([
    { id: 40, vip: VIP4, port: 80, protocol: 'tcp', backends: [{ id: 400, address: B.ipv4, port: 8080, endpointId: 2 }] },
    { id: 41, vip: VIP6, port: 80, protocol: 'tcp', backends: [{ id: 410, address: B.ipv6, port: 8080, endpointId: 2 }] },
    { id: 42, vip: '10.212.0.10', port: 80, protocol: 'tcp', backends: [{ id: 420, address: B.ipv4, port: 8080, endpointId: 2 }] },
  ]);
  t.is(parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, VIP4, tcp(48000, 80, TCP_SYN)))).data).daddr, B.ipv4, 'inside the IPv4 range');
  t.is(parseFrame(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, VIP6, tcp(48001, 80, TCP_SYN)), ETH_P_IPV6)).data).daddr, B.ipv6, 'inside the IPv6 range');
  const outside = fromA(ipv4(A.ipv4, '10.212.0.10', tcp(48002, 80, TCP_SYN)));
  t.deepEqual(f.run('from_container', f.ifindex.a, outside).data, outside, 'a frontend outside the ranges is never looked up');
});
