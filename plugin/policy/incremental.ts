// Incremental policy compilation: the compiled policy of every endpoint kept between changes, so
// that a change recompiles only what it touches.
//
// What is cached:
//  - per rule (by stored object, which the repository never edits): what its selectors are, and
//    which peers, sections and CIDRs it has;
//  - per subject selector (by content): the rules that use it, so finding the rules that select an
//    endpoint costs one match per distinct selector, not one per rule;
//  - per endpoint input (identity, labels, mode...; endpoints with equal inputs, replicas of one
//    service, share it): the rules that select it, each rule's contribution (the keys it allows
//    or denies), every key's contributors, and the resulting entries; plus, per endpoint, the
//    keys whose entry changed since that endpoint's map was last written.
//
// What a change recompiles:
//  - a rule added or removed: its own contribution, on the endpoints its endpointSelector selects;
//  - an identity that appears or goes (a container's new label set, a CIDR a rule names): the
//    contributions of the rules whose peers can name it, on the endpoints they select;
//  - an endpoint whose input changed, or where a change flips whether a direction is enforced or
//    changes the direction's `requires` (which narrow every allow of the direction): that
//    endpoint, from scratch.
//
// The entries are exactly PolicyCompiler.compile's (compile.ts; incremental.test.ts holds the two
// together): on each key deny beats allow and the lowest rule id decides among equals, and an
// allow that a shorter deny key of the same identity and direction covers becomes that deny.

import { POLICY_ALLOW, POLICY_DENY, POLICY_EGRESS, POLICY_INGRESS, ID_INIT, type PolicyKey } from '../datapath/codec.js';
import type { PolicyMapEntry } from '../datapath/policy-maps.js';
import type { IdentityView } from '../identity/identities.js';
import { prefixContainsPrefix, type Prefix } from '../ipam/prefix.js';
import {
  PolicyCompiler, coveringKeys, difference, isEmptySelector, parsePrefix, keyString, maskPort, namesReserved, portKeys, selectorKey,
  type EndpointPolicyInput, type IdentitySource,
} from './compile.js';
import { selectorMatches } from './selector.js';
import type { EndpointSelector, PolicyPeerRule, StoredRule } from './types.js';

type DirectionName = 'ingress' | 'egress';
const DIRECTIONS: readonly DirectionName[] = ['ingress', 'egress'];

/** What a rule is made of, computed once per stored rule. */
interface RuleInfo {
  rule: StoredRule;
  subjectKey: string;
  /** Sections (allow or deny) that have elements, per direction: they switch enforcement on. */
  has: Record<DirectionName, boolean>;
  /** Its allow elements of the direction carry `requires`. */
  requires: Record<DirectionName, boolean>;
  /** Non-empty peer selectors (allow and deny elements), by content. */
  peerSelectors: Map<string, EndpointSelector>;
  hasNetworkEntity: boolean;
  /** Outer prefixes of its cidr and cidrSet peers. */
  cidrPrefixes: Prefix[];
}

interface SubjectGroup {
  selector: EndpointSelector;
  reserved: boolean;
  rules: Map<number, RuleInfo>;
}

/** One key's contributors: rule ids that allow and that deny it. */
interface KeyState {
  key: PolicyKey;
  allow: number[];
  deny: number[];
}

/** A rule's contribution to one endpoint: each (key, verdict) once, by `k` (allow) or `!k` (deny). */
type Contribution = Map<string, { k: string; key: PolicyKey; verdict: typeof POLICY_ALLOW | typeof POLICY_DENY }>;

interface EndpointCache {
  signature: string;
  input: EndpointPolicyInput;
  enforce: Record<DirectionName, boolean>;
  /** Ids of the selecting rules whose allow elements carry requires, per direction. */
  requiresRules: Record<DirectionName, Set<number>>;
  /** Selecting rules with a non-empty section, per direction. */
  sectionRules: Record<DirectionName, Set<number>>;
  applying: Map<number, RuleInfo>;
  contributions: Map<number, Contribution>;
  raw: Map<string, KeyState>;
  /** identity/direction -> keys of that group (for deny coverage), and how many of them are denies. */
  groups: Map<number, { keys: Set<string>; denies: number }>;
  entries: Map<string, PolicyMapEntry>;
  /**
   * The endpoints compiled by this cache (endpoints with equal inputs share one), each with the
   * keys whose entry changed since that endpoint was last written; undefined: write everything.
   */
  users: Map<string, Map<string, PolicyKey> | undefined>;
  /** The sync() this cache is up to date with. */
  seq: number;
}

