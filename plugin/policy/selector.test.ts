import test from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { selectorMatches, selectorToString } from './selector.js';
import type { EndpointSelector, Label, SelectorExpression } from './types.js';

const L = (source: string, key: string, value = ''): Label => ({ source, key, value });
const web = [L('container', 'app', 'web'), L('container', 'tier', 'front'), L('k8s', 'zone', 'a')];

test('{} matches every label set, the empty one too', (t) => {
  t.true(selectorMatches({}, web));
  t.true(selectorMatches({}, []));
  t.true(selectorMatches({ matchLabels: {}, matchExpressions: [] }, []));
});

test('matchLabels: a bare key (or any:key) matches any source, source:key only that source', (t) => {
  t.true(selectorMatches({ matchLabels: { app: 'web' } }, web));
  t.true(selectorMatches({ matchLabels: { 'any:app': 'web' } }, web));
  t.true(selectorMatches({ matchLabels: { 'container:app': 'web' } }, web));
  t.false(selectorMatches({ matchLabels: { 'k8s:app': 'web' } }, web));
  t.false(selectorMatches({ matchLabels: { app: 'db' } }, web));
  t.false(selectorMatches({ matchLabels: { app: 'web', tier: 'back' } }, web), 'every entry must hold');
  t.true(selectorMatches({ matchLabels: { app: 'web', 'k8s:zone': 'a' } }, web));
  t.true(selectorMatches({ matchLabels: { flag: '' } }, [L('container', 'flag')]), 'an empty value matches an empty value');
  t.false(selectorMatches({ matchLabels: { flag: '' } }, []));
});

test('keys that are not source-shaped before ":" are whole keys', (t) => {
  const labels = [L('container', 'com.example:x', '1')];
  t.true(selectorMatches({ matchLabels: { 'com.example:x': '1' } }, labels));
  t.true(selectorMatches({ matchLabels: { 'container:com.example:x': '1' } }, labels));
});

test('In / NotIn / Exists / DoesNotExist', (t) => {
  const expr = (key: string, operator: SelectorExpression['operator'], values?: string[]): EndpointSelector =>
    ({ matchExpressions: [values === undefined ? { key, operator } : { key, operator, values }] });
  t.true(selectorMatches(expr('app', 'In', ['db', 'web']), web));
  t.false(selectorMatches(expr('app', 'In', ['db']), web));
  t.false(selectorMatches(expr('missing', 'In', ['x']), web));
  t.false(selectorMatches(expr('app', 'NotIn', ['web']), web));
  t.true(selectorMatches(expr('app', 'NotIn', ['db']), web));
  t.true(selectorMatches(expr('missing', 'NotIn', ['x']), web), 'NotIn holds when the label is absent');
  t.true(selectorMatches(expr('k8s:app', 'NotIn', ['web']), web), 'container:app is not k8s:app');
  t.true(selectorMatches(expr('tier', 'Exists'), web));
  t.false(selectorMatches(expr('k8s:tier', 'Exists'), web));
  t.true(selectorMatches(expr('debug', 'DoesNotExist'), web));
  t.false(selectorMatches(expr('zone', 'DoesNotExist'), web));
});

test('with the same bare key from two sources, In holds if either matches and NotIn is its negation', (t) => {
  const labels = [L('container', 'app', 'web'), L('k8s', 'app', 'db')];
  const sel = (operator: 'In' | 'NotIn'): EndpointSelector => ({ matchExpressions: [{ key: 'app', operator, values: ['db'] }] });
  t.true(selectorMatches(sel('In'), labels));
  t.false(selectorMatches(sel('NotIn'), labels));
});

test('reserved:all in matchLabels matches everything', (t) => {
  t.true(selectorMatches({ matchLabels: { 'reserved:all': '' } }, []));
  t.true(selectorMatches({ matchLabels: { 'reserved:all': '' } }, web));
  t.false(selectorMatches({ matchLabels: { 'reserved:all': '', app: 'db' } }, web));
});

test('selectorToString', (t) => {
  t.is(selectorToString({}), '{}');
  t.is(selectorToString({
    matchLabels: { tier: 'front', app: 'web' },
    matchExpressions: [
      { key: 'zone', operator: 'In', values: ['a', 'b'] },
      { key: 'container:env', operator: 'NotIn', values: ['prod'] },
      { key: 'canary', operator: 'Exists' },
      { key: 'debug', operator: 'DoesNotExist' },
    ],
  }), 'app=web,tier=front,zone in (a,b),container:env notin (prod),canary,!debug');
  t.is(selectorToString({ matchLabels: { app: 'web' }, matchExpressions: [{ key: 'debug', operator: 'DoesNotExist' }] }),
    'app=web,!debug');
});

// ---- properties -----------------------------------------------------------------------------------

