import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import { PolicyInvalidError } from '../errors.js';
import { formatPrefix, type Prefix } from '../ipam/prefix.js';
import { parseLabelKey } from './labels.js';
import { checkPolicyText, formatPath, formatPolicy, parsePolicyText, validatePolicy } from './parse.js';
import {
  ENTITIES, type CidrSet, type EndpointSelector, type IcmpRule, type Label, type PolicyIssue, type PolicyPeerRule,
  type PolicyRule, type PortProtocolSpec, type PortRule, type SelectorExpression,
} from './types.js';

// The example from the design notes, without its L7 part (tested separately below).
const CILIUM_EXAMPLE = `[{
  "labels": [{"key": "name", "value": "web-from-api"}],
  "endpointSelector": {"matchLabels": {"role": "web"}},
  "ingress": [
    {"fromEndpoints": [{"matchLabels": {"container:role": "api"}}],
     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
    {"fromEntities": ["host"]}
  ],
  "egress": [
    {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}
  ]
}]`;

const CILIUM_EXAMPLE_AST: PolicyRule[] = [{
  endpointSelector: { matchLabels: { role: 'web' } },
  ingress: [
    { endpoints: [{ matchLabels: { 'container:role': 'api' } }], toPorts: [{ ports: [{ port: 8080, protocol: 'TCP' }] }] },
    { entities: ['host'] },
  ],
  egress: [{ cidrSet: [{ cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] }] }],
  labels: [{ source: 'unspec', key: 'name', value: 'web-from-api' }],
}];

const CILIUM_EXAMPLE_YAML = `
# same rule, as YAML
- labels:
    - key: name
      value: web-from-api
  endpointSelector:
    matchLabels: {role: web}
  ingress:
    - fromEndpoints:
        - matchLabels:
            container:role: api
      toPorts:
        - ports:
            - port: 8080
              protocol: tcp
    - fromEntities: [host]
  egress:
    - toCIDRSet:
        - cidr: 10.0.0.0/8
          except: [10.96.0.0/12]
`;

test('the Cilium example from the design notes parses, as JSON and as YAML', (t) => {
  t.deepEqual(parsePolicyText(CILIUM_EXAMPLE), CILIUM_EXAMPLE_AST);
  t.deepEqual(parsePolicyText(CILIUM_EXAMPLE_YAML), CILIUM_EXAMPLE_AST);
  t.deepEqual(parsePolicyText(CILIUM_EXAMPLE, 'yaml'), CILIUM_EXAMPLE_AST, 'JSON is YAML too');
});

test('the Cilium example with its L7 rules is refused, pointing at "rules"', (t) => {
  const withL7 = CILIUM_EXAMPLE.replace('"protocol": "TCP"}]', '"protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}');
  const err = t.throws(() => parsePolicyText(withL7), { instanceOf: PolicyInvalidError });
  t.is(err!.code, 'MEMBRANE_POLICY_INVALID');
  t.deepEqual(err!.issues.map((i) => i.path), ['[0].ingress[0].toPorts[0].rules']);
  t.regex(err!.issues[0]!.message, /L7 rules .* are not supported/);
  t.regex(err!.message, /\[0\]\.ingress\[0\]\.toPorts\[0\]\.rules: L7 rules/);
});

test('a single rule object is accepted as well as a list; [] is no rules', (t) => {
  t.deepEqual(parsePolicyText(CILIUM_EXAMPLE.trim().slice(1, -1)), CILIUM_EXAMPLE_AST);
  t.deepEqual(parsePolicyText('[]'), []);
  t.deepEqual(parsePolicyText('endpointSelector: {}'), [{ endpointSelector: {}, labels: [] }],
    'a rule without sections is valid (and adds nothing)');
});

test('YAML multi-document streams: each document is a rule or a list of rules; empty documents are skipped', (t) => {
  const text = `
endpointSelector: {matchLabels: {app: a}}
---
# a list in the second document
- endpointSelector: {matchLabels: {app: b}}
- endpointSelector: {matchLabels: {app: c}}
---
# nothing here
---
endpointSelector: {matchLabels: {app: d}}
---
`;
  const rules = parsePolicyText(text);
  t.deepEqual(rules.map((r) => r.endpointSelector.matchLabels?.app), ['a', 'b', 'c', 'd']);
  // Paths count rules over the whole stream.
  const bad = text.replace('{app: c}', '{app: 1}').replace('{app: d}', '{app: true}');
  t.deepEqual(checkPolicyText(bad).issues.map((i) => i.path), ['[2].endpointSelector.matchLabels.app',
    '[3].endpointSelector.matchLabels.app']);
});

test('YAML anchors and merge keys work', (t) => {
  const rules = parsePolicyText(`
- endpointSelector: &web {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [*web]
      toPorts: [{ports: [&http {port: 80, protocol: TCP}]}]
    - toPorts: [{ports: [{<<: *http, port: 8080}]}]
`);
  t.deepEqual(rules[0]!.ingress, [
    { endpoints: [{ matchLabels: { app: 'web' } }], toPorts: [{ ports: [{ port: 80, protocol: 'TCP' }] }] },
    { toPorts: [{ ports: [{ port: 8080, protocol: 'TCP' }] }] },
  ]);
});

