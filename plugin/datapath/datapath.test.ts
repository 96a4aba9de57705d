// Packet fixtures through BPF_PROG_TEST_RUN on the real kernel: Membrane's compiled object, fresh
// (unpinned) maps per test, real veths for the ifindexes the programs look up.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { native } from '../kernel/native.js';
import { mapEntries } from './iterate.js';
import { ALL_MAPS, DEFAULT_GEOMETRY, STRUCTS, wantedShape } from './maps.js';
import { NS_PER_SECOND, kernelNowNs, nsAfter, nsBefore } from '../clock.js';
import { EndpointMaps } from './endpoint-maps.js';
import type { Datapath } from './loader.js';
import {
  SIZES, decodeCtEntry, decodeCtKey, decodeEvent, encodeCtEntry, encodeCtKey, encodeConfig, encodeIfindexKey,
} from './codec.js';
import { A, B, OBJECT, OTHER_NET, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, fromA, setup } from './test-fixture.js';
import {
  ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_FIN, TCP_SYN, arpReply, arpRequest, checksum, ethernet, icmpEcho, icmpv6ChecksumOk, ipv4, ipv4ChecksumOk,
  ipv6, neighbourSolicitation, tcp, udp,
} from './packets.js';

test('ARP request for the gateway is answered with the host-side MAC and sent back out', (t) => {
  const f = setup(t);
  const r = f.run('from_container', f.ifindex.a, arpRequest(A.mac, A.ipv4, A.gateway4));
  t.is(r.retval, TC_ACT_REDIRECT);
  const d = r.data;
  t.is(d.subarray(0, 6).toString('hex'), A.mac.replaceAll(':', ''), 'to the container');
  t.is(d.subarray(6, 12).toString('hex'), A.hostMac.replaceAll(':', ''), 'from the host side');
  t.is(d.readUInt16BE(20), 2, 'ARP reply');
  t.is(d.subarray(22, 28).toString('hex'), A.hostMac.replaceAll(':', ''), 'sender MAC = host side');
  t.deepEqual([...d.subarray(28, 32)], [10, 20, 0, 1], 'sender IP = gateway');
  t.deepEqual([...d.subarray(38, 42)], [10, 20, 0, 10], 'target IP = container');
  t.is(f.metric(2, 0), 1n, 'arp-reply counted');
});

test('the container\'s ARP replies to the host go to the stack; forged ones are dropped', (t) => {
  const f = setup(t);
  t.is(f.run('from_container', f.ifindex.a, arpReply(A.mac, A.ipv4, A.hostMac, A.gateway4)).retval, TC_ACT_OK);
  t.is(f.run('from_container', f.ifindex.a, arpReply(A.mac, B.ipv4, A.hostMac, A.gateway4)).retval, TC_ACT_SHOT, 'claims B\'s address');
  t.is(f.metric(66, 0), 1n, 'spoofed-ip');
});

test('ARP probes and requests for the container\'s own address are not answered', (t) => {
  const f = setup(t);
  t.is(f.run('from_container', f.ifindex.a, arpRequest(A.mac, '0.0.0.0', A.ipv4)).retval, TC_ACT_SHOT);
  t.is(f.run('from_container', f.ifindex.a, arpRequest(A.mac, A.ipv4, A.ipv4)).retval, TC_ACT_SHOT);
  t.is(f.metric(70, 0), 2n, 'arp-not-answered counted');
});

test('NDP solicitation for the gateway gets a valid advertisement (R, S, O) from the host side', (t) => {
  const f = setup(t);
  const r = f.run('from_container', f.ifindex.a, neighbourSolicitation(A.mac, A.ipv6, A.gateway6));
  t.is(r.retval, TC_ACT_REDIRECT);
  const d = r.data;
  t.is(d.subarray(0, 6).toString('hex'), A.mac.replaceAll(':', ''));
  t.is(d[14 + 40], 136, 'neighbour advertisement');
  t.is(d[14 + 40 + 4], 0xe0, 'router, solicited, override');
  t.is(d[14 + 40 + 24], 2, 'target link-layer option');
  t.is(d.subarray(14 + 40 + 26, 14 + 40 + 32).toString('hex'), A.hostMac.replaceAll(':', ''));
  t.true(icmpv6ChecksumOk(d), 'ICMPv6 checksum is valid');
  t.is(f.metric(3, 0), 1n);
  // Duplicate address detection (source ::) must see silence.
  t.is(f.run('from_container', f.ifindex.a, neighbourSolicitation(A.mac, '::', A.ipv6)).retval, TC_ACT_SHOT);
});