export interface EndpointResult {
  enforceIngress: boolean;
  enforceEgress: boolean;
  audit: boolean;
  /** How many entries the endpoint's map holds now. */
  size: number;
  /** Everything (the cache was rebuilt: write it all, as a difference against the map), or only the changed keys. */
  full: boolean;
}

/** identity and direction, as one number (identities are 32 bits, directions 0 or 1). */
const groupOf = (k: PolicyKey): number => k.identity * 2 + k.direction;

function minOf(ids: number[]): number {
  let m = ids[0]!;
  for (let i = 1; i < ids.length; i++) if (ids[i]! < m) m = ids[i]!;
  return m;
}

function removeOne(ids: number[], id: number): void {
  const i = ids.indexOf(id);
  if (i >= 0) {
    ids[i] = ids[ids.length - 1]!;
    ids.pop();
  }
}

/** Does key `outer` cover key `inner` (inner's covering keys include outer)? Same group assumed. */
function covers(outer: PolicyKey, inner: PolicyKey): boolean {
  if (inner.protocol === 0) return false;
  if (outer.protocol === 0) return true;
  return outer.protocol === inner.protocol && outer.portBits < inner.portBits && maskPort(inner.port, outer.portBits) === outer.port;
}

function sectionsOf(rule: StoredRule, direction: DirectionName): { allow: readonly PolicyPeerRule[]; deny: readonly PolicyPeerRule[] } {
  return direction === 'ingress'
    ? { allow: rule.rule.ingress ?? [], deny: rule.rule.ingressDeny ?? [] }
    : { allow: rule.rule.egress ?? [], deny: rule.rule.egressDeny ?? [] };
}

function ruleInfo(rule: StoredRule): RuleInfo {
  const peerSelectors = new Map<string, EndpointSelector>();
  let hasNetworkEntity = false;
  const cidrPrefixes: Prefix[] = [];
  const has = { ingress: false, egress: false };
  const requires = { ingress: false, egress: false };
  const look = (elements: readonly PolicyPeerRule[]): void => {
    for (const el of elements) {
      if (el.endpoints) for (const sel of el.endpoints) if (!isEmptySelector(sel)) peerSelectors.set(selectorKey(sel), sel);
      if (el.entities?.includes('network')) hasNetworkEntity = true;
      if (el.cidr) for (const c of el.cidr) cidrPrefixes.push(parsePrefix(c));
      if (el.cidrSet) for (const set of el.cidrSet) cidrPrefixes.push(parsePrefix(set.cidr));
    }
  };
  for (const direction of DIRECTIONS) {
    const { allow, deny } = sectionsOf(rule, direction);
    has[direction] = allow.length + deny.length > 0;
    requires[direction] = allow.some((el) => (el.requires?.length ?? 0) > 0);
    look(allow);
    look(deny);
  }
  return { rule, subjectKey: selectorKey(rule.rule.endpointSelector), has, requires, peerSelectors, hasNetworkEntity, cidrPrefixes };
}

/** Rules by subject selector: a selector and the rules of a change that use it. */
interface SubjectChange {
  selector: EndpointSelector;
  reserved: boolean;
  infos: RuleInfo[];
}

function bySubject(infos: readonly RuleInfo[]): SubjectChange[] {
  const out = new Map<string, SubjectChange>();
  for (const info of infos) {
    let change = out.get(info.subjectKey);
    if (!change) {
      const selector = info.rule.rule.endpointSelector;
      change = { selector, reserved: namesReserved(selector), infos: [] };
      out.set(info.subjectKey, change);
    }
    change.infos.push(info);
  }
  return [...out.values()];
}

