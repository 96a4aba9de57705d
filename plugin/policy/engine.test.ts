// The engine's regenerations (incremental compilation, writes of changed keys, refused changes put
// back) against a full compile, through an in-memory stand-in for the policy maps.

import test from 'ava';
import fc from 'fast-check';
import { ConflictError } from '../errors.js';
import type { Context } from '../network/networks.js';
import type { PolicyMapEntry, PolicyMaps } from '../datapath/policy-maps.js';
import type { PolicyEntry, PolicyKey } from '../datapath/codec.js';
import type { EndpointRecord, MembraneState } from '../state/model.js';
import { DEFAULT_LABEL_FILTER } from '../identity/label-filter.js';
import { PolicyCompiler, keyString } from './compile.js';
import { PolicyEngine } from './engine.js';
import { parseLabel, parseLabelList } from './labels.js';
import { labelArb, ruleArb } from './test-arbitraries.js';
import type { PolicyRule } from './types.js';

/** What PolicyMaps does, in memory: each endpoint's trie as key string -> entry. */
class MemoryMaps {
  readonly tries = new Map<number, Map<string, PolicyMapEntry>>();
  constructor(readonly capacity: number) {}
  apply(n: number, entries: PolicyMapEntry[]) {
    const trie = new Map(entries.map((e) => [keyString(e.key), e]));
    if (trie.size > this.capacity) throw new Error('the engine wrote more than the capacity');
    this.tries.set(n, trie);
    return { written: entries.length, deleted: 0 };
  }
  applyDelta(n: number, changes: { key: PolicyKey; entry: PolicyEntry | undefined }[], everything: () => PolicyMapEntry[]) {
    const trie = this.tries.get(n);
    if (!trie) return this.apply(n, everything());
    for (const { key, entry } of changes) {
      if (entry) trie.set(keyString(key), { key, entry });
      else trie.delete(keyString(key));
    }
    if (trie.size > this.capacity) throw new Error('the engine wrote more than the capacity');
    return { written: changes.length, deleted: 0 };
  }
  remove(n: number) { this.tries.delete(n); }
  resetCounters() {}
  syncIpcache() { return { written: 0, deleted: 0 }; }
  bumpEpoch() { return 1; }
  read(n: number) { return [...(this.tries.get(n)?.values() ?? [])]; }
}

type Op =
  | { kind: 'import'; rules: PolicyRule[] }
  | { kind: 'delete'; pick: number }
  | { kind: 'labels'; pick: number; labels: string[] }
  | { kind: 'create' }
  | { kind: 'remove'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('import' as const), rules: fc.array(ruleArb, { minLength: 1, maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('labels' as const), pick: fc.nat(), labels: fc.uniqueArray(labelArb, { minLength: 1, maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('create' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }) },
);

test('property: after any sequence of imports, deletes, label changes and endpoints coming and going, every map holds what a full compile gives', async (t) => {
  let checked = 0;
  let refused = 0;
  await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 10 }), fc.constantFrom(8, 1000), async (ops, capacity) => {
    const state = { networks: { net: { id: 'net', options: {}, name: 'n1' } }, endpoints: {} } as unknown as MembraneState;
    const ctx = { state, store: { commit: async () => {}, touch: () => {} }, log: { info() {}, debug() {}, error() {}, warn() {} } } as unknown as Context;
    const maps = new MemoryMaps(capacity);
    const engine = new PolicyEngine(ctx, { enforcement: 'default', audit: false, initFailOpen: false, labelFilter: DEFAULT_LABEL_FILTER },
      maps as unknown as PolicyMaps, undefined, () => ['10.0.0.1']);
    let serial = 0;
    const live: EndpointRecord[] = [];
    const create = (): void => {
      const e = { id: `e${serial}`, networkId: 'net', number: ++serial } as EndpointRecord;
      state.endpoints[e.id] = e;
      live.push(e);
      engine.prepare(e);
    };
    create();
    create();
    for (const op of ops) {
      const pick = <T>(list: T[], n: number): T | undefined => list[n % Math.max(1, list.length)];
      try {
        switch (op.kind) {
          case 'import':
            await engine.import(op.rules.map((r) => ({ ...r, labels: [{ source: 'unspec', key: 'n', value: String(serial++) }] })));
            break;
          case 'delete': {
            const rule = pick([...engine.repository.rules()], op.pick);
            if (rule) await engine.delete(rule.rule.labels);
            break;
          }
          case 'labels': {
            const e = pick(live, op.pick);
            if (e) {
              await engine.endpointLabels({
                endpointId: e.id, networkId: 'net', networkName: 'n1', containerId: e.id, containerName: e.id,
                labels: op.labels.map((l) => parseLabel(l)), containerLabels: {}, trigger: 'start', receivedAt: 0,
              } as unknown as Parameters<PolicyEngine['endpointLabels']>[0]);
            }
            break;
          }
          case 'create': create(); break;
          case 'remove': {
            const i = live.length ? op.pick % live.length : -1;
            if (i >= 0) {
              const [e] = live.splice(i, 1);
              delete state.endpoints[e!.id];
              await engine.forget(e!);
            }
            break;
          }
        }
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        refused++;
      }
      try {
        await engine.regenerate();
      } catch (err) {
        // An endpoint whose new identity needs more entries than its map holds: nothing is
        // written until a later change makes it fit (as before incremental compilation).
        if (!(err instanceof ConflictError)) throw err;
        refused++;
        continue;
      }
      const compiler = new PolicyCompiler(engine.repository.rules(), engine.identities);
      for (const e of live) {
        const labels = e.identity === undefined || e.identity === 5 ? parseLabelList('reserved:init') : (e.labels ?? []).map((l) => parseLabel(l));
        const want = compiler.compile({ identity: e.identity ?? 5, labels, mode: 'default', audit: false, initFailOpen: false, forceEnforce: e.labelPolicyError !== undefined });
        const held = maps.read(e.number!).map((x) => `${keyString(x.key)}=${x.entry.verdict}:${x.entry.ruleId}`).sort();
        const wanted = want.entries.map((x) => `${keyString(x.key)}=${x.entry.verdict}:${x.entry.ruleId}`).sort();
        if (JSON.stringify(held) !== JSON.stringify(wanted)) throw new Error(`${e.id}: map holds ${held.join(' ')}; a full compile gives ${wanted.join(' ')}`);
        if (e.policy?.ingress !== want.enforceIngress || e.policy?.egress !== want.enforceEgress) throw new Error(`${e.id}: flags differ`);
        checked++;
      }
    }
  }), { numRuns: 150 });
  t.log(`endpoints checked: ${checked}, changes refused for capacity: ${refused}`);
  t.true(checked > 500);
  t.true(refused > 0, 'the capacity refusal and its rollback were exercised');
});
