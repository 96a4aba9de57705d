// Generators of rules and label sets for the policy property tests (compile.test.ts, incremental.test.ts).

import fc from 'fast-check';
import type { EndpointSelector, PolicyPeerRule, PolicyRule } from './types.js';

export const labelArb = fc.constantFrom('container:app=web', 'container:app=api', 'container:app=db', 'container:env=prod', 'container:env=dev',
  'network:name=n1', 'network:name=n2', 'compose:service=x');
export const selectorArb: fc.Arbitrary<EndpointSelector> = fc.oneof(
  fc.constant({}),
  fc.record({ matchLabels: fc.constantFrom<Record<string, string>>({ app: 'web' }, { app: 'api' }, { 'container:env': 'prod' }, { 'network:name': 'n1' }) }),
  fc.record({
    matchExpressions: fc.array(fc.oneof(
      fc.record({ key: fc.constantFrom('app', 'env'), operator: fc.constantFrom('In' as const, 'NotIn' as const), values: fc.constantFrom<string[]>(['web'], ['api', 'db'], ['prod']) }),
      fc.record({ key: fc.constantFrom('app', 'env', 'reserved:host'), operator: fc.constantFrom('Exists' as const, 'DoesNotExist' as const) }),
    ), { minLength: 1, maxLength: 2 }),
  }),
);
export const cidrArb = fc.constantFrom('10.0.0.0/8', '10.1.0.0/16', '10.1.2.0/24', '192.168.0.0/16', '0.0.0.0/0', 'fd00::/8', 'fd00:1::/32');
export const portSpecArb = fc.oneof(
  fc.record({ port: fc.constantFrom(0, 22, 53, 80, 443), protocol: fc.constantFrom('TCP' as const, 'UDP' as const, 'ANY' as const) }),
  fc.record({ port: fc.constantFrom(8000, 8001, 1000), endPort: fc.constantFrom(8003, 8100, 9000), protocol: fc.constantFrom('TCP' as const, 'ANY' as const) }),
);
export const elementArb = (allow: boolean): fc.Arbitrary<PolicyPeerRule> => fc.record({
  endpoints: fc.array(selectorArb, { maxLength: 2 }),
  requires: allow ? fc.array(selectorArb, { maxLength: 1 }) : fc.constant([]),
  cidr: fc.array(cidrArb, { maxLength: 1 }),
  cidrSet: fc.array(fc.constantFrom({ cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] }, { cidr: '0.0.0.0/0', except: ['192.168.0.0/16'] }), { maxLength: 1 }),
  entities: fc.array(fc.constantFrom('host' as const, 'world' as const, 'all' as const, 'init' as const, 'network' as const), { maxLength: 1 }),
  toPorts: fc.array(fc.record({ ports: fc.array(portSpecArb, { minLength: 1, maxLength: 2 }) }), { maxLength: 1 }),
  icmps: fc.array(fc.record({ fields: fc.array(fc.record({ family: fc.constantFrom('IPv4' as const, 'IPv6' as const), type: fc.constantFrom(0, 8, 128) }), { minLength: 1, maxLength: 1 }) }), { maxLength: 1 }),
}).map((el) => Object.fromEntries(Object.entries(el).filter(([, v]) => (v as unknown[]).length)) as PolicyPeerRule);
export const ruleArb: fc.Arbitrary<PolicyRule> = fc.record({
  endpointSelector: selectorArb,
  ingress: fc.array(elementArb(true), { maxLength: 2 }),
  egress: fc.array(elementArb(true), { maxLength: 2 }),
  ingressDeny: fc.array(elementArb(false), { maxLength: 1 }),
  egressDeny: fc.array(elementArb(false), { maxLength: 1 }),
}).map((r) => ({ ...r, labels: [] }));