export class IncrementalCompiler {
  private readonly infos = new Map<StoredRule, RuleInfo>();
  private readonly subjects = new Map<string, SubjectGroup>();
  private lastRules: readonly StoredRule[] | undefined;
  /** Endpoint id -> the cache that compiles it; signature -> the cache of that input. */
  private readonly endpoints = new Map<string, EndpointCache>();
  private readonly compiled = new Map<string, EndpointCache>();
  private seq = 0;
  /** The identities the caches were compiled against (by id; a new view object means a new identity). */
  private known = new Map<number, IdentityView>();
  private peerCompiler: PolicyCompiler | undefined;
  /** Rules by the peers they name: which rules an identity that appears or goes can concern. */
  private readonly byPeerSelector = new Map<string, { selector: EndpointSelector; infos: Set<RuleInfo> }>();
  private readonly networkRules = new Set<RuleInfo>();
  private readonly cidrRules = new Set<RuleInfo>();
  /** Set by sync(): rules added and removed since the previous sync, and the rules an identity change concerns. */
  private added: SubjectChange[] = [];
  private removed: SubjectChange[] = [];
  private changedIdentities: IdentityView[] = [];
  private concerned = new Set<RuleInfo>();

  /**
   * Takes in the current rules and identities (call before compiling the endpoints); returns how
   * many rules were added and removed.
   */
  sync(rules: readonly StoredRule[], identities: IdentitySource): { added: number; removed: number; identities: number } {
    this.seq++;
    const added: RuleInfo[] = [];
    const removed: RuleInfo[] = [];
    if (rules !== this.lastRules) {
      const { gone, fresh } = difference(this.lastRules ?? [], rules);
      for (const rule of gone) {
        const info = this.infos.get(rule)!;
        this.infos.delete(rule);
        const group = this.subjects.get(info.subjectKey)!;
        group.rules.delete(rule.id);
        if (!group.rules.size) this.subjects.delete(info.subjectKey);
        this.indexPeers(info, false);
        removed.push(info);
      }
      for (const rule of fresh) {
        const info = ruleInfo(rule);
        this.infos.set(rule, info);
        let group = this.subjects.get(info.subjectKey);
        if (!group) {
          const selector = rule.rule.endpointSelector;
          group = { selector, reserved: namesReserved(selector), rules: new Map() };
          this.subjects.set(info.subjectKey, group);
        }
        group.rules.set(rule.id, info);
        this.indexPeers(info, true);
        added.push(info);
      }
      this.lastRules = rules;
    }
    this.added = bySubject(added);
    this.removed = bySubject(removed);
    const all = identities.all();
    const next = new Map<number, IdentityView>();
    this.changedIdentities = [];
    for (const v of all) {
      next.set(v.id, v);
      if (this.known.get(v.id) !== v) this.changedIdentities.push(v);
    }
    for (const [id, v] of this.known) if (next.get(id) !== v) this.changedIdentities.push(v);
    if (this.changedIdentities.length > 0 || !this.peerCompiler) this.peerCompiler = new PolicyCompiler([], identities);
    this.known = next;
    this.concerned = new Set();
    if (this.endpoints.size) for (const v of this.changedIdentities) this.concern(v);
    return { added: added.length, removed: removed.length, identities: this.changedIdentities.length };
  }

  private indexPeers(info: RuleInfo, add: boolean): void {
    for (const [key, selector] of info.peerSelectors) {
      let entry = this.byPeerSelector.get(key);
      if (add) {
        if (!entry) {
          entry = { selector, infos: new Set() };
          this.byPeerSelector.set(key, entry);
        }
        entry.infos.add(info);
      } else if (entry) {
        entry.infos.delete(info);
        if (!entry.infos.size) this.byPeerSelector.delete(key);
      }
    }
    if (info.hasNetworkEntity) (add ? this.networkRules.add(info) : this.networkRules.delete(info));
    if (info.cidrPrefixes.length) (add ? this.cidrRules.add(info) : this.cidrRules.delete(info));
  }

