// Policy documents (JSON or YAML, shaped like Cilium's rules) -> validated PolicyRule ASTs, and back.
//
// Validation never stops at the first problem: every issue is reported with its path in the
// document (`[0].ingress[1].toPorts[0].ports[0].port`, where `[n]` is the n-th rule counted over
// the whole text, so over all YAML documents) and a message that says what to write instead. For
// YAML the message also gives the line and column. A rule appears in the result only if it had no
// issue; callers must treat any issue as "apply nothing".
//
// Where Membrane differs from Cilium 1.4 (on purpose):
// - One element may combine several peer kinds, and CIDRs may be combined with toPorts.
// - Empty peer or port lists (`fromEndpoints: []`, `toPorts: []`) and null values (YAML `key:`
//   with nothing after it) are errors: Cilium reads them as "absent", which for a peer list means
//   "every peer", the opposite of what an empty list suggests.
// - `protocol: ICMP`/`ICMPv6` in toPorts is accepted with the ICMP type in `port` and moved to
//   `icmps`. Port 0 or no port is refused there, since ICMP type 0 is echo reply and "every port"
//   would be ambiguous.
// - Empty sections (`ingress: []`) are kept: whether they switch enforcement on is compile.ts's call.

import { isMap, isScalar, LineCounter, parseAllDocuments, type Document } from 'yaml';
import { PolicyInvalidError } from '../errors.js';
import { formatPrefix, parseAddress, parsePrefix, prefixContainsPrefix, type Prefix } from '../ipam/prefix.js';
import { keyProblem, parseLabel, parseLabelKey, sourceProblem } from './labels.js';
import { editDistance } from './spelling.js';
import {
  ENTITIES, type CidrSet, type EndpointSelector, type Entity, type IcmpFamily, type IcmpField, type IcmpRule,
  type Label, type PolicyIssue, type PolicyPeerRule, type PolicyRule, type PortProtocol, type PortProtocolSpec,
  type PortRule, type SelectorExpression, type SelectorOperator,
} from './types.js';

type Segment = string | number;

/**
 * Where a value sits, as a chain from the document's root: extending a path is one small object,
 * not a copy (a document of 10,000 rules makes millions of paths, nearly all of them unused).
 */
class Path {
  constructor(private readonly up: Path | undefined, private readonly segment: Segment | undefined) {}

  at(segment: Segment): Path {
    return new Path(this, segment);
  }

  /** The last segment alone (the root: none). */
  last(): Segment[] {
    return this.up === undefined ? [] : [this.segment!];
  }

  toArray(): Segment[] {
    const out: Segment[] = [];
    for (let p: Path | undefined = this; p?.up !== undefined; p = p.up) out.push(p.segment!);
    return out.reverse();
  }
}

const ROOT = new Path(undefined, undefined);

interface Finding {
  path: Path;
  message: string;
  /** The issue is about the field name itself (unknown field), not its value: point at the key. */
  atKey?: boolean;
}

type Findings = Finding[];

// ---- small helpers --------------------------------------------------------------------------------

/** `[0].ingress[1].matchLabels["container:role"]`. */
export function formatPath(path: readonly Segment[]): string {
  let out = '';
  for (const s of path) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(s)) out += out === '' ? s : `.${s}`;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}

type PlainObject = Record<string, unknown>;

function isPlainObject(v: unknown): v is PlainObject {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function quote(s: string): string {
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

/** What a value is, for messages; never throws (not even on null-prototype objects). */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  switch (typeof v) {
    case 'string': return `the string ${quote(v)}`;
    case 'number': return `the number ${v}`;
    case 'bigint': return `the number ${v}`;
    case 'boolean': return `the boolean ${v}`;
    case 'object': return isPlainObject(v) ? 'an object' : 'a non-JSON value';
    default: return `a ${typeof v}`;
  }
}

const NULL_HINT = 'a YAML key with nothing after it is null; remove the field or give it a value';


/** The candidate closest to `name` when it is a plausible typo or abbreviation (case ignored), else undefined. */
function nearest(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(name.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) { best = c; bestDistance = d; }
  }
  if (bestDistance <= Math.min(2, Math.floor(name.length / 2))) return best;
  // Abbreviations, such as proto for protocol.
  return name.length >= 3 ? candidates.find((c) => c.toLowerCase().startsWith(name.toLowerCase())) : undefined;
}

interface FieldRules {
  known: readonly string[];
  /** Fields with their own message (unsupported features); their values are not checked. */
  special?: Readonly<Record<string, string>>;
  /** Fields spelled for another context (the other direction) -> the field meant here, and the message. */
  misplaced?: Readonly<Record<string, { field: string; message: string }>>;
}

interface Field {
  value: unknown;
  path: Path;
}

/** Reads a known field: its value (undefined when absent) and its path. */
type Fields = (name: string) => Field;

/**
 * Reports every own field of `obj` that is not in `rules.known`, and returns a reader for the known
 * ones. A misspelt or misplaced field stands in for the field it was meant as (unless that one is
 * given too), so problems inside it are reported in the same pass; the rule is invalid anyway.
 */
function fieldsOf(obj: PlainObject, path: Path, rules: FieldRules, out: Findings): Fields {
  let standIns: Map<string, string> | undefined; // field meant -> field written
  const standIn = (meant: string, written: string): void => {
    standIns ??= new Map();
    if (!standIns.has(meant)) standIns.set(meant, written);
  };
  let knownList = '';
  for (const name of Object.keys(obj)) {
    if (rules.known.includes(name)) continue;
    knownList ||= rules.known.join(', ');
    const at = path.at(name);
    if (rules.special && Object.hasOwn(rules.special, name)) {
      out.push({ path: at, atKey: true, message: rules.special[name]! });
      continue;
    }
    if (rules.misplaced && Object.hasOwn(rules.misplaced, name)) {
      const { field, message } = rules.misplaced[name]!;
      out.push({ path: at, atKey: true, message });
      standIn(field, name);
      continue;
    }
    const guess = nearest(name, rules.known);
    if (guess !== undefined) {
      const caseOnly = guess.toLowerCase() === name.toLowerCase() ? ' (field names are case-sensitive)' : '';
      out.push({ path: at, atKey: true, message: `unknown field ${quote(name)}; did you mean ${quote(guess)}?${caseOnly} ` +
        `Known fields here are ${knownList}` });
      standIn(guess, name);
      continue;
    }
    const otherGuess = rules.misplaced ? nearest(name, Object.keys(rules.misplaced)) : undefined;
    if (otherGuess !== undefined) {
      const { field, message } = rules.misplaced![otherGuess]!;
      out.push({ path: at, atKey: true, message: `unknown field ${quote(name)}; if you meant ${quote(otherGuess)}: ${message}` });
      standIn(field, name);
      continue;
    }
    out.push({ path: at, atKey: true, message: `unknown field ${quote(name)}; known fields here are ${knownList}` });
  }
  return (name) => {
    const written = Object.hasOwn(obj, name) ? name : standIns?.get(name);
    return written === undefined ? { value: undefined, path: path.at(name) } : { value: obj[written], path: path.at(written) };
  };
}