test('normalisation: ports, protocols, entities, operators, CIDRs, ICMP, empty selectors', (t) => {
  const [rule] = parsePolicyText(JSON.stringify([{
    endpointSelector: { matchLabels: {}, matchExpressions: [] },
    ingress: [
      {
        fromEndpoints: [{ matchExpressions: [{ key: 'tier', operator: 'in', values: ['a'] }, { key: 'x', operator: 'exists', values: [] }] }],
        fromCIDR: ['10.1.2.3', 'FD00:0:0::/64', '::ffff:10.0.0.0/104'],
        fromEntities: ['HOST', 'World'],
        toPorts: [{ ports: [{ port: 80 }, { port: '443', protocol: 'tcp' }, { port: '', protocol: 'udp' },
          { port: 1000, endPort: 1000 }, { port: 1000, endPort: 0 }, { port: '2000', endPort: '2010', protocol: 'Any' },
          { port: 8, protocol: 'ICMP' }, { port: 'EchoRequest', protocol: 'icmpv6' }] }],
        icmps: [{ fields: [{ type: 'echoreply' }, { type: '3', family: 'ipv6' }, { type: 'PacketTooBig', family: 'IPv6' }] }],
      },
      {},
    ],
    egress: [],
    egressDeny: [{ toCIDR: ['2001:db8::1'] }],
    labels: ['team=infra', 'k8s:io.cilium.k8s.policy.name=x', { key: 'a', source: 'container' }],
    description: 'normalised',
  }]));
  t.deepEqual(rule, {
    endpointSelector: {},
    ingress: [
      {
        endpoints: [{ matchExpressions: [{ key: 'tier', operator: 'In', values: ['a'] }, { key: 'x', operator: 'Exists' }] }],
        cidr: ['10.1.2.3/32', 'fd00::/64', '::ffff:10.0.0.0/104'],
        entities: ['host', 'world'],
        toPorts: [{ ports: [{ port: 80, protocol: 'ANY' }, { port: 443, protocol: 'TCP' }, { port: 0, protocol: 'UDP' },
          { port: 1000, protocol: 'ANY' }, { port: 1000, protocol: 'ANY' }, { port: 2000, endPort: 2010, protocol: 'ANY' }] }],
        icmps: [
          { fields: [{ family: 'IPv4', type: 0 }, { family: 'IPv6', type: 3 }, { family: 'IPv6', type: 2 }] },
          { fields: [{ family: 'IPv4', type: 8 }, { family: 'IPv6', type: 128 }] },
        ],
      },
      {},
    ],
    egress: [],
    egressDeny: [{ cidr: ['2001:db8::1/128'] }],
    labels: [{ source: 'unspec', key: 'team', value: 'infra' }, { source: 'k8s', key: 'io.cilium.k8s.policy.name', value: 'x' },
      { source: 'container', key: 'a', value: '' }],
    description: 'normalised',
  } satisfies PolicyRule);
});

test('a toPorts entry holding only ICMP ports disappears into icmps', (t) => {
  const [rule] = parsePolicyText('endpointSelector: {}\negress: [{toPorts: [{ports: [{port: "8", protocol: ICMP}]}]}]');
  t.deepEqual(rule!.egress, [{ icmps: [{ fields: [{ family: 'IPv4', type: 8 }] }] }]);
});

// ---- every error path -----------------------------------------------------------------------------

/** Issues for one rule built on top of `{endpointSelector: {}}`. */
function issuesFor(rule: Record<string, unknown>): PolicyIssue[] {
  return validatePolicy([{ endpointSelector: {}, ...rule }]).issues;
}

/** Exactly one issue, at `path`, whose message matches every pattern. */
function oneIssue(t: ExecutionContext, rule: Record<string, unknown>, path: string, ...patterns: RegExp[]): void {
  const issues = issuesFor(rule);
  t.is(issues.length, 1, `${JSON.stringify(rule)} -> ${JSON.stringify(issues)}`);
  t.is(issues[0]?.path, path, JSON.stringify(rule));
  for (const p of patterns) t.regex(issues[0]?.message ?? '', p, JSON.stringify(rule));
}

const ingress = (element: Record<string, unknown>): Record<string, unknown> => ({ ingress: [element] });
const egress = (element: Record<string, unknown>): Record<string, unknown> => ({ egress: [element] });
const ports = (...specs: unknown[]): Record<string, unknown> => ingress({ toPorts: [{ ports: specs }] });
const P = '[0].ingress[0].toPorts[0].ports[0]';

test('errors: document and rule shape', (t) => {
  for (const doc of [42, 'x', null, true]) {
    const { rules, issues } = validatePolicy(doc);
    t.deepEqual(rules, []);
    t.is(issues.length, 1);
    t.is(issues[0]!.path, '');
    t.regex(issues[0]!.message, /a policy is a list of rules \(or a single rule object\), got .*write e\.g\./);
  }
  t.deepEqual(validatePolicy([1]).issues, [{ path: '[0]', message: 'a rule must be an object, got the number 1' }]);
  t.deepEqual(validatePolicy([{}]).issues.map((i) => i.path), ['[0]']);
  t.regex(validatePolicy([{}]).issues[0]!.message, /endpointSelector is missing; .*write \{\} to select every endpoint/);
  oneIssue(t, { ingres: [] }, '[0].ingres', /unknown field "ingres"; did you mean "ingress"\?/, /Known fields here are endpointSelector, ingress/);
  t.deepEqual(validatePolicy([{ EndpointSelector: {} }]).issues.map((i) => i.path), ['[0].EndpointSelector'],
    'a misspelt field stands in for the one it was meant as: no "missing" issue on top');
  t.regex(validatePolicy([{ EndpointSelector: {} }]).issues[0]!.message, /case-sensitive/);
  oneIssue(t, { bogus: 1 }, '[0].bogus', /unknown field "bogus"; known fields here are endpointSelector, ingress, egress, ingressDeny, egressDeny, labels, description/);
  oneIssue(t, { spec: {} }, '[0].spec', /Kubernetes CiliumNetworkPolicy.*contents of spec/);
  oneIssue(t, { nodeSelector: {} }, '[0].nodeSelector', /nodeSelector is not supported/);
  oneIssue(t, { ingress: { fromEntities: ['host'] } }, '[0].ingress', /ingress must be a list, got an object; write it as a list/);
  oneIssue(t, { egress: null }, '[0].egress', /egress is null .*remove the field or give it a value/);
  oneIssue(t, { ingress: [5] }, '[0].ingress[0]', /an ingress element must be an object, got the number 5/);
  oneIssue(t, { description: 5 }, '[0].description', /description must be a string, got the number 5; quote it: "5"/);
});