// Serial: a ring-buffer wait must not share the event loop with synchronous object loads
// (under qemu's TCG they block it for longer than the wait).
test.serial('spoofed source MAC or IP is dropped, counted, and reported as an event', async (t) => {
  const f = setup(t);
  const nl = native();
  const events: Buffer[] = [];
  const consumer = nl.ringbufConsume(f.map('mb_events'), (record) => events.push(record));
  t.teardown(() => consumer.close());
  const spoofedIp = fromA(ipv4('10.20.0.99', B.ipv4, udp(1000, 53)), ETH_P_IP);
  t.is(f.run('from_container', f.ifindex.a, spoofedIp).retval, TC_ACT_SHOT);
  const spoofedMac = ethernet(A.hostMac, '02:00:00:00:00:99', ETH_P_IP, ipv4(A.ipv4, B.ipv4, udp(1000, 53)));
  t.is(f.run('from_container', f.ifindex.a, spoofedMac).retval, TC_ACT_SHOT);
  const spoofed6 = fromA(ipv6('fd00:20::99', B.ipv6, udp(1000, 53)), ETH_P_IPV6);
  t.is(f.run('from_container', f.ifindex.a, spoofed6).retval, TC_ACT_SHOT);
  t.is(f.metric(66, 0), 2n, 'spoofed-ip');
  t.is(f.metric(65, 0), 1n, 'spoofed-mac');
  // Delivery waits for the kernel's irq_work wakeup, seen taking up to ~2.4 s here under a loaded
  // test run: bounded at 10 s, and every event must arrive.
  const deadline = performance.now() + 10_000;
  while (events.length < 3 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is(events.length, 3);
  t.is(events[0]!.length, SIZES.event);
  const first = decodeEvent(events[0]!);
  t.like(first, { type: 'drop', reason: 'spoofed-ip', direction: 'from-container', endpointId: 1, saddr: '10.20.0.99', daddr: B.ipv4, proto: 'udp', sport: 1000, dport: 53 });
});

test('traffic to a local endpoint of the same network is redirected to it: MACs rewritten, TTL decremented', (t) => {
  const f = setup(t);
  const r = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(40000, 80, TCP_SYN)), ETH_P_IP));
  t.is(r.retval, TC_ACT_REDIRECT);
  t.is(r.data.subarray(0, 6).toString('hex'), B.mac.replaceAll(':', ''), 'to B');
  t.is(r.data.subarray(6, 12).toString('hex'), B.hostMac.replaceAll(':', ''), 'from B\'s gateway');
  t.is(r.data[14 + 8], 63, 'TTL decremented');
  t.true(ipv4ChecksumOk(r.data), 'IPv4 header checksum still valid');
  const r6 = f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, B.ipv6, udp(5000, 53)), ETH_P_IPV6));
  t.is(r6.retval, TC_ACT_REDIRECT);
  t.is(r6.data[14 + 7], 63, 'hop limit decremented');
  t.is(f.metric(1, 0), 2n, 'redirect-peer counted');
});

test('the TTL decrement keeps the IPv4 header checksum right at its edges (the carry of RFC 1624)', (t) => {
  const f = setup(t);
  const frame = fromA(ipv4(A.ipv4, B.ipv4, udp(5000, 53), 200), ETH_P_IP);
  // The IP id field (not looked at by the programs) picks the header's checksum; every value near the carry.
  const byChecksum = new Map<number, Buffer>();
  for (let id = 0; id < 0x10000; id++) {
    const candidate = Buffer.from(frame);
    candidate.writeUInt16BE(id, 14 + 4);
    candidate.writeUInt16BE(0, 14 + 10);
    candidate.writeUInt16BE(checksum(candidate.subarray(14, 34)), 14 + 10);
    byChecksum.set(candidate.readUInt16BE(14 + 10), candidate);
  }
  const wanted = [0x0000, 0x0001, 0x00ff, 0x0100, 0x7fff, 0xfefe, 0xfeff, 0xff00, 0xff01, 0xfffe, 0xffff];
  let tried = 0;
  for (const check of wanted) {
    const input = byChecksum.get(check);
    if (!input) continue; // a sum a header cannot have (0xffff: only an all-zero header sums to it)
    tried++;
    const r = f.run('from_container', f.ifindex.a, input);
    t.is(r.retval, TC_ACT_REDIRECT);
    t.is(r.data[14 + 8], 199, `TTL decremented (checksum 0x${check.toString(16)})`);
    t.true(ipv4ChecksumOk(r.data), `checksum still valid (was 0x${check.toString(16)}, now 0x${r.data.readUInt16BE(14 + 10).toString(16)})`);
    t.deepEqual(r.data.subarray(14 + 12), input.subarray(14 + 12), 'addresses and payload untouched');
  }
  t.true(tried >= 9, `${tried} checksums near the carry tried`);
});

