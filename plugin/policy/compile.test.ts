import test from 'ava';
import fc from 'fast-check';
import {
  ID_ANY, ID_CLASS_ENDPOINTS, ID_CLASS_WORLD_IPV4, ID_HOST, ID_INIT, ID_WORLD_IPV4, POLICY_DENY, POLICY_EGRESS, POLICY_INGRESS,
} from '../datapath/codec.js';
import { IdentityAllocator, INIT_LABELS, emptyIdentityState, type IdentityView } from '../identity/identities.js';
import { parsePrefix, prefixContainsPrefix } from '../ipam/prefix.js';
import {
  IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, PolicyCompiler, PolicyLookup, cidrsOf, classOf, rangeBlocks,
  type EndpointPolicyInput,
} from './compile.js';
import { parseLabel } from './labels.js';
import { selectorMatches } from './selector.js';
import type { EndpointSelector, EnforcementMode, Label, PolicyPeerRule, PolicyRule, StoredRule } from './types.js';
import { labelArb, ruleArb } from './test-arbitraries.js';

const L = (...labels: string[]): Label[] => labels.map((l) => parseLabel(l));
const stored = (rules: PolicyRule[]): StoredRule[] => rules.map((rule, i) => ({ id: i + 1, rule, origin: 'api', revision: 1 }));
const rule = (r: Partial<PolicyRule> & Pick<PolicyRule, 'endpointSelector'>): PolicyRule => ({ labels: [], ...r });

function world(rules: StoredRule[], endpointLabelSets: Label[][]) {
  const identities = new IdentityAllocator(emptyIdentityState());
  const ids = endpointLabelSets.map((labels) => identities.forLabels(labels).id);
  for (const c of cidrsOf(rules)) identities.forCidr(c);
  return { identities, ids, compiler: new PolicyCompiler(rules, identities) };
}

test('port ranges become aligned prefixes that cover exactly the range', (t) => {
  t.deepEqual(rangeBlocks(80, 80), [[80, 16]]);
  t.deepEqual(rangeBlocks(8000, 8003), [[8000, 14]]);
  t.deepEqual(rangeBlocks(1, 65535).length, 16);
  fc.assert(fc.property(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 70000 }), (a, span) => {
    const b = Math.min(65535, a + span);
    const covered = new Set<number>();
    for (const [port, bits] of rangeBlocks(a, b)) {
      const size = 2 ** (16 - bits);
      if (port % size !== 0) return false;
      for (let p = port; p < port + size; p++) covered.add(p);
    }
    return covered.size === b - a + 1 && Math.min(...covered) === a && Math.max(...covered) === b && rangeBlocks(a, b).length <= 30;
  }), { numRuns: 200 });
});

test('an endpoint no rule selects enforces nothing in default mode, everything in always mode', (t) => {
  const rules = stored([rule({ endpointSelector: { matchLabels: { app: 'db' } }, ingress: [{ endpoints: [{ matchLabels: { app: 'api' } }] }] })]);
  const { compiler, ids } = world(rules, [L('container:app=web')]);
  const web: EndpointPolicyInput = { identity: ids[0]!, labels: L('container:app=web'), mode: 'default', audit: false };
  t.like(compiler.compile(web), { enforceIngress: false, enforceEgress: false, entries: [] });
  t.like(compiler.compile({ ...web, mode: 'always' }), { enforceIngress: true, enforceEgress: true, entries: [] });
});

test('allow by label: one entry per matching identity, only in the selected direction', (t) => {
  const rules = stored([rule({
    endpointSelector: { matchLabels: { app: 'db' } },
    ingress: [{ endpoints: [{ matchLabels: { app: 'api' } }], toPorts: [{ ports: [{ port: 5432, protocol: 'TCP' }] }] }],
  })]);
  const { compiler, ids } = world(rules, [L('container:app=db'), L('container:app=api'), L('container:app=api', 'container:v=2')]);
  const db = compiler.compile({ identity: ids[0]!, labels: L('container:app=db'), mode: 'default', audit: false });
  t.true(db.enforceIngress);
  t.false(db.enforceEgress);
  t.deepEqual(db.entries.map((e) => e.key.identity).sort(), [ids[1]!, ids[2]!].sort());
  const lookup = new PolicyLookup(db.entries);
  t.is(lookup.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 5432).verdict, 'allowed');
  t.is(lookup.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 5433).verdict, 'default-denied');
  t.is(lookup.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_UDP, 5432).verdict, 'default-denied');
});