test('errors: peers spelt for the other direction, unsupported peers, requires in deny rules', (t) => {
  oneIssue(t, ingress({ toEndpoints: [{}] }), '[0].ingress[0].toEndpoints', /toEndpoints is the egress spelling; .*write fromEndpoints/);
  oneIssue(t, egress({ fromCIDR: ['10.0.0.0/8'] }), '[0].egress[0].fromCIDR', /fromCIDR is the ingress spelling; in egress the peers are the destinations: write toCIDR/);
  oneIssue(t, { egressDeny: [{ fromEntities: ['world'] }] }, '[0].egressDeny[0].fromEntities', /in egressDeny .*write toEntities/);
  oneIssue(t, ingress({ fromEndpoint: [{}] }), '[0].ingress[0].fromEndpoint', /did you mean "fromEndpoints"\?/);
  oneIssue(t, egress({ fromEndpoint: [{}] }), '[0].egress[0].fromEndpoint', /if you meant "fromEndpoints": .*write toEndpoints/);
  oneIssue(t, { ingressDeny: [{ fromRequires: [{}] }] }, '[0].ingressDeny[0].fromRequires',
    /fromRequires is not allowed in ingressDeny: requires only narrow what allow rules grant/);
  oneIssue(t, { egressDeny: [{ toRequires: [{}] }] }, '[0].egressDeny[0].toRequires', /not allowed in egressDeny/);
  oneIssue(t, { ingressDeny: [{ toRequires: [{}] }] }, '[0].ingressDeny[0].toRequires', /not allowed in ingressDeny/);
  oneIssue(t, egress({ toFQDNs: [{ matchName: 'x.com' }] }), '[0].egress[0].toFQDNs', /toFQDNs is not supported by Membrane/);
  oneIssue(t, egress({ toServices: [] }), '[0].egress[0].toServices', /toServices .* is not supported/);
  oneIssue(t, egress({ toGroups: [] }), '[0].egress[0].toGroups', /toGroups .* is not supported/);
  oneIssue(t, ingress({ rules: {} }), '[0].ingress[0].rules', /L7 rules are not supported/);
  // A misplaced member is still checked inside, so one pass finds everything.
  const issues = issuesFor(egress({ fromCIDR: ['10.0.0.1/8'] }));
  t.deepEqual(issues.map((i) => i.path), ['[0].egress[0].fromCIDR', '[0].egress[0].fromCIDR[0]']);
});

test('errors: empty and null lists inside an element', (t) => {
  oneIssue(t, ingress({ fromEndpoints: [] }), '[0].ingress[0].fromEndpoints', /empty list; remove it to allow every peer, or write \[\{\}\]/);
  oneIssue(t, { ingressDeny: [{ fromEndpoints: [] }] }, '[0].ingressDeny[0].fromEndpoints', /remove it to deny every peer/);
  oneIssue(t, ingress({ fromRequires: [] }), '[0].ingress[0].fromRequires', /empty list/);
  oneIssue(t, ingress({ fromCIDR: [] }), '[0].ingress[0].fromCIDR', /empty list/);
  oneIssue(t, ingress({ fromCIDRSet: [] }), '[0].ingress[0].fromCIDRSet', /empty list/);
  oneIssue(t, ingress({ fromEntities: [] }), '[0].ingress[0].fromEntities', /empty list.*host, world, all, init, network/);
  oneIssue(t, ingress({ toPorts: [] }), '[0].ingress[0].toPorts', /remove toPorts to allow every port/);
  oneIssue(t, ingress({ icmps: [] }), '[0].ingress[0].icmps', /empty list/);
  oneIssue(t, ingress({ toPorts: [{ ports: [] }] }), '[0].ingress[0].toPorts[0].ports', /list at least one port/);
  oneIssue(t, ingress({ toPorts: [{}] }), '[0].ingress[0].toPorts[0]', /ports is missing/);
  oneIssue(t, ingress({ fromEndpoints: null }), '[0].ingress[0].fromEndpoints', /null/);
});