/**
 * A list field: null, non-lists and (unless allowed) empty lists are reported; each element goes
 * through `each`, and elements it returns undefined for are left out.
 */
function listOf<T>(v: unknown, path: Path, out: Findings, each: (item: unknown, path: Path) => T | undefined,
  ifEmpty?: string): T[] | undefined {
  if (Array.isArray(v) && (v.length > 0 || ifEmpty === undefined)) {
    const result: T[] = [];
    for (let i = 0; i < v.length; i++) {
      const item = each(v[i], path.at(i)); // a for loop so holes in sparse arrays are seen too
      if (item !== undefined) result.push(item);
    }
    return result;
  }
  const name = formatPath(path.last());
  if (v === null) {
    out.push({ path, message: `${name} is null (${NULL_HINT})` });
    return undefined;
  }
  if (!Array.isArray(v)) {
    const hint = isPlainObject(v) ? '; write it as a list: in YAML put "- " before the entry, in JSON wrap it in [ ]' : '';
    out.push({ path, message: `${name} must be a list, got ${describe(v)}${hint}` });
    return undefined;
  }
  out.push({ path, message: `${name} is an empty list; ${ifEmpty}` });
  return undefined;
}

function objectAt(v: unknown, path: Path, out: Findings, what: string): PlainObject | undefined {
  if (isPlainObject(v)) return v;
  const nullHint = v === null ? ` (${NULL_HINT})` : '';
  out.push({ path, message: `${what} must be an object, got ${describe(v)}${nullHint}` });
  return undefined;
}

/** A string value; numbers and booleans get a "quote it" message (YAML reads 8080 and true as such). */
function stringAt(v: unknown, path: Path, out: Findings, what: string): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') {
    out.push({ path, message: `${what} must be a string, got ${describe(v)}; quote it: "${v}"` });
  } else if (v === null) {
    out.push({ path, message: `${what} is null (${NULL_HINT}); write "" for an empty string` });
  } else {
    out.push({ path, message: `${what} must be a string, got ${describe(v)}` });
  }
  return undefined;
}

function problemOf(err: unknown): string {
  return err instanceof Error ? err.message : 'invalid';
}

// ---- selectors ------------------------------------------------------------------------------------

const OPERATORS: readonly SelectorOperator[] = ['In', 'NotIn', 'Exists', 'DoesNotExist'];

function selectorKeyAt(v: unknown, path: Path, out: Findings): string | undefined {
  const key = stringAt(v, path, out, 'key');
  if (key === undefined) return undefined;
  try {
    parseLabelKey(key, 'any');
    return key;
  } catch (err) {
    out.push({ path, message: problemOf(err) });
    return undefined;
  }
}

function expressionAt(v: unknown, path: Path, out: Findings): SelectorExpression | undefined {
  const obj = objectAt(v, path, out, 'a matchExpressions entry');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, { known: ['key', 'operator', 'values'] }, out);
  const keyField = field('key');
  let key: string | undefined;
  if (keyField.value === undefined) {
    out.push({ path, message: 'key is missing; write the label key the expression tests, e.g. "key": "app"' });
  } else {
    key = selectorKeyAt(keyField.value, keyField.path, out);
  }
  const operatorField = field('operator');
  let operator: SelectorOperator | undefined;
  if (operatorField.value === undefined) {
    out.push({ path, message: `operator is missing; write one of ${OPERATORS.join(', ')}` });
  } else {
    const operatorText = stringAt(operatorField.value, operatorField.path, out, 'operator');
    if (operatorText !== undefined) {
      operator = OPERATORS.find((o) => o.toLowerCase() === operatorText.toLowerCase());
      if (!operator) {
        out.push({ path: operatorField.path, message: `operator ${quote(operatorText)} is not one of ${OPERATORS.join(', ')}` });
      }
    }
  }
  const valuesField = field('values');
  if (operator === 'In' || operator === 'NotIn') {
    if (valuesField.value === undefined) {
      out.push({ path, message: `values is missing; ${operator} needs a non-empty list of values, e.g. "values": ["web"]` });
      return undefined;
    }
    const values = listOf(valuesField.value, valuesField.path, out, (item, p) => stringAt(item, p, out, 'a value'),
      `${operator} needs at least one value; to test only whether the key is there use ` +
      `${operator === 'In' ? 'Exists' : 'DoesNotExist'}`);
    if (key === undefined || values === undefined) return undefined;
    return { key, operator, values };
  }
  if (operator === 'Exists' || operator === 'DoesNotExist') {
    const values = valuesField.value;
    if (values !== undefined && !(Array.isArray(values) && values.length === 0)) {
      out.push({ path: valuesField.path, message: `${operator} takes no values; remove values, or use ` +
        `${operator === 'Exists' ? 'In' : 'NotIn'} to test the values` });
      return undefined;
    }
    return key === undefined ? undefined : { key, operator };
  }
  return undefined;
}

function matchLabelsAt(v: unknown, path: Path, out: Findings): Record<string, string> | undefined {
  const labels = objectAt(v, path, out, 'matchLabels');
  if (!labels) return undefined;
  const entries: [string, string][] = [];
  for (const [key, value] of Object.entries(labels)) {
    const at = path.at(key);
    try {
      parseLabelKey(key, 'any');
    } catch (err) {
      out.push({ path: at, message: problemOf(err), atKey: true });
      continue;
    }
    if (value === null) {
      out.push({ path: at, message: `the value of ${quote(key)} is null (YAML reads "${key}:" with nothing after ` +
        'it as null); write "" to match an empty value, or use matchExpressions with operator Exists' });
      continue;
    }
    const text = typeof value === 'string' ? value : stringAt(value, at, out, `the value of ${quote(key)}`);
    if (text !== undefined) entries.push([key, text]);
  }
  // fromEntries defines own properties, so a key such as "__proto__" stays a plain key.
  return Object.fromEntries(entries);
}

