// The shipped compose example (examples/compose/docker-compose.yml), run by a real docker-compose:
// three services whose only policy is in their labels. Every arrow of the example is open,
// everything else is closed.

import test from 'ava';
import path from 'node:path';
import { MembraneProcess, ROOT, apiGet, cleanupDocker, composeProject, docker, eventually, execMayFail, run } from './harness.js';

// Not useMembrane: compose must take its network down while the daemon still runs (a remote
// driver's network cannot be removed without its plugin), so teardown order matters.
const membrane = new MembraneProcess();

const FILE = path.join(ROOT, 'examples', 'compose', 'docker-compose.yml');
const PROJECT = `mbtshop${process.pid.toString(36)}`;
const FRONTEND_PORT = String(18000 + (process.pid % 1000));

// docker-compose reads the published port from the environment it inherits.
process.env.FRONTEND_PORT = FRONTEND_PORT;
const { compose, down: composeDown } = composeProject(PROJECT, FILE);

const ids: Record<string, string> = {};
const addr: Record<string, { ipv4: string; ipv6: string }> = {};

test.before(async () => {
  await cleanupDocker();
  await membrane.start();
  await compose('up', '-d');
  for (const service of ['frontend', 'api', 'db']) {
    ids[service] = (await compose('ps', '-q', service)).stdout.trim();
    const [ipv4, ipv6] = (await docker('inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}', ids[service]!)).split(' ');
    addr[service] = { ipv4: ipv4!, ipv6: ipv6! };
  }
  // Every service has its identity and its label policy (applied from Docker's events).
  await eventually(async () => {
    const endpoints = await apiGet<{ containerId?: string; identity?: number; policy?: { ingress: boolean } }[]>('/v1/endpoints');
    for (const id of Object.values(ids)) {
      const e = endpoints.find((x) => x.containerId === id);
      if (!e?.identity || e.identity === 5 || !e.policy?.ingress) throw new Error(`container ${id.slice(0, 12)} has no identity or policy yet`);
    }
  }, 20_000);
});

test.after.always(async () => {
  await composeDown();
  await cleanupDocker();
  await membrane.stop();
});

async function tcp(from: string, address: string, port: number): Promise<boolean> {
  const probe = port === 5432 ? `echo membrane | timeout 3 nc ${address} ${port}` : `timeout 3 wget -q -O - http://${address.includes(':') ? `[${address}]` : address}:${port}/`;
  const r = await execMayFail(ids[from]!, 'sh', '-c', probe);
  return r.code === 0 && r.stdout.length > 0;
}

for (const family of ['ipv4', 'ipv6'] as const) {
  test.serial(`every arrow of the example is open over ${family}, and nothing else`, async (t) => {
    t.true(await tcp('frontend', addr.api![family], 8080), 'frontend -> api:8080');
    t.true(await tcp('api', addr.db![family], 5432), 'api -> db:5432');
    t.false(await tcp('frontend', addr.db![family], 5432), 'frontend -> db:5432');
    t.false(await tcp('db', addr.api![family], 8080), 'db -> api:8080');
    t.false(await tcp('api', addr.frontend![family], 80), 'api may only talk to db');
    const host = await run('sh', ['-c', `timeout 3 busybox wget -q -O - http://${family === 'ipv6' ? `[${addr.frontend!.ipv6}]` : addr.frontend!.ipv4}:80/`], { allowFail: true });
    t.is(host.code, 0, 'host -> frontend:80');
    const hostToApi = await run('sh', ['-c', `timeout 3 busybox wget -q -O - http://${family === 'ipv6' ? `[${addr.api!.ipv6}]` : addr.api!.ipv4}:8080/`], { allowFail: true });
    t.not(hostToApi.code, 0, 'host -> api:8080');
  });
}

test.serial('the published port reaches the frontend from the host', async (t) => {
  const r = await run('sh', ['-c', `timeout 3 busybox wget -q -O - http://127.0.0.1:${FRONTEND_PORT}/`], { allowFail: true });
  t.is(r.code, 0, r.stderr);
});

test.serial('the label policies are listed as rules of their services', async (t) => {
  const { rules } = await apiGet<{ rules: { origin: string; rule: { labels: { key: string; value: string }[] } }[] }>('/v1/policy');
  const of = rules.map((r) => r.rule.labels.find((l) => l.key === 'membrane.policy-of')?.value).filter(Boolean).sort();
  t.deepEqual(of, [`${PROJECT}/api`, `${PROJECT}/db`, `${PROJECT}/frontend`]);
});
