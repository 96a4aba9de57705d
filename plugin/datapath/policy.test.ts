// Policy through BPF_PROG_TEST_RUN on the real kernel: rules compiled by plugin/policy/compile.ts,
// written by PolicyMaps into real per-endpoint tries inside mb_policy, judged by the programs.

import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { native } from '../kernel/native.js';
import {
  ID_HOST, ID_INIT, ID_WORLD_IPV4, POLICY_EGRESS, POLICY_INGRESS, decodeEvent, encodeConfig, encodeIfindexKey, encodePolicyEntry,
  encodePolicyKey, type IpcacheValue,
} from './codec.js';
import { PolicyMaps, policyEntryHex, policyKeyHex, type PolicyMapEntry } from './policy-maps.js';
import type { Datapath } from './loader.js';
import { ETH_P_IPV6, TCP_ACK, TCP_SYN, ethernet, icmpEcho, ipv4, ipv6, neighbourSolicitation, tcp, udp } from './packets.js';
import { A, B, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, fromA, setup, type Fixture } from './test-fixture.js';
import { IdentityAllocator, emptyIdentityState } from '../identity/identities.js';
import { PolicyCompiler, PolicyLookup, cidrsOf, classOf, IPPROTO_TCP, IPPROTO_UDP } from '../policy/compile.js';
import { parseLabel } from '../policy/labels.js';
import { contains, parseAddress, parsePrefix } from '../ipam/prefix.js';
import type { EnforcementMode, Label, PolicyRule, StoredRule } from '../policy/types.js';

const L = (...labels: string[]): Label[] => labels.map((l) => parseLabel(l));
const A_LABELS = L('container:app=client', 'network:name=n1');
const B_LABELS = L('container:app=server', 'network:name=n1');
const HOST_ADDRESS = '10.20.0.1';
const WORLD = '198.51.100.7';

interface PolicyFixture extends Fixture {
  identities: IdentityAllocator;
  ids: { a: number; b: number };
  maps: PolicyMaps;
  /** Compiles `rules` for A and B (and the ipcache), writes the maps, and bumps the epoch. */
  apply(rules: PolicyRule[], options?: { mode?: EnforcementMode; audit?: boolean; aIdentity?: number }): void;
}

function policySetup(t: ExecutionContext): PolicyFixture {
  const f = setup(t);
  const nl = native();
  const pinDir = `/sys/fs/bpf/membrane-test-${randomBytes(4).toString('hex')}`;
  fs.mkdirSync(pinDir);
  t.teardown(() => fs.rmSync(pinDir, { recursive: true, force: true }));
  const maps = new PolicyMaps(nl, { map: f.map } as unknown as Datapath, pinDir, 4096);
  t.teardown(() => maps.close());
  nl.bpfMapUpdate(f.map('mb_config'), encodeIfindexKey(0), encodeConfig({ traceSample: 0, policyEpoch: 1, policyVerdictEvents: true }), 0);
  const identities = new IdentityAllocator(emptyIdentityState());
  const ids = { a: identities.forLabels(A_LABELS).id, b: identities.forLabels(B_LABELS).id };
  return {
    ...f, identities, ids, maps,
    apply(rules, options = {}) {
      const stored: StoredRule[] = rules.map((rule, i) => ({ id: i + 1, rule, origin: 'api', revision: 1 }));
      for (const c of cidrsOf(stored)) identities.forCidr(c);
      const compiler = new PolicyCompiler(stored, identities);
      const ipcache = new Map<string, IpcacheValue>([[HOST_ADDRESS, { identity: ID_HOST, classIdentity: 0 }]]);
      for (const v of identities.all()) if (v.kind === 'cidr') ipcache.set(v.cidr!, { identity: v.id, classIdentity: classOf(v.id, v.family!) });
      maps.syncIpcache(ipcache);
      for (const [e, number, identity, labels] of [[A, 1, options.aIdentity ?? ids.a, A_LABELS], [B, 2, ids.b, B_LABELS]] as const) {
        const compiled = compiler.compile({ identity, labels: identity === ID_INIT ? L('reserved:init') : labels, mode: options.mode ?? 'default', audit: options.audit ?? false });
        maps.apply(number, compiled.entries);
        f.endpoint(e, { identity, enforceIngress: compiled.enforceIngress, enforceEgress: compiled.enforceEgress, audit: compiled.audit });
      }
      maps.bumpEpoch();
    },
  };
}