function selectorAt(v: unknown, path: Path, out: Findings): EndpointSelector | undefined {
  const obj = objectAt(v, path, out, 'a selector');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, { known: ['matchLabels', 'matchExpressions'] }, out);
  // Empty parts are left out, so {matchLabels: {}} and {} are the same selector.
  const sel: EndpointSelector = {};
  const labelsField = field('matchLabels');
  if (labelsField.value !== undefined) {
    const matchLabels = matchLabelsAt(labelsField.value, labelsField.path, out);
    if (matchLabels && Object.keys(matchLabels).length > 0) sel.matchLabels = matchLabels;
  }
  const exprField = field('matchExpressions');
  if (exprField.value !== undefined) {
    const exprs = listOf(exprField.value, exprField.path, out, (item, p) => expressionAt(item, p, out));
    if (exprs && exprs.length > 0) sel.matchExpressions = exprs;
  }
  return sel;
}

// ---- CIDRs and entities ---------------------------------------------------------------------------

function cidrAt(v: unknown, path: Path, out: Findings): Prefix | undefined {
  const text = stringAt(v, path, out, 'a CIDR');
  if (text === undefined) return undefined;
  try {
    if (!text.includes('/')) {
      const addr = parseAddress(text);
      return { family: addr.family, network: addr.value, length: addr.family === 4 ? 32 : 128 };
    }
    const prefix = parsePrefix(text);
    const addr = parseAddress(text.slice(0, text.indexOf('/')));
    if (addr.value !== prefix.network) {
      const single = formatPrefix({ family: addr.family, network: addr.value, length: addr.family === 4 ? 32 : 128 });
      out.push({ path, message: `${text} has host bits set; write ${formatPrefix(prefix)} for the network, ` +
        `or ${single} for the single address` });
      return undefined;
    }
    return prefix;
  } catch (err) {
    const hint = text.includes('/') ? '' : '; or write a CIDR such as 10.0.0.0/8';
    out.push({ path, message: `${problemOf(err)}${hint}` });
    return undefined;
  }
}

function cidrSetAt(v: unknown, path: Path, out: Findings): CidrSet | undefined {
  if (typeof v === 'string') {
    out.push({ path, message: `a CIDR set entry is an object; write {"cidr": ${quote(v)}, "except": [...]}, ` +
      'or put plain CIDRs in fromCIDR/toCIDR' });
    return undefined;
  }
  const obj = objectAt(v, path, out, 'a CIDR set entry');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, {
    known: ['cidr', 'except'],
    special: { cidrGroupRef: 'cidrGroupRef is not supported by Membrane; write the CIDR itself in cidr' },
  }, out);
  const cidrField = field('cidr');
  if (cidrField.value === undefined) {
    out.push({ path, message: 'cidr is missing; write the CIDR the exceptions are cut from, e.g. "cidr": "10.0.0.0/8"' });
    return undefined;
  }
  const outer = cidrAt(cidrField.value, cidrField.path, out);
  const exceptField = field('except');
  const except = exceptField.value === undefined ? [] : listOf(exceptField.value, exceptField.path, out, (item, p) => {
    const inner = cidrAt(item, p, out);
    if (!inner || !outer) return undefined;
    if (inner.family !== outer.family) {
      out.push({ path: p, message: `except ${formatPrefix(inner)} is IPv${inner.family} but cidr ${formatPrefix(outer)} is ` +
        `IPv${outer.family}; an exception must be of the same family, inside the cidr` });
      return undefined;
    }
    if (!prefixContainsPrefix(outer, inner)) {
      out.push({ path: p, message: `except ${formatPrefix(inner)} is not inside cidr ${formatPrefix(outer)}; ` +
        'an exception must be a part of the CIDR it narrows' });
      return undefined;
    }
    return formatPrefix(inner);
  });
  if (!outer || !except) return undefined;
  return { cidr: formatPrefix(outer), except };
}

const ENTITY_HINTS: Readonly<Record<string, string>> = {
  cluster: 'Membrane has no cluster: use "network" for every endpoint on the selected endpoint\'s own Docker ' +
    'network, or "all" for any peer',
  none: '"none" selects no peer; remove this element instead',
  'world-ipv4': 'use "world", or fromCIDR/toCIDR "0.0.0.0/0" for IPv4 only',
  'world-ipv6': 'use "world", or fromCIDR/toCIDR "::/0" for IPv6 only',
};

function entityAt(v: unknown, path: Path, out: Findings): Entity | undefined {
  const text = stringAt(v, path, out, 'an entity');
  if (text === undefined) return undefined;
  const name = text.toLowerCase();
  const entity = ENTITIES.find((e) => e === name);
  if (entity) return entity;
  const hint = Object.hasOwn(ENTITY_HINTS, name) ? ENTITY_HINTS[name]! : `write one of ${ENTITIES.join(', ')}`;
  out.push({ path, message: `entity ${quote(text)} is not one of ${ENTITIES.join(', ')}; ${hint}` });
  return undefined;
}

// ---- ports and ICMP -------------------------------------------------------------------------------

// Type names per family, spelt as Cilium accepts them (pkg/policy/api/icmp.go); numbers from the IANA registries.
const ICMP_TYPE_NAMES: Readonly<Record<IcmpFamily, Readonly<Record<string, number>>>> = {
  IPv4: {
    EchoReply: 0, DestinationUnreachable: 3, Redirect: 5, Echo: 8, EchoRequest: 8, RouterAdvertisement: 9,
    RouterSelection: 10, TimeExceeded: 11, ParameterProblem: 12, Timestamp: 13, TimestampReply: 14, Photuris: 40,
    ExtendedEchoRequest: 42, ExtendedEchoReply: 43,
  },
  IPv6: {
    DestinationUnreachable: 1, PacketTooBig: 2, TimeExceeded: 3, ParameterProblem: 4, EchoRequest: 128, EchoReply: 129,
    MulticastListenerQuery: 130, MulticastListenerReport: 131, MulticastListenerDone: 132, RouterSolicitation: 133,
    RouterAdvertisement: 134, NeighborSolicitation: 135, NeighborAdvertisement: 136, RedirectMessage: 137,
    RouterRenumbering: 138, ICMPNodeInformationQuery: 139, ICMPNodeInformationResponse: 140,
    InverseNeighborDiscoverySolicitation: 141, InverseNeighborDiscoveryAdvertisement: 142,
    HomeAgentAddressDiscoveryRequest: 144, HomeAgentAddressDiscoveryReply: 145, MobilePrefixSolicitation: 146,
    MobilePrefixAdvertisement: 147, DuplicateAddressRequestCodeSuffix: 157, DuplicateAddressConfirmationCodeSuffix: 158,
    ExtendedEchoRequest: 160, ExtendedEchoReply: 161,
  },
};