// Small alphabets so that selectors and labels meet often.
const SOURCES = ['container', 'k8s', 'reserved'];
const KEYS = ['app', 'tier', 'com.x/y', 'all'];
const VALUES = ['', 'web', 'db'];
const labelArb = fc.record({ source: fc.constantFrom(...SOURCES), key: fc.constantFrom(...KEYS), value: fc.constantFrom(...VALUES) }, { noNullPrototype: true });
const selectorKeyArb = fc.oneof(fc.constantFrom(...KEYS),
  fc.tuple(fc.constantFrom(...SOURCES, 'any'), fc.constantFrom(...KEYS)).map(([s, k]) => `${s}:${k}`));
const valuesArb = fc.uniqueArray(fc.constantFrom(...VALUES), { minLength: 1 });
const expressionArb: fc.Arbitrary<SelectorExpression> = fc.oneof(
  fc.record({ key: selectorKeyArb, operator: fc.constantFrom('In' as const, 'NotIn' as const), values: valuesArb }, { noNullPrototype: true }),
  fc.record({ key: selectorKeyArb, operator: fc.constantFrom('Exists' as const, 'DoesNotExist' as const) }, { noNullPrototype: true }),
);
const selectorArb: fc.Arbitrary<EndpointSelector> = fc.record({
  matchLabels: fc.array(fc.tuple(selectorKeyArb, fc.constantFrom(...VALUES)), { maxLength: 3 }).map((e) => Object.fromEntries(e)),
  matchExpressions: fc.array(expressionArb, { maxLength: 3 }),
}, { requiredKeys: [], noNullPrototype: true });

/** The spec, sentence by sentence, written independently of selector.ts. */
function reference(sel: EndpointSelector, labels: Label[]): boolean {
  // "a selector key k without source matches a label with key k from ANY source; source:k only
  // that source; any:k same as bare". A source is [a-z][a-z0-9-]* before the first ':'.
  const picked = (selectorKey: string): Label[] => {
    const m = /^([a-z][a-z0-9-]*):(.*)$/s.exec(selectorKey);
    const source = m && m[1] !== 'any' ? m[1] : undefined;
    const key = m ? m[2] : selectorKey;
    return labels.filter((l) => l.key === key && (source === undefined || l.source === source));
  };
  // "matchLabels AND matchExpressions": all of them hold.
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
    if (k === 'reserved:all') continue; // Cilium: reserved:all selects everything
    if (!picked(k).some((l) => l.value === v)) return false;
  }
  for (const e of sel.matchExpressions ?? []) {
    const found = picked(e.key);
    const values = e.values ?? [];
    const ok = e.operator === 'In' ? found.some((l) => values.includes(l.value))
      // "NotIn: label absent OR value not in values"
      : e.operator === 'NotIn' ? found.length === 0 || found.every((l) => !values.includes(l.value))
        : e.operator === 'Exists' ? found.length > 0
          : found.length === 0;
    if (!ok) return false;
  }
  return true;
}

test('property: selectorMatches agrees with the reference reading of the spec', (t) => {
  let matched = 0;
  let total = 0;
  fc.assert(fc.property(selectorArb, fc.array(labelArb, { maxLength: 5 }), (sel, labels) => {
    const got = selectorMatches(sel, labels);
    assert.equal(got, reference(sel, labels));
    total++;
    if (got) matched++;
  }), { numRuns: 2000 });
  t.log(`${matched} of ${total} generated cases matched`);
  t.true(matched > total / 20 && matched < total - total / 20, 'both outcomes are exercised');
});

test('property: NotIn is the negation of In, DoesNotExist the negation of Exists', (t) => {
  fc.assert(fc.property(selectorKeyArb, valuesArb, fc.array(labelArb, { maxLength: 5 }), (key, values, labels) => {
    const one = (e: SelectorExpression): boolean => selectorMatches({ matchExpressions: [e] }, labels);
    assert.notEqual(one({ key, operator: 'In', values }), one({ key, operator: 'NotIn', values }));
    assert.notEqual(one({ key, operator: 'Exists' }), one({ key, operator: 'DoesNotExist' }));
    // matchLabels {k: v} is In [v] (except for reserved:all, which matchLabels treats as "everything").
    if (key !== 'reserved:all') assert.equal(selectorMatches({ matchLabels: { [key]: values[0]! } }, labels), one({ key, operator: 'In', values: [values[0]!] }));
  }), { numRuns: 1000 });
  t.pass();
});

test('property: adding requirements only narrows a selector', (t) => {
  fc.assert(fc.property(selectorArb, expressionArb, fc.array(labelArb, { maxLength: 5 }), (sel, extra, labels) => {
    const narrower = { ...sel, matchExpressions: [...(sel.matchExpressions ?? []), extra] };
    if (selectorMatches(narrower, labels)) assert.ok(selectorMatches(sel, labels));
  }));
  t.pass();
});
