// Reading the datapath for people: map contents decoded, metrics summed over CPUs, and the
// event ring buffer fanned out to every `membrane monitor` that is listening.

import type { BpfAddon, RingbufConsumer } from '../kernel/native.js';
import {
  DIRECTIONS, FIRST_DROP_REASON, REASONS, REASON_COUNT, decodeCtEntry, decodeCtKey, decodeEndpointInfo, decodeEvent,
  decodePerCpuMetric, metricKey, protocolName, type DatapathEvent,
} from './codec.js';
import type { Datapath } from './loader.js';
import { mapEntries } from './iterate.js';
import { hasExpired, kernelNowNs, secondsUntil } from '../clock.js';
import { CT_KEY_F_SERVICE, CT_LB_F_DNS, CT_LB_F_HAIRPIN, CT_LB_F_TRANSLATED } from './maps.js';


export function listBpfEndpoints(bpf: BpfAddon, dp: Datapath, limit = 65536) {
  return mapEntries(bpf, dp.map('mb_endpoints_by_if'), limit).map(([, value]) => decodeEndpointInfo(value))
    .sort((a, b) => a.endpointId - b.endpointId);
}

export function listConntrack(bpf: BpfAddon, dp: Datapath, limit: number, nowNs = kernelNowNs()) {
  return mapEntries(bpf, dp.map('mb_conntrack'), limit).map(([key, value]) => {
    const k = decodeCtKey(key);
    const e = decodeCtEntry(value);
    return {
      family: k.family, proto: protocolName(k.proto), src: k.saddr, sport: k.sport, dst: k.daddr, dport: k.dport,
      state: hasExpired(e.expiresNs, nowNs) ? 'expired' : e.state, expiresInSeconds: secondsUntil(e.expiresNs, nowNs),
      packetsOriginal: e.packetsOrig.toString(), bytesOriginal: e.bytesOrig.toString(),
      packetsReply: e.packetsReply.toString(), bytesReply: e.bytesReply.toString(), endpointId: e.endpointId,
      // A service entry remembers the backend of a flow to a VIP; a translated flow, its frontend and backend.
      kind: (k.flags ?? 0) & CT_KEY_F_SERVICE ? 'service' : (e.lbFlags ?? 0) & CT_LB_F_DNS ? 'dns' : (e.lbFlags ?? 0) & CT_LB_F_TRANSLATED ? 'translated' : 'flow',
      frontendId: e.frontendId || undefined, backendId: e.backendId || undefined, hairpin: ((e.lbFlags ?? 0) & CT_LB_F_HAIRPIN) !== 0 || undefined,
    };
  });
}

export function readMetrics(bpf: BpfAddon, dp: Datapath) {
  const out: { reason: string; direction: string; drop: boolean; packets: string; bytes: string }[] = [];
  const fd = dp.map('mb_metrics');
  for (let reason = 0; reason < REASON_COUNT; reason++) {
    for (const direction of [0, 1] as const) {
      const value = bpf.bpfMapLookup(fd, metricKey(reason, direction));
      if (!value) continue;
      const { packets, bytes } = decodePerCpuMetric(value);
      if (packets === 0n) continue;
      out.push({ reason: REASONS[reason] ?? `reason_${reason}`, direction: DIRECTIONS[direction], drop: reason >= FIRST_DROP_REASON,
        packets: packets.toString(), bytes: bytes.toString() });
    }
  }
  return out;
}

export type EventListener = (event: DatapathEvent) => void;

/**
 * One ring-buffer consumer shared by every listener, running only while someone listens (the
 * ring buffer simply fills and drops new events when nobody reads it).
 */
export class EventMonitor {
  private consumer: RingbufConsumer | undefined;
  private readonly listeners = new Set<EventListener>();

  constructor(private readonly bpf: BpfAddon, private readonly dp: Datapath) {}

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    if (!this.consumer) {
      this.consumer = this.bpf.ringbufConsume(this.dp.map('mb_events'), (record) => {
        const event = decodeEvent(record);
        for (const l of this.listeners) l(event);
      });
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.close();
    };
  }

  close(): void {
    this.consumer?.close();
    this.consumer = undefined;
  }
}
