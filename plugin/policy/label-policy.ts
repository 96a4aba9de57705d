// Label policy: a container (or compose service) declares its own L3/L4 policy in Docker labels.
// This module turns those labels into ordinary PolicyRules (so they list, trace and compile like
// imported ones) and back into label text for display. docs/label-policy.md holds the same text.
//
// LABELS
//
//   membrane.ingress        who may connect to this container
//   membrane.egress         what this container may connect to
//   membrane.ingress.deny   who may never connect, whatever an allow clause says
//   membrane.egress.deny    what it may never connect to
//
// VALUE: clauses separated by `;`, or the single word `none`.
//
//   clause    = direction peer { "or" peer } [ "on" port { "," port } ]
//   direction = "from"   in membrane.ingress and membrane.ingress.deny
//             | "to"     in membrane.egress and membrane.egress.deny
//   peer      = entity | address | selector
//   entity    = host | world | all | network | init
//   address   = IPv4 or IPv6 address or CIDR: 192.0.2.7, 10.0.0.0/8, fd00:1::/64
//   selector  = term { "," term }               every term must hold
//   term      = key=value                       the label is present with this value
//             | key!=value                      not that value (also true when the key is absent)
//             | key                             the label is present, any value
//             | !key                            the label is absent
//   key       = [source:]name                   app, container:app, compose:service
//   port      = 80/tcp | 53/udp | 53            a port (a bare number means TCP and UDP)
//             | 8000-8100/tcp                   an inclusive range
//             | tcp | udp                       every port of that protocol
//             | icmp:TYPE | icmpv6:TYPE         an ICMP or ICMPv6 type, 0-255 (8 and 128: echo request)
//             | any                             alone: every protocol and port, as if `on` were left out
//
// Words are separated by spaces (newlines count as spaces, so a compose `>` block works); spaces
// around `,` are allowed, spaces inside a term are not. A trailing `;` is fine. Names (sources and
// keys) start with a letter; a source is lower-case letters, digits and `-`; a name may hold
// letters, digits and `_ . / -`; a value letters, digits and `_ . : / @ + -` (or nothing: `key=`).
// A key without a source matches that key from any source. `compose:project` and `compose:service`
// are the labels Membrane derives from docker compose's own labels.
//
// MEANING: each clause is one element of the rule's ingress/egress list (Cilium's shape): traffic
// is allowed (or denied) when it comes from (goes to) any of the clause's peers on any of its ports.
// Without `on`, every protocol and port. Clauses are alternatives; deny clauses win over allow
// clauses. As with imported rules, under the default enforcement mode any policy label, allow or
// deny, turns default-deny on for its direction: what no allow clause names is dropped. So a deny
// label usually comes with an allow label (`membrane.ingress: from all`). `none` (on an allow
// label) only turns default-deny on: nothing is allowed in that direction. It becomes the element
// `{}`, which matches nothing (as `ingress: [{}]` in Cilium).
//
// A word is read as an entity first, then as an address, then as a selector, so to test a key that
// is spelled like an entity give it its source (`container:host`). Entities, addresses and
// selectors are joined with `or`, never with `,` (`,` joins the terms of one selector).
//
// EXAMPLES
//
//   membrane.ingress: from compose:service=api on 5432/tcp
//   membrane.ingress: from world or host on 80/tcp,443/tcp
//   membrane.egress:  to compose:service=db on 5432/tcp; to 10.20.0.0/16 on 443/tcp
//   membrane.egress:  to app=cache,env!=test on 6379/tcp; to all on 53
//   membrane.ingress: from network on icmp:8,icmpv6:128
//   membrane.egress:  none
//   membrane.ingress: from all                                 (these two together: everyone
//   membrane.ingress.deny: from 192.0.2.0/24 or 2001:db8::/32   but those networks)
//
// An invalid label policy is all or nothing: parseLabelPolicy then returns no rules and every
// problem, each with its label and clause and an example of what to write. The caller keeps the
// container default-deny and shows the problems. A `membrane.` label spelled almost like one of
// the four (membrane.ingres, membrane.Egress, membrane.ingress-deny) is such a problem too, so a
// typo fails closed instead of leaving the container open.

import { isIP } from 'node:net';
import { InvalidArgumentError } from '../errors.js';
import { formatPrefix, parsePrefix } from '../ipam/prefix.js';
import { editDistance } from './spelling.js';
import {
  ENTITIES, type EndpointSelector, type Entity, type IcmpField, type PolicyIssue, type PolicyPeerRule,
  type PolicyRule, type PortProtocolSpec, type SelectorExpression,
} from './types.js';