test('errors: selectors', (t) => {
  const sel = (s: unknown): Record<string, unknown> => ({ endpointSelector: s });
  oneIssue(t, sel([]), '[0].endpointSelector', /a selector must be an object, got a list/);
  oneIssue(t, sel({ matchLabel: {} }), '[0].endpointSelector.matchLabel', /did you mean "matchLabels"/);
  oneIssue(t, sel({ matchLabels: { port: 8080 } }), '[0].endpointSelector.matchLabels.port', /must be a string, got the number 8080; quote it: "8080"/);
  oneIssue(t, sel({ matchLabels: { debug: true } }), '[0].endpointSelector.matchLabels.debug', /quote it: "true"/);
  oneIssue(t, sel({ matchLabels: { debug: null } }), '[0].endpointSelector.matchLabels.debug', /null .*write "" to match an empty value/);
  oneIssue(t, sel({ matchLabels: { 'a b': 'x' } }), '[0].endpointSelector.matchLabels["a b"]', /whitespace/);
  oneIssue(t, sel({ matchLabels: { 'container:': 'x' } }), '[0].endpointSelector.matchLabels["container:"]', /label key is empty/);
  oneIssue(t, sel({ matchLabels: 'app=web' }), '[0].endpointSelector.matchLabels', /matchLabels must be an object/);
  const expr = (e: unknown): Record<string, unknown> => sel({ matchExpressions: [e] });
  const E = '[0].endpointSelector.matchExpressions[0]';
  oneIssue(t, expr({ key: 'a', operator: 'In' }), E, /values is missing; In needs a non-empty list/);
  oneIssue(t, expr({ key: 'a', operator: 'NotIn', values: [] }), `${E}.values`, /NotIn needs at least one value; .*DoesNotExist/);
  oneIssue(t, expr({ key: 'a', operator: 'In', values: [1] }), `${E}.values[0]`, /quote it: "1"/);
  oneIssue(t, expr({ key: 'a', operator: 'Exists', values: ['x'] }), `${E}.values`, /Exists takes no values; .*use In/);
  oneIssue(t, expr({ key: 'a', operator: 'Equals', values: ['x'] }), `${E}.operator`, /"Equals" is not one of In, NotIn, Exists, DoesNotExist/);
  oneIssue(t, expr({ key: 'a' }), E, /operator is missing/);
  oneIssue(t, expr({ operator: 'Exists' }), E, /key is missing/);
  oneIssue(t, expr({ key: 'a=b', operator: 'Exists' }), `${E}.key`, /contains '='/);
  oneIssue(t, expr({ key: 'a', operator: 'In', value: ['x'] }), `${E}.value`, /did you mean "values"/);
});

test('errors: ports and protocols', (t) => {
  oneIssue(t, ports({ port: 'http', protocol: 'TCP' }), `${P}.port`, /named ports like "http" are not supported; write the number/);
  oneIssue(t, ports({ port: '70000' }), `${P}.port`, /port 70000 is out of range; .*1 to 65535/);
  oneIssue(t, ports({ port: -1 }), `${P}.port`, /out of range/);
  oneIssue(t, ports({ port: 80.5 }), `${P}.port`, /out of range/);
  oneIssue(t, ports({ port: '80-90' }), `${P}.port`, /write "port": "80", "endPort": 90/);
  oneIssue(t, ports({ port: '8o' }), `${P}.port`, /not a port number/);
  oneIssue(t, ports({ port: true }), `${P}.port`, /must be a port number such as "80", got the boolean true/);
  oneIssue(t, ports({ port: 90, endPort: 80 }), `${P}.endPort`, /endPort 80 is below port 90; .*"port": "80", "endPort": 90/);
  oneIssue(t, ports({ endPort: 80 }), `${P}.endPort`, /endPort needs a non-zero port/);
  oneIssue(t, ports({ port: 80, endPort: 65536 }), `${P}.endPort`, /endPort 65536 is out of range/);
  t.deepEqual(issuesFor(ports({ port: 'tcp6', protocol: 'tcp6' })).map((i) => i.path), [`${P}.protocol`, `${P}.port`]);
  oneIssue(t, ports({ port: 80, protocol: 'tcp6' }), `${P}.protocol`);
  t.is(issuesFor(ports({ port: 80, protocol: 'tcp6' }))[0]!.message,
    'protocol "tcp6" is not one of TCP, UDP, ANY; for ICMP use "icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]');
  oneIssue(t, ports({ port: 80, protocol: 'SCTP' }), `${P}.protocol`, /SCTP is not supported/);
  oneIssue(t, ports({ port: 80, protocol: 6 }), `${P}.protocol`, /protocol must be a string/);
  oneIssue(t, ports({ port: 80, proto: 'TCP' }), `${P}.proto`, /did you mean "protocol"/);
  oneIssue(t, ports({ protocol: 'ICMP' }), P, /with protocol ICMP the port is the ICMP type and must not be 0 or absent/);
  oneIssue(t, ports({ port: '0', protocol: 'icmpv6' }), `${P}.port`, /with protocol ICMPv6 .*"port": "128"/);
  oneIssue(t, ports({ port: 300, protocol: 'ICMP' }), `${P}.port`, /ICMP type 300 is out of range/);
  oneIssue(t, ports({ port: 8, endPort: 9, protocol: 'ICMP' }), `${P}.endPort`, /ICMP types cannot be a range/);
  oneIssue(t, ingress({ toPorts: [{ ports: [{ port: 80 }], serverNames: ['x'] }] }), '[0].ingress[0].toPorts[0].serverNames', /not supported/);
});

