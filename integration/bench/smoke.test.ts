// Runs the benchmark harness in --smoke mode (tiny N) into a temporary directory and checks only the
// shape of its output: expected keys present, numbers finite. Timing is never asserted. run.js
// starts and stops its own Membrane daemon and removes everything it created (containers, networks,
// the datapath section's namespaces and veths, the policy section's rules, iptables chain and pinned
// tries) and restores kernel.bpf_stats_enabled and DOCKER-USER.

import test from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NFT, ROOT, run } from '../harness.js';
import { LB_VARIANTS } from './lb.js';

const RUN_JS = path.join(ROOT, 'dist', 'integration', 'bench', 'run.js');
const KEY_CALLS = ['NetworkDriver.CreateEndpoint', 'NetworkDriver.Join', 'IpamDriver.RequestAddress', 'NetworkDriver.DeleteEndpoint'];
const DATAPATH_VARIANTS = ['membrane', 'bridge', 'veth'];
const RATIO_KEYS = ['membraneOverBridge', 'membraneOverVeth', 'bridgeOverVeth', 'pairedMembraneOverBridge', 'pairedMembraneOverVeth'];
const BPF_STATS = '/proc/sys/kernel/bpf_stats_enabled';
const POLICY_SYSTEMS = ['membrane', 'iptables'];
/** Entries the policy section's traffic rule puts into the server's map (TCP 5201, TCP 11111, ICMP echo). */
const TRAFFIC_ENTRIES = 3;

function finite(value: unknown): boolean {
  return typeof value === 'number' && Number.isFinite(value);
}