test('wildcards stay single entries: {} is the endpoint class, world the world classes, ports-only every peer', (t) => {
  const rules = stored([rule({
    endpointSelector: {},
    ingress: [{ endpoints: [{}] }, { entities: ['world'] }, { toPorts: [{ ports: [{ port: 53, protocol: 'ANY' }] }] }],
  })]);
  const { compiler, ids } = world(rules, Array.from({ length: 50 }, (_, i) => L(`container:n=${i}`)));
  const compiled = compiler.compile({ identity: ids[0]!, labels: L('container:n=0'), mode: 'default', audit: false });
  t.deepEqual(compiled.entries.map((e) => `${e.key.identity}/${e.key.protocol}/${e.key.port}`).sort(),
    [`${ID_ANY}/${IPPROTO_TCP}/53`, `${ID_ANY}/${IPPROTO_UDP}/53`, `${ID_CLASS_ENDPOINTS}/0/0`, `${ID_CLASS_WORLD_IPV4}/0/0`, '12/0/0'].sort());
});

test('deny wins over allow: within one identity (allow inside a deny) and across identity and wildcard', (t) => {
  const rules = stored([
    rule({ endpointSelector: {}, ingress: [{ endpoints: [{ matchLabels: { app: 'api' } }], toPorts: [{ ports: [{ port: 80, protocol: 'TCP' }] }] }] }),
    rule({ endpointSelector: {}, ingressDeny: [{ endpoints: [{ matchLabels: { app: 'api' } }], toPorts: [{ ports: [{ port: 0, protocol: 'TCP' }] }] }] }),
    rule({ endpointSelector: {}, ingress: [{ entities: ['all'] }], ingressDeny: [{ toPorts: [{ ports: [{ port: 22, protocol: 'TCP' }] }] }] }),
  ]);
  const { compiler, ids } = world(rules, [L('container:app=db'), L('container:app=api'), L('container:app=other')]);
  const db = new PolicyLookup(compiler.compile({ identity: ids[0]!, labels: L('container:app=db'), mode: 'default', audit: false }).entries);
  t.like(db.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 80), { verdict: 'denied', ruleId: 2 });
  t.like(db.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_UDP, 80), { verdict: 'allowed', ruleId: 3 });
  t.like(db.decide(POLICY_INGRESS, ids[2]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 22), { verdict: 'denied', ruleId: 3 });
  t.like(db.decide(POLICY_INGRESS, ids[2]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 23), { verdict: 'allowed', ruleId: 3 });
});

test('CIDR with except: the except prefix gets its own identity and is left out', (t) => {
  const rules = stored([rule({
    endpointSelector: {},
    egress: [{ cidrSet: [{ cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] }] }, { cidr: ['10.1.0.0/16'] }],
  })]);
  const { compiler, identities, ids } = world(rules, [L('container:a=b')]);
  const compiled = compiler.compile({ identity: ids[0]!, labels: L('container:a=b'), mode: 'default', audit: false });
  const allowed = new Set(compiled.entries.map((e) => e.key.identity));
  t.true(allowed.has(identities.forCidr('10.0.0.0/8')));
  t.true(allowed.has(identities.forCidr('10.1.0.0/16')));
  t.false(allowed.has(identities.forCidr('10.96.0.0/12')));
  t.false(allowed.has(ID_WORLD_IPV4));
});

test('requires narrows every allow of the direction, wildcards included', (t) => {
  const rules = stored([
    rule({ endpointSelector: { matchLabels: { app: 'db' } }, ingress: [{ entities: ['all'] }] }),
    rule({ endpointSelector: { matchLabels: { app: 'db' } }, ingress: [{ requires: [{ matchLabels: { env: 'prod' } }] }] }),
  ]);
  const { compiler, ids } = world(rules, [L('container:app=db', 'container:env=prod'), L('container:env=prod'), L('container:env=dev')]);
  const db = new PolicyLookup(compiler.compile({ identity: ids[0]!, labels: L('container:app=db', 'container:env=prod'), mode: 'default', audit: false }).entries);
  t.is(db.decide(POLICY_INGRESS, ids[1]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 1).verdict, 'allowed');
  t.is(db.decide(POLICY_INGRESS, ids[2]!, ID_CLASS_ENDPOINTS, IPPROTO_TCP, 1).verdict, 'default-denied');
  t.is(db.decide(POLICY_INGRESS, ID_HOST, 0, IPPROTO_TCP, 1).verdict, 'default-denied');
});

