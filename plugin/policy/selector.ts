// Endpoint selectors: which label sets a Kubernetes-style selector matches.
//
// A selector key `k` (or `any:k`) matches a label with key k from any source; `source:k` only a
// label from that source (the split follows labels.ts). Because a bare key can match several
// labels (container:app and k8s:app), each operator is defined over all matching labels:
//   matchLabels k: v   some matching label has value v
//   In [values]        some matching label has a value in values
//   NotIn [values]     no matching label has a value in values (so also true when none matches):
//                      exactly the negation of In with the same values
//   Exists             some label matches
//   DoesNotExist       no label matches: exactly the negation of Exists
// Everything listed must hold, so `{}` matches every label set. As in Cilium, the matchLabels key
// `reserved:all` is satisfied by every label set.

import { splitSourceKey } from './labels.js';
import type { EndpointSelector, Label, SelectorExpression } from './types.js';

/** Values of the labels a selector key picks (`key`, `any:key` or `source:key`). */
function valuesFor(selectorKey: string, labels: readonly Label[]): string[] {
  const { source, key } = splitSourceKey(selectorKey, 'any');
  return labels.filter((l) => l.key === key && (source === 'any' || l.source === source)).map((l) => l.value);
}

function expressionHolds(e: SelectorExpression, labels: readonly Label[]): boolean {
  const values = valuesFor(e.key, labels);
  const wanted = e.values ?? [];
  switch (e.operator) {
    case 'In': return values.some((v) => wanted.includes(v));
    case 'NotIn': return !values.some((v) => wanted.includes(v));
    case 'Exists': return values.length > 0;
    case 'DoesNotExist': return values.length === 0;
  }
}

/** Whether the selector matches an endpoint (or identity) with these labels. */
export function selectorMatches(sel: EndpointSelector, labels: readonly Label[]): boolean {
  for (const [key, value] of Object.entries(sel.matchLabels ?? {})) {
    if (key === 'reserved:all') continue;
    if (!valuesFor(key, labels).includes(value)) return false;
  }
  return (sel.matchExpressions ?? []).every((e) => expressionHolds(e, labels));
}

/**
 * For display: `app=web,tier in (a,b),tier notin (c),debug,!canary` (matchLabels sorted by key,
 * then the expressions in order; Exists is the bare key, DoesNotExist a `!` before it). `{}` for
 * the selector that matches everything. Not meant to be parsed back.
 */
export function selectorToString(sel: EndpointSelector): string {
  const parts = Object.entries(sel.matchLabels ?? {})
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`);
  for (const e of sel.matchExpressions ?? []) {
    switch (e.operator) {
      case 'In': parts.push(`${e.key} in (${(e.values ?? []).join(',')})`); break;
      case 'NotIn': parts.push(`${e.key} notin (${(e.values ?? []).join(',')})`); break;
      case 'Exists': parts.push(e.key); break;
      case 'DoesNotExist': parts.push(`!${e.key}`); break;
    }
  }
  return parts.length === 0 ? '{}' : parts.join(',');
}
