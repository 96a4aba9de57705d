// The policy compiler: rules + identities -> one endpoint's policy map entries, and the BPF
// lookup mirrored in TypeScript (for `membrane policy trace` and the tests that hold the two
// together).
//
// What the datapath does with the entries (bpf/lib/policy.h): for a flow with remote identity R
// it takes the longest match in the endpoint's trie for (R, direction, protocol, port), then for
// (class of R, ...), then for (ID_ANY, ...); any deny wins, else any allow allows, else the
// default is deny. So the compiler must make the longest match *within one identity* carry the
// combined verdict of every rule about that identity: an allow that lies inside a deny of the
// same identity (a deny of "every TCP port" and an allow of port 80) is turned into that deny.
// Across identities nothing needs resolving: the three lookups combine at run time.
//
// Semantics (Cilium's, plus deny rules):
//  - A rule applies to an endpoint when its endpointSelector matches the endpoint's labels.
//  - `default` mode: an endpoint enforces a direction when some applying rule has a non-empty
//    section for it (allow or deny); `always`: both directions; `never`: neither.
//  - Allow elements are OR-ed. `requires` from every applying allow element of a direction are
//    AND-ed onto every allowed peer of that direction. Deny elements ignore requires and win.
//  - An element with ports but no peers applies to every peer; one with neither matches nothing
//    (it only switches enforcement on, as `ingress: [{}]` does in Cilium).
//  - `{}` in fromEndpoints/toEndpoints is every Membrane endpoint (not the host or the world).
//  - An endpoint with the init identity is selected only by selectors that name `reserved:init`.

import {
  ID_ANY, ID_CLASS_ENDPOINTS, ID_CLASS_WORLD_IPV4, ID_CLASS_WORLD_IPV6, ID_FIRST_CIDR, ID_FIRST_ENDPOINT, ID_HOST, ID_INIT,
  ID_WORLD_IPV4, ID_WORLD_IPV6, POLICY_ALLOW, POLICY_DENY, POLICY_EGRESS, POLICY_INGRESS, type PolicyKey,
} from '../datapath/codec.js';
import type { PolicyMapEntry } from '../datapath/policy-maps.js';
import type { IdentityView } from '../identity/identities.js';
import { parsePrefix as parsePrefixText, prefixContainsPrefix, type Prefix } from '../ipam/prefix.js';
import { selectorMatches } from './selector.js';
import type { EndpointSelector, EnforcementMode, Label, PolicyPeerRule, PolicyRule, StoredRule } from './types.js';

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;

export type Direction = 'ingress' | 'egress';

/** What the compiler needs to know about identities. */
export interface IdentitySource {
  all(): IdentityView[];
  /** Identity of a canonical CIDR named by a rule (allocated by the caller beforehand). */
  forCidr(cidr: string): number;
}

export interface EndpointPolicyInput {
  identity: number;
  /** The endpoint's identity labels ([reserved:init] while unknown). */
  labels: readonly Label[];
  mode: EnforcementMode;
  audit: boolean;
  /** True: an ID_INIT endpoint follows the mode like any other instead of denying everything. */
  initFailOpen?: boolean;
  /** Enforce both directions whatever the mode (a container whose label policy is invalid). */
  forceEnforce?: boolean;
}

export interface CompiledPolicy {
  enforceIngress: boolean;
  enforceEgress: boolean;
  audit: boolean;
  entries: PolicyMapEntry[];
  /** Ids of the rules that apply, per direction (allow and deny sections). */
  appliedRules: { ingress: number[]; egress: number[] };
}

/** parsePrefix, once per text: the compiler meets the same CIDRs at every change (the answers are never modified). */
const prefixes = new Map<string, Readonly<Prefix>>();
export function parsePrefix(cidr: string): Readonly<Prefix> {
  let prefix = prefixes.get(cidr);
  if (!prefix) {
    prefix = parsePrefixText(cidr);
    if (prefixes.size >= 100_000) prefixes.clear();
    prefixes.set(cidr, prefix);
  }
  return prefix;
}

