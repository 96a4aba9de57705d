// The BPF datapath with real containers: state that outlives the daemon. A TCP stream keeps
// flowing, with no reset, across a kill -9 of Membrane and across loading a new build of the
// BPF object (programs swapped atomically on their links), and its conntrack entry survives.

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  MembraneProcess, ROOT, CLI, addressesOf, restartDaemon, twoOnOneNetwork, cleanupDocker, createNetwork, docker, exec, firstMonitorEvent, ping, run, runContainer,
  sleep, uniqueName,
} from './harness.js';
import { native } from '../plugin/kernel/native.js';
import { decodeCtEntry, decodeCtKey } from '../plugin/datapath/codec.js';
import { tcxForTests } from '../plugin/features.js';
import { hasExpired, kernelNowNs, nsAfter } from '../plugin/clock.js';

const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-datapath-'));
let membrane = new MembraneProcess(stateDir);
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bpf-build-'));
// Named probe, decided at load: the tcx-specific test says why when it cannot run.
const TCX = tcxForTests(native(), path.join(ROOT, 'bpf', 'build', 'membrane.bpf.o'));

test.before(async () => {
  await cleanupDocker();
  await membrane.start();
});

test.after.always(async () => {
  await cleanupDocker();
  await membrane.stop();
  fs.rmSync(workDir, { recursive: true, force: true });
});

/** Conntrack entries of TCP flows from `src` to `dst`:`port`, read straight from the pinned map. */
function tcpFlows(src: string, dst: string, port: number): { packets: bigint; flags: number }[] {
  const nl = native();
  const fd = nl.bpfObjGet('/sys/fs/bpf/membrane/mb_conntrack');
  try {
    const out: { packets: bigint; flags: number }[] = [];
    let key: Buffer | null = null;
    for (let i = 0; i < 1_000_000; i++) {
      key = nl.bpfMapNextKey(fd, key);
      if (!key) break;
      const k = decodeCtKey(key);
      const v = nl.bpfMapLookup(fd, key);
      if (k.proto === 6 && k.dport === port && k.saddr === src && k.daddr === dst && v) {
        const e = decodeCtEntry(v);
        out.push({ packets: e.packetsOrig + e.packetsReply, flags: e.tcpFlagsOrig | e.tcpFlagsReply });
      }
    }
    return out;
  } finally {
    nl.bpfClose(fd);
  }
}

test.serial('a TCP stream survives kill -9 of Membrane and a new BPF build with zero resets', async (t) => {
  const net = uniqueName('mbt-stream');
  await createNetwork(net, '--ipv6');
  const server = uniqueName('mbt-srv');
  const client = uniqueName('mbt-cli');
  // The server counts what arrives; the client sends 400 numbered lines over ~20 s.
  await docker('run', '-d', '--name', server, '--label', 'membrane.test=1', '--network', net, 'membrane-test:latest',
    // busybox nc stops at EOF on its own stdin: give it one that never ends.
    'sh', '-c', 'sleep 600 | nc -l -p 9000 > /tmp/received');
  const serverAddr = await addressesOf(server, net);
  await runContainer(client, net);
  await ping(client, 6, serverAddr.ipv6!);
  await docker('exec', '-d', client, 'sh', '-c',
    `i=0; while [ $i -lt 400 ]; do echo line-$i; i=$((i+1)); sleep 0.05; done | nc ${serverAddr.ipv6} 9000; echo $? > /tmp/client-exit`);
  await sleep(3000);
  const clientAddr = await addressesOf(client, net);
  const before = tcpFlows(clientAddr.ipv6!, serverAddr.ipv6!, 9000);
  t.is(before.length, 1, 'one conntrack entry for the stream');

  // 1. kill -9 and restart: maps and links are pinned; the kernel keeps forwarding meanwhile.
  await membrane.kill9();
  await sleep(1000);
  membrane = new MembraneProcess(stateDir);
  await membrane.start();

  // 2. A new build of the object (different instructions): the daemon swaps it in atomically.
  const newBuild = path.join(workDir, 'membrane-next.bpf.o');
  await run('clang', ['-O2', '-g', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-DMEMBRANE_BUILD_VARIANT=1',
    '-c', path.join(ROOT, 'bpf', 'membrane.bpf.c'), '-o', newBuild]);
  membrane = await restartDaemon(membrane, { MEMBRANE_BPF_OBJECT: newBuild });

  // Wait for the client to finish (bounded).
  const deadline = performance.now() + 40_000;
  let clientExit = '';
  while (performance.now() < deadline) {
    clientExit = (await run('docker', ['exec', client, 'cat', '/tmp/client-exit'], { allowFail: true })).stdout.trim();
    if (clientExit) break;
    await sleep(500);
  }
  t.is(clientExit, '0', 'the client finished without error');
  const received = (await exec(server, 'sh', '-c', 'wc -l < /tmp/received')).trim();
  t.is(Number(received), 400, 'every line arrived');
  const after = tcpFlows(clientAddr.ipv6!, serverAddr.ipv6!, 9000);
  t.is(after.length, 1, 'the same conntrack entry');
  t.true(after[0]!.packets > before[0]!.packets, `its counters kept growing (${before[0]!.packets} -> ${after[0]!.packets})`);
  t.is(after[0]!.flags & 0x04, 0, 'no RST seen in either direction');
  t.log(`stream: 400 lines, conntrack packets ${before[0]!.packets} -> ${after[0]!.packets}, RST flag ${after[0]!.flags & 0x04}`);
});

