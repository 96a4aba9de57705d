// Forwarding accepts, IPv4 masquerade and published ports through iptables: the one place
// product code runs an external tool. Docker itself sets the FORWARD policy to DROP and programs
// NAT with iptables, so Membrane does the same, in its own chains, until the BPF datapath does NAT.
//
// Chains (rewritten atomically per table with iptables-restore --noflush):
//   filter MEMBRANE-FORWARD (jumped to from FORWARD, both families):
//     from a container          -> ACCEPT (isolation between networks is done by routing rules)
//     to a container, replies   -> ACCEPT
//     to a container, DNATed    -> ACCEPT (a published port)
//     to a container, new       -> DROP   (as Docker's bridge: no unsolicited inbound from outside)
//   nat MEMBRANE-DNAT (jumped to from PREROUTING and OUTPUT for local destinations, both
//     families): one DNAT per published port and family.
//   nat MEMBRANE-POSTROUTING: each non-internal IPv4 pool leaving through a non-Membrane interface
//     is masqueraded (IPv6 is routed, never translated); connections to a published port from
//     127.0.0.0/8 and from the container itself (hairpin) are masqueraded so replies come back.

import { spawn } from 'node:child_process';
import { InvalidArgumentError, NetfilterError } from '../errors.js';
import type { EndpointRecord, NetworkRecord, PortMapping } from '../state/model.js';

export const HOST_IF_MATCH = 'mbr+';
const FORWARD_CHAIN = 'MEMBRANE-FORWARD';
const NAT_CHAIN = 'MEMBRANE-POSTROUTING';
const DNAT_CHAIN = 'MEMBRANE-DNAT';

const PROTOCOLS: Record<number, PortMapping['protocol']> = { 6: 'tcp', 17: 'udp', 132: 'sctp' };

/**
 * Parses Docker's com.docker.network.portmap list. Host port 0 (`-p 80`, "any free port") is
 * refused: Docker does not ask a remote driver which port it chose, so `docker port` could
 * never show it.
 */
export function parsePortMap(raw: unknown): PortMapping[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw new InvalidArgumentError('com.docker.network.portmap must be a list');
  return raw.map((entry: Record<string, unknown>, i) => {
    const protocol = PROTOCOLS[Number(entry?.Proto)];
    const port = Number(entry?.Port);
    const hostPort = Number(entry?.HostPort);
    if (!protocol) throw new InvalidArgumentError(`portmap[${i}]: protocol ${JSON.stringify(entry?.Proto)} is not tcp (6), udp (17) or sctp (132)`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`portmap[${i}]: container port ${JSON.stringify(entry?.Port)} is not a port number`);
    if (hostPort === 0) {
      throw new InvalidArgumentError(`publishing ${port}/${protocol} on a random host port is not supported on Membrane networks ` +
        `(Docker cannot learn the port from a plugin); give one: -p HOSTPORT:${port}/${protocol}`);
    }
    if (!Number.isInteger(hostPort) || hostPort < 1 || hostPort > 65535) throw new InvalidArgumentError(`portmap[${i}]: host port ${JSON.stringify(entry?.HostPort)} is not a port number`);
    const hostIP = typeof entry?.HostIP === 'string' ? entry.HostIP : '';
    return { protocol, port, hostPort, hostIP };
  });
}

export interface NetfilterPlan {
  ipv4: string;
  ipv6: string;
}

function dnatRules(endpoints: EndpointRecord[], family: 4 | 6): { dnat: string[]; masquerade: string[] } {
  const dnat: string[] = [];
  const masquerade: string[] = [];
  const sorted = endpoints.filter((e) => e.published && e.ports?.length).sort((a, b) => a.id.localeCompare(b.id));
  for (const endpoint of sorted) {
    const address = family === 4 ? endpoint.ipv4 : endpoint.ipv6;
    if (!address) continue;
    for (const p of endpoint.ports!) {
      const hostFamily = p.hostIP === '' ? family : (p.hostIP.includes(':') ? 6 : 4);
      if (hostFamily !== family || p.hostIP === '0.0.0.0' && family === 6) continue;
      const anyAddress = p.hostIP === '' || p.hostIP === '0.0.0.0' || p.hostIP === '::';
      const dst = anyAddress ? '' : `-d ${p.hostIP} `;
      const to = family === 4 ? `${address}:${p.port}` : `[${address}]:${p.port}`;
      const comment = `-m comment --comment "membrane ${endpoint.id.slice(0, 12)}"`;
      dnat.push(`-A ${DNAT_CHAIN} ${dst}-p ${p.protocol} -m ${p.protocol} --dport ${p.hostPort} ${comment} -j DNAT --to-destination ${to}`);
      const self = family === 4 ? `${address}/32` : `${address}/128`;
      masquerade.push(`-A ${NAT_CHAIN} -s ${self} -d ${self} -p ${p.protocol} -m ${p.protocol} --dport ${p.port} ${comment} -j MASQUERADE`);
    }
  }
  return { dnat, masquerade };
}