/** The labels a container carries its policy in, in the order formatLabelPolicy prints them. */
export const LABEL_POLICY_KEYS = [
  'membrane.ingress', 'membrane.egress', 'membrane.ingress.deny', 'membrane.egress.deny',
] as const;
export type LabelPolicyKey = (typeof LABEL_POLICY_KEYS)[number];

/** The rule label that names whose labels a rule came from. */
export const POLICY_OF_LABEL_KEY = 'membrane.policy-of';

type Section = 'ingress' | 'egress' | 'ingressDeny' | 'egressDeny';

const LABEL_SECTIONS: Record<LabelPolicyKey, { section: Section; direction: 'from' | 'to'; allow: boolean }> = {
  'membrane.ingress': { section: 'ingress', direction: 'from', allow: true },
  'membrane.egress': { section: 'egress', direction: 'to', allow: true },
  'membrane.ingress.deny': { section: 'ingressDeny', direction: 'from', allow: false },
  'membrane.egress.deny': { section: 'egressDeny', direction: 'to', allow: false },
};

// Words with a grammatical role; a bare selector term may not be one of them (nor an entity).
const KEYWORDS = new Set(['from', 'to', 'or', 'on', 'any', 'none']);

const SOURCE = '[a-z][a-z0-9-]*';
const NAME = '[A-Za-z][A-Za-z0-9_./-]*';
const KEY_RE = new RegExp(`^(?:${SOURCE}:)?${NAME}$`);
const VALUE_RE = /^[A-Za-z0-9_.:/@+-]*$/;
const PORT_RE = /^(\d+)(?:-(\d+))?(?:\/([A-Za-z]+))?$/;
const ICMP_RE = /^(icmp|icmpv6):(.*)$/i;

function isLabelPolicyKey(key: string): key is LabelPolicyKey {
  return (LABEL_POLICY_KEYS as readonly string[]).includes(key);
}

function isEntity(word: string): word is Entity {
  return (ENTITIES as readonly string[]).includes(word);
}

function quote(s: string): string {
  return JSON.stringify(s);
}

function example(key: LabelPolicyKey): string {
  const dir = LABEL_SECTIONS[key].direction;
  return dir === 'from' ? '"from compose:service=api on 8080/tcp"' : '"to compose:service=db on 5432/tcp"';
}

// ---------------------------------------------------------------------------------------------
// Typo detection: a label that was meant as a policy but is misspelled must not leave the
// container unpoliced.


/** The policy key a misspelled `membrane.` label was probably meant to be, or undefined. */
function intendedPolicyKey(labelKey: string): LabelPolicyKey | undefined {
  if (isLabelPolicyKey(labelKey)) return undefined;
  const lower = labelKey.toLowerCase();
  if (!lower.startsWith('membrane.')) return undefined;
  // Separators other than '.' are the most likely slip (membrane.ingress-deny, membrane.egress_deny).
  const rest = lower.slice('membrane.'.length).replace(/[-_:]/g, '.');
  let best: { key: LabelPolicyKey; distance: number } | undefined;
  for (const key of LABEL_POLICY_KEYS) {
    const distance = editDistance(rest, key.slice('membrane.'.length));
    if (distance <= 2 && (!best || distance < best.distance)) best = { key, distance };
  }
  if (best) return best.key;
  // membrane.ingress.denied, membrane.ingress.allow, membrane.egress.1, ...: clearly about policy,
  // just not a key we read.
  const m = /^(ingress|egress)\.(den)?/.exec(rest);
  if (!m) return undefined;
  return (m[2] ? `membrane.${m[1]}.deny` : `membrane.${m[1]}`) as LabelPolicyKey;
}

/**
 * Whether the container's labels hold a label policy, including a misspelled one (which
 * parseLabelPolicy reports as an issue, so the container stays default-deny).
 */
export function hasLabelPolicy(containerLabels: Record<string, string>): boolean {
  return Object.keys(containerLabels).some((k) => isLabelPolicyKey(k) || intendedPolicyKey(k) !== undefined);
}

// ---------------------------------------------------------------------------------------------
// Parsing

/** Collects the problems of one clause; `fail` adds one and lets parsing go on where it can. */
class ClauseContext {
  constructor(readonly path: string, readonly issues: PolicyIssue[]) {}
  fail(message: string): void {
    this.issues.push({ path: this.path, message });
  }
}

