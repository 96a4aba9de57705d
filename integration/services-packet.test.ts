// The service load balancer per packet (serviceSocketLB: false): the endpoint programs translate
// packets to a VIP and their replies, as for containers whose sockets the cgroup programs do not
// see. Every backend serves by name, a backend reaches its own service (hairpin), `docker stop`
// under load fails no request, a VIP without backends refuses at once, and a transfer survives a
// kill -9 of the daemon (service entries live in the pinned conntrack map).

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  IMAGE, MembraneProcess, ROOT, TEST_LABEL, apiGet, run, cleanupDocker, createNetwork, detachSocketPrograms, docker, eventually, exec, execMayFail,
  restartDaemon, sleep, uniqueName,
} from './harness.js';

interface Service { name: string; networkName?: string; vip4?: string; vip6?: string; backends: { container?: string; state: string }[] }

let membrane: MembraneProcess;
const saved = process.env.MEMBRANE_SERVICE_SOCKET_LB;

test.before(async () => {
  await cleanupDocker();
  process.env.MEMBRANE_SERVICE_SOCKET_LB = 'false';
  membrane = new MembraneProcess();
  await membrane.start();
});

test.after.always(async () => {
  await cleanupDocker();
  await membrane?.stop();
  detachSocketPrograms();
  if (saved === undefined) delete process.env.MEMBRANE_SERVICE_SOCKET_LB;
  else process.env.MEMBRANE_SERVICE_SOCKET_LB = saved;
});

async function ready(name: string, network: string, want: number): Promise<Service> {
  return eventually(async () => {
    const s = (await apiGet<Service[]>('/v1/services')).find((x) => x.name === name && x.networkName === network);
    const active = s?.backends.filter((b) => b.state === 'active').length ?? 0;
    if (!s || active !== want) throw new Error(`${name}: ${active} active backends`);
    return s;
  }, 30_000);
}

async function backend(name: string, network: string, label: string): Promise<void> {
  await docker('run', '-d', '--name', name, '--label', TEST_LABEL, '--network', network, '--init', '-l', label, IMAGE,
    'sh', '-c', `mkdir -p /w && echo ${name} > /w/index.html && exec httpd -f -p 8080 -h /w`);
}

async function fetchMany(container: string, host: string, count: number): Promise<Map<string, number>> {
  const script = `i=0; while [ $i -lt ${count} ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc ${host} 80 | tail -1; i=$((i+1)); done`;
  const counts = new Map<string, number>();
  for (const line of (await execMayFail(container, 'sh', '-c', script)).stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    counts.set(line, (counts.get(line) ?? 0) + 1);
  }
  return counts;
}

test.serial('per packet: the socket programs stand aside, every backend serves by name over IPv4 and IPv6, and a backend reaches its own service', async (t) => {
  const status = await apiGet<{ datapath: { features: Record<string, string> } }>('/v1/status');
  t.regex(status.datapath.features.socketLB!, /^off/);
  const net1 = uniqueName('mbt-pp');
  await createNetwork(net1, '--ipv6');
  const names = [uniqueName('mbt-p1'), uniqueName('mbt-p2'), uniqueName('mbt-p3')];
  for (const n of names) await backend(n, net1, 'membrane.service=pp:80@8080');
  const client = uniqueName('mbt-pc');
  await docker('run', '-d', '--name', client, '--label', TEST_LABEL, '--network', net1, IMAGE, 'sleep', '3600');
  const s = await ready('pp', net1, 3);
  await eventually(async () => { if (!(await exec(client, 'nslookup', 'pp.svc.membrane')).includes(s.vip4!)) throw new Error('no name yet'); });
  const byName = await fetchMany(client, 'pp.svc.membrane', 30);
  const byVip6 = await fetchMany(client, s.vip6!, 15);
  t.log(`per packet, by name: ${JSON.stringify([...byName])}; IPv6 VIP: ${JSON.stringify([...byVip6])}`);
  t.is(byName.size, 3);
  t.is([...byName.values()].reduce((a, b) => a + b, 0), 30);
  t.is([...byVip6.values()].reduce((a, b) => a + b, 0), 15);
  // Hairpin: each backend asks the service; some of those land on itself, through the VIP.
  for (const n of names) {
    const own = await fetchMany(n, s.vip4!, 12);
    t.is([...own.values()].reduce((a, b) => a + b, 0), 12, `${n} through its own service`);
  }
  const ct = await apiGet<{ state: string }[]>('/v1/bpf/ct?limit=100000');
  t.true(ct.length > 0);
});