test('errors: ICMP', (t) => {
  const icmp = (field: unknown): Record<string, unknown> => ingress({ icmps: [{ fields: [field] }] });
  const F = '[0].ingress[0].icmps[0].fields[0]';
  oneIssue(t, icmp({ type: 256 }), `${F}.type`, /ICMP type 256 is out of range; write a whole number from 0 to 255/);
  oneIssue(t, icmp({ type: 'Bogus' }), `${F}.type`, /"Bogus" is not a number from 0 to 255 or a known name \(EchoReply, /);
  oneIssue(t, icmp({ type: 'PacketTooBig' }), `${F}.type`, /"PacketTooBig" is an ICMPv6 type; set family: IPv6/);
  oneIssue(t, icmp({ type: 8, family: 'inet' }), `${F}.family`, /family "inet" is not IPv4 or IPv6/);
  oneIssue(t, icmp({ family: 'IPv4' }), F, /type is missing/);
  oneIssue(t, icmp({ type: [8] }), `${F}.type`, /must be a number from 0 to 255/);
  oneIssue(t, ingress({ icmps: [{ fields: [] }] }), '[0].ingress[0].icmps[0].fields', /empty list/);
  oneIssue(t, ingress({ icmps: [{}] }), '[0].ingress[0].icmps[0]', /fields is missing/);
  t.deepEqual(issuesFor(ingress({ icmps: [{ type: 8 }] })).map((i) => i.message), [
    'unknown field "type"; known fields here are fields',
    'fields is missing; write e.g. {"fields": [{"type": 8, "family": "IPv4"}]}',
  ]);
});

test('errors: CIDRs and CIDR sets', (t) => {
  const C = '[0].ingress[0].fromCIDR[0]';
  t.deepEqual(issuesFor(ingress({ fromCIDR: ['10.0.0.1/8'] })), [{ path: C,
    message: '10.0.0.1/8 has host bits set; write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the single address' }]);
  oneIssue(t, ingress({ fromCIDR: ['fd00::1/64'] }), C, /write fd00::\/64 for the network, or fd00::1\/128/);
  oneIssue(t, ingress({ fromCIDR: ['10.0.0.300'] }), C, /invalid IP address "10\.0\.0\.300"/);
  oneIssue(t, ingress({ fromCIDR: ['10.0.0.0/33'] }), C, /prefix length must be a whole number from 0 to 32/);
  oneIssue(t, ingress({ fromCIDR: [10] }), C, /a CIDR must be a string/);
  oneIssue(t, ingress({ fromCIDR: '10.0.0.0/8' }), '[0].ingress[0].fromCIDR', /must be a list/);
  const S = '[0].egress[0].toCIDRSet[0]';
  oneIssue(t, egress({ toCIDRSet: ['10.0.0.0/8'] }), S, /a CIDR set entry is an object; write \{"cidr": "10\.0\.0\.0\/8"/);
  oneIssue(t, egress({ toCIDRSet: [{ except: [] }] }), S, /cidr is missing/);
  oneIssue(t, egress({ toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] }] }), `${S}.except[0]`,
    /except 11\.0\.0\.0\/16 is not inside cidr 10\.0\.0\.0\/8/);
  oneIssue(t, egress({ toCIDRSet: [{ cidr: '10.0.0.0/16', except: ['10.0.0.0/8'] }] }), `${S}.except[0]`, /not inside/);
  oneIssue(t, egress({ toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['fd00::/64'] }] }), `${S}.except[0]`,
    /except fd00::\/64 is IPv6 but cidr 10\.0\.0\.0\/8 is IPv4/);
  oneIssue(t, egress({ toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['10.1.0.1/16'] }] }), `${S}.except[0]`, /host bits set/);
  oneIssue(t, egress({ toCIDRSet: [{ cidr: '10.0.0.0/8', cidrGroupRef: 'x' }] }), `${S}.cidrGroupRef`, /not supported/);
});

test('errors: entities', (t) => {
  const N = '[0].egress[0].toEntities[0]';
  oneIssue(t, egress({ toEntities: ['cluster'] }), N, /"cluster" is not one of host, world, all, init, network; .*"network" .*"all"/);
  oneIssue(t, egress({ toEntities: ['none'] }), N, /remove this element/);
  oneIssue(t, egress({ toEntities: ['world-ipv4'] }), N, /0\.0\.0\.0\/0/);
  oneIssue(t, egress({ toEntities: ['kube-apiserver'] }), N, /write one of host, world, all, init, network/);
  oneIssue(t, egress({ toEntities: [1] }), N, /an entity must be a string/);
});

test('errors: rule labels', (t) => {
  const Lp = '[0].labels[0]';
  oneIssue(t, { labels: ['a b=c'] }, Lp, /invalid label "a b=c": .*whitespace/);
  oneIssue(t, { labels: [{ key: 'port', value: 80 }] }, `${Lp}.value`, /quote it: "80"/);
  oneIssue(t, { labels: [{ value: 'x' }] }, Lp, /key is missing/);
  oneIssue(t, { labels: [{ key: 'a', source: 'Bad Source' }] }, `${Lp}.source`, /label source "Bad Source" is invalid/);
  oneIssue(t, { labels: [{ key: 'a', sauce: 'x' }] }, `${Lp}.sauce`, /did you mean "source"/);
  oneIssue(t, { labels: [7] }, Lp, /a label \(an object .* or a string "source:key=value"\) must be an object/);
  oneIssue(t, { labels: { key: 'a' } }, '[0].labels', /must be a list/);
});