function icmpTypeByName(name: string, family: IcmpFamily): number | undefined {
  const table = ICMP_TYPE_NAMES[family];
  const found = Object.keys(table).find((n) => n.toLowerCase() === name.toLowerCase());
  return found === undefined ? undefined : table[found];
}

/** An ICMP type given as a number, a numeric string or a name of the family's table. */
function icmpTypeAt(v: unknown, family: IcmpFamily, path: Path, out: Findings): number | undefined {
  let type: number | undefined;
  if (typeof v === 'number') {
    type = v;
  } else if (typeof v === 'string' && /^\d+$/.test(v)) {
    type = Number(v);
  } else if (typeof v === 'string') {
    type = icmpTypeByName(v, family);
    if (type === undefined) {
      const other: IcmpFamily = family === 'IPv4' ? 'IPv6' : 'IPv4';
      const otherType = icmpTypeByName(v, other);
      const message = otherType !== undefined
        ? `${quote(v)} is an ${other === 'IPv6' ? 'ICMPv6' : 'ICMP (IPv4)'} type; set family: ${other}, or write ` +
          `the ${family} type number`
        : `ICMP type ${quote(v)} is not a number from 0 to 255 or a known name ` +
          `(${Object.keys(ICMP_TYPE_NAMES[family]).join(', ')})`;
      out.push({ path, message });
      return undefined;
    }
  } else {
    out.push({ path, message: `an ICMP type must be a number from 0 to 255 or a name such as EchoRequest, got ${describe(v)}` });
    return undefined;
  }
  if (!Number.isInteger(type) || type < 0 || type > 255) {
    out.push({ path, message: `ICMP type ${type} is out of range; write a whole number from 0 to 255` });
    return undefined;
  }
  return type;
}

function icmpFieldAt(v: unknown, path: Path, out: Findings): IcmpField | undefined {
  const obj = objectAt(v, path, out, 'an ICMP field');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, { known: ['type', 'family'] }, out);
  const familyField = field('family');
  let family: IcmpFamily | undefined = 'IPv4';
  if (familyField.value !== undefined) {
    const text = stringAt(familyField.value, familyField.path, out, 'family');
    family = text === undefined ? undefined : (['IPv4', 'IPv6'] as const).find((f) => f.toLowerCase() === text.toLowerCase());
    if (text !== undefined && family === undefined) {
      out.push({ path: familyField.path, message: `family ${quote(text)} is not IPv4 or IPv6` });
    }
  }
  const typeField = field('type');
  if (typeField.value === undefined) {
    out.push({ path, message: 'type is missing; write the ICMP type, e.g. "type": 8 (echo request) for IPv4' });
    return undefined;
  }
  if (family === undefined) return undefined;
  const type = icmpTypeAt(typeField.value, family, typeField.path, out);
  return type === undefined ? undefined : { family, type };
}

function icmpRuleAt(v: unknown, path: Path, out: Findings): IcmpRule | undefined {
  const obj = objectAt(v, path, out, 'an icmps entry');
  if (!obj) return undefined;
  const fieldsField = fieldsOf(obj, path, { known: ['fields'] }, out)('fields');
  if (fieldsField.value === undefined) {
    out.push({ path, message: 'fields is missing; write e.g. {"fields": [{"type": 8, "family": "IPv4"}]}' });
    return undefined;
  }
  const fields = listOf(fieldsField.value, fieldsField.path, out, (item, p) => icmpFieldAt(item, p, out),
    'list at least one {"type": ..., "family": ...}');
  return fields && { fields };
}

const ICMPS_EXAMPLE = '"icmps": [{"fields": [{"type": 8, "family": "IPv4"}]}]';

/** A port number (or numeric string). Named ports and "a-b" ranges get messages saying what to write. */
function portNumberAt(v: unknown, path: Path, out: Findings, what: 'port' | 'endPort'): number | undefined {
  let n: number;
  if (typeof v === 'number') {
    n = v;
  } else if (typeof v === 'string') {
    const range = /^\s*(\d+)\s*[-:]\s*(\d+)\s*$/.exec(v);
    if (v === '') {
      n = 0;
    } else if (/^\d+$/.test(v)) {
      n = Number(v);
    } else if (range && what === 'port') {
      out.push({ path, message: `port ranges are written with endPort: write "port": "${range[1]}", "endPort": ${range[2]}` });
      return undefined;
    } else if (/^[A-Za-z]/.test(v)) {
      out.push({ path, message: `named ports like ${quote(v)} are not supported; write the number, e.g. "80"` });
      return undefined;
    } else {
      out.push({ path, message: `${what} ${quote(v)} is not a port number; write a whole number from 1 to 65535` });
      return undefined;
    }
  } else {
    out.push({ path, message: `${what} must be a port number such as "80", got ${describe(v)}` });
    return undefined;
  }
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    out.push({ path, message: `${what} ${n} is out of range; ports are whole numbers from 1 to 65535` +
      (what === 'port' ? ' (0 or no port means every port)' : '') });
    return undefined;
  }
  return n;
}

type PortOrIcmp = { port: PortProtocolSpec } | { icmp: IcmpField };