test('other networks are refused, the rest goes to the host stack unchanged', (t) => {
  const f = setup(t);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, OTHER_NET.ipv4, tcp(40000, 80, TCP_SYN)), ETH_P_IP)).retval, TC_ACT_SHOT);
  t.is(f.metric(69, 0), 1n, 'cross-network');
  const out = fromA(ipv4(A.ipv4, '198.51.100.7', tcp(40000, 443, TCP_SYN)), ETH_P_IP);
  const r = f.run('from_container', f.ifindex.a, out);
  t.is(r.retval, TC_ACT_OK);
  t.deepEqual(r.data, out, 'unchanged for the stack');
  // A packet whose TTL would expire goes to the stack (which answers time-exceeded).
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, udp(1, 2), 1), ETH_P_IP)).retval, TC_ACT_OK);
  // An interface without an endpoint entry sends nothing.
  t.is(f.run('from_container', f.ifindex.unknown, out).retval, TC_ACT_SHOT);
});

test('conntrack: TCP over IPv4 is created, refreshed, established by the reply and closed by FIN', (t) => {
  const f = setup(t);
  const key = { family: 4, proto: 6, saddr: A.ipv4, daddr: '198.51.100.7', sport: 40000, dport: 443 };
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', tcp(40000, 443, TCP_SYN)), ETH_P_IP));
  const created = f.ct(key);
  t.truthy(created);
  t.like(created!, { state: 'new', packetsOrig: 1n, packetsReply: 0n, endpointId: 1 });
  // The reply comes from the host stack towards the container.
  f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4('198.51.100.7', A.ipv4, tcp(443, 40000, TCP_SYN | TCP_ACK))));
  const established = f.ct(key)!;
  t.like(established, { state: 'established', packetsReply: 1n });
  t.true(established.expiresNs - established.createdNs > 3600n * 1_000_000_000n, 'established flows live for hours');
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', tcp(40000, 443, TCP_ACK)), ETH_P_IP));
  const refreshed = f.ct(key)!;
  t.is(refreshed.packetsOrig, 2n);
  t.true(refreshed.expiresNs >= established.expiresNs, 'expiry refreshed');
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', tcp(40000, 443, TCP_FIN | TCP_ACK)), ETH_P_IP));
  const closing = f.ct(key)!;
  t.is(closing.state, 'closing');
  t.true(closing.expiresNs - closing.createdNs < 3600n * 1_000_000_000n, 'closing flows expire soon');
});