/** Every CIDR the rules name (cidr, cidrSet and their excepts), canonical: each needs an identity. */
export function cidrsOf(rules: readonly StoredRule[]): ReadonlySet<string> {
  let out = cidrsByList.get(rules);
  if (!out) {
    // The repository makes a new list for every change: count the CIDRs of the rules that came
    // and went since the last list instead of walking every rule.
    const { gone, fresh } = difference(cidrCounts.list, rules);
    for (const r of gone) for (const c of ruleCidrs(r.rule)) {
      const n = cidrCounts.counts.get(c)! - 1;
      if (n) cidrCounts.counts.set(c, n);
      else cidrCounts.counts.delete(c);
    }
    for (const r of fresh) for (const c of ruleCidrs(r.rule)) cidrCounts.counts.set(c, (cidrCounts.counts.get(c) ?? 0) + 1);
    cidrCounts.list = rules;
    out = new Set(cidrCounts.counts.keys());
    cidrsByList.set(rules, out);
  }
  return out;
}

const cidrsByList = new WeakMap<readonly StoredRule[], Set<string>>();
/** The list cidrsOf last counted, and how many of its rules name each CIDR. */
const cidrCounts: { list: readonly StoredRule[]; counts: Map<string, number> } = { list: [], counts: new Map() };

const sortedById = (rules: readonly StoredRule[]): boolean => rules.every((r, i) => i === 0 || rules[i - 1]!.id < r.id);

/** Rules (by object) only in `before`, and only in `after`. */
export function difference(before: readonly StoredRule[], after: readonly StoredRule[]): { gone: StoredRule[]; fresh: StoredRule[] } {
  const gone: StoredRule[] = [];
  const fresh: StoredRule[] = [];
  if (sortedById(before) && sortedById(after)) {
    // The repository keeps its list sorted by id: one walk along both, nothing hashed.
    let i = 0;
    let j = 0;
    while (i < before.length || j < after.length) {
      const a = before[i];
      const b = after[j];
      if (a === b) {
        i++;
        j++;
      } else if (b === undefined || (a !== undefined && a.id < b.id)) {
        gone.push(a!);
        i++;
      } else if (a === undefined || b.id < a.id) {
        fresh.push(b);
        j++;
      } else {
        gone.push(a);
        fresh.push(b);
        i++;
        j++;
      }
    }
    return { gone, fresh };
  }
  const kept = new Set(after);
  const had = new Set(before);
  return { gone: before.filter((r) => !kept.has(r)), fresh: after.filter((r) => !had.has(r)) };
}

/** The CIDRs of one rule (as cidrsOf), once per rule: rules are never edited once stored. */
const cidrsByRule = new WeakMap<PolicyRule, readonly string[]>();
const NO_CIDRS: readonly string[] = [];
function ruleCidrs(rule: PolicyRule): readonly string[] {
  let cidrs = cidrsByRule.get(rule);
  if (!cidrs) {
    let out: Set<string> | undefined;
    for (const section of [rule.ingress, rule.egress, rule.ingressDeny, rule.egressDeny]) {
      for (const el of section ?? []) {
        if (!el.cidr && !el.cidrSet) continue;
        out ??= new Set();
        for (const c of el.cidr ?? []) out.add(c);
        for (const set of el.cidrSet ?? []) {
          out.add(set.cidr);
          for (const e of set.except) out.add(e);
        }
      }
    }
    // A /0 is the world itself, not an ipcache entry.
    if (out) for (const c of out) if (c.endsWith('/0')) out.delete(c);
    cidrs = out?.size ? [...out] : NO_CIDRS;
    cidrsByRule.set(rule, cidrs);
  }
  return cidrs;
}

/** Port keys of an element: [protocol, port, bits]; protocol 0 = everything. */
export type PortKey = [protocol: number, port: number, bits: number];

/** Splits an inclusive port range into aligned power-of-two blocks (at most 30 for 1-65535). */
export function rangeBlocks(first: number, last: number): [port: number, bits: number][] {
  const out: [number, number][] = [];
  let start = first;
  while (start <= last) {
    let size = start === 0 ? 65536 : start & -start; // largest block aligned at start
    while (start + size - 1 > last) size >>= 1;
    out.push([start, 16 - Math.log2(size)]);
    start += size;
  }
  return out;
}

export function portKeys(el: PolicyPeerRule): PortKey[] {
  if (!el.toPorts?.length && !el.icmps?.length) return [[0, 0, 0]];
  const out: PortKey[] = [];
  for (const rule of el.toPorts ?? []) {
    for (const spec of rule.ports) {
      const protocols = spec.protocol === 'TCP' ? [IPPROTO_TCP] : spec.protocol === 'UDP' ? [IPPROTO_UDP] : [IPPROTO_TCP, IPPROTO_UDP];
      for (const protocol of protocols) {
        if (!spec.port) out.push([protocol, 0, 0]);
        else if (spec.endPort !== undefined && spec.endPort > spec.port) {
          for (const [port, bits] of rangeBlocks(spec.port, spec.endPort)) out.push([protocol, port, bits]);
        } else out.push([protocol, spec.port, 16]);
      }
    }
  }
  for (const icmp of el.icmps ?? []) {
    for (const field of icmp.fields) out.push([field.family === 'IPv6' ? IPPROTO_ICMPV6 : IPPROTO_ICMP, field.type, 16]);
  }
  return out;
}