function parseSelector(word: string, ctx: ClauseContext): EndpointSelector | undefined {
  const matchLabels: Record<string, string> = {};
  const matchExpressions: SelectorExpression[] = [];
  let ok = true;
  for (const term of word.split(',')) {
    const problem = parseTerm(term, matchLabels, matchExpressions);
    if (problem) {
      ctx.fail(problem);
      ok = false;
    }
  }
  if (!ok) return undefined;
  const selector: EndpointSelector = {};
  if (Object.keys(matchLabels).length > 0) selector.matchLabels = matchLabels;
  if (matchExpressions.length > 0) selector.matchExpressions = matchExpressions;
  return selector;
}

/** Adds one selector term to `matchLabels`/`matchExpressions`; returns what is wrong with it, if anything. */
function parseTerm(term: string, matchLabels: Record<string, string>,
  matchExpressions: SelectorExpression[]): string | undefined {
  if (term === '') {
    return 'a selector has an empty term (two commas in a row, or a comma at an end); ' +
      'write terms like compose:service=api,tier=web';
  }
  const keyProblem = (key: string): string | undefined => {
    if (KEY_RE.test(key)) return undefined;
    return `${quote(key)} is not a label key: a key is [source:]name, the source lower-case letters, digits and '-', ` +
      `the name a letter followed by letters, digits and _ . / - (e.g. app, container:app, compose:service)`;
  };
  const valueProblem = (key: string, value: string): string | undefined => {
    if (value.includes('*')) {
      return `${quote(term)}: values have no wildcards; to match any value of ${key} write just ${key}`;
    }
    if (VALUE_RE.test(value)) return undefined;
    return `${quote(term)}: the value ${quote(value)} may hold only letters, digits and _ . : / @ + - ` +
      `(no spaces inside a term: write ${key}=api, not ${key} = api)`;
  };
  if (term.startsWith('!')) {
    const key = term.slice(1);
    const eq = key.indexOf('=');
    if (eq >= 0) {
      const bareKey = key.slice(0, eq).replace(/!$/, '');
      return `${quote(term)}: "!" means the label is absent and takes no value; write ${bareKey}!=${key.slice(eq + 1)} ` +
        `for "not that value", or !${bareKey} for "no ${bareKey} label"`;
    }
    const problem = keyProblem(key);
    if (problem) return problem;
    matchExpressions.push({ key, operator: 'DoesNotExist' });
    return undefined;
  }
  const eq = term.indexOf('=');
  if (eq > 0 && term[eq - 1] === '!') {
    const key = term.slice(0, eq - 1);
    const value = term.slice(eq + 1);
    const problem = keyProblem(key) ?? valueProblem(key, value);
    if (problem) return problem;
    matchExpressions.push({ key, operator: 'NotIn', values: [value] });
    return undefined;
  }
  if (eq >= 0) {
    const key = term.slice(0, eq);
    const value = term.slice(eq + 1);
    if (key === '') return `${quote(term)} has no key before '=': write it like app=web`;
    const problem = keyProblem(key) ?? valueProblem(key, value);
    if (problem) return problem;
    if (key in matchLabels) {
      return `the selector names ${key} twice; one endpoint has one value per key, so it could never match. ` +
        `To accept either value write two peers: ${key}=${matchLabels[key]} or ${key}=${value}`;
    }
    matchLabels[key] = value;
    return undefined;
  }
  // A bare word: the label is present. A whole word that is an entity or an address never gets
  // here (parsePeer takes it first); inside a comma list it would silently become a key nobody has.
  if (isEntity(term) || looksLikeAddress(term)) {
    return `${quote(term)} cannot be joined to a selector with ','; entities and addresses are separate peers, ` +
      `joined with "or": e.g. "from host or world", "to 10.0.0.0/8 or 192.168.0.0/16"`;
  }
  if (KEYWORDS.has(term)) {
    return `${quote(term)} is a keyword, not a label key; a clause reads "from PEER or PEER on PORTS", ` +
      `e.g. "from compose:service=api on 8080/tcp" (for a key spelled ${term}, give its source: container:${term})`;
  }
  const problem = keyProblem(term);
  if (problem) return problem;
  matchExpressions.push({ key: term, operator: 'Exists' });
  return undefined;
}

