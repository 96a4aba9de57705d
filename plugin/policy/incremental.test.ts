import test from 'ava';
import fc from 'fast-check';
import { ID_INIT } from '../datapath/codec.js';
import type { PolicyMapEntry } from '../datapath/policy-maps.js';
import { IdentityAllocator, INIT_LABELS, emptyIdentityState } from '../identity/identities.js';
import { PolicyCompiler, cidrsOf, keyString, type EndpointPolicyInput } from './compile.js';
import { IncrementalCompiler } from './incremental.js';
import { parseLabel } from './labels.js';
import { PolicyRepository, emptyPolicyState } from './repository.js';
import { labelArb, ruleArb } from './test-arbitraries.js';
import type { EnforcementMode, Label, PolicyRule } from './types.js';

interface Endpoint {
  id: string;
  /** undefined: the init identity. */
  labels: Label[] | undefined;
  mode: EnforcementMode;
}

type Op =
  | { kind: 'add'; rules: PolicyRule[] }
  | { kind: 'delete'; pick: number }
  | { kind: 'labels'; pick: number; labels: string[] | undefined }
  | { kind: 'mode'; pick: number; mode: EnforcementMode }
  | { kind: 'join'; labels: string[] | undefined; early: boolean }
  | { kind: 'leave'; pick: number }
  | { kind: 'collect' };

const labelSetArb = fc.option(fc.uniqueArray(labelArb, { minLength: 1, maxLength: 3 }), { nil: undefined, freq: 4 });
const modeArb = fc.constantFrom<EnforcementMode>('default', 'always', 'never');
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), rules: fc.array(ruleArb, { minLength: 1, maxLength: 2 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('labels' as const), pick: fc.nat(), labels: labelSetArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('mode' as const), pick: fc.nat(), mode: modeArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('join' as const), labels: labelSetArb, early: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('leave' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('collect' as const) }) },
);

const L = (labels: string[]): Label[] => labels.map((l) => parseLabel(l));
const entryText = (e: PolicyMapEntry): string => `${keyString(e.key)}=${e.entry.verdict}:${e.entry.ruleId}`;

