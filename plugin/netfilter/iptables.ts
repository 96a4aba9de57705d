// Forwarding accepts and IPv4 masquerade through iptables: the one place product code runs an
// external tool. Docker itself sets the FORWARD policy to DROP and programs NAT with iptables,
// so Membrane does the same, in its own chains, until the BPF datapath does NAT.
//
// Chains (rewritten atomically per table with iptables-restore --noflush):
//   filter MEMBRANE-FORWARD (jumped to from FORWARD, both families):
//     from a container          -> ACCEPT (isolation between networks is done by routing rules)
//     to a container, replies   -> ACCEPT
//     to a container, new       -> DROP   (as Docker's bridge: no unsolicited inbound from outside)
//   nat MEMBRANE-POSTROUTING (IPv4 only): each non-internal pool leaving through a non-Membrane
//     interface is masqueraded. IPv6 is routed, never translated.

import { spawn } from 'node:child_process';
import { NetfilterError } from '../errors.js';
import type { NetworkRecord } from '../state/model.js';

export const HOST_IF_MATCH = 'mbr+';
const FORWARD_CHAIN = 'MEMBRANE-FORWARD';
const NAT_CHAIN = 'MEMBRANE-POSTROUTING';

export interface NetfilterPlan {
  ipv4: string;
  ipv6: string;
}

/** Pure: the iptables-restore input for the given networks. */
export function planNetfilter(networks: NetworkRecord[]): NetfilterPlan {
  const filter = [
    '*filter',
    `:${FORWARD_CHAIN} - [0:0]`,
    `-F ${FORWARD_CHAIN}`,
    `-A ${FORWARD_CHAIN} -i ${HOST_IF_MATCH} -j ACCEPT`,
    `-A ${FORWARD_CHAIN} -o ${HOST_IF_MATCH} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
    `-A ${FORWARD_CHAIN} -o ${HOST_IF_MATCH} -j DROP`,
    'COMMIT',
  ];
  const nat = ['*nat', `:${NAT_CHAIN} - [0:0]`, `-F ${NAT_CHAIN}`];
  const sorted = [...networks].sort((a, b) => a.id.localeCompare(b.id));
  for (const network of sorted) {
    if (network.internal) continue;
    for (const entry of network.ipv4) {
      nat.push(`-A ${NAT_CHAIN} -s ${entry.pool} ! -o ${HOST_IF_MATCH} -m comment --comment "membrane ${network.id.slice(0, 12)}" -j MASQUERADE`);
    }
  }
  nat.push('COMMIT');
  return { ipv4: [...filter, ...nat, ''].join('\n'), ipv6: [...filter, ''].join('\n') };
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

export class Netfilter {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly enabled: boolean) {}

  /** Rewrites Membrane's chains for `networks` and makes sure the jumps to them exist. Serialised. */
  sync(networks: NetworkRecord[]): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    const plan = planNetfilter(networks);
    const next = this.queue.then(() => this.apply(plan));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async apply(plan: NetfilterPlan): Promise<void> {
    for (const [restore, tool, input, jumps] of [
      ['iptables-restore', 'iptables', plan.ipv4, [['filter', 'FORWARD', FORWARD_CHAIN], ['nat', 'POSTROUTING', NAT_CHAIN]]],
      ['ip6tables-restore', 'ip6tables', plan.ipv6, [['filter', 'FORWARD', FORWARD_CHAIN]]],
    ] as const) {
      const restored = await run(restore, ['-w', '--noflush'], input);
      if (restored.code !== 0) {
        throw new NetfilterError(`${restore} failed (exit ${restored.code}): ${restored.stderr.trim()}`);
      }
      for (const [table, chain, target] of jumps) {
        const check = await run(tool, ['-w', '-t', table, '-C', chain, '-j', target]);
        if (check.code === 0) continue;
        const insert = await run(tool, ['-w', '-t', table, '-I', chain, '1', '-j', target]);
        if (insert.code !== 0) {
          throw new NetfilterError(`${tool} -t ${table} -I ${chain} failed: ${insert.stderr.trim()}`);
        }
      }
    }
  }
}