function portAt(v: unknown, path: Path, out: Findings): PortOrIcmp | undefined {
  const obj = objectAt(v, path, out, 'a port');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, { known: ['port', 'endPort', 'protocol'] }, out);
  const portField = field('port');
  const endField = field('endPort');
  const protoField = field('protocol');
  let protocol: PortProtocol | 'ICMP' | 'ICMPV6' | undefined = 'ANY';
  if (protoField.value !== undefined) {
    const text = stringAt(protoField.value, protoField.path, out, 'protocol');
    const upper = text?.toUpperCase();
    protocol = upper === 'TCP' || upper === 'UDP' || upper === 'ANY' || upper === 'ICMP' || upper === 'ICMPV6'
      ? upper : undefined;
    if (text !== undefined && protocol === undefined) {
      const sctp = upper === 'SCTP' ? 'SCTP is not supported by Membrane; ' : '';
      out.push({ path: protoField.path, message: `${sctp}protocol ${quote(text)} is not one of TCP, UDP, ANY; for ICMP use ` +
        ICMPS_EXAMPLE });
    }
  }
  if (protocol === 'ICMP' || protocol === 'ICMPV6') {
    const family: IcmpFamily = protocol === 'ICMP' ? 'IPv4' : 'IPv6';
    if (endField.value !== undefined) {
      out.push({ path: endField.path, message: `ICMP types cannot be a range; list each type in ${ICMPS_EXAMPLE}` });
    }
    const absent = portField.value === undefined || portField.value === '';
    const type = absent ? 0 : icmpTypeAt(portField.value, family, portField.path, out);
    if (type === 0) {
      out.push({ path: portField.value === undefined ? path : portField.path, message: `with protocol ` +
        `${protocolName(protocol)} the port is the ICMP type and must not be 0 or absent (type 0 is echo reply, so ` +
        `"every port" would be ambiguous); write the type, e.g. "port": "${family === 'IPv4' ? 8 : 128}" for echo ` +
        `request, use ${ICMPS_EXAMPLE} for echo reply, or remove toPorts and icmps from this element to allow ` +
        'every protocol' });
      return undefined;
    }
    return type === undefined || endField.value !== undefined ? undefined : { icmp: { family, type } };
  }
  const port = portField.value === undefined ? 0 : portNumberAt(portField.value, portField.path, out, 'port');
  let endPort: number | undefined;
  if (endField.value !== undefined) {
    const end = portNumberAt(endField.value, endField.path, out, 'endPort');
    if (end === undefined || port === undefined) return undefined;
    if (end !== 0 && port === 0) {
      out.push({ path: endField.path, message: 'endPort needs a non-zero port: write the first port of the range in ' +
        `port, e.g. "port": "1024", "endPort": ${end}` });
      return undefined;
    }
    if (end !== 0 && end < port) {
      out.push({ path: endField.path, message: `endPort ${end} is below port ${port}; write the first port of the ` +
        `range in port and the last in endPort ("port": "${end}", "endPort": ${port})` });
      return undefined;
    }
    // 0 means no range (Cilium's default), and endPort == port is one port: both drop out.
    if (end > port) endPort = end;
  }
  if (port === undefined || protocol === undefined) return undefined;
  return { port: endPort === undefined ? { port, protocol } : { port, endPort, protocol } };
}

function protocolName(protocol: 'ICMP' | 'ICMPV6'): string {
  return protocol === 'ICMP' ? 'ICMP' : 'ICMPv6';
}

const L7_MESSAGE = 'L7 rules (HTTP, Kafka, DNS) are not supported: Membrane enforces L3/L4 only. Remove "rules"; ' +
  'note that the ports alone then allow every request on them';
const TLS_MESSAGE = 'TLS inspection and proxy listeners are not supported: Membrane enforces L3/L4 only; remove it';

/** A toPorts entry; ICMP ports are appended to `icmpOut`. Undefined when invalid or when all ports were ICMP. */
function portRuleAt(v: unknown, path: Path, out: Findings, icmpOut: IcmpField[]): PortRule | undefined {
  const obj = objectAt(v, path, out, 'a toPorts entry');
  if (!obj) return undefined;
  const portsField = fieldsOf(obj, path, {
    known: ['ports'],
    special: { rules: L7_MESSAGE, serverNames: TLS_MESSAGE, terminatingTLS: TLS_MESSAGE, originatingTLS: TLS_MESSAGE,
      listener: TLS_MESSAGE },
  }, out)('ports');
  if (portsField.value === undefined) {
    out.push({ path, message: 'ports is missing; write e.g. {"ports": [{"port": "80", "protocol": "TCP"}]}' });
    return undefined;
  }
  const parsed = listOf(portsField.value, portsField.path, out, (item, p) => portAt(item, p, out),
    'list at least one port, e.g. {"port": "80", "protocol": "TCP"}; to allow every port remove toPorts');
  if (!parsed) return undefined;
  const ports: PortProtocolSpec[] = [];
  for (const p of parsed) {
    if ('icmp' in p) icmpOut.push(p.icmp);
    else ports.push(p.port);
  }
  return ports.length > 0 ? { ports } : undefined;
}

// ---- rule elements and rules ----------------------------------------------------------------------

type Direction = 'ingress' | 'egress';

const PEER_KINDS = ['Endpoints', 'Requires', 'CIDR', 'CIDRSet', 'Entities'] as const;

const UNSUPPORTED_PEERS: Readonly<Record<string, string>> = {
  toFQDNs: 'toFQDNs is not supported by Membrane (it has no DNS proxy); allow the addresses with toCIDR or toCIDRSet',
  toServices: 'toServices (Kubernetes services) is not supported by Membrane; select the containers behind the ' +
    'service with toEndpoints, or their addresses with toCIDR',
  toGroups: 'toGroups (cloud security groups) is not supported by Membrane; use toCIDR or toCIDRSet',
  fromNodes: 'fromNodes is not supported: Membrane polices a single host; use "fromEntities": ["host"]',
  toNodes: 'toNodes is not supported: Membrane polices a single host; use "toEntities": ["host"]',
  rules: 'L7 rules are not supported: Membrane enforces L3/L4 only (and in Cilium they belong inside a toPorts entry)',
};

/** The field rules of the four kinds of element, made once. */
const peerFieldRulesMade = new Map<string, FieldRules>();
function peerFieldRules(dir: Direction, deny: boolean): FieldRules {
  const key = `${dir}/${deny}`;
  let rules = peerFieldRulesMade.get(key);
  if (!rules) {
    rules = makePeerFieldRules(dir, deny);
    peerFieldRulesMade.set(key, rules);
  }
  return rules;
}