test('conntrack: UDP and ICMP echo over IPv4 and IPv6, and TCP over IPv6', (t) => {
  const f = setup(t);
  f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, 'fd00:99::1', udp(5353, 53)), ETH_P_IPV6));
  t.like(f.ct({ family: 6, proto: 17, saddr: A.ipv6, daddr: 'fd00:99::1', sport: 5353, dport: 53 })!, { packetsOrig: 1n });
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', udp(5353, 53)), ETH_P_IP));
  t.truthy(f.ct({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 5353, dport: 53 }));
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', icmpEcho(false, false, 77)), ETH_P_IP));
  f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4('198.51.100.7', A.ipv4, icmpEcho(false, true, 77))));
  t.like(f.ct({ family: 4, proto: 1, saddr: A.ipv4, daddr: '198.51.100.7', sport: 77, dport: 77 })!, { packetsOrig: 1n, packetsReply: 1n, state: 'established' });
  f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, 'fd00:99::1', icmpEcho(true, false, 78)), ETH_P_IPV6));
  t.truthy(f.ct({ family: 6, proto: 58, saddr: A.ipv6, daddr: 'fd00:99::1', sport: 78, dport: 78 }));
  f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, B.ipv6, tcp(41000, 8080, TCP_SYN)), ETH_P_IPV6));
  t.like(f.ct({ family: 6, proto: 6, saddr: A.ipv6, daddr: B.ipv6, sport: 41000, dport: 8080 })!, { state: 'new' });
  // B's answer goes through B's own program: the same entry sees it as the reply.
  f.run('from_container', f.ifindex.b, ethernet(B.hostMac, B.mac, ETH_P_IPV6, ipv6(B.ipv6, A.ipv6, tcp(8080, 41000, TCP_SYN | TCP_ACK))));
  t.like(f.ct({ family: 6, proto: 6, saddr: A.ipv6, daddr: B.ipv6, sport: 41000, dport: 8080 })!, { state: 'established', packetsReply: 1n });
});

test('the daemon reads the clock the datapath stamps with: a new flow\'s created_ns lies between two kernelNowNs() readings', (t) => {
  const f = setup(t);
  const before = kernelNowNs();
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', udp(7000, 53)), ETH_P_IP));
  const after = kernelNowNs();
  const entry = f.ct({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 7000, dport: 53 })!;
  t.true(entry.createdNs >= before && entry.createdNs <= after, `${before} <= ${entry.createdNs} <= ${after}`);
  t.is(entry.expiresNs - entry.createdNs, 60n * NS_PER_SECOND, 'UDP lives 60 s from its last packet');
  t.log(`kernel clock at this test: ${Number(before / 1_000_000n) / 1000} s since boot`);
});

test('conntrack: a known flow\'s expiry is written back when it moves by more than a second or the state changes; the flow lives as before', (t) => {
  const f = setup(t);
  const nl = native();
  const key = { family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 7100, dport: 53 };
  const packet = fromA(ipv4(A.ipv4, '198.51.100.7', udp(7100, 53)), ETH_P_IP);
  const timeout = 60n * NS_PER_SECOND;
  // A timer tick at HZ=100, the coarsest: how far the coarse clock of a known flow's packets may lag kernelNowNs().
  const tick = 10_000_000n;
  t.is(f.run('from_container', f.ifindex.a, packet).retval, TC_ACT_OK);
  const rewrite = (expiresNs: bigint) => nl.bpfMapUpdate(f.map('mb_conntrack'), encodeCtKey(key), encodeCtEntry({ ...f.ct(key)!, expiresNs }), 0);

  // Half a second short of what a packet now would set: left as it is, but the packet is counted.
  let now = kernelNowNs();
  rewrite(nsAfter(now, timeout - NS_PER_SECOND / 2n));
  t.is(f.run('from_container', f.ifindex.a, packet).retval, TC_ACT_OK);
  t.like(f.ct(key)!, { expiresNs: nsAfter(now, timeout - NS_PER_SECOND / 2n), packetsOrig: 2n }, 'within the threshold: not written');

  // Three seconds short: moved on to the packet's time plus the timeout (on the coarse clock).
  now = kernelNowNs();
  rewrite(nsAfter(now, timeout - 3n * NS_PER_SECOND));
  t.is(f.run('from_container', f.ifindex.a, packet).retval, TC_ACT_OK);
  let after = kernelNowNs();
  let expires = f.ct(key)!.expiresNs;
  t.true(expires >= nsAfter(now, timeout) - tick && expires <= nsAfter(after, timeout), `refreshed: ${now} + 60 s <= ${expires} (within a tick)`);
  t.is(f.ct(key)!.packetsOrig, 3n);

  // A flow about to expire lives on with its next packet (a reply here), for a whole timeout.
  now = kernelNowNs();
  rewrite(nsAfter(now, NS_PER_SECOND / 5n));
  f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4('198.51.100.7', A.ipv4, udp(53, 7100))));
  after = kernelNowNs();
  expires = f.ct(key)!.expiresNs;
  t.true(expires >= nsAfter(now, timeout) - tick && expires <= nsAfter(after, timeout), 'a reply refreshes it too');
  t.like(f.ct(key)!, { packetsReply: 1n, state: 'established' });

  // A state change is always written, even one that shortens the expiry: TCP FIN.
  const tcpKey = { family: 4, proto: 6, saddr: A.ipv4, daddr: '198.51.100.7', sport: 41000, dport: 443 };
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', tcp(41000, 443, TCP_SYN)), ETH_P_IP));
  f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4('198.51.100.7', A.ipv4, tcp(443, 41000, TCP_SYN | TCP_ACK))));
  t.like(f.ct(tcpKey)!, { state: 'established' });
  const longLived = f.ct(tcpKey)!.expiresNs;
  now = kernelNowNs();
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', tcp(41000, 443, TCP_FIN | TCP_ACK)), ETH_P_IP));
  after = kernelNowNs();
  const closing = f.ct(tcpKey)!;
  t.is(closing.state, 'closing');
  t.true(closing.expiresNs < longLived, 'the shorter timeout of a closing flow is written');
  t.true(closing.expiresNs >= nsAfter(now, 10n * NS_PER_SECOND) - tick && closing.expiresNs <= nsAfter(after, 10n * NS_PER_SECOND), 'ten seconds from the FIN');
  t.is(closing.tcpFlagsOrig, TCP_SYN | TCP_FIN | TCP_ACK, 'flags of the original direction');
  t.is(closing.tcpFlagsReply, TCP_SYN | TCP_ACK, 'flags of the replies');
});

