import test from 'ava';
import { ConflictError } from '../errors.js';
import { PolicyRepository, emptyPolicyState } from './repository.js';
import type { PolicyRule } from './types.js';

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