/** Digits first, or an IPv6 shape (two or more colons): never a valid selector key, so read as an address. */
function looksLikeAddress(word: string): boolean {
  return !word.includes('=') && !word.startsWith('!') && !word.includes(',') &&
    (/^[0-9]/.test(word) || word.split(':').length > 2);
}

function parseAddressPeer(word: string, ctx: ClauseContext): string | undefined {
  if (!word.includes('/')) {
    const family = isIP(word);
    if (family !== 0) return formatPrefix(parsePrefix(`${word}/${family === 4 ? 32 : 128}`));
    ctx.fail(`${quote(word)} is not an IP address: write an address like 192.0.2.7 or fd00::7, or a CIDR like 10.0.0.0/8`);
    return undefined;
  }
  try {
    // Host bits are dropped (10.1.2.3/24 is 10.1.2.0/24), as `ip route` and Docker do.
    return formatPrefix(parsePrefix(word));
  } catch (err) {
    ctx.fail((err as Error).message);
    return undefined;
  }
}

interface Peers {
  endpoints: EndpointSelector[];
  cidr: string[];
  entities: Entity[];
}

function parsePeer(word: string, peers: Peers, ctx: ClauseContext): void {
  if (isEntity(word)) {
    peers.entities.push(word);
  } else if (word === '*' || word === 'any') {
    ctx.fail(`${quote(word)} is not a peer: for every peer write "all" (e.g. "from all on 80/tcp")`);
  } else if (looksLikeAddress(word)) {
    const cidr = parseAddressPeer(word, ctx);
    if (cidr !== undefined) peers.cidr.push(cidr);
  } else {
    const selector = parseSelector(word, ctx);
    if (selector) peers.endpoints.push(selector);
  }
}

function parsePortNumber(text: string, what: string, ctx: ClauseContext): number | undefined {
  if (!/^[1-9]\d{0,4}$/.test(text) || Number(text) > 65535) {
    ctx.fail(`${what} ${quote(text)} is not a port: ports are 1-65535 without leading zeros ` +
      '(for every port of a protocol write tcp or udp)');
    return undefined;
  }
  return Number(text);
}

interface Ports {
  /** `any`: no port restriction at all. */
  any: boolean;
  ports: PortProtocolSpec[];
  icmps: IcmpField[];
}

function parsePort(word: string, out: Ports, ctx: ClauseContext): void {
  const lower = word.toLowerCase();
  if (lower === 'tcp' || lower === 'udp') {
    out.ports.push({ port: 0, protocol: lower === 'tcp' ? 'TCP' : 'UDP' });
    return;
  }
  const icmp = ICMP_RE.exec(word);
  if (icmp) {
    const family = icmp[1]!.toLowerCase() === 'icmp' ? 'IPv4' : 'IPv6';
    const type = icmp[2]!;
    if (!/^(0|[1-9]\d{0,2})$/.test(type) || Number(type) > 255) {
      ctx.fail(`${quote(word)}: an ICMP type is a number 0-255, e.g. ${icmp[1]!.toLowerCase()}:${family === 'IPv4' ? 8 : 128} ` +
        `(echo request)`);
      return;
    }
    out.icmps.push({ family, type: Number(type) });
    return;
  }
  const m = PORT_RE.exec(word);
  if (!m) {
    ctx.fail(`${quote(word)} is not a port: write 80/tcp, 53/udp, 53 (tcp and udp), 8000-8100/tcp, tcp, udp, ` +
      'icmp:8 or icmpv6:128; separate several with commas');
    return;
  }
  const protoText = (m[3] ?? 'any').toLowerCase();
  const protocol = protoText === 'tcp' ? 'TCP' : protoText === 'udp' ? 'UDP' : protoText === 'any' ? 'ANY' : undefined;
  if (protocol === undefined) {
    ctx.fail(`${quote(word)}: unknown protocol ${quote(m[3]!)}; ports take /tcp or /udp (or nothing for both), ` +
      'ICMP is written icmp:TYPE');
  }
  const port = parsePortNumber(m[1]!, 'port', ctx);
  const endPort = m[2] === undefined ? undefined : parsePortNumber(m[2], 'range end', ctx);
  if (protocol === undefined || port === undefined || (m[2] !== undefined && endPort === undefined)) return;
  if (endPort !== undefined && endPort < port) {
    ctx.fail(`${quote(word)}: a range goes from low to high, e.g. ${endPort}-${port}/${protoText === 'any' ? 'tcp' : protoText}`);
    return;
  }
  out.ports.push(endPort === undefined ? { port, protocol } : { port, endPort, protocol });
}