test('an init endpoint denies everything unless init is fail-open; `never` turns everything off', (t) => {
  const { compiler } = world([], []);
  const init: EndpointPolicyInput = { identity: ID_INIT, labels: INIT_LABELS, mode: 'default', audit: false };
  t.like(compiler.compile(init), { enforceIngress: true, enforceEgress: true, entries: [] });
  t.like(compiler.compile({ ...init, initFailOpen: true }), { enforceIngress: false, enforceEgress: false });
  t.like(compiler.compile({ ...init, mode: 'never' }), { enforceIngress: false, enforceEgress: false });
});

test('the network entity is every endpoint identity on the same Docker network', (t) => {
  const rules = stored([rule({ endpointSelector: {}, ingress: [{ entities: ['network'] }] })]);
  const a = L('container:app=a', 'network:name=n1');
  const b = L('container:app=b', 'network:name=n1');
  const c = L('container:app=c', 'network:name=n2');
  const { compiler, ids } = world(rules, [a, b, c]);
  const compiled = compiler.compile({ identity: ids[0]!, labels: a, mode: 'default', audit: false });
  t.deepEqual(compiled.entries.map((e) => e.key.identity).sort(), [ids[0]!, ids[1]!].sort());
});

// ---- The compiler against the rules' meaning ---------------------------------------------------
//
// A reference evaluator written from the semantics in compile.ts's header, applied to the rules
// directly; the compiled entries, looked up the way the datapath looks them up, must agree with
// it for every endpoint, peer, direction, protocol and port.

function peerMatches(el: PolicyPeerRule, endpointLabels: readonly Label[], peer: IdentityView): boolean {
  const peers = (el.endpoints?.length ?? 0) + (el.cidr?.length ?? 0) + (el.cidrSet?.length ?? 0) + (el.entities?.length ?? 0);
  if (!peers) return Boolean(el.toPorts?.length || el.icmps?.length);
  const inCidr = (cidr: string, except: string[]): boolean => {
    const outer = parsePrefix(cidr);
    if (peer.kind === 'cidr') {
      const p = parsePrefix(peer.cidr!);
      return prefixContainsPrefix(outer, p) && !except.some((e) => prefixContainsPrefix(parsePrefix(e), p));
    }
    return outer.length === 0 && peer.family === outer.family && (peer.id === 9 || peer.id === 10);
  };
  const nets = (labels: readonly Label[]) => labels.filter((l) => l.source === 'network').map((l) => l.value);
  const selectorHit = (sel: EndpointSelector): boolean => {
    const empty = !Object.keys(sel.matchLabels ?? {}).length && !(sel.matchExpressions?.length);
    if (empty) return peer.kind === 'endpoint';
    const reserved = JSON.stringify(sel).includes('reserved:');
    return (peer.kind === 'endpoint' || (reserved && peer.kind === 'reserved')) && selectorMatches(sel, peer.labels);
  };
  return (el.endpoints ?? []).some(selectorHit) ||
    (el.cidr ?? []).some((c) => inCidr(c, [])) ||
    (el.cidrSet ?? []).some((s) => inCidr(s.cidr, s.except)) ||
    (el.entities ?? []).some((e) => e === 'all' || (e === 'host' && peer.id === ID_HOST) || (e === 'init' && peer.id === ID_INIT) ||
      (e === 'world' && (peer.kind === 'cidr' || peer.id === 9 || peer.id === 10)) ||
      (e === 'network' && peer.kind === 'endpoint' && nets(peer.labels).some((n) => nets(endpointLabels).includes(n))));
}

function portMatches(el: PolicyPeerRule, protocol: number, port: number): boolean {
  if (!el.toPorts?.length && !el.icmps?.length) return true;
  const tcpUdp = (el.toPorts ?? []).flatMap((r) => r.ports).some((s) => {
    const protos = s.protocol === 'ANY' ? [IPPROTO_TCP, IPPROTO_UDP] : [s.protocol === 'TCP' ? IPPROTO_TCP : IPPROTO_UDP];
    if (!protos.includes(protocol)) return false;
    if (!s.port) return true;
    return port >= s.port && port <= (s.endPort ?? s.port);
  });
  const icmp = (el.icmps ?? []).flatMap((r) => r.fields)
    .some((f) => (f.family === 'IPv6' ? IPPROTO_ICMPV6 : IPPROTO_ICMP) === protocol && f.type === port);
  return tcpUdp || icmp;
}

