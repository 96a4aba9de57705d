// `docker run --rm IMAGE true`, timed: what sections 1 and 8 measure container start with.

import { performance } from 'node:perf_hooks';
import { IMAGE, run } from '../harness.js';

export async function timedDockerRun(network: string, labels: string[]): Promise<{ ms: number; error?: string }> {
  const started = performance.now();
  const r = await run('docker', ['run', '--rm', ...labels.flatMap((l) => ['--label', l]), '--network', network, IMAGE, 'true'],
    { allowFail: true, timeoutMs: 60_000 });
  const ms = performance.now() - started;
  return r.code === 0 ? { ms } : { ms, error: (r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`).slice(0, 300) };
}