function parsePorts(text: string, ctx: ClauseContext): Ports {
  const out: Ports = { any: false, ports: [], icmps: [] };
  const words = text.split(',');
  for (const word of words) {
    if (word === '') {
      ctx.fail('the port list has an empty entry (two commas in a row, or a comma at an end); ' +
        'write ports like 80/tcp,443/tcp');
    } else if (word.toLowerCase() === 'any') {
      if (words.length > 1) ctx.fail('"any" already means every protocol and port; write it alone or list the ports');
      out.any = true;
    } else {
      parsePort(word, out, ctx);
    }
  }
  return out;
}

function parseClause(clause: string, key: LabelPolicyKey, ctx: ClauseContext): PolicyPeerRule | undefined {
  const { direction } = LABEL_SECTIONS[key];
  const other = direction === 'from' ? 'to' : 'from';
  // Spaces around commas are allowed, so glue comma lists into one word first.
  const words = clause.replace(/\s*,\s*/g, ',').split(/\s+/).filter((w) => w !== '');
  const first = words[0]!;
  if (first !== direction) {
    const why = first === other
      ? `${key} clauses start with "${direction}" (${other === 'to' ? 'egress' : 'ingress'} labels use "${other}")`
      : `a clause starts with "${direction}"`;
    ctx.fail(`${why}; write e.g. ${example(key)}`);
    return undefined;
  }
  const issuesBefore = ctx.issues.length;
  const peers: Peers = { endpoints: [], cidr: [], entities: [] };
  let i = 1;
  for (;;) {
    const word = words[i];
    if (word === undefined || word === 'on' || word === 'or') {
      ctx.fail(`expected a peer after "${i === 1 ? direction : 'or'}"${word === undefined ? '' : `, got "${word}"`}: ` +
        `a label selector (compose:service=api), an entity (host, world, all, network, init) or a CIDR (10.0.0.0/8); ` +
        `e.g. ${example(key)}`);
      return undefined;
    }
    parsePeer(word, peers, ctx);
    i++;
    if (words[i] !== 'or') break;
    i++;
  }
  let ports: Ports | undefined;
  if (words[i] === 'on') {
    if (words[i + 1] === undefined) {
      ctx.fail(`expected ports after "on", e.g. 8080/tcp or 53/udp,53/tcp`);
      return undefined;
    }
    ports = parsePorts(words[i + 1]!, ctx);
    i += 2;
  }
  if (i < words.length) {
    const word = words[i]!;
    const hint = word.startsWith('=') || words[i - 1]!.endsWith('=')
      ? 'no spaces inside a selector term: write compose:service=api, not compose:service = api'
      : word === 'and' || word === '&&'
        ? 'to require several labels write them as one selector joined by commas: app=api,tier=web'
        : word === 'or'
          ? 'peers come before "on"'
          : word === 'on'
            ? '"on" comes once, followed by all the ports joined by commas: on 80/tcp,443/tcp'
            : word === 'from' || word === 'to'
              ? 'separate clauses with ";"'
              : ports === undefined && (PORT_RE.test(word) || ICMP_RE.test(word) || /^(tcp|udp)$/i.test(word))
                ? `ports come after "on": ${direction} ${words[i - 1]} on ${word}`
                : ports === undefined
                  ? 'several peers are joined with "or"'
                  : 'ports are joined with commas, without spaces inside one port';
    ctx.fail(`unexpected "${word}"; ${hint}. A clause reads "${direction} PEER or PEER on PORT,PORT", e.g. ${example(key)}`);
    return undefined;
  }
  if (ctx.issues.length > issuesBefore) return undefined;
  const rule: PolicyPeerRule = {};
  if (peers.endpoints.length > 0) rule.endpoints = peers.endpoints;
  if (peers.cidr.length > 0) rule.cidr = peers.cidr;
  if (peers.entities.length > 0) rule.entities = peers.entities;
  if (ports && !ports.any) {
    if (ports.ports.length > 0) rule.toPorts = [{ ports: ports.ports }];
    if (ports.icmps.length > 0) rule.icmps = [{ fields: ports.icmps }];
  }
  return rule;
}

