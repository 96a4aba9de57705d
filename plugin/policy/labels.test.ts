import test from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from '../errors.js';
import {
  formatLabel, labelSetKey, labelsEqual, parseLabel, parseLabelKey, parseLabelList, sortLabels, splitSourceKey,
} from './labels.js';
import type { Label } from './types.js';

const label = (source: string, key: string, value = ''): Label => ({ source, key, value });

test('parseLabel: the four shapes, and the default source', (t) => {
  t.deepEqual(parseLabel('container:app=web'), label('container', 'app', 'web'));
  t.deepEqual(parseLabel('app=web'), label('any', 'app', 'web'));
  t.deepEqual(parseLabel('container:app'), label('container', 'app'));
  t.deepEqual(parseLabel('app'), label('any', 'app'));
  t.deepEqual(parseLabel('name=x', 'unspec'), label('unspec', 'name', 'x'));
  t.deepEqual(parseLabel('container:app='), label('container', 'app'), 'a trailing = is an empty value');
});

test('parseLabel: only a source-shaped prefix before the first ":" (and before any "=") is a source', (t) => {
  t.deepEqual(parseLabel('com.docker.compose.service=db'), label('any', 'com.docker.compose.service', 'db'));
  t.deepEqual(parseLabel('container:com.docker.compose.service=db'), label('container', 'com.docker.compose.service', 'db'));
  t.deepEqual(parseLabel('com.example:x=1'), label('any', 'com.example:x', '1'), 'a dot cannot be in a source');
  t.deepEqual(parseLabel('Container:app'), label('any', 'Container:app'), 'sources are lower case');
  t.deepEqual(parseLabel('1x:app'), label('any', '1x:app'), 'sources start with a letter');
  t.deepEqual(parseLabel('a=b:c=d'), label('any', 'a', 'b:c=d'), 'the value keeps later ":" and "="');
  t.deepEqual(parseLabel('cilium-generated:x'), label('cilium-generated', 'x'));
  t.deepEqual(parseLabel('cidr:10.0.0.0/8'), label('cidr', '10.0.0.0/8'));
  t.deepEqual(parseLabel('container:a:b=c'), label('container', 'a:b', 'c'), 'only the first ":" splits');
  t.deepEqual(parseLabel('k8s:io.kubernetes.pod.namespace=default'), label('k8s', 'io.kubernetes.pod.namespace', 'default'));
});

test('parseLabel: invalid keys are refused with a message saying what to write', (t) => {
  for (const text of ['', '=web', 'container:', 'container:=web', 'a b=c', 'a,b=c', 'tab\there']) {
    const err = t.throws(() => parseLabel(text), { instanceOf: InvalidArgumentError }, JSON.stringify(text));
    t.regex(err!.message, /invalid label .*(empty|contains)/, text);
    t.regex(err!.message, /write/, text);
  }
  t.throws(() => parseLabelKey('app=web'), { message: /contains '='/ });
});

test('formatLabel always writes the source, and leaves out an empty value', (t) => {
  t.is(formatLabel(label('container', 'app', 'web')), 'container:app=web');
  t.is(formatLabel(label('reserved', 'host')), 'reserved:host');
  t.is(formatLabel(label('any', 'a:b', 'c=d')), 'any:a:b=c=d');
});

test('parseLabelList splits on commas, trims and skips empty items', (t) => {
  t.deepEqual(parseLabelList('a=b,container:c=d'), [label('any', 'a', 'b'), label('container', 'c', 'd')]);
  t.deepEqual(parseLabelList(' a=b , ,c '), [label('any', 'a', 'b'), label('any', 'c')]);
  t.deepEqual(parseLabelList(''), []);
  t.throws(() => parseLabelList('a=b,=c'), { instanceOf: InvalidArgumentError });
});

test('sortLabels, labelsEqual and labelSetKey ignore order and duplicates but nothing else', (t) => {
  const a = [label('container', 'b', '1'), label('any', 'z'), label('container', 'a', '2'), label('any', 'z')];
  t.deepEqual(sortLabels(a), [label('any', 'z'), label('container', 'a', '2'), label('container', 'b', '1')]);
  t.true(labelsEqual(a, [label('container', 'a', '2'), label('any', 'z'), label('container', 'b', '1')]));
  t.false(labelsEqual(a, [label('container', 'a', '2'), label('any', 'z')]));
  t.false(labelsEqual([label('container', 'a', '1')], [label('k8s', 'a', '1')]));
  t.is(labelSetKey([]), '[]');
  // A value holding ',' or '=' must not make two different sets look alike.
  t.not(labelSetKey([label('any', 'a', 'x,any:b=y')]), labelSetKey([label('any', 'a', 'x'), label('any', 'b', 'y')]));
});

test('splitSourceKey never throws and applies the default source', (t) => {
  t.deepEqual(splitSourceKey('any:app'), { source: 'any', key: 'app' });
  t.deepEqual(splitSourceKey('app', 'unspec'), { source: 'unspec', key: 'app' });
  t.deepEqual(splitSourceKey(':x'), { source: 'any', key: ':x' });
});

// ---- properties -----------------------------------------------------------------------------------

const sourceArb = fc.oneof(fc.constantFrom('container', 'k8s', 'reserved', 'unspec', 'any', 'cidr'),
  fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/));
// Keys: anything but '=', ',', whitespace and control characters; ':' and '/' included on purpose.
const keyArb = fc.string({ minLength: 1, maxLength: 16 }).filter((k) => !/[\s\p{Cc}=,]/u.test(k));
const valueArb = fc.string({ maxLength: 12 });
const labelArb = fc.record({ source: sourceArb, key: keyArb, value: valueArb }, { noNullPrototype: true });

test('property: parseLabel(formatLabel(l)) gives l back for every valid label', (t) => {
  fc.assert(fc.property(labelArb, (l) => {
    assert.deepEqual(parseLabel(formatLabel(l)), l);
  }));
  t.pass();
});

test('property: formatLabel(parseLabel(text)) is a fixed point: it parses to the same label again', (t) => {
  const textArb = fc.oneof(fc.string({ maxLength: 20 }),
    fc.tuple(sourceArb, keyArb, valueArb).map(([s, k, v]) => `${s}:${k}=${v}`),
    fc.tuple(keyArb, valueArb).map(([k, v]) => `${k}=${v}`));
  let parsed = 0;
  fc.assert(fc.property(textArb, (text) => {
    let l: Label;
    try {
      l = parseLabel(text);
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError);
      return;
    }
    parsed++;
    const canonical = formatLabel(l);
    assert.deepEqual(parseLabel(canonical), l);
    assert.equal(formatLabel(parseLabel(canonical)), canonical);
  }));
  t.true(parsed > 0);
});

test('property: labelSetKey equal exactly when the label sets are equal', (t) => {
  // Few distinct labels so that equal sets come up often.
  const small = fc.record({ source: fc.constantFrom('container', 'k8s'), key: fc.constantFrom('a', 'b'), value: fc.constantFrom('', 'x') }, { noNullPrototype: true });
  const asSet = (ls: Label[]): string => [...new Set(ls.map((l) => JSON.stringify([l.source, l.key, l.value])))].sort().join('|');
  fc.assert(fc.property(fc.array(small, { maxLength: 6 }), fc.array(small, { maxLength: 6 }), (a, b) => {
    assert.equal(labelSetKey(a) === labelSetKey(b), asSet(a) === asSet(b));
    assert.equal(labelSetKey(a), labelSetKey([...a].reverse().concat(a)));
  }));
  t.pass();
});
