// The datapath section's paths other than container-to-container (datapath.ts runs them):
//
//   c2host     a container (or the floor's namespace) to servers in the host's own namespace,
//              bound to an address of ours on the host: the host stack's input path.
//   c2outside  a container (or the floor's namespace) to servers in a namespace that stands for
//              the world outside, behind a veth of its own: the host forwards (Membrane and the
//              bridge masquerade, as they do for any destination off their networks).
//
// The floor for both is a namespace on a bare veth to the host, routed by the host, with no
// program and no NAT: what the host's routing costs by itself. Addresses are in the RFC 2544
// benchmarking range and exist only on interfaces made here; the servers bind to them alone.
// Everything has the run's id in its name and goes in `down()`, whatever failed before.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run, sleep } from '../harness.js';
import type { Endpoints, Pinning } from './datapath.js';

/** Where the host-side servers listen (the host's own namespace: ports apart from the containers' defaults). */
export const HOST_PORTS = { iperf: 5202, rr: 11117 };
/** Servers in the outside namespace use the usual ports (it is a namespace of its own). */
export const OUTSIDE_PORTS = { iperf: 5201, rr: 11115 };

const HOST_ADDR = '198.18.100.1';
const FLOOR_ROOT = '198.18.2.1';
const FLOOR_NS = '198.18.2.2';
const OUTSIDE_ROOT = '198.18.3.1';
const OUTSIDE_NS = '198.18.3.2';

export class RoutedPaths {
  readonly floorNs: string;
  readonly outsideNs: string;
  /** Devices in the host's namespace: the root ends of the two veths. */
  readonly floorRoot: string;
  readonly floorPeer: string;
  readonly outsideRoot: string;
  readonly outsidePeer: string;
  readonly hostAddress = HOST_ADDR;
  readonly outsideAddress = OUTSIDE_NS;
  private readonly tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-bench-routed-'));
  private readonly servers: ChildProcess[] = [];
  /** iptables rules inserted here (the floor forwards through Docker's FORWARD DROP policy). */
  private readonly rules: string[][] = [];
  private created = false;

  constructor(runId: string) {
    const tag = randomBytes(3).toString('hex');
    this.floorNs = `mbbench-${runId}-c`;
    this.outsideNs = `mbbench-${runId}-o`;
    this.floorRoot = `mbc${tag}h`;
    this.floorPeer = `mbc${tag}c`;
    this.outsideRoot = `mbo${tag}h`;
    this.outsidePeer = `mbo${tag}o`;
  }

  describe(): string {
    return `host servers on ${HOST_ADDR} (an address of the host, on ${this.floorRoot}); outside servers in netns ${this.outsideNs} (${OUTSIDE_NS}, veth ` +
      `${this.outsideRoot}/${this.outsidePeer}); floor client in netns ${this.floorNs} (${FLOOR_NS}, veth ${this.floorRoot}/${this.floorPeer}, ` +
      'routed by the host, no NAT, no program)';
  }