  /** Adds the rules whose peers can change when `v` appears or goes to `concerned`. */
  private concern(v: IdentityView): void {
    if (v.kind === 'cidr') {
      const p = parsePrefix(v.cidr!);
      for (const info of this.cidrRules) if (info.cidrPrefixes.some((outer) => prefixContainsPrefix(outer, p))) this.concerned.add(info);
      return;
    }
    if (v.kind === 'endpoint') for (const info of this.networkRules) this.concerned.add(info);
    for (const { selector, infos } of this.byPeerSelector.values()) {
      if ((v.kind === 'endpoint' || (v.kind === 'reserved' && namesReserved(selector))) && selectorMatches(selector, v.labels)) {
        for (const info of infos) this.concerned.add(info);
      }
    }
  }

  /** Drops what is cached for endpoints (all of them when no id is given): they compile from scratch next time. */
  forget(endpointId?: string): void {
    if (endpointId === undefined) {
      this.endpoints.clear();
      this.compiled.clear();
      return;
    }
    const cache = this.endpoints.get(endpointId);
    if (cache) this.detach(endpointId, cache);
  }

  /** Endpoint ids with a cache; the caller forgets those that no longer exist. */
  cachedEndpoints(): string[] {
    return [...this.endpoints.keys()];
  }

  /**
   * Brings one endpoint's compiled policy up to date with the rules and identities of the last
   * sync(). Never writes anything: entries() and changes() say what to write.
   */
  update(endpointId: string, input: EndpointPolicyInput): EndpointResult {
    const cache = this.endpoints.get(endpointId);
    if (!cache || cache.signature !== signatureOf(input)) return this.rebuild(endpointId, input);
    return this.resultOf(endpointId, this.current(cache));
  }

  /**
   * Compiles one endpoint against the rules and identities of the last sync() (also an endpoint
   * that appears between two syncs: the next sync's changes then apply to it as well).
   */
  rebuild(endpointId: string, input: EndpointPolicyInput): EndpointResult {
    if (!this.peerCompiler) throw new Error('IncrementalCompiler.rebuild before the first sync');
    const signature = signatureOf(input);
    const old = this.endpoints.get(endpointId);
    let target = this.compiled.get(signature);
    if (target) target = this.current(target);
    else {
      target = this.build(signature, input);
      this.compiled.set(signature, target);
    }
    let dirty: Map<string, PolicyKey> | undefined;
    if (old === target) dirty = target.users.get(endpointId);
    else if (old) {
      // The map holds what the old cache said (but for its unwritten changes), unless it was
      // never written: then the whole map is compared.
      const before = old.users.get(endpointId);
      if (before) dirty = unionOf(before, old.entries, target.entries);
      this.detach(endpointId, old);
    }
    target.users.set(endpointId, dirty);
    this.endpoints.set(endpointId, target);
    return this.resultOf(endpointId, target);
  }

  /** The cache brought up to date with the last sync (patched once per sync, or rebuilt for all its endpoints). */
  private current(cache: EndpointCache): EndpointCache {
    if (cache.seq === this.seq || this.patch(cache)) {
      cache.seq = this.seq;
      return cache;
    }
    const rebuilt = this.build(cache.signature, cache.input);
    for (const [id, dirty] of cache.users) {
      rebuilt.users.set(id, dirty && unionOf(dirty, cache.entries, rebuilt.entries));
      this.endpoints.set(id, rebuilt);
    }
    this.compiled.set(cache.signature, rebuilt);
    return rebuilt;
  }

  private detach(endpointId: string, cache: EndpointCache): void {
    this.endpoints.delete(endpointId);
    cache.users.delete(endpointId);
    if (!cache.users.size && this.compiled.get(cache.signature) === cache) this.compiled.delete(cache.signature);
  }

  private resultOf(endpointId: string, cache: EndpointCache): EndpointResult {
    return {
      enforceIngress: cache.enforce.ingress, enforceEgress: cache.enforce.egress, audit: cache.input.audit,
      size: cache.entries.size, full: cache.users.get(endpointId) === undefined,
    };
  }