test('every issue is reported at once, over all rules, in document order', (t) => {
  const { rules, issues } = validatePolicy([
    { endpointSelector: {}, ingress: [{ fromEndpoints: [{ matchLabels: { a: 1 } }], toPorts: [{ ports: [{ port: 'http' }] }] }] },
    { endpointSelector: { matchLabels: { ok: 'yes' } } },
    { ingres: [], egress: [{ toCIDR: ['10.0.0.1/8', 'x'], toEntities: ['cluster'] }], labels: [5] },
  ]);
  t.deepEqual(rules, [{ endpointSelector: { matchLabels: { ok: 'yes' } }, labels: [] }], 'valid rules are still returned');
  t.deepEqual(issues.map((i) => i.path), [
    '[0].ingress[0].fromEndpoints[0].matchLabels.a',
    '[0].ingress[0].toPorts[0].ports[0].port',
    '[2].ingres',
    '[2]',
    '[2].egress[0].toCIDR[0]',
    '[2].egress[0].toCIDR[1]',
    '[2].egress[0].toEntities[0]',
    '[2].labels[0]',
  ]);
  const err = t.throws(() => parsePolicyText(JSON.stringify([{ endpointSelector: 1 }, { endpointSelector: 2 }])),
    { instanceOf: PolicyInvalidError });
  t.is(err!.issues.length, 2);
  t.regex(err!.message, /2 problems/);
});

test('YAML: issues give the line and column; syntax errors too', (t) => {
  const issues = checkPolicyText(`- endpointSelector: {}
  ingress:
    - fromEndpoint:
        - matchLabels:
            port: 8080
`).issues;
  t.deepEqual(issues, [
    { path: '[0].ingress[0].fromEndpoint', message: 'unknown field "fromEndpoint"; did you mean "fromEndpoints"? ' +
      'Known fields here are fromEndpoints, fromRequires, fromCIDR, fromCIDRSet, fromEntities, toPorts, icmps (line 3, column 7)' },
    { path: '[0].ingress[0].fromEndpoint[0].matchLabels.port',
      message: 'the value of "port" must be a string, got the number 8080; quote it: "8080" (line 5, column 19)' },
  ]);
  const syntax = checkPolicyText('- endpointSelector: {}\n  ingress: [\n - x\n');
  t.is(syntax.issues.length > 0, true);
  t.is(syntax.issues[0]!.path, '');
  t.regex(syntax.issues[0]!.message, /^YAML syntax error at line \d+, column \d+: /);
  const duplicate = checkPolicyText('endpointSelector: {}\nendpointSelector: {}\n');
  t.regex(duplicate.issues[0]!.message, /YAML syntax error at line 2, column 1: Map keys must be unique/);
  const scalar = checkPolicyText('just some words');
  t.regex(scalar.issues[0]!.message, /a policy is a list of rules .*got the string "just some words"/);
});

test('JSON: syntax errors give the line and column', (t) => {
  t.deepEqual(checkPolicyText('[{"endpointSelector": {},}]').issues,
    [{ path: '', message: 'invalid JSON (text starting with [ or { is read as JSON) at line 1, column 26: unexpected "}"; ' +
      'JSON allows no comma after the last entry' }]);
  t.regex(checkPolicyText('[\n  {endpointSelector: {}}\n]').issues[0]!.message, /line 2, column 4: unexpected "e"; .*double quotes/);
  t.regex(checkPolicyText("[{'a': 1}]").issues[0]!.message, /line 1, column 3: .*double quotes/);
  t.regex(checkPolicyText('[{"a": 1}').issues[0]!.message, /unexpected end of text/);
  t.regex(checkPolicyText('{"a": tru}').issues[0]!.message, /line 1, column 7/);
  t.regex(checkPolicyText('endpointSelector: {}', 'json').issues[0]!.message, /^invalid JSON at line 1, column 1/);
});

test('empty text is an error; whitespace, comments and a BOM do not hide that', (t) => {
  for (const text of ['', '  \n', '# only a comment\n', '---\n---\n', '\uFEFF']) {
    const { issues } = checkPolicyText(text);
    t.deepEqual(issues, [{ path: '', message: 'the policy text is empty; write a JSON or YAML list of rules, or [] for no rules' }],
      JSON.stringify(text));
  }
  t.deepEqual(parsePolicyText('\uFEFF[]'), []);
});

test('formatPath quotes keys that are not identifiers', (t) => {
  t.is(formatPath([0, 'ingress', 1, 'toPorts']), '[0].ingress[1].toPorts');
  t.is(formatPath([0, 'matchLabels', 'container:role', 'x y']), '[0].matchLabels["container:role"]["x y"]');
  t.is(formatPath(['a']), 'a');
  t.is(formatPath([]), '');
});

test('formatPolicy writes Cilium\'s input shape', (t) => {
  t.deepEqual(formatPolicy(CILIUM_EXAMPLE_AST), JSON.parse(CILIUM_EXAMPLE).map((r: Record<string, unknown>) => ({
    ...r, labels: [{ key: 'name', value: 'web-from-api', source: 'unspec' }],
  })));
  t.deepEqual(formatPolicy([{
    endpointSelector: {}, labels: [],
    ingressDeny: [{ cidrSet: [{ cidr: '10.0.0.0/8', except: [] }], toPorts: [{ ports: [{ port: 1, endPort: 2, protocol: 'UDP' }] }] }],
  }]), [{
    endpointSelector: {},
    ingressDeny: [{ fromCIDRSet: [{ cidr: '10.0.0.0/8' }], toPorts: [{ ports: [{ port: '1', endPort: 2, protocol: 'UDP' }] }] }],
  }]);
});

// ---- properties -----------------------------------------------------------------------------------