/** Parses one label's value into its list of peer rules, or undefined (issues recorded) when invalid. */
function parseLabelValue(key: LabelPolicyKey, value: string, issues: PolicyIssue[]): PolicyPeerRule[] | undefined {
  const path = `label ${key}`;
  const trimmed = value.trim();
  if (trimmed === 'none') {
    if (LABEL_SECTIONS[key].allow) return [{}];
    const allowKey = LABEL_SECTIONS[key].direction === 'from' ? 'membrane.ingress' : 'membrane.egress';
    issues.push({ path, message: `"none" belongs on ${allowKey} (it allows nothing there); a deny label lists ` +
      `what to deny, e.g. ${example(key)}` });
    return undefined;
  }
  const clauses = value.split(';');
  if (clauses.every((c) => c.trim() === '')) {
    issues.push({ path, message: `the value is empty; write clauses like ${example(key)}` +
      (LABEL_SECTIONS[key].allow ? ', or "none" to allow nothing' : '') });
    return undefined;
  }
  const rules: PolicyPeerRule[] = [];
  let ok = true;
  clauses.forEach((clause, index) => {
    // Empty clauses (a trailing ';', or ';;') are harmless; numbering still counts them so that
    // "clause N" is the N-th piece between semicolons.
    if (clause.trim() === '') return;
    const ctx = new ClauseContext(`${path}, clause ${index + 1}`, issues);
    if (clause.trim() === 'none') {
      ctx.fail(`"none" must be the whole value (it allows nothing); remove it or remove the other clauses`);
      ok = false;
      return;
    }
    const rule = parseClause(clause, key, ctx);
    if (rule) rules.push(rule);
    else ok = false;
  });
  return ok ? rules : undefined;
}

/**
 * Reads a container's label policy.
 *
 * `selectLabels` select the endpoints the policy is for (e.g. `{"compose:project": "shop",
 * "compose:service": "api"}` for a compose service, the container's identity labels otherwise);
 * `policyOf` names them on the rule (label `container:membrane.policy-of=<policyOf>`), so the rule
 * can be listed and replaced. Returns one rule holding every label's clauses, or (when anything is
 * wrong) no rule and every problem: a label policy is applied whole or not at all. No policy labels
 * at all: no rule and no issue.
 *
 * Throws InvalidArgumentError when selectLabels is empty (the rule would select every endpoint) or
 * policyOf is empty: both are the caller's mistake, not the container's.
 */
export function parseLabelPolicy(containerLabels: Record<string, string>, selectLabels: Record<string, string>,
  policyOf: string): { rules: PolicyRule[]; issues: PolicyIssue[] } {
  if (Object.keys(selectLabels).length === 0) {
    throw new InvalidArgumentError('a label policy needs labels that select the container\'s endpoints; ' +
      'with none, its rule would select every endpoint');
  }
  if (policyOf === '') throw new InvalidArgumentError('a label policy needs a non-empty policyOf to name its rule');
  const issues: PolicyIssue[] = [];
  for (const labelKey of Object.keys(containerLabels).sort()) {
    const meant = intendedPolicyKey(labelKey);
    if (meant) {
      issues.push({ path: `label ${labelKey}`, message: `unknown policy label; did you mean ${meant}? ` +
        `Membrane reads ${LABEL_POLICY_KEYS.join(', ')}` });
    }
  }
  const sections: Partial<Record<Section, PolicyPeerRule[]>> = {};
  for (const key of LABEL_POLICY_KEYS) {
    const value = containerLabels[key];
    if (value === undefined) continue;
    const parsed = parseLabelValue(key, value, issues);
    if (parsed) sections[LABEL_SECTIONS[key].section] = parsed;
  }
  if (issues.length > 0 || Object.keys(sections).length === 0) return { rules: [], issues };
  const rule: PolicyRule = {
    endpointSelector: { matchLabels: { ...selectLabels } },
    ...sections,
    labels: [{ source: 'container', key: POLICY_OF_LABEL_KEY, value: policyOf }],
    description: `label policy of ${policyOf}`,
  };
  return { rules: [rule], issues: [] };
}

// ---------------------------------------------------------------------------------------------
// Formatting: the label form of rules, for `membrane policy get`.

function inexpressible(what: string): never {
  throw new InvalidArgumentError(`${what} cannot be written as a label policy; show the rule as JSON instead`);
}

function formatKey(key: string, bare: boolean): string {
  if (!KEY_RE.test(key)) inexpressible(`the selector key ${quote(key)}`);
  if (bare && (isEntity(key) || KEYWORDS.has(key))) inexpressible(`an Exists test of the key ${quote(key)}`);
  return key;
}