const toA = (payload: Buffer) => ethernet(A.mac, A.hostMac, 0x0800, payload);
let nextPort = 20000;
const sport = () => nextPort++;

test('allow by label on a port: that port gets through, others and other protocols are dropped as default-denied', (t) => {
  const f = policySetup(t);
  f.apply([{
    labels: [], endpointSelector: { matchLabels: { app: 'server' } },
    ingress: [{ endpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: 80, protocol: 'TCP' }] }] }],
  }]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 80, TCP_SYN)))).retval, TC_ACT_REDIRECT);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, B.ipv6, tcp(sport(), 80, TCP_SYN)), ETH_P_IPV6)).retval, TC_ACT_REDIRECT);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 81, TCP_SYN)))).retval, TC_ACT_SHOT);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, udp(sport(), 80)))).retval, TC_ACT_SHOT);
  t.is(f.metric(73, 0), 2n, 'policy-default-denied counted');
  // A's egress is not enforced: A may still reach the world.
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, WORLD, tcp(sport(), 443, TCP_SYN)))).retval, TC_ACT_OK);
});

// Serial: a ring-buffer wait must not share the event loop with synchronous object loads
// (under qemu's TCG they block it for longer than the wait).
test.serial('a policy drop is reported with both identities and the deciding rule; allowed new flows as policy verdicts', async (t) => {
  const f = policySetup(t);
  const events: Buffer[] = [];
  const consumer = native().ringbufConsume(f.map('mb_events'), (record) => events.push(record));
  t.teardown(() => consumer.close());
  f.apply([
    { labels: [], endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ endpoints: [{}] }] },
    { labels: [], endpointSelector: { matchLabels: { app: 'server' } }, ingressDeny: [{ toPorts: [{ ports: [{ port: 22, protocol: 'TCP' }] }] }] },
  ]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 22, TCP_SYN)))).retval, TC_ACT_SHOT);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 23, TCP_SYN)))).retval, TC_ACT_REDIRECT);
  const deadline = performance.now() + 10_000;
  while (events.length < 2 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const [denied, allowed] = events.map((e) => decodeEvent(e));
  t.like(denied, { type: 'drop', reason: 'policy-denied', dport: 22, policy: { srcIdentity: f.ids.a, dstIdentity: f.ids.b, ruleId: 2, verdict: 'denied', audit: false, endpointId: 2, direction: 'ingress' } });
  t.like(allowed, { type: 'policy', dport: 23, policy: { verdict: 'allowed', ruleId: 1, direction: 'ingress', endpointId: 2 } });
});

test('deny wins over an allow of the same identity, of a wildcard, and of a port range', (t) => {
  const f = policySetup(t);
  f.apply([
    { labels: [], endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ entities: ['all'] }, { toPorts: [{ ports: [{ port: 8000, endPort: 8100, protocol: 'TCP' }] }] }] },
    { labels: [], endpointSelector: { matchLabels: { app: 'client' } }, egressDeny: [{ endpoints: [{ matchLabels: { app: 'server' } }], toPorts: [{ ports: [{ port: 8050, protocol: 'TCP' }] }] }] },
  ]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 8049, TCP_SYN)))).retval, TC_ACT_REDIRECT);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 8050, TCP_SYN)))).retval, TC_ACT_SHOT);
  t.is(f.metric(72, 0), 1n, 'policy-denied counted');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, WORLD, tcp(sport(), 8050, TCP_SYN)))).retval, TC_ACT_OK, 'the deny is about the server only');
});