test('property: validatePolicy never throws, whatever it is given', (t) => {
  const anything = fc.anything({
    withBigInt: true, withBoxedValues: true, withDate: true, withMap: true, withNullPrototype: true,
    withObjectString: true, withSet: true, withSparseArray: true, withTypedArray: true, maxDepth: 4,
  });
  fc.assert(fc.property(fc.oneof(anything, fc.array(anything), fc.array(fc.dictionary(
    fc.constantFrom('endpointSelector', 'ingress', 'egress', 'ingressDeny', 'labels', 'description', 'x'), anything))),
  (doc) => {
    const { rules, issues } = validatePolicy(doc);
    for (const i of issues) assert.ok(typeof i.path === 'string' && typeof i.message === 'string' && i.message.length > 0);
    if (issues.length === 0) assert.equal(rules.length, Array.isArray(doc) ? doc.length : 1);
  }), { numRuns: 2000 });
  t.pass();
});

test('property: checkPolicyText never throws on any text', (t) => {
  fc.assert(fc.property(fc.oneof(fc.string(), fc.json(), fc.string({ unit: 'binary' }),
    fc.constantFrom('[', '{', '- a: *x', '&a [*a]', '- !!binary x', '? [a]\n: b', '%YAML 1.1\n---\na: 1')), (text) => {
    const { issues } = checkPolicyText(text);
    for (const i of issues) assert.ok(typeof i.path === 'string' && i.message.length > 0);
  }), { numRuns: 1000 });
  t.pass();
});

// Generators of canonical ASTs (what the parser produces). Records are built with noNullPrototype because
// deepEqual compares prototypes and the parser's objects are plain.

const sourceArb = fc.constantFrom('unspec', 'container', 'k8s', 'reserved', 'cilium-generated');
const keyArb = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._/:-]{0,10}$/);
const valueArb = fc.oneof(fc.constantFrom('', 'web', '8080', 'true', 'null', 'a: b', '- x'), fc.string({ maxLength: 8 }));
const labelArb: fc.Arbitrary<Label> = fc.record({ source: sourceArb, key: keyArb, value: valueArb }, { noNullPrototype: true });
const selectorKeyArb = fc.oneof(keyArb, fc.tuple(sourceArb, keyArb).map(([s, k]) => `${s}:${k}`))
  .filter((k) => { try { parseLabelKey(k); return true; } catch { return false; } });
const expressionArb: fc.Arbitrary<SelectorExpression> = fc.oneof(
  fc.record({ key: selectorKeyArb, operator: fc.constantFrom('In' as const, 'NotIn' as const), values: fc.array(valueArb, { minLength: 1, maxLength: 3 }) }, { noNullPrototype: true }),
  fc.record({ key: selectorKeyArb, operator: fc.constantFrom('Exists' as const, 'DoesNotExist' as const) }, { noNullPrototype: true }),
);
const selectorArb: fc.Arbitrary<EndpointSelector> = fc.record({
  matchLabels: fc.array(fc.tuple(selectorKeyArb, valueArb), { minLength: 1, maxLength: 3 }).map((e) => Object.fromEntries(e)),
  matchExpressions: fc.array(expressionArb, { minLength: 1, maxLength: 2 }),
}, { requiredKeys: [], noNullPrototype: true });

const prefixArb: fc.Arbitrary<Prefix> = fc.oneof(
  fc.tuple(fc.bigInt(0n, (1n << 32n) - 1n), fc.integer({ min: 0, max: 32 }))
    .map(([v, length]) => ({ family: 4 as const, network: (v >> BigInt(32 - length)) << BigInt(32 - length), length })),
  fc.tuple(fc.bigInt(0n, (1n << 128n) - 1n), fc.integer({ min: 0, max: 128 }))
    .map(([v, length]) => ({ family: 6 as const, network: (v >> BigInt(128 - length)) << BigInt(128 - length), length })),
);
/** A prefix inside `outer`: longer or equal, same leading bits. */
const innerPrefix = (outer: Prefix): fc.Arbitrary<Prefix> => {
  const bits = outer.family === 4 ? 32 : 128;
  return fc.tuple(fc.integer({ min: outer.length, max: bits }), fc.bigInt(0n, (1n << BigInt(bits - outer.length)) - 1n))
    .map(([length, offset]) => {
      const host = BigInt(bits - length);
      return { family: outer.family, network: ((outer.network + offset) >> host) << host, length };
    });
};
const cidrSetArb: fc.Arbitrary<CidrSet> = prefixArb.chain((outer) =>
  fc.array(innerPrefix(outer), { maxLength: 3 }).map((inner) => ({ cidr: formatPrefix(outer), except: inner.map(formatPrefix) })));
const portSpecArb: fc.Arbitrary<PortProtocolSpec> = fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }),
  fc.constantFrom('TCP' as const, 'UDP' as const, 'ANY' as const))
  .map(([port, end, protocol]) => (port > 0 && end > port ? { port, endPort: end, protocol } : { port, protocol }));
