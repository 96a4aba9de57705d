// The policy repository: every rule Membrane enforces, imported through the API or declared in a
// container's labels, with a revision that moves on every change. Pure bookkeeping over the
// persisted state; compiling and applying is the engine's job (engine.ts).
//
// Import semantics: a document is all or nothing (it was validated as a whole before it gets
// here). A rule whose labels equal an existing rule's labels (and are not empty) replaces it, so
// re-importing the same file is idempotent; unlabelled rules are always added.

import { ConflictError } from '../errors.js';
import { difference } from './compile.js';
import type { Label, PolicyRule, StoredRule } from './types.js';

export interface PolicyState {
  revision: number;
  rules: StoredRule[];
}

export function emptyPolicyState(): PolicyState {
  return { revision: 1, rules: [] };
}

/** Rule ids index the per-CPU verdict counters (mb_policy_verdicts, 65536 slots; 0 is "no rule"). */
const MAX_RULE_ID = 65535;

/** Does `rule` carry every label of `wanted` (source, key and value; source "any" matches any source)? */
export function ruleHasLabels(rule: PolicyRule, wanted: readonly Label[]): boolean {
  return wanted.every((w) => rule.labels.some((l) => l.key === w.key && l.value === w.value && (w.source === 'any' || l.source === w.source)));
}

/**
 * A rule's label set as a string, once per rule: equal for equal sets (order and duplicates
 * ignored), as labelSetKey is, but cheaper (only compared here, never stored).
 */
const labelKeys = new WeakMap<PolicyRule, string>();
function ruleLabelKey(rule: PolicyRule): string {
  let key = labelKeys.get(rule);
  if (key === undefined) {
    // Sources and keys hold no NUL, so source NUL key NUL value names one label unambiguously;
    // each part's length before it keeps the joined parts apart whatever the values hold.
    const parts = rule.labels.map((l) => `${l.source}\0${l.key}\0${l.value}`);
    if (parts.length > 1) parts.sort();
    key = '';
    for (let i = 0; i < parts.length; i++) if (i === 0 || parts[i] !== parts[i - 1]) key += `${parts[i]!.length}:${parts[i]}`;
    labelKeys.set(rule, key);
  }
  return key;
}

interface Index {
  map: Map<string, Set<StoredRule>>;
  list: readonly StoredRule[];
  keys: (rule: StoredRule) => string[];
}

