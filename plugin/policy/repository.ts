// The policy repository: every rule Membrane enforces, imported through the API or declared in a
// container's labels, with a revision that moves on every change. Pure bookkeeping over the
// persisted state; compiling and applying is the engine's job (engine.ts).
//
// Import semantics: a document is all or nothing (it was validated as a whole before it gets
// here). A rule whose labels equal an existing rule's labels (and are not empty) replaces it, so
// re-importing the same file is idempotent; unlabelled rules are always added.

import { ConflictError } from '../errors.js';
import { labelSetKey } from './labels.js';
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

export class PolicyRepository {
  constructor(private readonly state: PolicyState) {}

  get revision(): number {
    return this.state.revision;
  }

  rules(): readonly StoredRule[] {
    return this.state.rules;
  }

  /** Rules carrying all of `labels` (every rule when empty). */
  find(labels: readonly Label[] = []): StoredRule[] {
    return this.state.rules.filter((r) => ruleHasLabels(r.rule, labels));
  }

  private freeIds(count: number, releasing: Set<number>): number[] {
    const used = new Set(this.state.rules.filter((r) => !releasing.has(r.id)).map((r) => r.id));
    const ids: number[] = [];
    for (let id = 1; id <= MAX_RULE_ID && ids.length < count; id++) if (!used.has(id)) ids.push(id);
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
  add(rules: readonly PolicyRule[], origin = 'api'): { revision: number; added: StoredRule[]; replaced: number[] } {
    const incomingKeys = new Set(rules.filter((r) => r.labels.length).map((r) => labelSetKey(r.labels)));
    const replaced = this.state.rules
      .filter((r) => r.origin === origin && r.rule.labels.length && incomingKeys.has(labelSetKey(r.rule.labels)))
      .map((r) => r.id);
    const replacing = new Set(replaced);
    const ids = this.freeIds(rules.length, replacing);
    const revision = this.state.revision + 1;
    const added = rules.map((rule, i) => ({ id: ids[i]!, rule, origin, revision }));
    this.state.rules = [...this.state.rules.filter((r) => !replacing.has(r.id)), ...added].sort((a, b) => a.id - b.id);
    this.state.revision = revision;
    return { revision, added, replaced };
  }

  /** Deletes the rules carrying all of `labels` (all API rules when `labels` is empty and `all`). */
  delete(labels: readonly Label[], options: { all?: boolean } = {}): { revision: number; deleted: StoredRule[] } {
    if (!labels.length && !options.all) {
      throw new ConflictError('say which rules to delete: give labels (key=value), or --all to delete every imported rule');
    }
    const deleted = this.state.rules.filter((r) => r.origin === 'api' && ruleHasLabels(r.rule, labels));
    if (!deleted.length) return { revision: this.state.revision, deleted };
    const gone = new Set(deleted.map((r) => r.id));
    this.state.rules = this.state.rules.filter((r) => !gone.has(r.id));
    this.state.revision++;
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
    return { revision, changed: true };
  }
}