const portRuleArb: fc.Arbitrary<PortRule> = fc.record({ ports: fc.array(portSpecArb, { minLength: 1, maxLength: 3 }) }, { noNullPrototype: true });
const icmpRuleArb: fc.Arbitrary<IcmpRule> = fc.record({
  fields: fc.array(fc.record({ family: fc.constantFrom('IPv4' as const, 'IPv6' as const), type: fc.integer({ min: 0, max: 255 }) },
    { noNullPrototype: true }), { minLength: 1, maxLength: 3 }),
}, { noNullPrototype: true });
const peerRuleArb = (deny: boolean): fc.Arbitrary<PolicyPeerRule> => fc.record({
  endpoints: fc.array(selectorArb, { minLength: 1, maxLength: 2 }),
  ...(deny ? {} : { requires: fc.array(selectorArb, { minLength: 1, maxLength: 2 }) }),
  cidr: fc.array(prefixArb.map(formatPrefix), { minLength: 1, maxLength: 3 }),
  cidrSet: fc.array(cidrSetArb, { minLength: 1, maxLength: 2 }),
  entities: fc.array(fc.constantFrom(...ENTITIES), { minLength: 1, maxLength: 3 }),
  toPorts: fc.array(portRuleArb, { minLength: 1, maxLength: 2 }),
  icmps: fc.array(icmpRuleArb, { minLength: 1, maxLength: 2 }),
}, { requiredKeys: [], noNullPrototype: true });
const ruleArb: fc.Arbitrary<PolicyRule> = fc.record({
  endpointSelector: selectorArb,
  ingress: fc.array(peerRuleArb(false), { maxLength: 2 }),
  egress: fc.array(peerRuleArb(false), { maxLength: 2 }),
  ingressDeny: fc.array(peerRuleArb(true), { maxLength: 2 }),
  egressDeny: fc.array(peerRuleArb(true), { maxLength: 2 }),
  labels: fc.array(labelArb, { maxLength: 3 }),
  description: fc.string({ maxLength: 20 }),
}, { requiredKeys: ['endpointSelector', 'labels'], noNullPrototype: true });

test('property: formatPolicy then parse gives the same AST, through JSON and through YAML', (t) => {
  fc.assert(fc.property(fc.array(ruleArb, { maxLength: 3 }), (rules) => {
    const shaped = formatPolicy(rules);
    assert.deepEqual(parsePolicyText(JSON.stringify(shaped)), rules);
    assert.deepEqual(parsePolicyText(JSON.stringify(shaped, null, 2), 'json'), rules);
    assert.deepEqual(parsePolicyText(YAML.stringify(shaped), 'yaml'), rules);
  }), { numRuns: 300 });
  t.pass();
});

// Documents in Cilium's input shape with the liberties the parser allows (and some it refuses).
const portInputArb = fc.record({
  port: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 300 }).map(String), fc.constantFrom('', 'http', '70000')),
  endPort: fc.oneof(fc.integer({ min: 0, max: 300 }), fc.constant('5')),
  protocol: fc.constantFrom('tcp', 'UDP', 'Any', 'icmp', 'ICMPv6', 'sctp'),
}, { requiredKeys: [], noNullPrototype: true });
const peerInputArb = (mine: 'from' | 'to'): fc.Arbitrary<Record<string, unknown>> => fc.record({
  [`${mine}Endpoints`]: fc.array(fc.oneof(selectorArb, fc.constant({ matchLabels: {} }),
    fc.constant({ matchExpressions: [{ key: 'a', operator: 'exists', values: [] }] })), { minLength: 1, maxLength: 2 }),
  [`${mine}CIDR`]: fc.array(fc.constantFrom('10.0.0.1', '10.0.0.0/8', '10.0.0.1/8', 'FD00::1', 'fd00:0::/16', '::ffff:1.2.3.4'),
    { minLength: 1, maxLength: 2 }),
  [`${mine}Entities`]: fc.array(fc.constantFrom('HOST', 'world', 'All', 'cluster'), { minLength: 1, maxLength: 2 }),
  toPorts: fc.array(fc.record({ ports: fc.array(portInputArb, { minLength: 1, maxLength: 3 }) }, { noNullPrototype: true }),
    { minLength: 1, maxLength: 2 }),
  icmps: fc.array(fc.record({ fields: fc.array(fc.record({
    type: fc.oneof(fc.integer({ min: 0, max: 256 }), fc.constantFrom('EchoRequest', 'packettoobig', '8')),
    family: fc.constantFrom('IPv4', 'ipv6'),
  }, { requiredKeys: ['type'], noNullPrototype: true }), { minLength: 1, maxLength: 2 }) }, { noNullPrototype: true }),
  { minLength: 1, maxLength: 2 }),
}, { requiredKeys: [], noNullPrototype: true });
const ruleInputArb = fc.record({
  endpointSelector: fc.oneof(selectorArb, fc.constant({})),
  ingress: fc.array(peerInputArb('from'), { maxLength: 2 }),
  egressDeny: fc.array(peerInputArb('to'), { maxLength: 2 }),
  labels: fc.array(fc.oneof(labelArb.map((l) => `${l.source}:${l.key}=${l.value}`), labelArb, fc.constant({ key: 'x' })), { maxLength: 2 }),
}, { requiredKeys: ['endpointSelector'], noNullPrototype: true });

test('property: any rule that validates round-trips through formatPolicy to an equal AST', (t) => {
  let valid = 0;
  let invalid = 0;
  fc.assert(fc.property(fc.array(ruleInputArb, { minLength: 1, maxLength: 2 }), (doc) => {
    const { rules, issues } = validatePolicy(doc);
    if (issues.length > 0) {
      invalid++;
      return;
    }
    valid++;
    const shaped = formatPolicy(rules);
    assert.deepEqual(parsePolicyText(JSON.stringify(shaped)), rules);
    assert.deepEqual(formatPolicy(parsePolicyText(YAML.stringify(shaped))), shaped, 'formatting is a fixed point');
  }), { numRuns: 1000 });
  t.log(`${valid} valid and ${invalid} invalid generated documents`);
  t.true(valid > 50 && invalid > 50);
});