/** Two lists sorted by id, as one. */
function mergeById(a: readonly StoredRule[], b: readonly StoredRule[]): StoredRule[] {
  const out: StoredRule[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(a[i]!.id < b[j]!.id ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
}

export class PolicyRepository {
  /** Rules by label set (ruleLabelKey), for the list it was last brought up to date with. */
  private readonly byLabelSet: Index = { map: new Map(), list: [], keys: (r) => (r.rule.labels.length ? [ruleLabelKey(r.rule)] : []) };

  constructor(private readonly state: PolicyState) {
    // Rules are kept sorted by id (lookups walk the list in order); a journal replays new rules at
    // the end of the list, so the order is restored here.
    if (state.rules.some((r, i) => i > 0 && state.rules[i - 1]!.id > r.id)) state.rules = [...state.rules].sort((a, b) => a.id - b.id);
  }

  /** An index brought up to date with the list (every change makes a new list; the engine may put an earlier one back). */
  private index(index: Index): Map<string, Set<StoredRule>> {
    if (index.list === this.state.rules) return index.map;
    const { gone, fresh } = difference(index.list, this.state.rules);
    for (const r of gone) {
      for (const k of index.keys(r)) {
        const set = index.map.get(k);
        set?.delete(r);
        if (set && !set.size) index.map.delete(k);
      }
    }
    for (const r of fresh) {
      for (const k of index.keys(r)) {
        let set = index.map.get(k);
        if (!set) index.map.set(k, set = new Set());
        set.add(r);
      }
    }
    index.list = this.state.rules;
    return index.map;
  }

  /** Rules carrying all of `labels`, in the list's order: one walk, nothing allocated per rule. */
  private matching(labels: readonly Label[]): StoredRule[] {
    if (!labels.length) return [...this.state.rules];
    const out: StoredRule[] = [];
    rules: for (const r of this.state.rules) {
      const have = r.rule.labels;
      for (const w of labels) {
        let found = false;
        for (const l of have) {
          if (l.key === w.key && l.value === w.value && (w.source === 'any' || l.source === w.source)) {
            found = true;
            break;
          }
        }
        if (!found) continue rules;
      }
      out.push(r);
    }
    return out;
  }

  get revision(): number {
    return this.state.revision;
  }

  rules(): readonly StoredRule[] {
    return this.state.rules;
  }

  /** Rules carrying all of `labels` (every rule when empty). */
  find(labels: readonly Label[] = []): StoredRule[] {
    return this.matching(labels);
  }

  private freeIds(count: number, releasing: Set<number>): number[] {
    const ids: number[] = [];
    // The free ids are the gaps between the ids in use (the list is sorted by id).
    let next = 1;
    for (let i = 0; i <= this.state.rules.length && ids.length < count; i++) {
      const rule = this.state.rules[i];
      if (rule && releasing.has(rule.id)) continue;
      const end = rule ? Math.min(rule.id, MAX_RULE_ID + 1) : MAX_RULE_ID + 1;
      for (let id = next; id < end && ids.length < count; id++) ids.push(id);
      if (rule) next = Math.max(next, rule.id + 1);
    }
    if (ids.length < count) {
      throw new ConflictError(`the policy would hold more than ${MAX_RULE_ID} rules; ` +
        'merge rules that share an endpointSelector, or delete rules that are no longer needed');
    }
    return ids;
  }

  /**
   * Adds rules from `origin`, replacing same-labelled rules of the same origin. Returns the new
   * revision, the stored rules and the ids that were replaced.
   */
  /** Told the path (under the policy state) of every rule that is written or deleted, and of the revision. */
  onChange: ((path: string[]) => void) | undefined;

  private changed(ids: Iterable<number>): void {
    if (!this.onChange) return;
    for (const id of ids) this.onChange(['rules', String(id)]);
    this.onChange(['revision']);
  }

  add(rules: readonly PolicyRule[], origin = 'api'): { revision: number; added: StoredRule[]; replaced: number[] } {
    const incomingKeys = new Set(rules.filter((r) => r.labels.length).map((r) => ruleLabelKey(r)));
    const byLabelSet = incomingKeys.size ? this.index(this.byLabelSet) : new Map<string, Set<StoredRule>>();
    const replaced = [...incomingKeys].flatMap((k) => [...(byLabelSet.get(k) ?? [])])
      .filter((r) => r.origin === origin).map((r) => r.id).sort((a, b) => a - b);
    const replacing = new Set(replaced);
    const ids = this.freeIds(rules.length, replacing);
    const revision = this.state.revision + 1;
    const added = rules.map((rule, i) => ({ id: ids[i]!, rule, origin, revision }));
    this.state.rules = mergeById(replacing.size ? this.state.rules.filter((r) => !replacing.has(r.id)) : this.state.rules, added);
    this.state.revision = revision;
    this.changed([...replaced, ...ids]);
    return { revision, added, replaced };
  }

  /** Deletes the rules carrying all of `labels` (all API rules when `labels` is empty and `all`). */
  delete(labels: readonly Label[], options: { all?: boolean } = {}): { revision: number; deleted: StoredRule[] } {
    if (!labels.length && !options.all) {
      throw new ConflictError('say which rules to delete: give labels (key=value), or --all to delete every imported rule');
    }
    const deleted = this.matching(labels).filter((r) => r.origin === 'api');
    if (!deleted.length) return { revision: this.state.revision, deleted };
    const gone = new Set(deleted.map((r) => r.id));
    this.state.rules = this.state.rules.filter((r) => !gone.has(r.id));
    this.state.revision++;
    this.changed(gone);
    return { revision: this.state.revision, deleted };
  }

  /**
   * Sets the rules a container declared in its labels (origin `endpoint:<id>`); an empty list
   * removes them. The revision moves only when something changed.
   */
  setOrigin(origin: string, rules: readonly PolicyRule[]): { revision: number; changed: boolean } {
    const current = this.state.rules.filter((r) => r.origin === origin);
    if (JSON.stringify(current.map((r) => r.rule)) === JSON.stringify(rules)) return { revision: this.state.revision, changed: false };
    const gone = new Set(current.map((r) => r.id));
    const ids = this.freeIds(rules.length, gone);
    const revision = this.state.revision + 1;
    this.state.rules = [...this.state.rules.filter((r) => !gone.has(r.id)), ...rules.map((rule, i) => ({ id: ids[i]!, rule, origin, revision }))]
      .sort((a, b) => a.id - b.id);
    this.state.revision = revision;
    this.changed([...gone, ...ids]);
    return { revision, changed: true };
  }
}
