// Runs the benchmark harness in --smoke mode (tiny N) into a temporary directory and checks only the
// shape of its output: expected keys present, numbers finite. Timing is never asserted. run.js
// starts and stops its own Membrane daemon and removes everything it created.

import test from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, run } from '../harness.js';

const RUN_JS = path.join(ROOT, 'dist', 'integration', 'bench', 'run.js');
const KEY_CALLS = ['NetworkDriver.CreateEndpoint', 'NetworkDriver.Join', 'IpamDriver.RequestAddress', 'NetworkDriver.DeleteEndpoint'];

function finite(value: unknown): boolean {
  return typeof value === 'number' && Number.isFinite(value);
}

test('bench --smoke writes bench.json and bench.md with the expected keys and finite numbers', async (t) => {
  // Waiting for somebody else's daemon (bounded at 10 min) plus the smoke run itself.
  t.timeout(15 * 60_000);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-smoke-'));
  try {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [RUN_JS, '--smoke', '--out', out, '--wait-max-seconds', '30'],
        { timeout: 14 * 60_000, maxBuffer: 16 << 20, killSignal: 'SIGINT' },
        (err, so, se) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout: so, stderr: se }));
    });
    t.log(stderr.trim().split('\n').slice(-5).join('\n'));
    t.is(code, 0, `run.js failed: ${stderr.trim().slice(-2000)}`);
    t.true(stdout.includes('# Membrane benchmark'), 'the markdown is printed');
    const markdown = fs.readFileSync(path.join(out, 'bench.md'), 'utf8');
    t.true(markdown.includes('## 1.') && markdown.includes('## 2.') && markdown.includes('## 3.'));
    const r = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8'));

    t.is(r.schema, 'membrane-bench/1');
    t.deepEqual(r.errors, []);
    for (const key of ['date', 'kernel', 'node', 'cpus', 'smoke', 'docker']) t.true(key in r.environment, `environment.${key}`);
    t.is(r.environment.smoke, true);
    t.true(finite(r.environment.cpus));

    const d = r.dockerRun;
    t.is(typeof d.bridgeVariant, 'string');
    for (const v of ['membrane', 'bridge', 'none']) {
      t.true(d.variants[v].n >= 1, `${v} has samples`);
      for (const k of ['median', 'p90', 'min', 'max']) t.true(finite(d.variants[v][k]), `dockerRun.${v}.${k}`);
    }
    for (const k of ['membraneOverBridge', 'membraneOverNone', 'bridgeOverNone', 'pairedMembraneOverBridge']) {
      t.true(finite(d.ratios[k]), `dockerRun.ratios.${k}`);
    }

    const p = r.pluginLatency;
    for (const m of KEY_CALLS) {
      const s = p.serverSide.afterDockerRuns[m];
      t.truthy(s, `server-side ${m}`);
      t.true(finite(s.p50Ms) && finite(s.p99Ms) && finite(s.count), `server-side ${m} numbers`);
      const c = p.clientSide.calls[m];
      t.truthy(c, `client-side ${m}`);
      t.true(finite(c.p50Ms) && finite(c.p99Ms) && c.n >= 1, `client-side ${m} numbers`);
    }
    t.true(finite(p.clientSide.cycleTotal.p50Ms));
    t.is(p.clientSide.failures, 0);
    t.true(p.leakCheck.clean, `replay left nothing behind: ${JSON.stringify(p.leakCheck)}`);

    t.true(Array.isArray(r.ipam.results) && r.ipam.results.length >= 4);
    for (const x of r.ipam.results) {
      t.true(finite(x.allocsPerSec) && x.allocsPerSec > 0, `ipam ${x.name} allocsPerSec`);
      t.true(finite(x.fullness) && finite(x.allocated) && finite(x.usPerPair), `ipam ${x.name} numbers`);
    }

    // Nothing of this run is left in Docker.
    const runLabel = `label=membrane.bench=${r.environment.runId}`;
    t.is((await run('docker', ['ps', '-aq', '--filter', runLabel])).stdout.trim(), '');
    t.is((await run('docker', ['network', 'ls', '-q', '--filter', runLabel])).stdout.trim(), '');
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