function reference(rules: StoredRule[], ep: EndpointPolicyInput, direction: 'ingress' | 'egress', peer: IdentityView, protocol: number, port: number): string {
  const applying = rules.filter((r) => (ep.identity !== ID_INIT || JSON.stringify(r.rule.endpointSelector).includes('reserved:')) &&
    selectorMatches(r.rule.endpointSelector, ep.labels));
  const allows = applying.flatMap((r) => r.rule[direction] ?? []);
  const denies = applying.flatMap((r) => r.rule[direction === 'ingress' ? 'ingressDeny' : 'egressDeny'] ?? []);
  let enforce = ep.mode === 'always' || (ep.mode === 'default' && (allows.length + denies.length) > 0);
  if (ep.mode === 'never') enforce = false;
  if (!enforce) return 'not-enforced';
  if (denies.some((el) => peerMatches(el, ep.labels, peer) && portMatches(el, protocol, port))) return 'denied';
  const requires = allows.flatMap((el) => el.requires ?? []);
  if (!requires.every((r) => selectorMatches(r, peer.labels))) return 'default-denied';
  if (allows.some((el) => peerMatches(el, ep.labels, peer) && portMatches(el, protocol, port))) return 'allowed';
  return 'default-denied';
}

test('property: compiled entries, looked up as the datapath does, give the verdict the rules mean', (t) => {
  const seen = new Map<string, number>();
  fc.assert(fc.property(
    fc.array(ruleArb, { maxLength: 4 }),
    fc.array(fc.uniqueArray(labelArb, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 }),
    fc.constantFrom<EnforcementMode>('default', 'always', 'never'),
    fc.array(fc.tuple(fc.nat(), fc.nat(), fc.constantFrom('ingress' as const, 'egress' as const),
      fc.constantFrom(IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, 47),
      fc.constantFrom(0, 8, 22, 53, 80, 128, 443, 1000, 8000, 8002, 8050, 8100, 8101, 9000)), { minLength: 1, maxLength: 20 }),
    (rules, labelSets, mode, probes) => {
      const sr = stored(rules);
      const { compiler, identities, ids } = world(sr, labelSets.map((s) => L(...s)));
      const views = identities.all();
      for (const [epIndex, peerIndex, direction, protocol, port] of probes) {
        const epId = ids[epIndex % ids.length]!;
        const ep: EndpointPolicyInput = { identity: epId, labels: identities.get(epId)!.labels, mode, audit: false };
        const peer = views[peerIndex % views.length]!;
        const compiled = compiler.compile(ep);
        const enforced = direction === 'ingress' ? compiled.enforceIngress : compiled.enforceEgress;
        const family = peer.family ?? (protocol === IPPROTO_ICMPV6 ? 6 : 4);
        const got = enforced
          ? new PolicyLookup(compiled.entries).decide(direction === 'ingress' ? POLICY_INGRESS : POLICY_EGRESS, peer.id, classOf(peer.id, family), protocol, port).verdict
          : 'not-enforced';
        const want = reference(sr, ep, direction, peer, protocol, port);
        seen.set(want, (seen.get(want) ?? 0) + 1);
        if (got !== want) {
          throw new Error(`${direction} of ${JSON.stringify(ep.labels)} from ${peer.id} ${JSON.stringify(peer.labels)} ${protocol}/${port}: compiled says ${got}, rules say ${want}`);
        }
      }
    }), { numRuns: 1000 });
  t.log('verdicts checked:', Object.fromEntries(seen));
  // The generators must reach every outcome, or the property proves little.
  for (const verdict of ['allowed', 'denied', 'default-denied', 'not-enforced']) t.true((seen.get(verdict) ?? 0) > 100, verdict);
});

test('deny entries are written as denies and allows inside them become denies', (t) => {
  const rules = stored([rule({
    endpointSelector: {},
    egress: [{ entities: ['host'], toPorts: [{ ports: [{ port: 80, protocol: 'TCP' }] }] }],
    egressDeny: [{ entities: ['host'] }],
  })]);
  const { compiler, ids } = world(rules, [L('container:a=b')]);
  const entries = compiler.compile({ identity: ids[0]!, labels: L('container:a=b'), mode: 'default', audit: false }).entries;
  t.true(entries.every((e) => e.entry.verdict === POLICY_DENY));
});