  /** Every entry of the endpoint (for a full write). */
  entries(endpointId: string): PolicyMapEntry[] {
    return [...(this.endpoints.get(endpointId)?.entries.values() ?? [])];
  }

  /** The keys that changed since the endpoint was last written: the entry each should hold, or undefined to delete it. */
  changes(endpointId: string): { key: PolicyKey; entry: PolicyMapEntry['entry'] | undefined }[] {
    const cache = this.endpoints.get(endpointId);
    if (!cache) return [];
    const dirty = cache.users.get(endpointId);
    if (!dirty) return [...cache.entries.values()];
    const out: { key: PolicyKey; entry: PolicyMapEntry['entry'] | undefined }[] = [];
    for (const [k, key] of dirty) out.push(cache.entries.get(k) ?? { key, entry: undefined });
    return out;
  }

  /** The endpoint's map now holds what its cache says. */
  written(endpointId: string): void {
    this.endpoints.get(endpointId)?.users.set(endpointId, new Map());
  }

  // ---- building and patching --------------------------------------------------------------------

  private selects(group: { selector: EndpointSelector; reserved: boolean }, input: EndpointPolicyInput): boolean {
    // An endpoint without known labels is only selected by rules that name reserved:init.
    if (input.identity === ID_INIT && !group.reserved) return false;
    return selectorMatches(group.selector, input.labels);
  }

  private enforceOf(input: EndpointPolicyInput, hasSection: boolean): boolean {
    let enforce = input.mode === 'always' || (input.mode === 'default' && hasSection);
    if (input.identity === ID_INIT && !input.initFailOpen) enforce = true;
    if (input.forceEnforce) enforce = true;
    if (input.mode === 'never') enforce = false;
    return enforce;
  }

  private build(signature: string, input: EndpointPolicyInput): EndpointCache {
    const cache: EndpointCache = {
      signature, input, enforce: { ingress: false, egress: false },
      requiresRules: { ingress: new Set(), egress: new Set() }, sectionRules: { ingress: new Set(), egress: new Set() },
      applying: new Map(), contributions: new Map(), raw: new Map(), groups: new Map(), entries: new Map(), users: new Map(), seq: this.seq,
    };
    for (const group of this.subjects.values()) {
      if (!this.selects(group, input)) continue;
      for (const [id, info] of group.rules) this.track(cache, id, info);
    }
    for (const direction of DIRECTIONS) cache.enforce[direction] = this.enforceOf(input, cache.sectionRules[direction].size > 0);
    const requires = this.requiresOf(cache);
    // Every contribution first, then every key settled once (contribute() settles key by key).
    for (const [id, info] of cache.applying) {
      const contribution = this.contributionOf(cache, info, requires);
      cache.contributions.set(id, contribution);
      for (const { k, key, verdict } of contribution.values()) {
        let state = cache.raw.get(k);
        if (!state) cache.raw.set(k, state = { key, allow: [], deny: [] });
        (verdict === POLICY_DENY ? state.deny : state.allow).push(id);
      }
    }
    for (const [k, state] of cache.raw) {
      const g = groupOf(state.key);
      let group = cache.groups.get(g);
      if (!group) cache.groups.set(g, group = { keys: new Set(), denies: 0 });
      group.keys.add(k);
      if (state.deny.length) group.denies++;
    }
    for (const [k, state] of cache.raw) this.refresh(cache, k, state, cache.groups.get(groupOf(state.key))!.denies);
    return cache;
  }

  private track(cache: EndpointCache, id: number, info: RuleInfo): void {
    cache.applying.set(id, info);
    for (const direction of DIRECTIONS) {
      if (info.has[direction]) cache.sectionRules[direction].add(id);
      if (info.requires[direction]) cache.requiresRules[direction].add(id);
    }
  }

  private untrack(cache: EndpointCache, id: number): void {
    cache.applying.delete(id);
    for (const direction of DIRECTIONS) {
      cache.sectionRules[direction].delete(id);
      cache.requiresRules[direction].delete(id);
    }
  }

