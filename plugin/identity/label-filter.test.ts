// The label prefix filter: which labels make an identity, which are information only.

import test from 'ava';
import fc from 'fast-check';
import type { Label } from '../policy/types.js';
import { DEFAULT_LABEL_EXCLUDES, DEFAULT_LABEL_FILTER, filterLabels, isIdentityRelevant, type LabelFilter } from './label-filter.js';

const c = (key: string, value = 'v'): Label => ({ source: 'container', key, value });
const keys = (labels: Label[]) => labels.map((l) => `${l.source}:${l.key}`);

test('default filter: compose bookkeeping, OCI and build metadata are information only', (t) => {
  const labels: Label[] = [
    c('app', 'web'),
    c('com.docker.compose.config-hash', '9f2b'),
    c('com.docker.compose.container-number', '1'),
    c('com.docker.compose.project', 'shop'),
    c('org.opencontainers.image.created', '2024-05-01T10:00:00Z'),
    c('org.opencontainers.image.revision', 'abc123'),
    c('org.label-schema.build-date', '20240501'),
    c('build-date', '2024-05-01'),
    c('io.kubernetes.pod.uid', 'f00'),
    c('version', 'v2'),
    c('maintainer', 'ops@example.com'),
    { source: 'compose', key: 'project', value: 'shop' },
    { source: 'compose', key: 'service', value: 'web' },
    { source: 'network', key: 'name', value: 'backend' },
  ];
  const { identity, info } = filterLabels(labels);
  t.deepEqual(keys(identity), ['container:app', 'container:version', 'container:maintainer', 'compose:project', 'compose:service', 'network:name']);
  t.is(identity.length + info.length, labels.length);
});

test('membrane.* keys are never identity-relevant, whatever the filter includes', (t) => {
  const policy = c('membrane.policy', '{"ingress":[]}');
  t.false(isIdentityRelevant(policy, DEFAULT_LABEL_FILTER));
  t.false(isIdentityRelevant(policy, { include: ['container:membrane.', 'container:'], exclude: [] }));
  t.false(isIdentityRelevant({ source: 'compose', key: 'membrane.x', value: '' }, { include: [], exclude: [] }));
  t.deepEqual(filterLabels([policy, c('app')]).info, [policy]);
});

test('longest matching prefix wins, in both directions', (t) => {
  const filter: LabelFilter = { include: ['container:com.docker.compose.service'], exclude: ['container:com.docker.compose.', 'container:team.secret'] };
  t.true(isIdentityRelevant(c('com.docker.compose.service'), filter));
  t.false(isIdentityRelevant(c('com.docker.compose.version'), filter));
  const narrowerExclude: LabelFilter = { include: ['container:team'], exclude: ['container:team.secret'] };
  t.true(isIdentityRelevant(c('team'), narrowerExclude));
  t.false(isIdentityRelevant(c('team.secret.token'), narrowerExclude));
});

test('with an include prefix configured, labels matching nothing are excluded', (t) => {
  const filter: LabelFilter = { include: ['container:app'], exclude: [] };
  t.true(isIdentityRelevant(c('app'), filter));
  t.true(isIdentityRelevant(c('application'), filter), 'prefixes are plain string prefixes');
  t.false(isIdentityRelevant(c('tier'), filter));
  t.false(isIdentityRelevant({ source: 'network', key: 'name', value: 'n' }, filter));
});

test('without include prefixes, labels count unless excluded; the same prefix in both lists excludes', (t) => {
  t.true(isIdentityRelevant(c('anything'), { include: [], exclude: [] }));
  t.false(isIdentityRelevant(c('app'), { include: ['container:app'], exclude: ['container:app'] }));
});

test('prefixes match the formatted source:key, so a source prefix selects a whole source', (t) => {
  const filter: LabelFilter = { include: [], exclude: ['network:'] };
  t.false(isIdentityRelevant({ source: 'network', key: 'name', value: 'n' }, filter));
  t.true(isIdentityRelevant({ source: 'container', key: 'network', value: 'n' }, filter));
});

test('default excludes are all source-qualified container prefixes', (t) => {
  for (const prefix of DEFAULT_LABEL_EXCLUDES) t.true(prefix.startsWith('container:'), prefix);
});

test('filterLabels partitions its input, keeping order', (t) => {
  const label = fc.record({
    source: fc.constantFrom('container', 'compose', 'network'),
    key: fc.oneof(fc.constantFrom('app', 'membrane.policy', 'com.docker.compose.x', 'org.opencontainers.image.created'), fc.string()),
    value: fc.string(),
  });
  const prefix = fc.oneof(fc.constantFrom('container:', 'container:app', 'compose:', 'network:name'), fc.string());
  fc.assert(fc.property(fc.array(label), fc.array(prefix), fc.array(prefix), (labels, include, exclude) => {
    const { identity, info } = filterLabels(labels, { include, exclude });
    t.is(identity.length + info.length, labels.length);
    const kept = new Set([...identity, ...info]);
    t.true(labels.every((l) => kept.has(l)));
    t.deepEqual(identity, labels.filter((l) => isIdentityRelevant(l, { include, exclude })));
  }));
});