function makePeerFieldRules(dir: Direction, deny: boolean): FieldRules {
  const mine = dir === 'ingress' ? 'from' : 'to';
  const theirs = dir === 'ingress' ? 'to' : 'from';
  const section = `${dir}${deny ? 'Deny' : ''}`;
  const kinds = PEER_KINDS.filter((k) => !(deny && k === 'Requires'));
  const special: Record<string, string> = { ...UNSUPPORTED_PEERS };
  const misplaced: Record<string, { field: string; message: string }> = {};
  for (const kind of kinds) {
    misplaced[`${theirs}${kind}`] = { field: `${mine}${kind}`, message: `${theirs}${kind} is the ` +
      `${dir === 'ingress' ? 'egress' : 'ingress'} spelling; in ${section} the peers are the ` +
      `${dir === 'ingress' ? 'sources' : 'destinations'}: write ${mine}${kind}` };
  }
  if (deny) {
    for (const name of [`${mine}Requires`, `${theirs}Requires`]) {
      special[name] = `${name} is not allowed in ${section}: requires only narrow what allow rules grant and mean ` +
        `nothing in a deny rule; to deny peers that lack a label, use ${mine}Endpoints with matchExpressions ` +
        '(operator DoesNotExist or NotIn)';
    }
  }
  return { known: [...kinds.map((k) => `${mine}${k}`), 'toPorts', 'icmps'], special, misplaced };
}

function peerRuleAt(v: unknown, path: Path, out: Findings, dir: Direction, deny: boolean): PolicyPeerRule | undefined {
  const obj = objectAt(v, path, out, `an ${dir}${deny ? 'Deny' : ''} element`);
  if (!obj) return undefined;
  const mine = dir === 'ingress' ? 'from' : 'to';
  const fields = fieldsOf(obj, path, peerFieldRules(dir, deny), out);
  const field = (kind: string): Field => fields(`${mine}${kind}`);
  const rule: PolicyPeerRule = {};
  // What leaving a member out means, for the "empty list" messages.
  const everyPeer = `${deny ? 'deny' : 'allow'} every peer`;

  const selectors = (f: Field, ifEmpty: string): EndpointSelector[] | undefined =>
    (f.value === undefined ? undefined : listOf(f.value, f.path, out, (item, p) => selectorAt(item, p, out), ifEmpty));
  const endpoints = selectors(field('Endpoints'), `remove it to ${everyPeer}, or write [{}] for every endpoint`);
  if (endpoints) rule.endpoints = endpoints;
  if (!deny) {
    const requires = selectors(field('Requires'), 'remove it, or list selectors every peer must also match');
    if (requires) rule.requires = requires;
  }
  const cidrField = field('CIDR');
  if (cidrField.value !== undefined) {
    const cidr = listOf(cidrField.value, cidrField.path, out, (item, p) => {
      const prefix = cidrAt(item, p, out);
      return prefix && formatPrefix(prefix);
    }, `remove it to ${everyPeer}, or list CIDRs such as "10.0.0.0/8"`);
    if (cidr) rule.cidr = cidr;
  }
  const setField = field('CIDRSet');
  if (setField.value !== undefined) {
    const cidrSet = listOf(setField.value, setField.path, out, (item, p) => cidrSetAt(item, p, out),
      `remove it to ${everyPeer}, or list entries such as {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}`);
    if (cidrSet) rule.cidrSet = cidrSet;
  }
  const entityField = field('Entities');
  if (entityField.value !== undefined) {
    const entities = listOf(entityField.value, entityField.path, out, (item, p) => entityAt(item, p, out),
      `remove it to ${everyPeer}, or list entities (${ENTITIES.join(', ')})`);
    if (entities) rule.entities = entities;
  }
  const icmpFromPorts: IcmpField[] = [];
  const portsField = fields('toPorts');
  if (portsField.value !== undefined) {
    const toPorts = listOf(portsField.value, portsField.path, out, (item, p) => portRuleAt(item, p, out, icmpFromPorts),
      `remove toPorts to ${deny ? 'deny' : 'allow'} every port, or list ports`);
    if (toPorts && toPorts.length > 0) rule.toPorts = toPorts;
  }
  const icmpsField = fields('icmps');
  if (icmpsField.value !== undefined) {
    const icmps = listOf(icmpsField.value, icmpsField.path, out, (item, p) => icmpRuleAt(item, p, out),
      'remove icmps, or list ICMP types');
    if (icmps) rule.icmps = icmps;
  }
  if (icmpFromPorts.length > 0) rule.icmps = [...(rule.icmps ?? []), { fields: icmpFromPorts }];
  return rule;
}

const SECTIONS = ['ingress', 'egress', 'ingressDeny', 'egressDeny'] as const;

const RULE_FIELDS: FieldRules = {
  known: ['endpointSelector', ...SECTIONS, 'labels', 'description'],
  special: {
    nodeSelector: 'nodeSelector is not supported: Membrane applies policy to containers; select them with endpointSelector',
    ...Object.fromEntries(['apiVersion', 'kind', 'metadata', 'spec', 'specs'].map((f) => [f,
      `${f} belongs to a Kubernetes CiliumNetworkPolicy object; Membrane takes the rules themselves: import the ` +
      'contents of spec (or the entries of specs)'])),
  },
};

function ruleLabelAt(v: unknown, path: Path, out: Findings): Label | undefined {
  if (typeof v === 'string') {
    try {
      return parseLabel(v, 'unspec');
    } catch (err) {
      out.push({ path, message: problemOf(err) });
      return undefined;
    }
  }
  const obj = objectAt(v, path, out, 'a label (an object {"key", "value", "source"} or a string "source:key=value")');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, { known: ['key', 'value', 'source'] }, out);
  const keyField = field('key');
  const valueField = field('value');
  const sourceField = field('source');
  if (keyField.value === undefined) {
    out.push({ path, message: 'key is missing; write e.g. {"key": "name", "value": "web-from-api"}' });
    return undefined;
  }
  const key = stringAt(keyField.value, keyField.path, out, 'key');
  const value = valueField.value === undefined ? '' : stringAt(valueField.value, valueField.path, out, 'value');
  const source = sourceField.value === undefined ? 'unspec' : stringAt(sourceField.value, sourceField.path, out, 'source');
  const keyIssue = key === undefined ? undefined : keyProblem(key);
  if (keyIssue) out.push({ path: keyField.path, message: keyIssue });
  const sourceIssue = source === undefined ? undefined : sourceProblem(source);
  if (sourceIssue) out.push({ path: sourceField.path, message: sourceIssue });
  if (key === undefined || value === undefined || source === undefined || keyIssue || sourceIssue) return undefined;
  return { source, key, value };
}