test.serial('membrane monitor shows a spoofed packet\'s drop; bpf endpoint/ct/metrics and status show the datapath', async (t) => {
  const net = uniqueName('mbt-mon');
  await createNetwork(net, '--ipv6');
  const peer = uniqueName('mbt-peer');
  const rogue = uniqueName('mbt-rogue');
  await runContainer(peer, net);
  await runContainer(rogue, net, '--cap-add', 'NET_ADMIN');
  const peerAddr = await addressesOf(peer, net);
  const rogueAddr = await addressesOf(rogue, net);
  await ping(rogue, 4, peerAddr.ipv4!);

  const firstDrop = firstMonitorEvent(t, 'drop', (event) => event.saddr === '10.99.99.99');
  await sleep(500);
  // The rogue container claims an address that is not its own.
  await exec(rogue, 'ip', 'addr', 'add', '10.99.99.99/32', 'dev', 'eth0');
  await run('docker', ['exec', rogue, 'ping', '-c', '2', '-W', '1', '-I', '10.99.99.99', peerAddr.ipv4!], { allowFail: true });
  const event = await firstDrop;
  t.like(event, { type: 'drop', reason: 'spoofed-ip', direction: 'from-container', daddr: peerAddr.ipv4, proto: 'icmp' });

  const cli = async (...args: string[]) => JSON.parse((await run(process.execPath, [CLI, '-o', 'json', ...args])).stdout);
  const endpoints = await cli('bpf', 'endpoint', 'list') as { ipv4: string; ipv6: string }[];
  t.true(endpoints.some((e) => e.ipv4 === rogueAddr.ipv4 && e.ipv6 === rogueAddr.ipv6), 'endpoint map holds the container');
  const flows = await cli('bpf', 'ct', 'list') as { proto: string; src: string; dst: string }[];
  t.true(flows.some((f) => f.proto === 'icmp' && f.src === rogueAddr.ipv4 && f.dst === peerAddr.ipv4), 'the ping is tracked');
  const metrics = await cli('bpf', 'metrics') as { reason: string; packets: string }[];
  t.true(metrics.some((m) => m.reason === 'spoofed-ip' && Number(m.packets) >= 1));
  t.true(metrics.some((m) => m.reason === 'redirect-peer' && Number(m.packets) >= 1));
  const status = (await run(process.execPath, [CLI, 'status'])).stdout;
  t.regex(status, TCX === 'yes' ? /^datapath\s+bpf \(.*attach: tcx links \(probe: yes\)/m : /^datapath\s+bpf \(.*attach: clsact \(tcx probe: no\)/m);
});

(TCX === 'yes' ? test.serial : test.skip)(`clsact fallback: the same containers keep working when Membrane moves their programs from tcx to clsact and back${TCX === 'yes' ? '' : ' [skip: kernel lacks tcx (probe tcx)]'}`, async (t) => {
  const { net, a, addrB } = await twoOnOneNetwork('clsact', '--ipv6');
  await ping(a, 4, addrB.ipv4!);
  for (const mode of ['clsact', 'auto'] as const) {
    membrane = await restartDaemon(membrane, { MEMBRANE_ATTACH_MODE: mode });
    const status = (await run(process.execPath, [CLI, 'status'])).stdout;
    t.regex(status, mode === 'clsact' ? /attach: clsact \(configured\)/ : /attach: tcx links \(probe: yes\)/);
    const pins = fs.readdirSync('/sys/fs/bpf/membrane/links');
    t.is(pins.length > 0, mode !== 'clsact', `${mode}: tcx link pins ${mode === 'clsact' ? 'removed' : 'present'}`);
    const filters = (await run('tc', ['filter', 'show', 'dev', (await run(process.execPath, [CLI, '-o', 'json', 'endpoint', 'list'])).stdout.match(/"hostIfName": "(mbr[0-9a-f]+)"/)![1]!, 'ingress'])).stdout;
    t.is(filters.includes('from_container'), mode === 'clsact', `${mode}: clsact filter ${mode === 'clsact' ? 'present' : 'gone'}`);
    await ping(a, 4, addrB.ipv4!);
    await ping(a, 6, addrB.ipv6!);
  }
  // New containers get the programs too.
  const c = uniqueName('mbt-c');
  await runContainer(c, net);
  await ping(c, 6, addrB.ipv6!);
});

test.serial('a new conntrackMax migrates the pinned conntrack map: entries copied, never wiped', async (t) => {
  const { a, addrA, addrB } = await twoOnOneNetwork('migrate', '--ipv6');
  await ping(a, 4, addrB.ipv4!);
  const nl = native();
  const info = () => {
    const fd = nl.bpfObjGet('/sys/fs/bpf/membrane/mb_conntrack');
    try {
      return nl.bpfMapInfo(fd);
    } finally {
      nl.bpfClose(fd);
    }
  };
  /** Keys of conntrack entries; with `liveForNs`, only those that stay live at least that long. */
  const flowKeys = (liveForNs?: bigint) => {
    const fd = nl.bpfObjGet('/sys/fs/bpf/membrane/mb_conntrack');
    try {
      const keys = new Set<string>();
      let key: Buffer | null = null;
      for (let i = 0; i < 1_000_000; i++) {
        key = nl.bpfMapNextKey(fd, key);
        if (!key) break;
        const value = nl.bpfMapLookup(fd, key);
        if (!value) continue;
        if (liveForNs !== undefined && hasExpired(decodeCtEntry(value).expiresNs, nsAfter(kernelNowNs(), liveForNs))) continue;
        keys.add(key.toString('hex'));
      }
      return keys;
    } finally {
      nl.bpfClose(fd);
    }
  };
  // Entries that stay live for the whole test: the daemon collects only expired ones at start.
  const before = flowKeys(40_000_000_000n);
  const mine = [...before].map((k) => decodeCtKey(Buffer.from(k, 'hex'))).some((k) => k.saddr === addrA.ipv4 && k.daddr === addrB.ipv4);
  t.true(mine, 'the ping is tracked');
  const originalMax = info().maxEntries;
  for (const max of [originalMax + 4096, originalMax]) {
    membrane = await restartDaemon(membrane, { MEMBRANE_CONNTRACK_MAX: String(max) });
    t.is(info().maxEntries, max, `map resized to ${max}`);
    const after = flowKeys();
    const lost = [...before].filter((k) => !after.has(k));
    t.deepEqual(lost, [], `every live entry was copied (${before.size} live before, ${after.size} after)`);
    await ping(a, 4, addrB.ipv4!);
    await ping(a, 6, addrB.ipv6!);
  }
});
