// Two bench results side by side, so a regression is visible:
//
//   node dist/integration/bench/compare.js A/bench.json B/bench.json [--match REGEX] [--changed PCT]
//
// Prints a markdown table of every figure both runs have (path, A, B, B/A). Figures are named by
// their path in bench.json, with list elements named by what they measure (services=30000,
// variant=membraneSocket, ...) rather than by position, so runs with other sizes or sections
// still line up. Raw samples, per-run lists, settings and the environment are left out (the
// environment of both runs is printed first: compare like with like). --match keeps paths that
// match REGEX; --changed keeps rows whose B/A is off 1 by more than PCT percent. It judges nothing:
// which direction is better depends on the figure, and the machines are noisy.

import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Fields that name what a list element measures, in the order they appear in its label. */
const ID_KEYS = ['section', 'name', 'call', 'services', 'size', 'backends', 'path', 'method', 'variant', 'system', 'what', 'workload', 'a', 'b', 'family', 'direction'];
/** Subtrees that are not results. */
const SKIPPED_KEYS = new Set(['environment', 'settings', 'errors', 'runs', 'samplesMs', 'samples', 'pid', 'topology', 'note', 'phaseSeconds']);
/** Lists of plain numbers longer than this are raw samples. */
const MAX_NUMBER_LIST = 8;

/** Every numeric figure of a bench result, by a path that does not depend on list order. */
export function figures(result: unknown): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (value: unknown, at: string): void => {
    if (typeof value === 'number') {
      if (Number.isFinite(value)) out.set(at, value);
      return;
    }
    if (Array.isArray(value)) {
      if (value.every((v) => typeof v === 'number') && value.length > MAX_NUMBER_LIST) return;
      const labels = value.map((v, i) => elementLabel(v) ?? String(i));
      // Two elements with one label (a list without an identifying field) fall back to positions.
      const unique = new Set(labels).size === labels.length;
      value.forEach((v, i) => walk(v, `${at}[${unique ? labels[i] : i}]`));
      return;
    }
    if (value && typeof value === 'object') {
      for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
        // Identifying fields are part of the element's label, not figures.
        if (SKIPPED_KEYS.has(key) || (ID_KEYS.includes(key) && (typeof v === 'string' || typeof v === 'number'))) continue;
        walk(v, at ? `${at}.${key}` : key);
      }
    }
  };
  walk(result, '');
  return out;
}

function elementLabel(value: unknown): string | undefined {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  const parts = ID_KEYS.filter((k) => typeof v[k] === 'string' || typeof v[k] === 'number').map((k) => `${k}=${String(v[k])}`);
  return parts.length ? parts.join(',') : undefined;
}

export interface CompareOptions {
  match?: RegExp;
  /** Keep rows whose B/A is off 1 by more than this fraction. */
  changed?: number;
}

export interface CompareRow {
  path: string;
  a: number;
  b: number;
  /** B/A; NaN when A is 0. */
  ratio: number;
}

/** The figures both results have, in A's order. */
export function compare(a: unknown, b: unknown, options: CompareOptions = {}): CompareRow[] {
  const fa = figures(a);
  const fb = figures(b);
  const rows: CompareRow[] = [];
  for (const [path, x] of fa) {
    const y = fb.get(path);
    if (y === undefined) continue;
    if (options.match && !options.match.test(path)) continue;
    const ratio = x === 0 ? (y === 0 ? 1 : NaN) : y / x;
    if (options.changed !== undefined && Number.isFinite(ratio) && Math.abs(ratio - 1) <= options.changed) continue;
    rows.push({ path, a: x, b: y, ratio });
  }
  return rows;
}

const num = (x: number) => (Number.isInteger(x) || Math.abs(x) >= 1000
  ? x.toLocaleString('en-US', { maximumFractionDigits: 0 })
  : String(Number(x.toPrecision(4))));

export function renderComparison(a: { label: string; result: unknown }, b: { label: string; result: unknown }, options: CompareOptions = {}): string {
  const env = (r: unknown) => {
    const e = (r as { environment?: Record<string, unknown> }).environment ?? {};
    return ['date', 'kernel', 'cpus', 'smoke', 'docker', 'commit'].filter((k) => k in e).map((k) => `${k} ${JSON.stringify(e[k])}`).join(', ');
  };
  const rows = compare(a.result, b.result, options);
  const onlyA = [...figures(a.result).keys()].filter((k) => !figures(b.result).has(k)).length;
  const onlyB = [...figures(b.result).keys()].filter((k) => !figures(a.result).has(k)).length;
  return [
    `A: ${a.label} (${env(a.result)})`,
    `B: ${b.label} (${env(b.result)})`,
    '',
    `${rows.length} figures in both${options.match ? ` matching ${options.match}` : ''}${options.changed !== undefined ? `, B/A off 1 by more than ${options.changed * 100} %` : ''}; ` +
      `${onlyA} only in A, ${onlyB} only in B.`,
    '',
    '| figure | A | B | B/A |',
    '| --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.path} | ${num(r.a)} | ${num(r.b)} | ${Number.isFinite(r.ratio) ? r.ratio.toFixed(3) : '—'} |`),
    '',
  ].join('\n');
}

function main(argv: string[]): number {
  const usage = 'usage: node dist/integration/bench/compare.js A/bench.json B/bench.json [--match REGEX] [--changed PCT]';
  const files: string[] = [];
  const options: CompareOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--match') options.match = new RegExp(argv[++i] ?? '');
    else if (arg === '--changed') {
      const pct = Number(argv[++i]);
      if (!Number.isFinite(pct) || pct < 0) throw new Error(`--changed takes a percentage, e.g. 5\n${usage}`);
      options.changed = pct / 100;
    } else if (arg === '-h' || arg === '--help') {
      console.log(usage);
      return 0;
    } else files.push(arg);
  }
  if (files.length !== 2) {
    console.error(usage);
    return 2;
  }
  const read = (f: string) => {
    try {
      return JSON.parse(fs.readFileSync(f, 'utf8')) as unknown;
    } catch (err) {
      throw new Error(`${f}: ${(err as Error).message} (give the bench.json of a run: integration/bench/results/<time>/bench.json)`);
    }
  };
  process.stdout.write(renderComparison({ label: files[0]!, result: read(files[0]!) }, { label: files[1]!, result: read(files[1]!) }, options));
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (err) {
    console.error((err as Error).message);
    process.exitCode = 2;
  }
}