function ruleAt(v: unknown, path: Path, out: Findings): PolicyRule | undefined {
  const before = out.length;
  const obj = objectAt(v, path, out, 'a rule');
  if (!obj) return undefined;
  const field = fieldsOf(obj, path, RULE_FIELDS, out);
  const selectorField = field('endpointSelector');
  let endpointSelector: EndpointSelector | undefined;
  if (selectorField.value === undefined) {
    out.push({ path, message: 'endpointSelector is missing; every rule needs one: write {} to select every endpoint, ' +
      'or e.g. {"matchLabels": {"app": "web"}}' });
  } else {
    endpointSelector = selectorAt(selectorField.value, selectorField.path, out);
  }
  const rule: PolicyRule = { endpointSelector: endpointSelector ?? {}, labels: [] };
  for (const section of SECTIONS) {
    const sectionField = field(section);
    if (sectionField.value === undefined) continue;
    const dir: Direction = section.startsWith('ingress') ? 'ingress' : 'egress';
    const deny = section.endsWith('Deny');
    const elements = listOf(sectionField.value, sectionField.path, out, (item, p) => peerRuleAt(item, p, out, dir, deny));
    if (elements) rule[section] = elements;
  }
  const labelsField = field('labels');
  if (labelsField.value !== undefined) {
    rule.labels = listOf(labelsField.value, labelsField.path, out, (item, p) => ruleLabelAt(item, p, out)) ?? [];
  }
  const descriptionField = field('description');
  if (descriptionField.value !== undefined) {
    const description = stringAt(descriptionField.value, descriptionField.path, out, 'description');
    if (description !== undefined) rule.description = description;
  }
  return out.length === before ? rule : undefined;
}

/** Rules of one document (an array of rules or a single rule), numbered from `first`. */
function documentRules(doc: unknown, first: number, out: Findings): PolicyRule[] {
  if (Array.isArray(doc)) {
    const rules: PolicyRule[] = [];
    for (let i = 0; i < doc.length; i++) {
      const rule = ruleAt(doc[i], ROOT.at(first + i), out);
      if (rule) rules.push(rule);
    }
    return rules;
  }
  if (isPlainObject(doc)) {
    const rule = ruleAt(doc, ROOT.at(first), out);
    return rule ? [rule] : [];
  }
  out.push({ path: ROOT, message: `a policy is a list of rules (or a single rule object), got ${describe(doc)}; ` +
    'write e.g. [{"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [...]}]' });
  return [];
}

function toIssues(found: Findings): PolicyIssue[] {
  return found.map((f) => ({ path: formatPath(f.path.toArray()), message: f.message }));
}

/**
 * Validates a parsed document: an array of rules or a single rule object. Never throws. `rules`
 * holds the rules that had no issue; any issue means the document as a whole is invalid.
 */
export function validatePolicy(doc: unknown): { rules: PolicyRule[]; issues: PolicyIssue[] } {
  const found: Findings = [];
  const rules = documentRules(doc, 0, found);
  return { rules, issues: toIssues(found) };
}

// ---- text -----------------------------------------------------------------------------------------

const EMPTY_MESSAGE = 'the policy text is empty; write a JSON or YAML list of rules, or [] for no rules';

function lineColumn(source: string, offset: number): { line: number; col: number } {
  const before = source.slice(0, offset);
  const line = before.split('\n').length;
  return { line, col: offset - before.lastIndexOf('\n') };
}

class JsonSyntaxAt {
  constructor(readonly offset: number) {}
}

/**
 * Offset of the first JSON syntax error (JSON.parse in Node 20 often does not say where), or
 * undefined when the text nests too deeply to scan.
 */
function jsonErrorOffset(source: string): number | undefined {
  let i = 0;
  const fail = (): never => { throw new JsonSyntaxAt(i); };
  const skipSpace = (): void => { while (i < source.length && ' \t\n\r'.includes(source[i]!)) i++; };
  const token = (re: RegExp): void => {
    re.lastIndex = i;
    const m = re.exec(source);
    if (!m) fail();
    i += m![0].length;
  };
  const literal = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
  const stringBody = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const value = (): void => {
    skipSpace();
    const open = source[i];
    if (open === '{' || open === '[') {
      const close = open === '{' ? '}' : ']';
      i++;
      skipSpace();
      if (source[i] === close) { i++; return; }
      for (;;) {
        if (open === '{') {
          skipSpace();
          token(stringBody);
          skipSpace();
          if (source[i] !== ':') fail();
          i++;
        }
        value();
        skipSpace();
        if (source[i] === ',') { i++; continue; }
        if (source[i] === close) { i++; return; }
        fail();
      }
    }
    token(open === '"' ? stringBody : literal);
  };
  try {
    value();
    skipSpace();
    if (i < source.length) fail();
  } catch (err) {
    if (err instanceof JsonSyntaxAt) return err.offset;
    return undefined; // the stack overflowed
  }
  return source.length; // not reached: JSON.parse failed, so there is an error somewhere
}

function parseJson(source: string, detected: boolean, out: PolicyIssue[]): unknown {
  try {
    return JSON.parse(source) as unknown;
  } catch {
    const offset = jsonErrorOffset(source);
    if (offset === undefined) {
      out.push({ path: '', message: 'invalid JSON: nested too deeply to read; a policy needs only a few levels' });
      return undefined;
    }
    const { line, col } = lineColumn(source, offset);
    const found = offset < source.length ? `unexpected ${quote(source[offset]!)}` : 'unexpected end of text';
    const previous = source.slice(0, offset).trimEnd().at(-1);
    let hint = '';
    if (previous === ',' && (source[offset] === '}' || source[offset] === ']')) hint = '; JSON allows no comma after the last entry';
    else if (source[offset] === "'") hint = '; JSON strings and field names take double quotes';
    else if (/[A-Za-z_]/.test(source[offset] ?? '')) {
      hint = '; JSON field names and strings take double quotes, and true, false and null are lower case';
    }
    const why = detected ? ' (text starting with [ or { is read as JSON)' : '';
    out.push({ path: '', message: `invalid JSON${why} at line ${line}, column ${col}: ${found}${hint}` });
    return undefined;
  }
}