/** Pure: the iptables-restore input for the given networks and endpoints. */
export function planNetfilter(networks: NetworkRecord[], endpoints: EndpointRecord[] = []): NetfilterPlan {
  const plan = (family: 4 | 6): string => {
    const filter = [
      '*filter',
      `:${FORWARD_CHAIN} - [0:0]`,
      `-F ${FORWARD_CHAIN}`,
      `-A ${FORWARD_CHAIN} -i ${HOST_IF_MATCH} -j ACCEPT`,
      `-A ${FORWARD_CHAIN} -o ${HOST_IF_MATCH} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      `-A ${FORWARD_CHAIN} -o ${HOST_IF_MATCH} -m conntrack --ctstate DNAT -j ACCEPT`,
      `-A ${FORWARD_CHAIN} -o ${HOST_IF_MATCH} -j DROP`,
      'COMMIT',
    ];
    const { dnat, masquerade } = dnatRules(endpoints, family);
    const nat = ['*nat', `:${NAT_CHAIN} - [0:0]`, `-F ${NAT_CHAIN}`, `:${DNAT_CHAIN} - [0:0]`, `-F ${DNAT_CHAIN}`, ...dnat];
    if (family === 4) {
      // Published ports reached on 127.0.0.1 (route_localnet is on for Membrane's host veths).
      nat.push(`-A ${NAT_CHAIN} -s 127.0.0.0/8 -o ${HOST_IF_MATCH} -j MASQUERADE`);
      for (const network of [...networks].sort((a, b) => a.id.localeCompare(b.id))) {
        if (network.internal) continue;
        for (const entry of network.ipv4) {
          nat.push(`-A ${NAT_CHAIN} -s ${entry.pool} ! -o ${HOST_IF_MATCH} -m comment --comment "membrane ${network.id.slice(0, 12)}" -j MASQUERADE`);
        }
      }
    }
    nat.push(...masquerade, 'COMMIT');
    return [...filter, ...nat, ''].join('\n');
  };
  return { ipv4: plan(4), ipv6: plan(6) };
}

function run(command: string, args: string[], input?: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (chunk) => { stderr += chunk; });
    child.on('error', (err) => reject(new NetfilterError(`cannot run ${command}: ${err.message}; ` +
      'install iptables (Debian: apt-get install iptables) or set manageNetfilter to false', { cause: err })));
    child.on('close', (code) => resolve({ code: code ?? -1, stderr }));
    if (child.stdin) {
      // The tool may exit before reading everything (its error then shows in stderr and the code).
      child.stdin.on('error', () => undefined);
      child.stdin.end(input);
    }
  });
}

/** Jumps from the built-in chains into Membrane's: [table, chain, match..., target]. */
const JUMPS: string[][] = [
  ['filter', 'FORWARD', '-j', FORWARD_CHAIN],
  ['nat', 'POSTROUTING', '-j', NAT_CHAIN],
  ['nat', 'PREROUTING', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', DNAT_CHAIN],
  ['nat', 'OUTPUT', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', DNAT_CHAIN],
];

export class Netfilter {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly enabled: boolean) {}

  /** Rewrites Membrane's chains and makes sure the jumps to them exist. Serialised. */
  sync(networks: NetworkRecord[], endpoints: EndpointRecord[] = []): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    const plan = planNetfilter(networks, endpoints);
    const next = this.queue.then(() => this.apply(plan));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async apply(plan: NetfilterPlan): Promise<void> {
    for (const [restore, tool, input] of [
      ['iptables-restore', 'iptables', plan.ipv4],
      ['ip6tables-restore', 'ip6tables', plan.ipv6],
    ] as const) {
      const restored = await run(restore, ['-w', '--noflush'], input);
      if (restored.code !== 0) {
        throw new NetfilterError(`${restore} failed (exit ${restored.code}): ${restored.stderr.trim()}`);
      }
      for (const [table, chain, ...rule] of JUMPS) {
        const check = await run(tool, ['-w', '-t', table!, '-C', chain!, ...rule]);
        if (check.code === 0) continue;
        const insert = await run(tool, ['-w', '-t', table!, '-I', chain!, '1', ...rule]);
        if (insert.code !== 0) {
          throw new NetfilterError(`${tool} -t ${table} -I ${chain} failed: ${insert.stderr.trim()}`);
        }
      }
    }
  }
}