test('bench --smoke writes bench.json and bench.md with the expected keys and finite numbers', async (t) => {
  // Waiting for somebody else's daemon (bounded at 10 min) plus the smoke run itself.
  t.timeout(15 * 60_000);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-smoke-'));
  const statsBefore = fs.readFileSync(BPF_STATS, 'utf8').trim();
  const dockerUserBefore = (await run('iptables', ['-w', '-S', 'DOCKER-USER'])).stdout.trim();
  try {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [RUN_JS, '--smoke', '--out', out, '--wait-max-seconds', '30'],
        { timeout: 14 * 60_000, maxBuffer: 16 << 20, killSignal: 'SIGINT' },
        (err, so, se) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout: so, stderr: se }));
    });
    t.log(stderr.trim().split('\n').slice(-5).join('\n'));
    // The run's own errors are in the markdown it prints (## Errors), not on stderr.
    const errors = stdout.includes('## Errors') ? stdout.slice(stdout.indexOf('## Errors')).slice(0, 4000) : '(no ## Errors section)';
    t.is(code, 0, `run.js failed: ${stderr.trim().slice(-2000)}\n${errors}`);
    t.true(stdout.includes('# Membrane benchmark'), 'the markdown is printed');
    const markdown = fs.readFileSync(path.join(out, 'bench.md'), 'utf8');
    t.true(markdown.includes('## 1.') && markdown.includes('## 2.') && markdown.includes('## 3.'));
    t.true(markdown.includes('## 4.') && markdown.includes('## 5.'), 'datapath sections in the markdown');
    t.true(markdown.includes('## 6.'), 'policy section in the markdown');
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

    // 4. Datapath: every variant measured at least once, every ratio a number (never judged).
    const dp = r.datapath;
    t.truthy(dp, 'datapath section ran');
    t.true(dp.roundsCompleted >= 1);
    for (const v of DATAPATH_VARIANTS) {
      const tp = dp.throughput[v];
      t.true(tp.n >= 1 && finite(tp.medianGbps) && tp.medianGbps > 0, `datapath.throughput.${v}: ${JSON.stringify(tp.errors)}`);
      for (const k of ['iqrGbps', 'minGbps', 'maxGbps']) t.true(finite(tp[k]), `datapath.throughput.${v}.${k}`);
      const l = dp.latency[v];
      t.true(l.n >= 1, `datapath.latency.${v} has a run: ${JSON.stringify(l.errors)}`);
      for (const k of ['p50Us', 'p99Us', 'meanUs']) t.true(finite(l[k]) && l[k] > 0, `datapath.latency.${v}.${k}`);
      t.true(l.messagesPerRound.every((n: number) => n >= 1 && n <= dp.settings.latencyMessages), `datapath.latency.${v} round trips`);
    }
    for (const group of ['throughput', 'latencyP50', 'latencyP99']) {
      for (const k of RATIO_KEYS) t.true(finite(dp.ratios[group][k]), `datapath.ratios.${group}.${k}`);
    }
    // 4b. Every other path and workload of the smoke set: each variant measured, ratios numbers.
    t.true(dp.scenarios.length >= 4, 'the smoke run covers host, outside, IPv6 and multi-stream');
    for (const sc of dp.scenarios) {
      for (const v of DATAPATH_VARIANTS) {
        const x = sc.variants[v];
        t.true(x.n >= 1 && finite(x.median) && x.median > 0, `datapath.scenarios ${sc.name} ${v}: ${JSON.stringify(x.errors)}`);
      }
      t.true(finite(sc.ratios.membraneOverBridge.median) && finite(sc.ratios.membraneOverVeth.median), `datapath.scenarios ${sc.name} ratios`);
    }
    t.deepEqual(dp.cleanup.problems, []);
    // Live bpf_stats: both programs found, from_container ran under both workloads (to_container may
    // not: traffic redirected into the peer with bpf_redirect_peer never reaches the host side's
    // egress); the sysctl is back where it was.
    t.truthy(dp.bpfStats, 'bpf_stats phase ran');
    t.true(dp.bpfStats.sysctlRestored);
    t.is(fs.readFileSync(BPF_STATS, 'utf8').trim(), statsBefore, 'kernel.bpf_stats_enabled restored');
    t.is(dp.bpfStats.phases.length, 2);
    for (const phase of dp.bpfStats.phases) {
      const names = phase.programs.map((x: { name: string }) => x.name).sort();
      t.deepEqual([...new Set(names)], ['from_container', 'to_container'], `${phase.workload} programs`);
      for (const x of phase.programs) {
        t.true(finite(x.runCnt) && finite(x.runTimeNs), `${phase.workload} ${x.name} counters`);
        if (x.name === 'from_container') t.true(x.runCnt > 0 && finite(x.nsPerRun) && x.nsPerRun > 0, `${phase.workload} from_container ns/run`);
      }
    }
    // 5. Program cost: the established-flow paths and the no-op floor, every run with the expected verdict.
    const pc = r.programCost;
    t.truthy(pc, 'program cost section ran');
    t.is(pc.noopError, null);
    for (const [p, m] of [['redirect-local-endpoint', 'single'], ['to-stack', 'repeat'], ['to-stack', 'single'], ['no-op', 'repeat'], ['no-op', 'single']]) {
      const row = pc.rows.find((x: { path: string; method: string }) => x.path === p && x.method === m);
      t.truthy(row, `programCost ${p} ${m}`);
      t.true(finite(row.nsPerPacket) && row.nsPerPacket > 0 && finite(row.netOfNoopNs), `programCost ${p} ${m} numbers`);
      t.is(row.unexpectedRetvals, 0, `programCost ${p} ${m} verdicts`);
    }
    t.deepEqual(pc.conntrack.state, ['established', 'established']);

    // 6. Policy at scale: every size measured on both systems, the Membrane map really held N more
    // entries and the chain N rules, control-plane timings present, DOCKER-USER as it was.
    const pol = r.policy;
    t.truthy(pol, 'policy section ran');
    t.true(pol.roundsCompleted >= 1);
    t.deepEqual(pol.points.map((x: { size: number }) => x.size), pol.settings.sizes);
    for (const x of pol.points) {
      for (const system of POLICY_SYSTEMS) {
        const tp = x[system].throughput;
        const l = x[system].latency;
        t.true(tp.n >= 1 && finite(tp.medianGbps) && tp.medianGbps > 0, `policy ${system} N=${x.size} throughput: ${JSON.stringify(tp.errors)}`);
        t.true(l.n >= 1 && finite(l.p50Us) && finite(l.p99Us), `policy ${system} N=${x.size} latency: ${JSON.stringify(l.errors)}`);
      }
      const entries = pol.membrane.mapEntries.find((e: { size: number }) => e.size === x.size);
      t.is(entries?.ingressEntries, x.size + TRAFFIC_ENTRIES, `the server's map holds N + ${TRAFFIC_ENTRIES} ingress entries at N=${x.size}`);
      t.is(pol.iptables.chainRules.find((e: { size: number }) => e.size === x.size)?.rules, x.size, `the chain holds N rules at N=${x.size}`);
    }
    for (const row of [...pol.ratios.flatness.membrane, ...pol.ratios.flatness.iptables, ...pol.ratios.membraneOverIptables]) {
      for (const k of ['throughput', 'p50', 'p99']) t.true(finite(row[k]), `policy ratio N=${row.size} ${k}`);
    }
    const cp = pol.controlPlane;
    for (const k of ['importSet', 'deleteSet', 'addOne', 'deleteOne']) {
      t.true(cp.membrane[k].api.n >= 1 && finite(cp.membrane[k].api.p50Ms) && finite(cp.membrane[k].regeneration.p50Ms), `policy control plane ${k}`);
    }
    for (const k of ['loadSet', 'addOne', 'deleteOne']) t.true(cp.iptables[k].n >= 1 && finite(cp.iptables[k].p50Ms), `iptables control plane ${k}`);
    t.true(pol.iptables.dockerUserRestored, 'DOCKER-USER restored by the run');
    t.is((await run('iptables', ['-w', '-S', 'DOCKER-USER'])).stdout.trim(), dockerUserBefore, 'DOCKER-USER as it was');
    t.deepEqual(pol.cleanup.problems, []);
    const nf = r.policyNewFlow;
    t.truthy(nf, 'policy new-flow section ran');
    t.is(nf.rows.length, pol.settings.newFlowSizes.length * 2, 'every size, allowed and default-denied');
    for (const row of nf.rows) {
      t.true(finite(row.nsPerPacket) && row.nsPerPacket > 0 && finite(row.ratioVsZero), `new-flow N=${row.size} ${row.path}`);
      t.is(row.unexpectedRetvals, 0, `new-flow N=${row.size} ${row.path} verdicts`);
      t.is(row.missingConntrack, 0, `new-flow N=${row.size} ${row.path}: every timed run was a new flow`);
      t.is(row.entries, row.size + 1, `new-flow N=${row.size} trie entries`);
    }
    t.false(fs.existsSync(nf.pinDir), 'the new-flow tries are unpinned');

    // 7. Load balancer: every variant connected at every size without a failed connection, the
    // kernel held the services, the control plane and Maglev were measured, nothing was left.
    t.true(markdown.includes('## 7.'), 'load-balancer section in the markdown');
    const lb = r.lb;
    t.truthy(lb, 'lb section ran');
    for (const x of lb.points) {
      t.true(x.roundsCompleted >= 1, `lb N=${x.services} rounds`);
      t.is(x.setup?.kernel.mb_lb_frontends, x.services, `lb N=${x.services}: the kernel holds N frontends`);
      for (const v of LB_VARIANTS) {
        const m = x.variants[v];
        t.true(m.n >= 1 && finite(m.connsPerSec) && m.connsPerSec > 0 && finite(m.p50Us) && finite(m.p99Us), `lb N=${x.services} ${v}: ${JSON.stringify(m.errors)}`);
        t.is(m.failedConnections, 0, `lb N=${x.services} ${v}: no connection failed`);
      }
    }
    for (const row of [...lb.flatness, ...lb.pairs]) t.true(finite(row.connsPerSec.value), `lb ratio N=${row.services}`);
    t.truthy(lb.controlPlane, 'lb control plane measured');
    for (const system of lb.controlPlane.systems) t.true(system.add.n >= 1 && finite(system.add.p50Ms), `lb change: ${system.what}: ${JSON.stringify(system.errors)}`);
    t.true(lb.lbConfig.flagsRestored !== false, 'mb_lb_config flags restored');
    t.deepEqual(lb.cleanup.problems, []);
    t.is((await run(NFT, ['list', 'tables'])).stdout.includes(`mblb_`), false, 'the nftables table is gone');
    t.false((await run('iptables', ['-w', '-t', 'nat', '-S'])).stdout.includes('MBLB-'), 'the iptables chains are gone');
    t.true(r.lbMaglev.build.length > 0 && r.lbMaglev.build.every((b: { medianMs: number }) => finite(b.medianMs)), 'Maglev build times');
    t.true(r.lbMaglev.disruption.length > 0, 'Maglev disruption');

    const scale = r.scale;
    t.true(markdown.includes('## 8.'), 'scale section in the markdown');
    t.true(scale.fill.reachedLargest, `the population reached its largest level: ${JSON.stringify(scale.fill)}`);
    t.is(scale.levels.length, r.settings.scaleLevels.length);
    for (const level of scale.levels) {
      t.true(level.running >= level.target, `level ${level.target}: ${level.running} running`);
      for (const k of ['membrane', 'bridge']) t.true(finite(level.dockerRun[k].p50Ms), `scale docker run ${k} at ${level.target}`);
      t.is(level.joinToIdentity.n, scale.settings.probes, `every probe's Join -> identity at ${level.target}`);
      t.true(finite(level.joinToIdentity.p99Ms));
      for (const m of KEY_CALLS) t.true(level.calls[m].n >= 1 && finite(level.calls[m].p99Ms), `${m} samples at ${level.target}`);
      t.true(level.policy.addDaemon.samplesMs.every(finite) && level.policy.addDaemon.n === scale.settings.policyChanges, 'policy change timings');
      t.true(level.policy.written.every((w: number) => w >= level.target), 'the change wrote an entry per population endpoint');
      t.true(finite(level.atRest.daemon.rssMiB) && finite(level.atRest.daemon.cpuPercent), 'daemon at rest');
      for (const kind of ['graceful', 'kill9']) {
        const restart = level.restart[kind];
        t.is(restart.ready.n, scale.settings.restarts, `${kind} restarts at ${level.target}`);
        t.true(restart.endpoints.every((n: number) => n >= level.target), `the restarted daemon has every endpoint (${kind})`);
      }
    }
    for (const k of ['membraneDockerRun', 'bridgeDockerRun', 'joinToIdentityP99', 'policyAddDaemon']) t.true(finite(scale.ratios[k]), `scale.ratios.${k}`);
    t.deepEqual(scale.cleanup.problems, []);

    const namespaces = (await run('ip', ['netns', 'list'])).stdout;
    t.false(namespaces.includes(`mbbench-${r.environment.runId}`), 'the veth variant\'s namespaces are gone');

    // Nothing of this run is left in Docker.
    const runLabel = `label=membrane.bench=${r.environment.runId}`;
    t.is((await run('docker', ['ps', '-aq', '--filter', runLabel])).stdout.trim(), '');
    t.is((await run('docker', ['network', 'ls', '-q', '--filter', runLabel])).stdout.trim(), '');
  } finally {
    // Only if run.js was killed before it could restore it itself.
    if (fs.readFileSync(BPF_STATS, 'utf8').trim() !== statsBefore) fs.writeFileSync(BPF_STATS, statsBefore);
    fs.rmSync(out, { recursive: true, force: true });
  }
});
