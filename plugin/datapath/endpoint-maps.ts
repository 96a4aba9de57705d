// Applies endpoints to the BPF datapath: their entries in mb_endpoints / mb_endpoints_by_if,
// and the programs on their host-side veths. Also conntrack garbage collection.

import type { BpfAddon, LinkInfo } from '../kernel/native.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';
import {
  ID_INIT, SIZES, decodeCtEntry, decodeEndpointInfo, encodeEndpointInfo, encodeEndpointKey, encodeIfindexKey,
} from './codec.js';
import type { Datapath } from './loader.js';
import { mapEntries } from './iterate.js';
import { hasExpired, kernelNowNs } from '../clock.js';
import { gatewayFor } from '../network/plan.js';

export class EndpointMaps {
  constructor(private readonly bpf: BpfAddon, readonly datapath: Datapath) {}

  /** Writes the endpoint's entries, then attaches the programs: the container never runs unpoliced. */
  upsert(endpoint: EndpointRecord, network: NetworkRecord, hostLink: LinkInfo): void {
    this.write(endpoint, network, hostLink.index, hostLink.mac);
    this.datapath.attach(hostLink.name, hostLink.index);
  }

  /**
   * Rewrites the endpoint's entries after its identity or policy flags changed (the policy
   * engine calls this); does nothing for an endpoint whose veth is not plumbed yet.
   */
  refresh(endpoint: EndpointRecord, network: NetworkRecord): boolean {
    if (!endpoint.ifindex) return false;
    const current = this.bpf.bpfMapLookup(this.datapath.map('mb_endpoints_by_if'), encodeIfindexKey(endpoint.ifindex));
    if (!current) return false;
    const info = decodeEndpointInfo(current);
    if (info.endpointId !== endpoint.number) return false;
    this.write(endpoint, network, endpoint.ifindex, info.hostMac);
    return true;
  }

  private write(endpoint: EndpointRecord, network: NetworkRecord, ifindex: number, hostMac: string): void {
    // Until the policy engine has compiled it, an endpoint enforces both directions as init:
    // a container never runs unpoliced.
    const policy = endpoint.policy ?? { ingress: true, egress: true, audit: false };
    const value = encodeEndpointInfo({
      ifindex, endpointId: endpoint.number ?? 0, identity: endpoint.identity ?? ID_INIT, networkId: network.number ?? 0,
      mac: endpoint.mac, hostMac, ipv4: endpoint.ipv4, ipv6: endpoint.ipv6,
      gateway4: endpoint.ipv4 ? gatewayFor(network, 4, endpoint.ipv4) ?? '0.0.0.0' : undefined,
      gateway6: endpoint.ipv6 ? gatewayFor(network, 6, endpoint.ipv6) ?? '::' : undefined,
      enforceIngress: policy.ingress, enforceEgress: policy.egress, audit: policy.audit,
    });
    this.bpf.bpfMapUpdate(this.datapath.map('mb_endpoints_by_if'), encodeIfindexKey(ifindex), value, 0);
    for (const address of [endpoint.ipv4, endpoint.ipv6]) {
      if (address) this.bpf.bpfMapUpdate(this.datapath.map('mb_endpoints'), encodeEndpointKey(address), value, 0);
    }
  }

  remove(endpoint: EndpointRecord): void {
    for (const address of [endpoint.ipv4, endpoint.ipv6]) {
      if (address) this.bpf.bpfMapDelete(this.datapath.map('mb_endpoints'), encodeEndpointKey(address));
    }
    if (endpoint.ifindex) {
      const key = encodeIfindexKey(endpoint.ifindex);
      const current = this.bpf.bpfMapLookup(this.datapath.map('mb_endpoints_by_if'), key);
      // The ifindex may already belong to a newer veth: only remove our own entry.
      if (current && decodeEndpointInfo(current).endpointId === endpoint.number) {
        this.bpf.bpfMapDelete(this.datapath.map('mb_endpoints_by_if'), key);
      }
    }
    // The program links go with the veth (Dataplane.deleteEndpoint): closing a tcx link that is
    // still attached waits for an RCU grace period, closing a defunct one does not.
  }

  /** Deletes map entries and link pins that belong to no endpoint in `endpoints` (nor to a prepared pair in `alsoLive`). */
  prune(endpoints: EndpointRecord[], alsoLive: Iterable<string> = []): { entries: number; pins: string[] } {
    const liveNumbers = new Set(endpoints.map((e) => e.number ?? 0));
    let entries = 0;
    for (const [name, capacity] of [['mb_endpoints', SIZES.endpoint_key], ['mb_endpoints_by_if', 4]] as const) {
      const fd = this.datapath.map(name);
      const stale = mapEntries(this.bpf, fd, 1_000_000)
        .filter(([, value]) => !liveNumbers.has(decodeEndpointInfo(value).endpointId))
        .map(([key]) => Buffer.from(key.subarray(0, capacity)));
      for (const k of stale) if (this.bpf.bpfMapDelete(fd, k)) entries++;
    }
    const pins = this.datapath.prunePins(new Set([...endpoints.map((e) => e.hostIfName), ...alsoLive]));
    return { entries, pins };
  }

  /**
   * Removes conntrack entries whose expiry has passed, judged on the kernel's clock (see clock.ts)
   * by the same rule as the datapath's lookup. Bounded by the map's size.
   */
  collectConntrack(maxEntries: number, nowNs = kernelNowNs()): { scanned: number; deleted: number } {
    const fd = this.datapath.map('mb_conntrack');
    const all = mapEntries(this.bpf, fd, maxEntries);
    const scanned = all.length;
    const expired = all.filter(([, value]) => hasExpired(decodeCtEntry(value).expiresNs, nowNs)).map(([key]) => key);
    const deleted = expired.length ? this.bpf.bpfMapDeleteBatch(fd, Buffer.concat(expired)) : 0;
    return { scanned, deleted };
  }
}
