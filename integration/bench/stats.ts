// Small statistics helpers for the benchmark harness. Percentiles use the nearest-rank method, the
// same definition the daemon's /v1/status uses, so client- and server-side numbers compare.

export interface Summary {
  n: number;
  median: number;
  p90: number;
  p99: number;
  min: number;
  max: number;
  mean: number;
  /** Interquartile range (p75 - p25, nearest rank). */
  iqr: number;
}

function sortedCopy(values: readonly number[]): number[] {
  return values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
}

/** Nearest-rank percentile of already sorted values; NaN when empty. */
export function percentileSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index]!;
}

export function percentile(values: readonly number[], p: number): number {
  return percentileSorted(sortedCopy(values), p);
}

/** Median (mean of the two middle values for even counts); NaN when empty. */
export function median(values: readonly number[]): number {
  const sorted = sortedCopy(values);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function summarize(values: readonly number[]): Summary {
  const sorted = sortedCopy(values);
  const n = sorted.length;
  return {
    n,
    median: median(sorted),
    p90: percentileSorted(sorted, 90),
    p99: percentileSorted(sorted, 99),
    min: n ? sorted[0]! : NaN,
    max: n ? sorted[n - 1]! : NaN,
    mean: n ? sorted.reduce((a, b) => a + b, 0) / n : NaN,
    iqr: n ? percentileSorted(sorted, 75) - percentileSorted(sorted, 25) : NaN,
  };
}

/** a / b, NaN when either is not a finite number or b is 0. */
export function ratio(a: number, b: number): number {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN;
}

/** Rounds for reports; keeps NaN/Infinity as they are (JSON.stringify turns them into null). */
export function round(value: number, digits = 3): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Text for a markdown cell: fixed digits, or an em dash for missing values. */
export function fmt(value: number | null | undefined, digits = 1): string {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '—';
}

/** Deterministic PRNG (mulberry32) so fill patterns are the same in every run. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Timings of one kind of step: n, p50, min, max and every sample (ms, rounded to `digits`). */
export interface TimingSummary {
  n: number;
  p50Ms: number;
  minMs: number;
  maxMs: number;
  samplesMs: number[];
}

export function timingSummary(values: readonly number[], digits: number): TimingSummary {
  const s = summarize(values);
  return { n: s.n, p50Ms: round(s.median, digits), minMs: round(s.min, digits), maxMs: round(s.max, digits), samplesMs: values.map((v) => round(v, digits)) };
}