test('CIDR rules with except, and the host and world entities, on egress to the stack', (t) => {
  const f = policySetup(t);
  f.apply([{
    labels: [], endpointSelector: { matchLabels: { app: 'client' } },
    egress: [{ cidrSet: [{ cidr: '198.51.100.0/24', except: ['198.51.100.128/25'] }] }, { entities: ['host'], toPorts: [{ ports: [{ port: 53, protocol: 'UDP' }] }] }],
  }]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, WORLD, tcp(sport(), 443, TCP_SYN)))).retval, TC_ACT_OK, 'inside the CIDR');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '198.51.100.200', tcp(sport(), 443, TCP_SYN)))).retval, TC_ACT_SHOT, 'in the except');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '203.0.113.1', tcp(sport(), 443, TCP_SYN)))).retval, TC_ACT_SHOT, 'the rest of the world');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, udp(sport(), 53)))).retval, TC_ACT_OK, 'the host on 53/udp');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, udp(sport(), 54)))).retval, TC_ACT_SHOT, 'the host on another port');
  f.apply([{ labels: [], endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ entities: ['world'] }] }]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, '203.0.113.1', tcp(sport(), 443, TCP_SYN)))).retval, TC_ACT_OK, 'world');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, '2001:db8::1', tcp(sport(), 443, TCP_SYN)), ETH_P_IPV6)).retval, TC_ACT_OK, 'world over IPv6');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, udp(sport(), 53)))).retval, TC_ACT_SHOT, 'the host is not the world');
});

test('ingress from the host stack is judged in to_container; replies to allowed flows pass both ways', (t) => {
  const f = policySetup(t);
  f.apply([
    { labels: [], endpointSelector: { matchLabels: { app: 'client' } }, ingress: [{ entities: ['host'], icmps: [{ fields: [{ family: 'IPv4', type: 8 }] }] }] },
    { labels: [], endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ entities: ['world'], toPorts: [{ ports: [{ port: 443, protocol: 'TCP' }] }] }] },
  ]);
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(HOST_ADDRESS, A.ipv4, icmpEcho(false, false, 900)))).retval, TC_ACT_OK, 'host ping');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, icmpEcho(false, true, 900)))).retval, TC_ACT_OK, 'its reply');
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(WORLD, A.ipv4, icmpEcho(false, false, 901)))).retval, TC_ACT_SHOT, 'world ping');
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(HOST_ADDRESS, A.ipv4, tcp(sport(), 22, TCP_SYN)))).retval, TC_ACT_SHOT, 'host ssh');
  const port = sport();
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, WORLD, tcp(port, 443, TCP_SYN)))).retval, TC_ACT_OK);
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(WORLD, A.ipv4, tcp(443, port, TCP_SYN | TCP_ACK)))).retval, TC_ACT_OK, 'reply to an allowed egress flow');
});

/** An ICMP error (IPv4 type 3 code 4, or ICMPv6 packet too big) quoting the first bytes of `quoted`. */
function icmpError(v6: boolean, quoted: Buffer): { proto: number; build(pseudo: Buffer): Buffer } {
  return {
    proto: v6 ? 58 : 1,
    build() {
      const h = Buffer.alloc(8);
      h[0] = v6 ? 2 : 3;
      h[1] = v6 ? 0 : 4;
      h.writeUInt32BE(v6 ? 1280 : 1400, 4);
      return Buffer.concat([h, quoted.subarray(0, (v6 ? 40 : 20) + 8)]);
    },
  };
}

test('ICMP errors about a live flow pass as related traffic (path MTU discovery under default deny); others are judged', (t) => {
  const f = policySetup(t);
  f.apply([{ labels: [], endpointSelector: { matchLabels: { app: 'client' } }, ingress: [{ entities: ['host'] }], egress: [{ entities: ['world'] }] }]);
  const port = sport();
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, WORLD, tcp(port, 443, TCP_SYN)))).retval, TC_ACT_OK);
  const router = '203.0.113.1';
  const quoted = ipv4(A.ipv4, WORLD, tcp(port, 443, TCP_ACK));
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(router, A.ipv4, icmpError(false, quoted)))).retval, TC_ACT_OK, 'frag needed for a live flow');
  const unknown = ipv4(A.ipv4, WORLD, tcp(port + 1, 443, TCP_ACK));
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(router, A.ipv4, icmpError(false, unknown)))).retval, TC_ACT_SHOT, 'about no flow');
  const port6 = sport();
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv6(A.ipv6, '2001:db8::7', udp(port6, 53)), ETH_P_IPV6)).retval, TC_ACT_OK);
  const quoted6 = ipv6(A.ipv6, '2001:db8::7', udp(port6, 53));
  t.is(f.run('to_container', f.ifindex.a, ethernet(A.mac, A.hostMac, 0x86dd, ipv6('2001:db8::1', A.ipv6, icmpError(true, quoted6)))).retval,
    TC_ACT_OK, 'packet too big for a live IPv6 flow');
});