test.serial('per packet: docker stop under load fails no request; a VIP without backends refuses at once', async (t) => {
  const net1 = uniqueName('mbt-ppd');
  await createNetwork(net1, '--ipv6');
  const names = [uniqueName('mbt-q1'), uniqueName('mbt-q2')];
  for (const n of names) await backend(n, net1, 'membrane.service=ppd:80@8080');
  const client = uniqueName('mbt-qc');
  await docker('run', '-d', '--name', client, '--label', TEST_LABEL, '--network', net1, IMAGE, 'sleep', '3600');
  const s = await ready('ppd', net1, 2);
  // Each request retried up to 3 times, 100 ms apart (why: services.test.ts, the same test on the socket path).
  const loop = `end=$(( $(date +%s) + 10 )); n=0; failed=0; retries=0
    while [ $(date +%s) -lt $end ] && [ $n -lt 5000 ]; do
      ok=0; for attempt in 1 2 3; do
        out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc ${s.vip4} 80 | tail -1)
        if [ -n "$out" ]; then ok=1; break; fi; retries=$((retries+1)); sleep 0.1
      done
      [ $ok = 1 ] || failed=$((failed+1)); n=$((n+1))
    done; echo "$n $failed $retries"`;
  const running = execMayFail(client, 'sh', '-c', loop);
  await sleep(3000);
  await docker('stop', '-t', '2', names[1]!);
  const [n, failed, retries] = (await running).stdout.trim().split(' ').map(Number);
  t.log(`per packet: ${n} requests in 10 s, ${failed} failed, ${retries} retried`);
  t.true(n! > 50);
  t.is(failed, 0);
  await docker('stop', '-t', '1', names[0]!);
  await eventually(async () => {
    const now = (await apiGet<Service[]>('/v1/services')).find((x) => x.name === 'ppd' && x.networkName === net1);
    if (now?.backends.length) throw new Error('backends still there');
  });
  const started = performance.now();
  const refused = await execMayFail(client, 'sh', '-c', `printf x | timeout 5 nc ${s.vip4} 80`);
  t.regex(refused.stderr, /refused/i);
  t.true(performance.now() - started < 3000);
});

test.serial('per packet: a transfer through the VIP survives kill -9 and a restart of the daemon, then a new build of the programs', async (t) => {
  // A build with a different instruction stream, swapped in atomically by the next start (BPF_LINK_UPDATE).
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-lb-build-'));
  t.teardown(() => fs.rmSync(workDir, { recursive: true, force: true }));
  const newBuild = path.join(workDir, 'membrane-next.bpf.o');
  await run('clang', ['-O2', '-g', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-DMEMBRANE_BUILD_VARIANT=1',
    '-c', path.join(ROOT, 'bpf', 'membrane.bpf.c'), '-o', newBuild]);
  const net1 = uniqueName('mbt-ppl');
  await createNetwork(net1, '--ipv6');
  await docker('run', '-d', '--name', uniqueName('mbt-pstream'), '--label', TEST_LABEL, '--network', net1, '-l', 'membrane.service=pstream:9000',
    IMAGE, 'sh', '-c', 'printf "#!/bin/sh\ni=0; while [ \\$i -lt 120 ]; do echo line\\$i; i=\\$((i+1)); sleep 0.1; done\n" > /stream.sh && ' +
      'chmod +x /stream.sh && exec nc -ll -p 9000 -e /stream.sh');
  const client = uniqueName('mbt-plc');
  await docker('run', '-d', '--name', client, '--label', TEST_LABEL, '--network', net1, IMAGE, 'sleep', '3600');
  const s = await ready('pstream', net1, 1);
  // A container's IPv6 address is tentative until duplicate address detection is over.
  await eventually(async () => {
    if ((await exec(client, 'ip', '-6', 'addr', 'show', 'dev', 'eth0', 'scope', 'global')).includes('tentative')) throw new Error('IPv6 address still tentative');
  });
  // The stream server listens once its first line comes back.
  await eventually(async () => { if (!(await exec(client, 'sh', '-c', `timeout 2 nc ${s.vip6} 9000 | head -1`)).includes('line0')) throw new Error('not listening yet'); });
  const received = execMayFail(client, 'sh', '-c', `timeout 20 nc ${s.vip6} 9000 | wc -l`);
  await sleep(2500);
  await membrane.kill9();
  membrane = await restartDaemon(membrane);
  membrane = await restartDaemon(membrane, { MEMBRANE_BPF_OBJECT: newBuild });
  t.is(Number((await received).stdout.trim()), 120, 'every line, over the IPv6 VIP, translated per packet');
});