  async up(pin: Pinning, rrBinary: string): Promise<Endpoints> {
    this.created = true;
    for (const [ns, root, peer, rootAddr, nsAddr] of [
      [this.floorNs, this.floorRoot, this.floorPeer, FLOOR_ROOT, FLOOR_NS],
      [this.outsideNs, this.outsideRoot, this.outsidePeer, OUTSIDE_ROOT, OUTSIDE_NS],
    ] as const) {
      await run('ip', ['netns', 'add', ns]);
      await run('ip', ['link', 'add', root, 'mtu', '1500', 'type', 'veth', 'peer', 'name', peer, 'mtu', '1500']);
      await run('ip', ['link', 'set', peer, 'netns', ns]);
      await run('ip', ['addr', 'add', `${rootAddr}/30`, 'dev', root]);
      await run('ip', ['link', 'set', root, 'up']);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${nsAddr}/30`, 'dev', peer]);
      await run('ip', ['-n', ns, 'link', 'set', peer, 'up']);
      await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', rootAddr]);
    }
    // The host servers' address: one more on the floor's root end (no dummy devices without
    // modules here). Whatever device holds it, a packet to it is delivered locally.
    await run('ip', ['addr', 'add', `${HOST_ADDR}/32`, 'dev', this.floorRoot]);
    // Docker's FORWARD policy is DROP: the floor's own traffic (never masqueraded) is let through.
    for (const [i, o] of [[this.floorRoot, this.outsideRoot], [this.outsideRoot, this.floorRoot]]) {
      const rule = ['FORWARD', '-i', i!, '-o', o!, '-m', 'comment', '--comment', 'membrane bench floor', '-j', 'ACCEPT'];
      await run('iptables', ['-w', '-I', ...rule]);
      this.rules.push(rule);
    }
    const serve = (args: string[]) => {
      const child = spawn(args[0]!, args.slice(1), { stdio: 'ignore' });
      child.on('error', () => undefined);
      this.servers.push(child);
    };
    serve(['iperf3', '-s', '-B', HOST_ADDR, '-p', String(HOST_PORTS.iperf), ...pin.iperfServer]);
    // rr binds every address; the port is one nothing else here uses, and the servers go with the run.
    serve([...pin.server, rrBinary, 'serve', String(HOST_PORTS.rr)]);
    const inOutside = ['ip', 'netns', 'exec', this.outsideNs];
    serve([...inOutside, 'iperf3', '-s', '-p', String(OUTSIDE_PORTS.iperf), ...pin.iperfServer]);
    serve([...inOutside, ...pin.server, rrBinary, 'serve', String(OUTSIDE_PORTS.rr)]);
    await waitFor(async () => {
      const host = (await run('ss', ['-lntuH'], { allowFail: true })).stdout;
      const outside = (await run('ip', ['netns', 'exec', this.outsideNs, 'ss', '-lntuH'], { allowFail: true })).stdout;
      return host.includes(`${HOST_ADDR}:${HOST_PORTS.iperf} `) && host.includes(`:${HOST_PORTS.rr} `)
        && Object.values(OUTSIDE_PORTS).every((p) => outside.includes(`:${p} `));
    }, 'host and outside servers listening');
    const logPath = path.join(this.tmp, 'sockperf.csv');
    return {
      key: 'veth', server: OUTSIDE_NS, logPath, rrBinary,
      client: (args, timeoutMs) => run('ip', ['netns', 'exec', this.floorNs, ...args], { allowFail: true, timeoutMs }),
      readClientFile: async (file) => fs.readFileSync(file, 'utf8'),
    };
  }

  /** Kills the servers, deletes the namespaces (their veths go with them), and the rules. */
  async down(): Promise<string[]> {
    const problems: string[] = [];
    await stopServers(this.servers);
    for (const rule of this.rules) {
      const r = await run('iptables', ['-w', '-D', ...rule], { allowFail: true });
      if (r.code !== 0) problems.push(`iptables -D ${rule.join(' ')}: ${r.stderr.trim()}`);
    }
    if (this.created) {
      for (const ns of [this.floorNs, this.outsideNs]) {
        const r = await run('ip', ['netns', 'del', ns], { allowFail: true });
        if (r.code !== 0 && !/No such file/.test(r.stderr)) problems.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
      }
      for (const dev of [this.floorRoot, this.outsideRoot]) {
        if ((await run('ip', ['link', 'show', dev], { allowFail: true })).code === 0) {
          const r = await run('ip', ['link', 'del', dev], { allowFail: true });
          // Deleting the namespace deletes its veth ends, and their root ends, a moment later: gone in between is fine.
          if (r.code !== 0 && !/Cannot find device/.test(r.stderr)) problems.push(`ip link del ${dev}: ${r.stderr.trim()}`);
        }
      }
    }
    fs.rmSync(this.tmp, { recursive: true, force: true });
    return problems;
  }
}

/** SIGTERM, then SIGKILL after 5 s, for each server still running; bounded either way. */
export async function stopServers(servers: ChildProcess[]): Promise<void> {
  for (const child of servers) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(5_000)]);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await Promise.race([exited, sleep(5_000)]);
    }
  }
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(200);
  }
  throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
}