test('revocation: removing an allow stops an established flow at its next packet, in both directions', (t) => {
  const f = policySetup(t);
  const allow: PolicyRule = { labels: [], endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ endpoints: [{ matchLabels: { app: 'client' } }] }] };
  f.apply([allow]);
  const port = sport();
  const request = fromA(ipv4(A.ipv4, B.ipv4, tcp(port, 5432, TCP_ACK)));
  const reply = ethernet(B.hostMac, B.mac, 0x0800, ipv4(B.ipv4, A.ipv4, tcp(5432, port, TCP_ACK)));
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(port, 5432, TCP_SYN)))).retval, TC_ACT_REDIRECT);
  t.is(f.run('from_container', f.ifindex.b, reply).retval, TC_ACT_REDIRECT);
  t.is(f.run('from_container', f.ifindex.a, request).retval, TC_ACT_REDIRECT);
  // An unrelated change moves the epoch too: the flow is judged again and stays.
  f.apply([allow, { labels: [], endpointSelector: { matchLabels: { app: 'nobody' } }, ingress: [{}] }]);
  t.is(f.run('from_container', f.ifindex.b, reply).retval, TC_ACT_REDIRECT, 'still allowed after an unrelated change');
  f.apply([{ labels: [], endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ entities: ['host'] }] }]);
  t.is(f.run('from_container', f.ifindex.a, request).retval, TC_ACT_SHOT, 'client -> server stops');
  t.is(f.run('from_container', f.ifindex.b, reply).retval, TC_ACT_SHOT, 'server -> client stops');
  f.apply([allow]);
  t.is(f.run('from_container', f.ifindex.a, request).retval, TC_ACT_REDIRECT, 'allowed again');
});

test('an endpoint with the init identity sends and receives nothing but ARP/NDP until it has an identity', (t) => {
  const f = policySetup(t);
  f.apply([{ labels: [], endpointSelector: {}, ingress: [{ entities: ['all'] }], egress: [{ entities: ['all'] }] }], { aIdentity: ID_INIT });
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 80, TCP_SYN)))).retval, TC_ACT_SHOT, 'nothing out');
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, udp(sport(), 53)))).retval, TC_ACT_SHOT);
  t.is(f.run('from_container', f.ifindex.b, ethernet(B.hostMac, B.mac, 0x0800, ipv4(B.ipv4, A.ipv4, tcp(sport(), 80, TCP_SYN)))).retval, TC_ACT_SHOT, 'nothing in');
  t.is(f.run('to_container', f.ifindex.a, toA(ipv4(HOST_ADDRESS, A.ipv4, icmpEcho(false, false, 5)))).retval, TC_ACT_SHOT);
  t.is(f.run('from_container', f.ifindex.a, neighbourSolicitation(A.mac, A.ipv6, A.gateway6)).retval, TC_ACT_REDIRECT, 'NDP is answered');
  // Rules can still speak for init endpoints, by naming reserved:init.
  f.apply([{ labels: [], endpointSelector: { matchLabels: { 'reserved:init': '' } }, egress: [{ entities: ['host'] }] }], { aIdentity: ID_INIT });
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, HOST_ADDRESS, udp(sport(), 53)))).retval, TC_ACT_OK, 'allowed by a reserved:init rule');
  f.apply([{ labels: [], endpointSelector: {}, ingress: [{ entities: ['all'] }], egress: [{ entities: ['all'] }] }]);
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 80, TCP_SYN)))).retval, TC_ACT_REDIRECT, 'with its identity');
});

// Serial: a ring-buffer wait must not share the event loop with synchronous object loads
// (under qemu's TCG they block it for longer than the wait).
test.serial('audit mode lets a denied flow through and reports it as an audited deny', async (t) => {
  const f = policySetup(t);
  const events: Buffer[] = [];
  const consumer = native().ringbufConsume(f.map('mb_events'), (record) => events.push(record));
  t.teardown(() => consumer.close());
  f.apply([{ labels: [], endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ entities: ['host'] }] }], { audit: true });
  t.is(f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, B.ipv4, tcp(sport(), 80, TCP_SYN)))).retval, TC_ACT_REDIRECT);
  const deadline = performance.now() + 10_000;
  while (events.length < 1 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.like(decodeEvent(events[0]!), { type: 'policy', reason: 'policy-default-denied', policy: { verdict: 'default-denied', audit: true } });
  t.is(f.metric(73, 0), 0n, 'nothing dropped');
});