test('conntrack: an expired entry is no entry, in either direction', (t) => {
  const f = setup(t);
  const nl = native();
  // A flow B -> A on port 9 that ended long ago (an hour ago, or at boot on a host up for less
  // than an hour: the kernel's clock starts at zero), not yet collected.
  const stale = { family: 4, proto: 17, saddr: '198.51.100.7', daddr: A.ipv4, sport: 5000, dport: 9 };
  const now = kernelNowNs();
  nl.bpfMapUpdate(f.map('mb_conntrack'), encodeCtKey(stale), encodeCtEntry({
    expiresNs: nsBefore(now, 3600n * NS_PER_SECOND), createdNs: 0n, packetsOrig: 5n, bytesOrig: 500n, packetsReply: 0n, bytesReply: 0n,
    endpointId: 9, state: 'established', tcpFlagsOrig: 0, tcpFlagsReply: 0,
  }), 0);
  // A's new flow is the stale one's reverse: it must get its own entry, not revive the old one.
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.7', udp(9, 5000)), ETH_P_IP));
  t.like(f.ct({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 9, dport: 5000 })!, { packetsOrig: 1n, endpointId: 1 });
  t.like(f.ct(stale)!, { packetsOrig: 5n, packetsReply: 0n }, 'the stale entry is untouched');
  // The same tuple as an expired entry starts over instead of adding to it.
  f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, ETH_P_IP, ipv4('198.51.100.7', A.ipv4, udp(5000, 9))));
  t.like(f.ct({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 9, dport: 5000 })!, { packetsReply: 1n });
});

// Serial: a ring-buffer wait must not share the event loop with synchronous object loads
// (under qemu's TCG they block it for longer than the wait).
test.serial('with config.trace_sample = 1 every forwarded packet is reported as a trace event', async (t) => {
  const f = setup(t);
  const nl = native();
  nl.bpfMapUpdate(f.map('mb_config'), encodeIfindexKey(0), encodeConfig({ traceSample: 1 }), 0);
  const events: Buffer[] = [];
  const consumer = nl.ringbufConsume(f.map('mb_events'), (record) => events.push(record));
  t.teardown(() => consumer.close());
  f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(40000, 80, TCP_SYN)), ETH_P_IP));
  const deadline = performance.now() + 10_000; // see the spoofing test about wakeup latency
  while (events.length < 1 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.like(decodeEvent(events[0]!), { type: 'trace', reason: 'redirect-peer', saddr: A.ipv4, daddr: B.ipv4, sport: 40000, dport: 80, proto: 'tcp' });
});