/** ` (line L, column C)` for where a finding points in a YAML document, or '' when unknown. */
function yamlPosition(doc: Document, path: Segment[], atKey: boolean, counter: LineCounter): string {
  const at = (offset: number): string => {
    const { line, col } = counter.linePos(offset);
    return ` (line ${line}, column ${col})`;
  };
  if (atKey && path.length > 0) {
    const parent = doc.getIn(path.slice(0, -1), true);
    const name = String(path[path.length - 1]);
    const pair = isMap(parent) ? parent.items.find((p) => isScalar(p.key) && String(p.key.value) === name) : undefined;
    if (pair && isScalar(pair.key) && pair.key.range) return at(pair.key.range[0]);
  }
  // The node itself, or the nearest enclosing one that has a position (getIn fails through aliases).
  for (let n = path.length; n >= 0; n--) {
    const node: unknown = n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true);
    const range = node !== null && typeof node === 'object' && 'range' in node
      ? (node as { range?: [number, number, number] }).range : undefined;
    if (range) return at(range[0]);
  }
  return '';
}

function parseYaml(source: string, out: PolicyIssue[]): PolicyRule[] {
  const counter = new LineCounter();
  // merge: true so `<<: *defaults` works as people expect from YAML 1.1 tools.
  // logLevel 'error': a daemon should not print process warnings about what users wrote.
  const docs = parseAllDocuments(source, { lineCounter: counter, merge: true, logLevel: 'error' });
  const syntax = docs.flatMap((d) => d.errors);
  if (syntax.length > 0) {
    // Values around a syntax error are guesses, so only the syntax errors are worth reporting.
    for (const e of syntax) {
      const where = e.linePos ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
      out.push({ path: '', message: `YAML syntax error${where}: ${e.message.replace(/ at line \d+, column \d+:[\s\S]*$/, '')}` });
    }
    return [];
  }
  const rules: PolicyRule[] = [];
  let first = 0;
  let documents = 0;
  for (const doc of docs) {
    // An empty document (only comments, or the space after a final ---) holds no rules.
    if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) continue;
    documents++;
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (err) {
      out.push({ path: '', message: `YAML document ${documents} cannot be read: ${problemOf(err)}` });
      continue;
    }
    const found: Findings = [];
    rules.push(...documentRules(value, first, found));
    for (const f of found) {
      const at = f.path.toArray();
      const inDocument = Array.isArray(value) && at.length > 0
        ? [(at[0] as number) - first, ...at.slice(1)] : at.slice(1);
      const where = yamlPosition(doc, inDocument, f.atKey ?? false, counter);
      out.push({ path: formatPath(at), message: `${f.message}${where}` });
    }
    first += Array.isArray(value) ? value.length : 1;
  }
  if (documents === 0) out.push({ path: '', message: EMPTY_MESSAGE });
  return rules;
}

/**
 * Parses and validates policy text without throwing. `format` defaults to JSON when the first
 * non-space character is `[` or `{`, else YAML (which may hold several `---` documents, each a rule
 * or a list of rules).
 */
export function checkPolicyText(source: string, format?: 'json' | 'yaml'): { rules: PolicyRule[]; issues: PolicyIssue[] } {
  const body = source.startsWith('\uFEFF') ? source.slice(1) : source;
  const issues: PolicyIssue[] = [];
  if (body.trim() === '') return { rules: [], issues: [{ path: '', message: EMPTY_MESSAGE }] };
  const useJson = format === 'json' || (format === undefined && /^\s*[[{]/.test(body));
  if (!useJson) {
    const rules = parseYaml(body, issues);
    return { rules, issues };
  }
  const doc = parseJson(body, format === undefined, issues);
  if (issues.length > 0) return { rules: [], issues };
  return validatePolicy(doc);
}

/** Parses and validates policy text; throws PolicyInvalidError listing every issue. */
export function parsePolicyText(source: string, format?: 'json' | 'yaml'): PolicyRule[] {
  const { rules, issues } = checkPolicyText(source, format);
  if (issues.length > 0) throw new PolicyInvalidError(issues);
  return rules;
}

// ---- back to Cilium's shape -----------------------------------------------------------------------

function formatSelector(sel: EndpointSelector): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (sel.matchLabels && Object.keys(sel.matchLabels).length > 0) out.matchLabels = Object.fromEntries(Object.entries(sel.matchLabels));
  if (sel.matchExpressions && sel.matchExpressions.length > 0) {
    out.matchExpressions = sel.matchExpressions.map((e) =>
      (e.values === undefined ? { key: e.key, operator: e.operator } : { key: e.key, operator: e.operator, values: [...e.values] }));
  }
  return out;
}

function formatPeerRule(rule: PolicyPeerRule, dir: Direction): Record<string, unknown> {
  const mine = dir === 'ingress' ? 'from' : 'to';
  const out: Record<string, unknown> = {};
  if (rule.endpoints) out[`${mine}Endpoints`] = rule.endpoints.map(formatSelector);
  if (rule.requires) out[`${mine}Requires`] = rule.requires.map(formatSelector);
  if (rule.cidr) out[`${mine}CIDR`] = [...rule.cidr];
  if (rule.cidrSet) {
    out[`${mine}CIDRSet`] = rule.cidrSet.map((s) => (s.except.length > 0 ? { cidr: s.cidr, except: [...s.except] } : { cidr: s.cidr }));
  }
  if (rule.entities) out[`${mine}Entities`] = [...rule.entities];
  if (rule.toPorts) {
    out.toPorts = rule.toPorts.map((r) => ({
      ports: r.ports.map((p) => (p.endPort === undefined
        ? { port: String(p.port), protocol: p.protocol }
        : { port: String(p.port), endPort: p.endPort, protocol: p.protocol })),
    }));
  }
  if (rule.icmps) out.icmps = rule.icmps.map((r) => ({ fields: r.fields.map((f) => ({ type: f.type, family: f.family })) }));
  return out;
}

/**
 * Rules in Cilium's input shape (`fromEndpoints`, `port: "80"`, labels as {key, value, source}),
 * ready for JSON.stringify. Parsing the result again gives rules equal to the input.
 */
export function formatPolicy(rules: readonly PolicyRule[]): unknown {
  return rules.map((rule) => {
    const out: Record<string, unknown> = { endpointSelector: formatSelector(rule.endpointSelector) };
    for (const section of SECTIONS) {
      const elements = rule[section];
      if (elements) out[section] = elements.map((e) => formatPeerRule(e, section.startsWith('ingress') ? 'ingress' : 'egress'));
    }
    if (rule.labels.length > 0) out.labels = rule.labels.map((l) => ({ key: l.key, value: l.value, source: l.source }));
    if (rule.description !== undefined) out.description = rule.description;
    return out;
  });
}
