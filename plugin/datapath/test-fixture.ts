// Packet-fixture setup shared by the BPF_PROG_TEST_RUN tests: Membrane's compiled object with
// fresh (unpinned) maps, real veths for the ifindexes the programs look up, and three endpoints:
// A and B on one network, OTHER_NET on another.

import type { ExecutionContext } from 'ava';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { objectLoadOptionsForTests } from '../features.js';
import { native, type BpfObject } from '../kernel/native.js';
import {
  decodeCtEntry, decodePerCpuMetric, encodeCtKey, encodeEndpointInfo, encodeEndpointKey, encodeIfindexKey, metricKey,
  type EndpointInfo,
} from './codec.js';
import { ETH_P_IP, ethernet } from './packets.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const OBJECT = path.resolve(here, '..', '..', '..', 'bpf', 'build', 'membrane.bpf.o');
export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;
export const TC_ACT_REDIRECT = 7;

export const A = { mac: '02:00:00:00:00:0a', hostMac: '02:00:00:00:01:0a', ipv4: '10.20.0.10', ipv6: 'fd00:20::10', gateway4: '10.20.0.1', gateway6: 'fd00:20::1' };
export const B = { mac: '02:00:00:00:00:0b', hostMac: '02:00:00:00:01:0b', ipv4: '10.20.0.11', ipv6: 'fd00:20::11', gateway4: '10.20.0.1', gateway6: 'fd00:20::1' };
export const OTHER_NET = { mac: '02:00:00:00:00:0c', hostMac: '02:00:00:00:01:0c', ipv4: '10.30.0.12', ipv6: 'fd00:30::12', gateway4: '10.30.0.1', gateway6: 'fd00:30::1' };

export type FixtureEndpoint = typeof A;

export interface Fixture {
  obj: BpfObject;
  map(name: string): number;
  prog(name: string): number;
  /** ifindexes of three real host-side veths standing in for endpoints A, B and OTHER_NET. */
  ifindex: { a: number; b: number; other: number; unknown: number };
  /** (Re)writes an endpoint's entries, e.g. with an identity and policy flags. */
  endpoint(e: FixtureEndpoint, info: Partial<EndpointInfo>): void;
  run(prog: 'from_container' | 'to_container', ifindex: number, packet: Buffer): { retval: number; data: Buffer };
  metric(reason: number, direction: 0 | 1): bigint;
  ct(key: Parameters<typeof encodeCtKey>[0]): ReturnType<typeof decodeCtEntry> | null;
}

/** __sk_buff with only ifindex set (offset 40); the kernel resolves it to the device. */
export function skbCtx(ifindex: number): Buffer {
  const ctx = Buffer.alloc(44);
  ctx.writeUInt32LE(ifindex, 40);
  return ctx;
}

export function setup(t: ExecutionContext): Fixture {
  const nl = native();
  const obj = nl.bpfObjectLoad(OBJECT, objectLoadOptionsForTests());
  t.teardown(() => obj.close());
  const names: string[] = [];
  const ifindexOf = () => {
    const name = `mbt${randomBytes(5).toString('hex')}`;
    names.push(name);
    return nl.linkCreateVeth(name, `${name}p`, {});
  };
  t.teardown(() => {
    for (const name of names) {
      const link = nl.linkGetByName(name);
      if (link) nl.linkDelete(link.index);
    }
  });
  const ifindex = { a: ifindexOf(), b: ifindexOf(), other: ifindexOf(), unknown: ifindexOf() };
  const map = (name: string) => {
    const found = obj.maps.find((m) => m.name === name);
    if (!found) throw new Error(`map ${name} not in object (${obj.maps.map((m) => m.name).join(', ')})`);
    return found.fd;
  };
  const prog = (name: string) => obj.programs.find((p) => p.name === name)!.fd;
  const defaults = new Map<FixtureEndpoint, EndpointInfo>([
    [A, { ...A, ifindex: ifindex.a, endpointId: 1, identity: 0, networkId: 1 }],
    [B, { ...B, ifindex: ifindex.b, endpointId: 2, identity: 0, networkId: 1 }],
    [OTHER_NET, { ...OTHER_NET, ifindex: ifindex.other, endpointId: 3, identity: 0, networkId: 2 }],
  ]);
  const endpoint = (e: FixtureEndpoint, changes: Partial<EndpointInfo>) => {
    const info: EndpointInfo = { ...defaults.get(e)!, ...changes };
    const value = encodeEndpointInfo(info);
    nl.bpfMapUpdate(map('mb_endpoints_by_if'), encodeIfindexKey(info.ifindex), value, 0);
    nl.bpfMapUpdate(map('mb_endpoints'), encodeEndpointKey(e.ipv4), value, 0);
    nl.bpfMapUpdate(map('mb_endpoints'), encodeEndpointKey(e.ipv6), value, 0);
  };
  for (const e of defaults.keys()) endpoint(e, {});
  return {
    obj, map, prog, ifindex, endpoint,
    run(name, index, packet) {
      const r = nl.bpfProgTestRun(prog(name), packet, { ctxIn: skbCtx(index) });
      return { retval: r.retval, data: r.data };
    },
    metric(reason, direction) {
      const value = nl.bpfMapLookup(map('mb_metrics'), metricKey(reason, direction));
      return value ? decodePerCpuMetric(value).packets : 0n;
    },
    ct(key) {
      const value = nl.bpfMapLookup(map('mb_conntrack'), encodeCtKey(key));
      return value ? decodeCtEntry(value) : null;
    },
  };
}

/** A frame as endpoint A sends it (to its host-side MAC). */
export const fromA = (payload: Buffer, type = ETH_P_IP) => ethernet(A.hostMac, A.mac, type, payload);