test('batch lookup reads a whole conntrack table in a few syscalls, and agrees with key-by-key iteration', (t) => {
  const f = setup(t);
  const nl = native();
  const fd = f.map('mb_conntrack');
  for (let i = 0; i < 5000; i++) {
    nl.bpfMapUpdate(fd, encodeCtKey({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 1024 + i, dport: 53 }), encodeCtEntry({
      expiresNs: BigInt(i), createdNs: 0n, packetsOrig: BigInt(i), bytesOrig: 0n, packetsReply: 0n, bytesReply: 0n, endpointId: 1,
      state: 'new', tcpFlagsOrig: 0, tcpFlagsReply: 0 }), 0);
  }
  const batch = nl.bpfMapLookupBatch(fd, 100_000);
  t.is(batch.count, 5000);
  t.is(batch.keys.length, 5000 * SIZES.ct_key);
  t.is(batch.values.length, 5000 * SIZES.ct_entry);
  const viaBatch = mapEntries(nl, fd, 100_000).map(([k, v]) => `${decodeCtKey(k).sport}:${decodeCtEntry(v).packetsOrig}`).sort();
  const viaIteration: string[] = [];
  let key: Buffer | null = null;
  while ((key = nl.bpfMapNextKey(fd, key))) viaIteration.push(`${decodeCtKey(key).sport}:${decodeCtEntry(nl.bpfMapLookup(fd, key)!).packetsOrig}`);
  t.deepEqual(viaBatch, viaIteration.sort());
  t.true(viaBatch.every((e) => Number(e.split(':')[0]) - 1024 === Number(e.split(':')[1])), 'keys and values stay paired');
  // Batch delete: every other flow, plus keys that are not there (skipped, not errors).
  const doomed = Array.from({ length: 2500 }, (_, i) => encodeCtKey({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.7', sport: 1024 + i * 2, dport: 53 }));
  const missing = encodeCtKey({ family: 4, proto: 17, saddr: A.ipv4, daddr: '198.51.100.8', sport: 1, dport: 53 });
  nl.bpfMapDeleteBatch(fd, Buffer.concat([missing, ...doomed, missing]));
  t.is(nl.bpfMapLookupBatch(fd, 100_000).count, 2500);
  // Batch update puts them back.
  const back = nl.bpfMapUpdateBatch(fd, Buffer.concat(doomed), Buffer.concat(doomed.map(() => Buffer.alloc(SIZES.ct_entry))), 0);
  t.is(back, 2500);
  t.is(nl.bpfMapLookupBatch(fd, 100_000).count, 5000);
  // A per-CPU array: values are all CPUs' slots, whichever way mapEntries reads them.
  t.deepEqual(mapEntries(nl, f.map('mb_metrics'), 4).length, 4, 'per-CPU array through batch or fallback');
});

test('the daemon\'s conntrack garbage collection deletes expired entries and keeps live ones', (t) => {
  const f = setup(t);
  const nl = native();
  const fd = f.map('mb_conntrack');
  const now = kernelNowNs();
  const entry = (expiresNs: bigint) => encodeCtEntry({ expiresNs, createdNs: 0n, packetsOrig: 1n, bytesOrig: 1n, packetsReply: 0n,
    bytesReply: 0n, endpointId: 1, state: 'established', tcpFlagsOrig: 0, tcpFlagsReply: 0 });
  const key = (sport: number) => encodeCtKey({ family: 6, proto: 6, saddr: A.ipv6, daddr: 'fd00:99::1', sport, dport: 443 });
  for (let i = 0; i < 100; i++) nl.bpfMapUpdate(fd, key(1000 + i), entry(i % 2 ? nsAfter(now, 600n * NS_PER_SECOND) : nsBefore(now, 1n)), 0);
  // The collector reads the map through the Datapath; this object stands in for a loaded one.
  const maps = new EndpointMaps(nl, { map: (name: string) => f.map(name) } as unknown as Datapath);
  t.deepEqual(maps.collectConntrack(262144, now), { scanned: 100, deleted: 50 });
  t.is(nl.bpfMapLookupBatch(fd, 1000).count, 50);
  t.truthy(nl.bpfMapLookup(fd, key(1001)), 'a live entry stays');
  t.is(nl.bpfMapLookup(fd, key(1000)), null, 'an expired entry is gone');
});

test('every map of the object is declared once in maps.ts, and its declaration matches the object\'s BTF: type, key, value, size, flags', (t) => {
  const btf = JSON.parse(execFileSync('bpftool', ['btf', 'dump', 'file', OBJECT, 'format', 'raw', '-j']).toString()) as {
    types: { id: number; kind: string; name?: string; size?: number; type_id?: number; nr_elems?: number;
      members?: { name: string; type_id: number }[]; vars?: { type_id: number }[] }[];
  };
  const byId = new Map(btf.types.map((type) => [type.id, type]));
  const resolve = (id: number) => {
    let type = byId.get(id)!;
    while (type.kind === 'TYPEDEF' || type.kind === 'CONST' || type.kind === 'VOLATILE') type = byId.get(type.type_id!)!;
    return type;
  };
  const sizeOf = (id: number): number => {
    const type = resolve(id);
    return type.kind === 'ARRAY' ? sizeOf(type.type_id!) * type.nr_elems! : type.size!;
  };
  const maps = btf.types.find((type) => type.kind === 'DATASEC' && type.name === '.maps')!;
  const inObject = new Set<string>();
  for (const v of maps.vars!) {
    const variable = byId.get(v.type_id)!;
    const name = variable.name!;
    inObject.add(name);
    const declared = ALL_MAPS.find((d) => d.name === name);
    if (!declared) {
      t.fail(`map ${name} is in the object but not declared in maps.ts`);
      continue;
    }
    // libbpf's map definition: __uint(x, n) is a pointer to an array of n elements, __type(x, T) a pointer to T.
    const members = new Map(resolve(variable.type_id!).members!.map((m) => [m.name, byId.get(m.type_id)!]));
    const count = (member: string) => resolve(members.get(member)!.type_id!).nr_elems;
    t.is(count('type'), declared.type, `${name}: map type`);
    const want = wantedShape(declared, DEFAULT_GEOMETRY);
    if (members.has('max_entries')) t.is(count('max_entries'), want.maxEntries, `${name}: max_entries`);
    t.is(members.has('map_flags') ? count('map_flags') : 0, want.flags, `${name}: map_flags`);
    for (const [part, layout, size] of [['key', declared.key, want.keySize], ['value', declared.value, want.valueSize]] as const) {
      if (members.has(part)) {
        const type = resolve(members.get(part)!.type_id!);
        t.is(sizeOf(members.get(part)!.type_id!), size, `${name}: ${part} size`);
        if (layout && type.kind === 'STRUCT') t.is(type.name, layout.name, `${name}: ${part} is struct ${layout.name}`);
      } else if (members.has(`${part}_size`)) {
        t.is(count(`${part}_size`), size, `${name}: ${part}_size`);
      }
    }
  }
  t.deepEqual([...inObject].sort(), ALL_MAPS.map((d) => d.name).sort(), 'maps.ts declares exactly the object\'s maps');
});

test('every struct the daemon shares with the object matches its BTF member by member: name, offset, size', (t) => {
  const btf = JSON.parse(execFileSync('bpftool', ['btf', 'dump', 'file', OBJECT, 'format', 'raw', '-j']).toString()) as {
    types: { id: number; kind: string; name?: string; size?: number; type_id?: number; nr_elems?: number;
      members?: { name: string; type_id: number; bits_offset: number }[] }[];
  };
  const byId = new Map(btf.types.map((type) => [type.id, type]));
  /** Byte size of a BTF type, through typedefs, qualifiers and arrays. */
  const sizeOf = (id: number): number => {
    const type = byId.get(id)!;
    if (type.kind === 'ARRAY') return sizeOf((type as unknown as { type_id: number }).type_id) * type.nr_elems!;
    if (type.size !== undefined) return type.size;
    return sizeOf(type.type_id!);
  };
  for (const layout of STRUCTS) {
    const type = btf.types.find((candidate) => candidate.kind === 'STRUCT' && candidate.name === layout.name);
    if (!type) {
      t.fail(`struct ${layout.name} is not in the object's BTF`);
      continue;
    }
    t.is(type.size, layout.size, `struct ${layout.name}: size`);
    t.deepEqual(type.members!.map((m) => m.name), layout.fields.map((f) => f.name), `struct ${layout.name}: members in order`);
    for (const member of type.members!) {
      const field = layout.fields.find((f) => f.name === member.name);
      if (!field) continue;
      t.is(member.bits_offset, field.offset * 8, `${layout.name}.${member.name}: offset`);
      t.is(sizeOf(member.type_id), field.size, `${layout.name}.${member.name}: size`);
    }
  }
  t.true(STRUCTS.length >= 12);
});