  /** The requires of every selecting allow element, per direction. */
  private requiresOf(cache: EndpointCache): Record<DirectionName, EndpointSelector[]> {
    const out: Record<DirectionName, EndpointSelector[]> = { ingress: [], egress: [] };
    for (const direction of DIRECTIONS) {
      for (const id of cache.requiresRules[direction]) {
        for (const el of sectionsOf(cache.applying.get(id)!.rule, direction).allow) out[direction].push(...(el.requires ?? []));
      }
    }
    return out;
  }

  /**
   * Applies the last sync's changes to a cache; false when the endpoint must be rebuilt instead
   * (enforcement of a direction flips, or the requires of a direction change).
   */
  private patch(cache: EndpointCache): boolean {
    const touched = new Set<number>();
    const input = cache.input;
    for (const change of this.removed) {
      if (!this.selects(change, input)) continue;
      for (const info of change.infos) {
        const id = info.rule.id;
        if (cache.applying.get(id) !== info) continue;
        if (info.requires.ingress || info.requires.egress) return false;
        this.untrack(cache, id);
        touched.add(id);
      }
    }
    for (const change of this.added) {
      if (!this.selects(change, input)) continue;
      for (const info of change.infos) {
        if (info.requires.ingress || info.requires.egress) return false;
        if (cache.applying.has(info.rule.id)) return false; // an id reused without its removal seen: rebuild
        this.track(cache, info.rule.id, info);
        touched.add(info.rule.id);
      }
    }
    for (const direction of DIRECTIONS) {
      if (this.enforceOf(input, cache.sectionRules[direction].size > 0) !== cache.enforce[direction]) return false;
    }
    if (this.changedIdentities.length) {
      // Requires expand wildcard peers over every identity: any identity change can move them.
      if (cache.requiresRules.ingress.size + cache.requiresRules.egress.size > 0) return false;
      if (this.concerned.size < cache.applying.size) {
        for (const info of this.concerned) if (cache.applying.get(info.rule.id) === info) touched.add(info.rule.id);
      } else {
        for (const [id, info] of cache.applying) if (this.concerned.has(info)) touched.add(id);
      }
    }
    if (!touched.size) return true;
    const requires = this.requiresOf(cache);
    for (const id of touched) {
      const old = cache.contributions.get(id);
      const info = cache.applying.get(id);
      const next = info ? this.contributionOf(cache, info, requires) : undefined;
      // Only the keys that moved: a rule that gains one peer among thousands changes a few keys.
      if (old) this.withdraw(cache, id, old, next);
      if (next) this.contribute(cache, id, next, old);
    }
    return true;
  }

  private contributionOf(cache: EndpointCache, info: RuleInfo, requires: Record<DirectionName, EndpointSelector[]>): Contribution {
    const compiler = this.peerCompiler!;
    const out: Contribution = new Map();
    const labels = cache.input.labels;
    for (const direction of DIRECTIONS) {
      if (!cache.enforce[direction]) continue;
      const dir = direction === 'ingress' ? POLICY_INGRESS : POLICY_EGRESS;
      const { allow, deny } = sectionsOf(info.rule, direction);
      const put = (peers: number[], el: PolicyPeerRule, verdict: typeof POLICY_ALLOW | typeof POLICY_DENY): void => {
        const ports = portKeys(el);
        for (const identity of peers) {
          for (const [protocol, port, bits] of ports) {
            const key: PolicyKey = { identity, direction: dir, protocol, port: protocol ? maskPort(port, bits) : 0, portBits: protocol ? bits : 0 };
            const k = keyString(key);
            const id = verdict === POLICY_DENY ? `!${k}` : k;
            if (!out.has(id)) out.set(id, { k, key, verdict });
          }
        }
      };
      for (const el of allow) put(compiler.allowPeers(el, labels, requires[direction]), el, POLICY_ALLOW);
      for (const el of deny) put(compiler.peers(el, labels), el, POLICY_DENY);
    }
    return out;
  }

