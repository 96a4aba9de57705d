import test from 'ava';
import fc from 'fast-check';
import { ConflictError } from '../errors.js';
import { labelSetKey } from './labels.js';
import { PolicyRepository, emptyPolicyState } from './repository.js';
import type { Label, PolicyRule, StoredRule } from './types.js';

const rule = (name?: string, app = 'db'): PolicyRule => ({
  endpointSelector: { matchLabels: { app } },
  ingress: [{ entities: ['host'] }],
  labels: name ? [{ source: 'unspec', key: 'name', value: name }] : [],
});

test('every change moves the revision; ids are small, stable and reused only after deletion', (t) => {
  const repo = new PolicyRepository(emptyPolicyState());
  const first = repo.add([rule('a'), rule('b'), rule()]);
  t.is(first.revision, 2);
  t.deepEqual(first.added.map((r) => r.id), [1, 2, 3]);
  const deleted = repo.delete([{ source: 'any', key: 'name', value: 'b' }]);
  t.deepEqual(deleted.deleted.map((r) => r.id), [2]);
  t.is(deleted.revision, 3);
  t.deepEqual(repo.add([rule('c')]).added.map((r) => r.id), [2], 'the freed id');
  t.is(repo.revision, 4);
});

test('importing a rule with the labels of an existing one replaces it; unlabelled rules are always added', (t) => {
  const repo = new PolicyRepository(emptyPolicyState());
  repo.add([rule('a'), rule()]);
  const again = repo.add([rule('a', 'web'), rule()]);
  t.deepEqual(again.replaced, [1]);
  t.is(repo.rules().length, 3);
  t.deepEqual(repo.find([{ source: 'any', key: 'name', value: 'a' }]).map((r) => r.rule.endpointSelector), [{ matchLabels: { app: 'web' } }]);
});

test('delete needs labels or --all, and never touches container label policies', (t) => {
  const repo = new PolicyRepository(emptyPolicyState());
  repo.add([rule('a')]);
  repo.setOrigin('endpoint:abc', [rule('label-policy')]);
  t.throws(() => repo.delete([]), { instanceOf: ConflictError });
  const gone = repo.delete([], { all: true });
  t.is(gone.deleted.length, 1);
  t.deepEqual(repo.rules().map((r) => r.origin), ['endpoint:abc']);
});

test('a container\'s label policy replaces its previous one, and an unchanged one moves nothing', (t) => {
  const repo = new PolicyRepository(emptyPolicyState());
  const first = repo.setOrigin('endpoint:abc', [rule('x')]);
  t.true(first.changed);
  t.false(repo.setOrigin('endpoint:abc', [rule('x')]).changed);
  t.is(repo.revision, first.revision);
  repo.setOrigin('endpoint:abc', [rule('y')]);
  t.deepEqual(repo.rules().map((r) => r.rule.labels[0]!.value), ['y']);
  t.true(repo.setOrigin('endpoint:abc', []).changed);
  t.is(repo.rules().length, 0);
});

/** The repository as it was before its indexes: every question a walk over every rule. */
class ReferenceRepository {
  constructor(readonly state: { revision: number; rules: StoredRule[] }) {}

  private freeIds(count: number, releasing: Set<number>): number[] {
    const used = new Set(this.state.rules.filter((r) => !releasing.has(r.id)).map((r) => r.id));
    const ids: number[] = [];
    for (let id = 1; ids.length < count; id++) if (!used.has(id)) ids.push(id);
    return ids;
  }

  find(labels: Label[]): StoredRule[] {
    return this.state.rules.filter((r) => labels.every((w) => r.rule.labels.some((l) => l.key === w.key && l.value === w.value && (w.source === 'any' || l.source === w.source))));
  }

  add(rules: PolicyRule[], origin: string) {
    const incomingKeys = new Set(rules.filter((r) => r.labels.length).map((r) => labelSetKey(r.labels)));
    const replaced = this.state.rules.filter((r) => r.origin === origin && r.rule.labels.length && incomingKeys.has(labelSetKey(r.rule.labels))).map((r) => r.id);
    const replacing = new Set(replaced);
    const ids = this.freeIds(rules.length, replacing);
    const revision = this.state.revision + 1;
    const added = rules.map((rule, i) => ({ id: ids[i]!, rule, origin, revision }));
    this.state.rules = [...this.state.rules.filter((r) => !replacing.has(r.id)), ...added].sort((a, b) => a.id - b.id);
    this.state.revision = revision;
    return { revision, added, replaced };
  }

  delete(labels: Label[]) {
    const deleted = this.find(labels).filter((r) => r.origin === 'api');
    if (!deleted.length) return { revision: this.state.revision, deleted };
    const gone = new Set(deleted.map((r) => r.id));
    this.state.rules = this.state.rules.filter((r) => !gone.has(r.id));
    this.state.revision++;
    return { revision: this.state.revision, deleted };
  }
}

test('property: the indexed repository answers every add, delete and find as a walk over every rule does', (t) => {
  const labelArb = fc.record({ source: fc.constantFrom('unspec', 'k8s'), key: fc.constantFrom('a', 'b', 'c'), value: fc.constantFrom('1', '2', '') });
  const wantedArb = fc.array(fc.record({ source: fc.constantFrom('any', 'unspec', 'k8s'), key: fc.constantFrom('a', 'b', 'c'), value: fc.constantFrom('1', '2', '') }), { maxLength: 2 });
  const opArb = fc.oneof(
    fc.record({ kind: fc.constant('add' as const), labels: fc.array(fc.array(labelArb, { maxLength: 3 }), { minLength: 1, maxLength: 3 }), origin: fc.constantFrom('api', 'endpoint:x') }),
    fc.record({ kind: fc.constant('delete' as const), wanted: wantedArb }),
    fc.record({ kind: fc.constant('find' as const), wanted: wantedArb }),
    fc.record({ kind: fc.constant('rollback' as const) }),
  );
  fc.assert(fc.property(fc.array(opArb, { maxLength: 25 }), (ops) => {
    const state = emptyPolicyState();
    const repo = new PolicyRepository(state);
    const reference = new ReferenceRepository({ revision: state.revision, rules: [] });
    let before = { revision: state.revision, rules: state.rules };
    for (const op of ops) {
      const ids = (rules: StoredRule[]) => rules.map((r) => r.id);
      if (op.kind === 'add') {
        before = { revision: state.revision, rules: state.rules };
        const rules = op.labels.map((labels) => ({ endpointSelector: {}, labels }));
        const got = repo.add(rules, op.origin);
        const want = reference.add(rules, op.origin);
        t.deepEqual([got.revision, ids(got.added), got.replaced], [want.revision, ids(want.added), want.replaced]);
      } else if (op.kind === 'delete') {
        if (!op.wanted.length) continue;
        const got = repo.delete(op.wanted);
        const want = reference.delete(op.wanted);
        t.deepEqual([got.revision, ids(got.deleted)], [want.revision, ids(want.deleted)]);
      } else if (op.kind === 'find') {
        t.deepEqual(ids(repo.find(op.wanted)), ids(reference.find(op.wanted)));
      } else {
        // As PolicyEngine.changeRules when a regeneration refuses a change: an earlier list comes back.
        Object.assign(state, before);
        reference.state.revision = before.revision;
        reference.state.rules = state.rules.map((r) => ({ ...r }));
      }
      t.deepEqual(state.rules.map((r) => [r.id, r.origin, r.revision]), reference.state.rules.map((r) => [r.id, r.origin, r.revision]));
    }
  }), { numRuns: 300 });
});
