// Closing the connected sockets of removed backends, so their clients reconnect through the VIP
// instead of talking to a container that is gone (Cilium's users' long-standing complaint, #12859).
//
// The object's socket iterators (sock_destroy_tcp, sock_destroy_udp) destroy every connected socket
// whose peer is in mb_lb_doomed. Iterators walk the sockets of the network namespace they run in,
// so the daemon runs them in the host's namespace and in each endpoint's container namespace (its
// sandbox key), from a thread of their own (native iterRun). Unconnected UDP sockets have no peer
// and are never touched.

import type { BpfAddon } from '../kernel/native.js';
import type { Logger } from '../log.js';
import type { Datapath } from '../datapath/loader.js';
import { LB_DOOMED_KEY } from '../datapath/maps.js';

export interface DoomedBackend {
  address: string;
  port: number;
  protocol: 'tcp' | 'udp';
}

export interface CloseReport {
  /** Sockets destroyed, per namespace path. */
  destroyed: Record<string, DoomedBackend[]>;
  /** Namespaces that could not be entered (a container that is gone by now). */
  skipped: Record<string, string>;
}

const PROTOCOLS = { tcp: 6, udp: 17 } as const;

export class SocketCloser {
  private links: { tcp: number; udp: number } | undefined;

  constructor(private readonly bpf: BpfAddon, private readonly datapath: Datapath, private readonly log: Logger) {}

  /** Creates the iterator links (once per loaded object). */
  private ensureLinks(): { tcp: number; udp: number } {
    this.links ??= {
      tcp: this.bpf.iterLinkCreate(this.datapath.program('sock_destroy_tcp')),
      udp: this.bpf.iterLinkCreate(this.datapath.program('sock_destroy_udp')),
    };
    return this.links;
  }

  /** Destroys the connected sockets to `backends` in each namespace of `netnsPaths`. */
  close(backends: DoomedBackend[], netnsPaths: string[]): CloseReport {
    const report: CloseReport = { destroyed: {}, skipped: {} };
    if (backends.length === 0 || netnsPaths.length === 0) return report;
    const links = this.ensureLinks();
    const doomed = this.datapath.map('mb_lb_doomed');
    const keys = backends.map((b) => LB_DOOMED_KEY.encode({ addr: b.address, port: b.port, proto: PROTOCOLS[b.protocol] }));
    const one = Buffer.from([1]);
    for (const key of keys) this.bpf.bpfMapUpdate(doomed, key, one, 0);
    try {
      for (const protocol of ['tcp', 'udp'] as const) {
        if (!backends.some((b) => b.protocol === protocol)) continue;
        for (const run of this.bpf.iterRun(links[protocol], netnsPaths)) {
          if (!run.output) {
            report.skipped[run.path] = run.message ?? 'unknown error';
            continue;
          }
          for (let at = 0; at + LB_DOOMED_KEY.size <= run.output.length; at += LB_DOOMED_KEY.size) {
            const k = LB_DOOMED_KEY.decode(run.output, at);
            (report.destroyed[run.path] ??= []).push({ address: k.addr, port: k.port, protocol: k.proto === 17 ? 'udp' : 'tcp' });
          }
        }
      }
    } finally {
      for (const key of keys) this.bpf.bpfMapDelete(doomed, key);
    }
    const count = Object.values(report.destroyed).reduce((n, list) => n + list.length, 0);
    if (count) this.log.info('closed sockets of removed service backends', { sockets: count, namespaces: Object.keys(report.destroyed).length });
    return report;
  }

  /** Closes the iterator links (a new object load needs new ones). */
  reset(): void {
    if (this.links) {
      this.bpf.bpfClose(this.links.tcp);
      this.bpf.bpfClose(this.links.udp);
    }
    this.links = undefined;
  }
}