export function hasPeers(el: PolicyPeerRule): boolean {
  return (el.endpoints?.length ?? 0) + (el.cidr?.length ?? 0) + (el.cidrSet?.length ?? 0) + (el.entities?.length ?? 0) > 0;
}

export function isEmptySelector(sel: EndpointSelector): boolean {
  const labels = Object.keys(sel.matchLabels ?? {}).filter((k) => k !== 'reserved:all');
  return labels.length === 0 && (sel.matchExpressions?.length ?? 0) === 0;
}

/** Does the selector name a reserved: key (then it may match reserved identities, not just endpoints)? */
export function namesReserved(sel: EndpointSelector): boolean {
  return Object.keys(sel.matchLabels ?? {}).some((k) => k.startsWith('reserved:')) ||
    (sel.matchExpressions ?? []).some((e) => e.key.startsWith('reserved:'));
}

export const networkOf = (labels: readonly Label[]): string[] =>
  labels.filter((l) => l.source === 'network' && l.key === 'name').map((l) => l.value);

/**
 * Compiles the policy of every endpoint against one view of the identities. Reuse one instance
 * for a whole pass over the endpoints: selector results are cached per identity set.
 */
export class PolicyCompiler {
  private readonly identities: IdentityView[];
  private readonly cidrIdentities: { view: IdentityView; prefix: Prefix }[];
  /** By selector content: thousands of rules often name the same peer selector. */
  private readonly selectorCache = new Map<string, number[]>();

  constructor(private readonly rules: readonly StoredRule[], private readonly source: IdentitySource) {
    this.identities = source.all();
    this.cidrIdentities = this.identities.filter((v) => v.kind === 'cidr').map((view) => ({ view, prefix: parsePrefix(view.cidr!) }));
  }

  /** Identities (endpoint, or reserved when the selector names reserved: keys) a selector matches. */
  private selectorPeers(sel: EndpointSelector): number[] {
    if (isEmptySelector(sel)) return [ID_CLASS_ENDPOINTS];
    const key = selectorKey(sel);
    let ids = this.selectorCache.get(key);
    if (!ids) {
      const reserved = namesReserved(sel);
      ids = this.identities
        .filter((v) => (v.kind === 'endpoint' || (reserved && v.kind === 'reserved')) && selectorMatches(sel, v.labels))
        .map((v) => v.id);
      this.selectorCache.set(key, ids);
    }
    return ids;
  }

  private cidrPeers(cidr: string, except: string[]): number[] {
    const outer = parsePrefix(cidr);
    const excepts = except.map((e) => parsePrefix(e));
    if (outer.length === 0 && excepts.length === 0) return [outer.family === 4 ? ID_CLASS_WORLD_IPV4 : ID_CLASS_WORLD_IPV6];
    const ids = [outer.length === 0 ? (outer.family === 4 ? ID_WORLD_IPV4 : ID_WORLD_IPV6) : this.source.forCidr(cidr)];
    // Addresses inside a longer CIDR that some rule names carry that CIDR's identity (longest
    // match in the ipcache): they are inside this one too, unless excepted.
    for (const { view, prefix } of this.cidrIdentities) {
      if (prefix.length > outer.length && prefixContainsPrefix(outer, prefix) && !excepts.some((e) => prefixContainsPrefix(e, prefix))) {
        ids.push(view.id);
      }
    }
    return ids;
  }

  /** The peer identities an element names, for an endpoint with these labels (wildcards unexpanded). */
  peers(el: PolicyPeerRule, endpointLabels: readonly Label[]): number[] {
    if (!hasPeers(el)) return el.toPorts?.length || el.icmps?.length ? [ID_ANY] : [];
    const ids: number[] = [];
    for (const sel of el.endpoints ?? []) ids.push(...this.selectorPeers(sel));
    for (const c of el.cidr ?? []) ids.push(...this.cidrPeers(c, []));
    for (const set of el.cidrSet ?? []) ids.push(...this.cidrPeers(set.cidr, set.except));
    for (const entity of el.entities ?? []) {
      switch (entity) {
        case 'host': ids.push(ID_HOST); break;
        case 'world': ids.push(ID_CLASS_WORLD_IPV4, ID_CLASS_WORLD_IPV6); break;
        case 'all': ids.push(ID_ANY); break;
        case 'init': ids.push(ID_INIT); break;
        case 'network': {
          const networks = networkOf(endpointLabels);
          for (const v of this.identities) {
            if (v.kind === 'endpoint' && networkOf(v.labels).some((n) => networks.includes(n))) ids.push(v.id);
          }
          break;
        }
      }
    }
    return [...new Set(ids)];
  }