test('property: incremental compilation after random rule, identity and endpoint changes gives exactly what a full compile gives', (t) => {
  let checked = 0;
  let entriesSeen = 0;
  let lastProblem = '';
  const fail = (message: string): never => {
    lastProblem = message;
    throw new Error(message);
  };
  try {
  fc.assert(fc.property(
    fc.array(ruleArb, { maxLength: 4 }),
    fc.array(fc.record({ labels: labelSetArb, mode: modeArb }), { minLength: 1, maxLength: 4 }),
    fc.array(opArb, { minLength: 1, maxLength: 12 }),
    fc.boolean(),
    (initialRules, initialEndpoints, ops, initFailOpen) => {
      const policy = emptyPolicyState();
      const repository = new PolicyRepository(policy);
      const identityState = emptyIdentityState();
      const identities = new IdentityAllocator(identityState);
      const compiler = new IncrementalCompiler();
      /** What each endpoint's map holds, as written through full() / changes(). */
      const maps = new Map<string, Map<string, PolicyMapEntry>>();
      let serial = 0;
      let nextId = 0;
      const endpoints: Endpoint[] = initialEndpoints.map((e) => ({ id: `ep${nextId++}`, labels: e.labels && L(e.labels), mode: e.mode }));
      const labelled = (rules: PolicyRule[]) => rules.map((r) => ({ ...r, labels: [{ source: 'unspec', key: 'n', value: String(serial++) }] }));
      if (initialRules.length) repository.add(labelled(initialRules));

      const inputOf = (e: Endpoint): EndpointPolicyInput => {
        const identity = e.labels ? identities.forLabels(e.labels).id : ID_INIT;
        return { identity, labels: e.labels ? identities.get(identity)!.labels : [...INIT_LABELS], mode: e.mode, audit: false, initFailOpen };
      };
      const write = (id: string, full: boolean): void => {
        let map = maps.get(id);
        if (!map) maps.set(id, map = new Map());
        if (full) {
          map.clear();
          for (const e of compiler.entries(id)) map.set(keyString(e.key), e);
        } else {
          for (const { key, entry } of compiler.changes(id)) {
            if (entry) map.set(keyString(key), { key, entry });
            else map.delete(keyString(key));
          }
        }
        compiler.written(id);
      };
      const regenerate = (): void => {
        const rules = repository.rules();
        const cidrs = cidrsOf(rules);
        identities.collect(new Set(identities.all().filter((v) => v.kind === 'endpoint').map((v) => v.id)), cidrs);
        for (const c of cidrs) identities.forCidr(c);
        // Label sets get their identities before the regeneration (as PolicyEngine.endpointLabels does).
        const inputs = new Map(endpoints.map((e) => [e.id, inputOf(e)]));
        compiler.sync(rules, identities);
        const live = new Set(endpoints.map((e) => e.id));
        for (const id of compiler.cachedEndpoints()) if (!live.has(id)) compiler.forget(id);
        for (const e of endpoints) write(e.id, compiler.update(e.id, inputs.get(e.id)!).full);
        // The reference: every endpoint compiled from scratch.
        const full = new PolicyCompiler(rules, identities);
        for (const e of endpoints) {
          const input = inputs.get(e.id)!;
          const want = full.compile(input);
          const got = compiler.update(e.id, input);
          t.is(got.full, false);
          if (got.enforceIngress !== want.enforceIngress || got.enforceEgress !== want.enforceEgress || got.size !== want.entries.length) {
            fail(`${e.id}: flags or size differ: ${JSON.stringify(got)} vs ${want.entries.length} entries, ` +
              `ingress ${want.enforceIngress}, egress ${want.enforceEgress}`);
          }
          const held = [...maps.get(e.id)!.values()].map(entryText).sort();
          const wanted = want.entries.map(entryText).sort();
          if (JSON.stringify(held) !== JSON.stringify(wanted)) {
            fail(`${e.id} ${JSON.stringify(input.labels)}: map holds ${JSON.stringify(held)}, a full compile gives ${JSON.stringify(wanted)}`);
          }
          entriesSeen += wanted.length;
          checked++;
        }
      };

      regenerate();
      for (const op of ops) {
        const pick = <T>(list: T[], n: number): T | undefined => (list.length ? list[n % list.length] : undefined);
        switch (op.kind) {
          case 'add': repository.add(labelled(op.rules)); break;
          case 'delete': {
            const rule = pick([...repository.rules()], op.pick);
            if (rule) repository.delete(rule.rule.labels);
            break;
          }
          case 'labels': {
            const e = pick(endpoints, op.pick);
            if (e) e.labels = op.labels && L(op.labels);
            break;
          }
          case 'mode': {
            const e = pick(endpoints, op.pick);
            if (e) e.mode = op.mode;
            break;
          }
          case 'join': {
            const e: Endpoint = { id: `ep${nextId++}`, labels: op.labels && L(op.labels), mode: 'default' };
            endpoints.push(e);
            // As PolicyEngine.prepare: compiled and written before the regeneration that follows.
            if (op.early) write(e.id, compiler.rebuild(e.id, { ...inputOf({ ...e, labels: undefined }) }).full);
            break;
          }
          case 'leave': {
            const i = endpoints.length ? op.pick % endpoints.length : -1;
            if (i >= 0) {
              maps.delete(endpoints[i]!.id);
              endpoints.splice(i, 1);
            }
            break;
          }
          case 'collect': {
            // Label sets no endpoint has go (as at a daemon start): peers that named them lose entries.
            const used = new Set(endpoints.filter((e) => e.labels).map((e) => identities.forLabels(e.labels!).id));
            identities.collect(used, cidrsOf(repository.rules()));
            break;
          }
        }
        regenerate();
      }
    }), { numRuns: 400 });
  } catch (err) {
    t.log('the last counterexample:', lastProblem);
    throw err;
  }
  t.log(`endpoints checked: ${checked}, entries compared: ${entriesSeen}`);
  t.true(checked > 1000 && entriesSeen > 5000);
});

test('a rule added among many rewrites only the keys it adds; a peer identity that appears adds its keys to the endpoints that name it', (t) => {
  const identities = new IdentityAllocator(emptyIdentityState());
  const repository = new PolicyRepository(emptyPolicyState());
  const server = L(['container:app=server']);
  const client = L(['container:app=client']);
  const serverId = identities.forLabels(server).id;
  identities.forLabels(client);
  const portRule = (port: number): PolicyRule => ({
    labels: [{ source: 'unspec', key: 'port', value: String(port) }], endpointSelector: { matchLabels: { app: 'server' } },
    ingress: [{ endpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port, protocol: 'TCP' }] }] }],
  });
  repository.add(Array.from({ length: 1000 }, (_, i) => portRule(1000 + i)));
  const compiler = new IncrementalCompiler();
  const input: EndpointPolicyInput = { identity: serverId, labels: identities.get(serverId)!.labels, mode: 'default', audit: false };
  compiler.sync(repository.rules(), identities);
  t.like(compiler.update('s', input), { full: true, size: 1000 });
  compiler.written('s');

  repository.add([portRule(5000)]);
  compiler.sync(repository.rules(), identities);
  t.like(compiler.update('s', input), { full: false, size: 1001 });
  t.deepEqual(compiler.changes('s').map((c) => [c.key.port, c.entry?.verdict]), [[5000, 1]]);
  compiler.written('s');

  repository.delete([{ source: 'any', key: 'port', value: '5000' }]);
  compiler.sync(repository.rules(), identities);
  compiler.update('s', input);
  t.deepEqual(compiler.changes('s').map((c) => [c.key.port, c.entry]), [[5000, undefined]]);
  compiler.written('s');

  const second = identities.forLabels(L(['container:app=client', 'container:v=2'])).id;
  compiler.sync(repository.rules(), identities);
  t.like(compiler.update('s', input), { full: false, size: 2000 });
  const changes = compiler.changes('s');
  t.is(changes.length, 1000);
  t.true(changes.every((c) => c.key.identity === second && c.entry !== undefined));
});