  /** Adds a rule's contribution (the part not in `except`, which it held already). */
  private contribute(cache: EndpointCache, id: number, contribution: Contribution, except?: Contribution): void {
    cache.contributions.set(id, contribution);
    for (const [c, { k, key, verdict }] of contribution) {
      if (except?.has(c)) continue;
      let state = cache.raw.get(k);
      if (!state) {
        state = { key, allow: [], deny: [] };
        cache.raw.set(k, state);
        const g = groupOf(key);
        let group = cache.groups.get(g);
        if (!group) {
          group = { keys: new Set(), denies: 0 };
          cache.groups.set(g, group);
        }
        group.keys.add(k);
      }
      const denyBefore = state.deny.length ? minOf(state.deny) : 0;
      (verdict === POLICY_DENY ? state.deny : state.allow).push(id);
      this.settle(cache, k, state, denyBefore);
    }
  }

  /** Removes a rule's contribution (but for the part in `keep`). */
  private withdraw(cache: EndpointCache, id: number, contribution: Contribution, keep?: Contribution): void {
    cache.contributions.delete(id);
    for (const [c, { k, verdict }] of contribution) {
      if (keep?.has(c)) continue;
      const state = cache.raw.get(k)!;
      const denyBefore = state.deny.length ? minOf(state.deny) : 0;
      removeOne(verdict === POLICY_DENY ? state.deny : state.allow, id);
      this.settle(cache, k, state, denyBefore);
      if (!state.allow.length && !state.deny.length) {
        cache.raw.delete(k);
        const g = groupOf(state.key);
        const group = cache.groups.get(g)!;
        group.keys.delete(k);
        if (!group.keys.size) cache.groups.delete(g);
      }
    }
  }

  /** A key's contributors changed: its entry, and (when its deny changed) the entries of the keys it covers. */
  private settle(cache: EndpointCache, k: string, state: KeyState, denyBefore: number): void {
    const denyAfter = state.deny.length ? minOf(state.deny) : 0;
    const group = cache.groups.get(groupOf(state.key))!;
    if (denyBefore !== denyAfter) {
      group.denies += (denyAfter ? 1 : 0) - (denyBefore ? 1 : 0);
      for (const other of group.keys) {
        if (other === k) continue;
        const o = cache.raw.get(other)!;
        if (o.allow.length && !o.deny.length && covers(state.key, o.key)) this.refresh(cache, other, o, group.denies);
      }
    }
    this.refresh(cache, k, state, group.denies);
  }

  /** Recomputes one key's entry from its contributors and the denies that cover it. */
  private refresh(cache: EndpointCache, k: string, state: KeyState, groupDenies: number): void {
    let verdict: typeof POLICY_ALLOW | typeof POLICY_DENY | undefined;
    let ruleId = 0;
    if (state.deny.length) {
      verdict = POLICY_DENY;
      ruleId = minOf(state.deny);
    } else if (state.allow.length) {
      verdict = POLICY_ALLOW;
      ruleId = minOf(state.allow);
      if (groupDenies > 0) {
        for (const c of coveringKeys(state.key)) {
          const covering = cache.raw.get(keyString(c));
          if (covering?.deny.length) {
            verdict = POLICY_DENY;
            ruleId = minOf(covering.deny);
            break;
          }
        }
      }
    }
    const current = cache.entries.get(k);
    if (verdict === undefined) {
      if (!current) return;
      cache.entries.delete(k);
    } else {
      if (current && current.entry.verdict === verdict && current.entry.ruleId === ruleId) return;
      cache.entries.set(k, { key: state.key, entry: { ruleId, verdict } });
    }
    for (const dirty of cache.users.values()) dirty?.set(k, state.key);
  }
}

/** Changes not yet written, plus every key of the old and the new entries. */
function unionOf(pending: Map<string, PolicyKey>, before: Map<string, PolicyMapEntry>, after: Map<string, PolicyMapEntry>): Map<string, PolicyKey> {
  const out = new Map(pending);
  for (const [k, e] of before) out.set(k, e.key);
  for (const [k, e] of after) out.set(k, e.key);
  return out;
}

function signatureOf(input: EndpointPolicyInput): string {
  return JSON.stringify([input.identity, input.labels, input.mode, input.audit, !!input.initFailOpen, !!input.forceEnforce]);
}