// The datapath's verdict on random policies must be the one PolicyLookup (the TypeScript mirror
// used by `membrane policy trace`, itself checked against the rules' meaning) gives.
test('property: the BPF verdict equals the compiled lookup\'s, for random rules and flows', (t) => {
  const f = policySetup(t);
  const selector = fc.constantFrom({}, { matchLabels: { app: 'server' } }, { matchLabels: { app: 'client' } }, { matchLabels: { app: 'nobody' } });
  const ports = fc.array(fc.record({ ports: fc.array(fc.oneof(
    fc.record({ port: fc.constantFrom(0, 80, 443), protocol: fc.constantFrom('TCP' as const, 'UDP' as const, 'ANY' as const) }),
    fc.record({ port: fc.constantFrom(1000, 8000), endPort: fc.constantFrom(1023, 8080), protocol: fc.constantFrom('TCP' as const, 'ANY' as const) }),
  ), { minLength: 1, maxLength: 2 }) }), { maxLength: 1 });
  const element = fc.record({
    endpoints: fc.array(selector, { maxLength: 1 }),
    cidr: fc.array(fc.constantFrom('198.51.100.0/24', '198.51.100.0/25', '0.0.0.0/0'), { maxLength: 1 }),
    entities: fc.array(fc.constantFrom('host' as const, 'world' as const, 'all' as const), { maxLength: 1 }),
    toPorts: ports,
  }).map((el) => Object.fromEntries(Object.entries(el).filter(([, v]) => (v as unknown[]).length)));
  const rule = fc.record({
    endpointSelector: selector, egress: fc.array(element, { maxLength: 2 }), ingress: fc.array(element, { maxLength: 2 }),
    egressDeny: fc.array(element, { maxLength: 1 }),
  }).map((r) => ({ ...r, labels: [] }) as PolicyRule);
  const destinations = [B.ipv4, HOST_ADDRESS, WORLD, '198.51.100.200', '203.0.113.9'];
  // What the ipcache answers: B, the host, the longest CIDR identity holding the address, or the world.
  const identityOf = (address: string): number => {
    if (address === B.ipv4) return f.ids.b;
    if (address === HOST_ADDRESS) return ID_HOST;
    const value = parseAddress(address).value;
    const holding = f.identities.all().filter((v) => v.kind === 'cidr' && v.family === 4 && contains(parsePrefix(v.cidr!), value))
      .sort((x, y) => parsePrefix(y.cidr!).length - parsePrefix(x.cidr!).length);
    return holding[0]?.id ?? ID_WORLD_IPV4;
  };
  let checked = 0;
  fc.assert(fc.property(fc.array(rule, { maxLength: 3 }), fc.constantFrom<EnforcementMode>('default', 'always'),
    fc.array(fc.tuple(fc.constantFrom(...destinations), fc.constantFrom(IPPROTO_TCP, IPPROTO_UDP), fc.constantFrom(22, 80, 443, 1000, 1023, 1024, 8080)), { minLength: 1, maxLength: 6 }),
    (rules, mode, flows) => {
      f.apply(rules, { mode });
      const stored: StoredRule[] = rules.map((r, i) => ({ id: i + 1, rule: r, origin: 'api', revision: 1 }));
      const compiler = new PolicyCompiler(stored, f.identities);
      const a = compiler.compile({ identity: f.ids.a, labels: A_LABELS, mode, audit: false });
      const b = compiler.compile({ identity: f.ids.b, labels: B_LABELS, mode, audit: false });
      for (const [daddr, proto, dport] of flows) {
        const remote = identityOf(daddr);
        let want = a.enforceEgress ? new PolicyLookup(a.entries).decide(POLICY_EGRESS, remote, classOf(remote, 4), proto, dport).verdict : 'allowed';
        if (want === 'allowed' && daddr === B.ipv4 && b.enforceIngress) {
          want = new PolicyLookup(b.entries).decide(POLICY_INGRESS, f.ids.a, classOf(f.ids.a, 4), proto, dport).verdict;
        }
        const l4 = proto === IPPROTO_TCP ? tcp(sport(), dport, TCP_SYN) : udp(sport(), dport);
        const got = f.run('from_container', f.ifindex.a, fromA(ipv4(A.ipv4, daddr, l4))).retval === TC_ACT_SHOT ? 'dropped' : 'passed';
        if (got !== (want === 'allowed' ? 'passed' : 'dropped')) {
          throw new Error(`${daddr} ${proto}/${dport} (remote ${remote}): BPF ${got}, lookup ${want}; rules ${JSON.stringify(rules)}`);
        }
        checked++;
      }
    }), { numRuns: 150 });
  t.log(`${checked} flows judged by BPF and by the lookup`);
  t.pass();
});

