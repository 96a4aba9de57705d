// Labels as text: `source:key=value`, and label sets as identity keys.
//
// How text splits, in this order:
//   1. The first '=' ends the key part; everything after it is the value (which may itself contain
//      '=' or ':'). No '=' means an empty value.
//   2. In the key part, the first ':' separates a source only when what precedes it is shaped like a
//      source (`[a-z][a-z0-9-]*`). Otherwise the whole key part is the key, with the default source.
//      So `container:app` is source `container`, key `app`, but `com.example:x` is key
//      `com.example:x` (a dot cannot appear in a source), and `a=b:c` is key `a`, value `b:c`.
// Keys must be non-empty and may not contain '=', ',' or whitespace; dots, slashes, dashes, colons
// and upper case are fine (Docker keys like `com.docker.compose.service`). Values may hold anything,
// but parseLabelList cannot express a value containing ','.

import { InvalidArgumentError } from '../errors.js';
import type { Label } from './types.js';

const SOURCE = /^[a-z][a-z0-9-]*$/;
// Whitespace and control characters, '=', ','.
const BAD_KEY_CHAR = /[\s\p{Cc}=,]/u;

/** Splits `source:key` by the rule in the header, without validating either part. */
export function splitSourceKey(text: string, defaultSource = 'any'): { source: string; key: string } {
  const colon = text.indexOf(':');
  if (colon > 0 && SOURCE.test(text.slice(0, colon))) {
    return { source: text.slice(0, colon), key: text.slice(colon + 1) };
  }
  return { source: defaultSource, key: text };
}

/** Why `source` is not a valid label source, or undefined when it is. */
export function sourceProblem(source: string): string | undefined {
  if (SOURCE.test(source)) return undefined;
  return `label source ${JSON.stringify(source)} is invalid: a source is lower-case letters, digits and '-', ` +
    'starting with a letter (e.g. container, reserved, unspec)';
}

/** Why `key` is not a valid label key, or undefined when it is. */
export function keyProblem(key: string): string | undefined {
  if (key === '') return 'label key is empty: write a key such as app or com.docker.compose.service';
  const bad = BAD_KEY_CHAR.exec(key);
  if (bad) {
    const what = bad[0] === '=' ? "'='" : bad[0] === ',' ? "','" : 'whitespace or control characters';
    return `label key ${JSON.stringify(key)} contains ${what}, which keys may not hold; ` +
      'write keys like app or com.docker.compose.service, and the value after the first =, e.g. app=web';
  }
  return undefined;
}

/**
 * Parses `key` or `source:key` (no value), as used by selector keys. Throws InvalidArgumentError
 * when the key is empty or contains '=', ',' or whitespace.
 */
export function parseLabelKey(text: string, defaultSource = 'any'): { source: string; key: string } {
  if (typeof text !== 'string') throw new InvalidArgumentError(`expected a label key string, got ${typeof text}`);
  const parts = splitSourceKey(text, defaultSource);
  const problem = keyProblem(parts.key) ?? sourceProblem(parts.source);
  if (problem) throw new InvalidArgumentError(problem);
  return parts;
}

/**
 * Parses `source:key=value`, `key=value`, `source:key` or `key` (see the header for how it splits).
 * A missing source is `defaultSource`; a missing value is ''. Throws InvalidArgumentError.
 */
export function parseLabel(text: string, defaultSource = 'any'): Label {
  if (typeof text !== 'string') throw new InvalidArgumentError(`expected a label string like app=web, got ${typeof text}`);
  const eq = text.indexOf('=');
  const keyPart = eq < 0 ? text : text.slice(0, eq);
  const value = eq < 0 ? '' : text.slice(eq + 1);
  // parseLabelKey's checks, without its throw and catch (policy documents parse thousands of labels).
  const { source, key } = splitSourceKey(keyPart, defaultSource);
  const problem = keyProblem(key) ?? sourceProblem(source);
  if (problem) throw new InvalidArgumentError(`invalid label ${JSON.stringify(text)}: ${problem}`);
  return { source, key, value };
}

/** `source:key=value`, or `source:key` for an empty value. parseLabel(formatLabel(l)) equals l for valid labels. */
export function formatLabel(l: Label): string {
  return `${l.source}:${l.key}${l.value === '' ? '' : `=${l.value}`}`;
}

/** Parses a comma-separated list such as `a=b,container:c=d`; items are trimmed and empty items skipped. */
export function parseLabelList(text: string, defaultSource = 'any'): Label[] {
  return text.split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => parseLabel(s, defaultSource));
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Orders by source, then key, then value, by UTF-16 code units (locale-independent, so stable). */
export function compareLabels(a: Label, b: Label): number {
  return compareText(a.source, b.source) || compareText(a.key, b.key) || compareText(a.value, b.value);
}

/** A new array: sorted by compareLabels, exact duplicates removed. */
export function sortLabels(labels: readonly Label[]): Label[] {
  const sorted = [...labels].sort(compareLabels);
  return sorted.filter((l, i) => i === 0 || compareLabels(sorted[i - 1]!, l) !== 0)
    .map((l) => ({ source: l.source, key: l.key, value: l.value }));
}

/** Whether two lists hold the same set of labels (order and duplicates ignored). */
export function labelsEqual(a: readonly Label[], b: readonly Label[]): boolean {
  return labelSetKey(a) === labelSetKey(b);
}

/**
 * A stable string naming the set of labels (order and duplicates ignored), for use as a map key
 * or a persisted identity key. JSON keeps it unambiguous even when values contain ',' or '='.
 */
export function labelSetKey(labels: readonly Label[]): string {
  return JSON.stringify(sortLabels(labels).map(formatLabel));
}