  /** Concrete identities a (possibly wildcard) peer identity stands for. */
  private expand(id: number): IdentityView[] {
    switch (id) {
      case ID_ANY: return this.identities;
      case ID_CLASS_ENDPOINTS: return this.identities.filter((v) => v.kind === 'endpoint');
      case ID_CLASS_WORLD_IPV4:
      case ID_CLASS_WORLD_IPV6: {
        const family = id === ID_CLASS_WORLD_IPV4 ? 4 : 6;
        return this.identities.filter((v) => (v.kind === 'cidr' || v.id === ID_WORLD_IPV4 || v.id === ID_WORLD_IPV6) && v.family === family);
      }
      default: {
        const view = this.identities.find((v) => v.id === id);
        return view ? [view] : [];
      }
    }
  }

  /** The peers of an allow element once the direction's `requires` (from every applying allow element) are applied. */
  allowPeers(el: PolicyPeerRule, endpointLabels: readonly Label[], requires: readonly EndpointSelector[]): number[] {
    const peers = this.peers(el, endpointLabels);
    if (!requires.length) return peers;
    return [...new Set(peers.flatMap((p) => this.expand(p)).filter((v) => requires.every((r) => selectorMatches(r, v.labels))).map((v) => v.id))];
  }

  compile(endpoint: EndpointPolicyInput): CompiledPolicy {
    // An endpoint without known labels is only selected by rules that name reserved:init: a
    // selector like {} must not open up containers before anyone knows what they are.
    const isInit = endpoint.identity === ID_INIT;
    const applying = this.rules.filter((r) => (!isInit || namesReserved(r.rule.endpointSelector)) &&
      selectorMatches(r.rule.endpointSelector, endpoint.labels));
    const entries = new Map<string, PolicyMapEntry>();
    const result: CompiledPolicy = {
      enforceIngress: false, enforceEgress: false, audit: endpoint.audit, entries: [], appliedRules: { ingress: [], egress: [] },
    };
    for (const direction of ['ingress', 'egress'] as const) {
      const dir = direction === 'ingress' ? POLICY_INGRESS : POLICY_EGRESS;
      const allows = applying.flatMap((r) => (r.rule[direction] ?? []).map((el) => ({ id: r.id, el })));
      const denies = applying.flatMap((r) => (r.rule[direction === 'ingress' ? 'ingressDeny' : 'egressDeny'] ?? []).map((el) => ({ id: r.id, el })));
      result.appliedRules[direction] = [...new Set([...allows, ...denies].map((a) => a.id))].sort((a, b) => a - b);
      let enforce = endpoint.mode === 'always' || (endpoint.mode === 'default' && result.appliedRules[direction].length > 0);
      if (endpoint.identity === ID_INIT && !endpoint.initFailOpen) enforce = true;
      if (endpoint.forceEnforce) enforce = true;
      if (endpoint.mode === 'never') enforce = false;
      if (direction === 'ingress') result.enforceIngress = enforce;
      else result.enforceEgress = enforce;
      if (!enforce) continue;

      const requires = allows.flatMap(({ el }) => el.requires ?? []);
      const put = (identity: number, ports: PortKey[], verdict: typeof POLICY_ALLOW | typeof POLICY_DENY, ruleId: number): void => {
        for (const [protocol, port, bits] of ports) {
          const key: PolicyKey = { identity, direction: dir, protocol, port: protocol ? maskPort(port, bits) : 0, portBits: protocol ? bits : 0 };
          const k = keyString(key);
          const existing = entries.get(k);
          // Deny beats allow on the same key; among equals the lowest rule id decides (stable output).
          if (!existing || (verdict === POLICY_DENY && existing.entry.verdict !== POLICY_DENY) ||
            (verdict === existing.entry.verdict && ruleId < existing.entry.ruleId)) {
            entries.set(k, { key, entry: { ruleId, verdict } });
          }
        }
      };
      for (const { id, el } of allows) {
        const peers = this.allowPeers(el, endpoint.labels, requires);
        const ports = portKeys(el);
        for (const peer of peers) put(peer, ports, POLICY_ALLOW, id);
      }
      for (const { id, el } of denies) {
        const ports = portKeys(el);
        for (const peer of this.peers(el, endpoint.labels)) put(peer, ports, POLICY_DENY, id);
      }
    }
    // An allow inside a deny of the same identity would be the longest match and undo the deny.
    const anyDeny = [...entries.values()].some((e) => e.entry.verdict === POLICY_DENY);
    for (const [k, e] of anyDeny ? entries : []) {
      if (e.entry.verdict !== POLICY_ALLOW) continue;
      const covering = coveringKeys(e.key).map((c) => entries.get(keyString(c))).find((c) => c?.entry.verdict === POLICY_DENY);
      if (covering) entries.set(k, { key: e.key, entry: { ruleId: covering.entry.ruleId, verdict: POLICY_DENY } });
    }
    result.entries = [...entries.values()];
    return result;
  }
}