test('policy keys and entries as hex are the codec\'s bytes', (t) => {
  fc.assert(fc.property(
    fc.record({
      identity: fc.integer({ min: 0, max: 0xffff_ffff }), direction: fc.constantFrom(POLICY_INGRESS, POLICY_EGRESS),
      protocol: fc.constantFrom(0, 1, 6, 17, 58), port: fc.integer({ min: 0, max: 65535 }), portBits: fc.integer({ min: 0, max: 16 }),
    }),
    fc.record({ ruleId: fc.integer({ min: 0, max: 0xffff_ffff }), verdict: fc.constantFrom(1 as const, 2 as const) }),
    (key, entry) => policyKeyHex(key) === encodePolicyKey(key).toString('hex') && policyEntryHex(entry) === encodePolicyEntry(entry).toString('hex'),
  ), { numRuns: 2000 });
  t.pass();
});

test('property: full writes and writes of changed keys (batched when many) leave the trie holding exactly what was asked', (t) => {
  const f = policySetup(t);
  const entryArb = fc.record({
    key: fc.record({
      identity: fc.integer({ min: 256, max: 300 }), direction: fc.constantFrom(POLICY_INGRESS, POLICY_EGRESS),
      protocol: fc.constantFrom(0, 6), port: fc.integer({ min: 1, max: 200 }), portBits: fc.constant(16),
    }).map((k) => (k.protocol === 0 ? { ...k, port: 0, portBits: 0 } : k)),
    entry: fc.record({ ruleId: fc.integer({ min: 1, max: 9 }), verdict: fc.constantFrom(1 as const, 2 as const) }),
  });
  let endpoint = 10;
  fc.assert(fc.property(fc.array(fc.tuple(fc.boolean(), fc.array(entryArb, { maxLength: 80 }), fc.array(fc.nat(), { maxLength: 60 }))),
    (steps) => {
      const number = endpoint++;
      const want = new Map<string, PolicyMapEntry>();
      for (const [full, entries, drops] of steps) {
        if (full) {
          want.clear();
          for (const e of entries) want.set(policyKeyHex(e.key), e);
          f.maps.apply(number, [...want.values()]);
        } else {
          const held = [...want.values()];
          const changes: { key: PolicyMapEntry['key']; entry: PolicyMapEntry['entry'] | undefined }[] = drops.map((d) => held[d % Math.max(1, held.length)])
            .filter((e): e is PolicyMapEntry => e !== undefined).map((e) => ({ key: e.key, entry: undefined }));
          for (const c of changes) want.delete(policyKeyHex(c.key));
          for (const e of entries) {
            changes.push(e);
            want.set(policyKeyHex(e.key), e);
          }
          // A key deleted and written in one delta: the write wins (as the compiler never asks both).
          const last = new Map(changes.map((c) => [policyKeyHex(c.key), c]));
          f.maps.applyDelta(number, [...last.values()], () => [...want.values()]);
        }
        if (steps.length % 3 === 0) f.maps.close(); // the next write finds the trie by its pin
        const read = f.maps.read(number).map((e) => `${policyKeyHex(e.key)}=${policyEntryHex(e.entry)}`).sort();
        const wanted = [...want.values()].map((e) => `${policyKeyHex(e.key)}=${policyEntryHex(e.entry)}`).sort();
        if (JSON.stringify(read) !== JSON.stringify(wanted)) return false;
      }
      f.maps.remove(number);
      return true;
    }), { numRuns: 60 });
  t.pass();
});
