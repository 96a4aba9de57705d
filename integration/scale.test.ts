// Many containers at once: dockerd calls the plugin concurrently, and every container must end up
// with its own addresses and working connectivity.

import test from 'ava';
import {
  addressesOf, createNetwork, dockerMayFail, eventually, exec, runContainer, uniqueName, useMembrane,
} from './harness.js';

const COUNT = 50;
useMembrane(test);

async function inBatches<T, R>(items: T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  return out;
}

test(`${COUNT} containers started in parallel get distinct addresses and all connect`, async (t) => {
  const net = uniqueName('mbt-scale');
  await createNetwork(net, '--ipv6');
  const server = uniqueName('mbt-srv');
  await runContainer(server, net);
  const names = Array.from({ length: COUNT }, () => uniqueName('mbt-s'));
  const started = performance.now();
  const results = await Promise.all(names.map((n) => dockerMayFail('run', '-d', '--name', n, '--label', 'membrane.test=1',
    '--network', net, 'membrane-test:latest', 'sleep', '600')));
  t.log(`${COUNT} parallel docker run: ${performance.now() - started} ms`);
  const failures = results.filter((r) => r.code !== 0).map((r) => r.stderr.trim());
  t.deepEqual(failures, [], 'every container started');
  const addrs = await inBatches(names, 10, (n) => addressesOf(n, net));
  t.is(new Set(addrs.map((a) => a.ipv4)).size, COUNT, 'distinct IPv4 addresses');
  t.is(new Set(addrs.map((a) => a.ipv6)).size, COUNT, 'distinct IPv6 addresses');
  const serverAddr = await addressesOf(server, net);
  // Every container reaches the server over both families; the server reaches every container.
  await inBatches(names, 10, (n) => eventually(() => exec(n, 'ping', '-4', '-c', '1', '-W', '2', serverAddr.ipv4!), 20_000));
  await inBatches(names, 10, (n) => eventually(() => exec(n, 'ping', '-6', '-c', '1', '-W', '2', serverAddr.ipv6!), 20_000));
  await inBatches(addrs, 10, (a) => eventually(() => exec(server, 'ping', '-6', '-c', '1', '-W', '2', a.ipv6!), 20_000));
  t.pass();
});