export function maskPort(port: number, bits: number): number {
  return bits === 0 ? 0 : port & (0xffff << (16 - bits)) & 0xffff;
}

/** A selector's content as a string: equal selectors (written the same way) share cached answers. */
const selectorKeys = new WeakMap<EndpointSelector, string>();
export function selectorKey(sel: EndpointSelector): string {
  let key = selectorKeys.get(sel);
  if (key === undefined) {
    key = JSON.stringify(sel);
    selectorKeys.set(sel, key);
  }
  return key;
}

export function keyString(k: PolicyKey): string {
  return `${k.identity}/${k.direction}/${k.protocol}/${k.port}/${k.portBits}`;
}

/** The shorter prefixes (same identity and direction) that contain a key, longest first. */
export function coveringKeys(k: PolicyKey): PolicyKey[] {
  if (k.protocol === 0) return [];
  const out: PolicyKey[] = [];
  for (let bits = k.portBits - 1; bits >= 0; bits--) out.push({ ...k, port: maskPort(k.port, bits), portBits: bits });
  out.push({ identity: k.identity, direction: k.direction, protocol: 0, port: 0, portBits: 0 });
  return out;
}

/** The class identity the datapath looks up after the remote identity itself (policy.h). */
export function classOf(identity: number, family: 4 | 6): number {
  if (identity >= ID_FIRST_ENDPOINT && identity < ID_FIRST_CIDR) return ID_CLASS_ENDPOINTS;
  if (identity >= ID_FIRST_CIDR || identity === ID_WORLD_IPV4 || identity === ID_WORLD_IPV6) {
    return family === 4 ? ID_CLASS_WORLD_IPV4 : ID_CLASS_WORLD_IPV6;
  }
  return 0;
}

/** An index over compiled entries that answers lookups the way the datapath does. */
export class PolicyLookup {
  private readonly byKey = new Map<string, PolicyMapEntry>();

  constructor(entries: readonly PolicyMapEntry[]) {
    for (const e of entries) this.byKey.set(keyString(e.key), e);
  }

  /** The longest match for one identity (bpf_map_lookup_elem on the trie). */
  longestMatch(identity: number, direction: number, protocol: number, port: number): PolicyMapEntry | undefined {
    const exact: PolicyKey = { identity, direction: direction as PolicyKey['direction'], protocol, port, portBits: 16 };
    for (const k of [exact, ...coveringKeys(exact)]) {
      const hit = this.byKey.get(keyString(k));
      if (hit) return hit;
    }
    return undefined;
  }

  /**
   * policy_decide() in bpf/lib/policy.h: remote identity, its class, then ID_ANY; deny wins.
   * Returns the deciding entries too, for explanations.
   */
  decide(direction: number, remote: number, remoteClass: number, protocol: number, port: number):
    { verdict: 'allowed' | 'denied' | 'default-denied'; ruleId: number; matched: PolicyMapEntry[] } {
    // As in BPF: no class lookup when the remote has none.
    const matched = [remote, ...(remoteClass ? [remoteClass] : []), ID_ANY]
      .map((id) => this.longestMatch(id, direction, protocol, port))
      .filter((e): e is PolicyMapEntry => e !== undefined);
    const deny = matched.find((e) => e.entry.verdict === POLICY_DENY);
    if (deny) return { verdict: 'denied', ruleId: deny.entry.ruleId, matched };
    if (matched.length) return { verdict: 'allowed', ruleId: matched[0]!.entry.ruleId, matched };
    return { verdict: 'default-denied', ruleId: 0, matched };
  }
}