function formatValue(value: string): string {
  if (!VALUE_RE.test(value)) inexpressible(`the selector value ${quote(value)}`);
  return value;
}

function formatSelector(selector: EndpointSelector): string {
  const terms: string[] = [];
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    terms.push(`${formatKey(key, false)}=${formatValue(value)}`);
  }
  for (const e of selector.matchExpressions ?? []) {
    const values = e.values ?? [];
    switch (e.operator) {
      case 'Exists': terms.push(formatKey(e.key, true)); break;
      case 'DoesNotExist': terms.push(`!${formatKey(e.key, false)}`); break;
      // NotIn [a, b] is "neither a nor b": one != term per value says the same.
      case 'NotIn': for (const v of values) terms.push(`${formatKey(e.key, false)}!=${formatValue(v)}`); break;
      case 'In':
        if (values.length !== 1) inexpressible(`"${e.key} In (${values.join(', ')})" inside a selector`);
        terms.push(`${formatKey(e.key, false)}=${formatValue(values[0]!)}`);
        break;
    }
  }
  if (terms.length === 0) inexpressible('the empty selector {} (every endpoint)');
  return terms.join(',');
}

function formatPort(p: PortProtocolSpec): string[] {
  const proto = p.protocol === 'ANY' ? '' : `/${p.protocol.toLowerCase()}`;
  if (!p.port) return p.protocol === 'ANY' ? ['tcp', 'udp'] : [p.protocol.toLowerCase()];
  const range = p.endPort === undefined ? `${p.port}` : `${p.port}-${p.endPort}`;
  return [`${range}${proto}`];
}

/** An element with no peers, ports or requires: it matches nothing. */
function matchesNothing(rule: PolicyPeerRule): boolean {
  const empty = (list: unknown[] | undefined) => list === undefined || list.length === 0;
  return empty(rule.endpoints) && empty(rule.cidr) && empty(rule.cidrSet) && empty(rule.entities) &&
    empty(rule.toPorts) && empty(rule.icmps) && empty(rule.requires);
}

function formatClause(direction: 'from' | 'to', rule: PolicyPeerRule): string {
  if (rule.requires && rule.requires.length > 0) inexpressible(`${direction === 'from' ? 'fromRequires' : 'toRequires'}`);
  const peers: string[] = [
    ...(rule.endpoints ?? []).map(formatSelector),
    ...(rule.cidr ?? []),
    ...(rule.cidrSet ?? []).map((s) => (s.except.length > 0 ? inexpressible(`the CIDR set ${s.cidr} with except`) : s.cidr)),
    ...(rule.entities ?? []),
  ];
  // Ports without peers apply to every peer (an element with neither is the caller's business).
  if (peers.length === 0) peers.push('all');
  const ports: string[] = [
    ...(rule.toPorts ?? []).flatMap((r) => r.ports.flatMap(formatPort)),
    ...(rule.icmps ?? []).flatMap((r) => r.fields.map((f) => `${f.family === 'IPv4' ? 'icmp' : 'icmpv6'}:${f.type}`)),
  ];
  return `${direction} ${peers.join(' or ')}${ports.length > 0 ? ` on ${ports.join(',')}` : ''}`;
}

/**
 * The label form of rules: label key -> value, for the sections the rules have. The rules'
 * endpointSelector, labels and description are not part of it (a label policy is always about
 * the container that carries it). For rules parseLabelPolicy made, parsing the result again gives
 * the same rules. Throws InvalidArgumentError for what the label grammar cannot say (requires,
 * CIDR except, In with several values, the empty selector).
 */
export function formatLabelPolicy(rules: PolicyRule[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of LABEL_POLICY_KEYS) {
    const { section, direction, allow } = LABEL_SECTIONS[key];
    // `{}` matches nothing and only turns enforcement on; beside real clauses it adds nothing.
    let onlyEnforces = false;
    const clauses: string[] = [];
    for (const rule of rules) {
      for (const element of rule[section] ?? []) {
        if (matchesNothing(element)) onlyEnforces = true;
        else clauses.push(formatClause(direction, element));
      }
    }
    if (clauses.length > 0) out[key] = clauses.join('; ');
    else if (onlyEnforces && allow) out[key] = 'none';
    else if (onlyEnforces) inexpressible(`an empty ${section} element {}`);
  }
  return out;
}
