// The bench comparison script on two small results shaped like bench.json (no daemon, no Docker).

import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compare, figures, renderComparison } from './compare.js';

const here = path.dirname(fileURLToPath(import.meta.url));

const runA = {
  environment: { date: '2026-12-01', cpus: 2 },
  settings: { rounds: 30 },
  dockerRun: { variants: { membrane: { median: 500, n: 30 }, bridge: { median: 480, n: 30 } }, samples: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] },
  lb: {
    points: [
      { services: 1, variants: { membraneSocket: { connsPerSec: 11000, runs: [{ connsPerSec: 1 }] } } },
      { services: 30000, variants: { membraneSocket: { connsPerSec: 10000 } } },
    ],
    pairs: [{ services: 1, a: 'membraneSocket', b: 'iptables', connsPerSec: { value: 1.25 } }],
  },
};
// B has the sizes in another order, one more size, and a changed figure.
const runB = {
  environment: { date: '2026-12-02', cpus: 2 },
  dockerRun: { variants: { membrane: { median: 450, n: 30 }, bridge: { median: 480, n: 30 } } },
  lb: {
    points: [
      { services: 30000, variants: { membraneSocket: { connsPerSec: 10500 } } },
      { services: 1000, variants: { membraneSocket: { connsPerSec: 10800 } } },
      { services: 1, variants: { membraneSocket: { connsPerSec: 11000 } } },
    ],
    pairs: [{ services: 1, a: 'membraneSocket', b: 'iptables', connsPerSec: { value: 1.3 } }],
  },
};

test('figures are named by what list elements measure, not by their position; samples, runs and settings are left out', (t) => {
  const f = figures(runA);
  t.is(f.get('lb.points[services=30000].variants.membraneSocket.connsPerSec'), 10000);
  t.is(f.get('lb.pairs[services=1,a=membraneSocket,b=iptables].connsPerSec.value'), 1.25);
  t.false([...f.keys()].some((k) => k.startsWith('settings') || k.startsWith('environment') || k.includes('runs') || k.includes('samples')));
});

test('compare lines up figures both runs have, with B/A, and --changed keeps only what moved', (t) => {
  const rows = compare(runA, runB);
  const at = (p: string) => rows.find((r) => r.path === p);
  t.is(at('lb.points[services=30000].variants.membraneSocket.connsPerSec')?.ratio, 1.05);
  t.is(at('dockerRun.variants.membrane.median')?.ratio, 0.9);
  t.is(at('lb.points[services=1000].variants.membraneSocket.connsPerSec'), undefined, 'only in B');
  const moved = compare(runA, runB, { changed: 0.02 }).map((r) => r.path);
  t.deepEqual(moved.sort(), [
    'dockerRun.variants.membrane.median',
    'lb.pairs[services=1,a=membraneSocket,b=iptables].connsPerSec.value',
    'lb.points[services=30000].variants.membraneSocket.connsPerSec',
  ]);
  const md = renderComparison({ label: 'a', result: runA }, { label: 'b', result: runB }, { match: /^lb\./ });
  t.regex(md, /\| lb\.points\[services=30000\]\.variants\.membraneSocket\.connsPerSec \| 10,000 \| 10,500 \| 1\.050 \|/);
  t.notRegex(md, /dockerRun/);
  t.regex(md, /only in B/);
});

test('the command line prints the table and refuses what is not a bench result with advice', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-compare-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'a.json'), JSON.stringify(runA));
  fs.writeFileSync(path.join(dir, 'b.json'), JSON.stringify(runB));
  fs.writeFileSync(path.join(dir, 'bad.json'), '{');
  const script = path.join(here, 'compare.js');
  const out = execFileSync(process.execPath, [script, path.join(dir, 'a.json'), path.join(dir, 'b.json'), '--changed', '2'], { encoding: 'utf8' });
  t.regex(out, /\| dockerRun\.variants\.membrane\.median \| 500 \| 450 \| 0\.900 \|/);
  t.notRegex(out, /bridge\.median/, 'unchanged rows left out with --changed');
  const err = t.throws(() => execFileSync(process.execPath, [script, path.join(dir, 'a.json'), path.join(dir, 'bad.json')], { encoding: 'utf8', stdio: 'pipe' }));
  t.regex(String((err as { stderr?: string }).stderr), /bad\.json: .*give the bench\.json of a run/);
});
