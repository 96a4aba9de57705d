// Network lifecycle: what CreateNetwork/DeleteNetwork mean for Membrane.

import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { Ipam } from '../ipam/ipam.js';
import type { Logger } from '../log.js';
import type { Netfilter } from '../netfilter/iptables.js';
import type { JsonStore } from '../state/store.js';
import type { MembraneState, NetworkFamilyRecord, NetworkRecord } from '../state/model.js';
import type { Dataplane } from './dataplane.js';
import { parseAddress, parsePrefix, formatPrefix } from '../ipam/prefix.js';

export const MTU_OPTION = 'com.docker.network.driver.mtu';

/** Policy enforcement mode of the network's endpoints (default, always, never); overrides the daemon's. */
export const ENFORCEMENT_OPTION = 'membrane.enforcement';
/** true: policy denies on this network are reported (membrane monitor), not enforced. */
export const AUDIT_OPTION = 'membrane.policy-audit';

/** Membrane's own -o options and their valid values; any other membrane.* key is a typo we report. */
const MEMBRANE_OPTIONS: Record<string, readonly string[]> = {
  [ENFORCEMENT_OPTION]: ['default', 'always', 'never'],
  [AUDIT_OPTION]: ['true', 'false'],
};

export interface Context {
  state: MembraneState;
  store: JsonStore<unknown>;
  ipam: Ipam;
  dataplane: Dataplane;
  netfilter: Netfilter;
  log: Logger;
  defaultMtu: number;
  tableBase: number;
}

export interface CreateNetworkRequest {
  networkId: string;
  options: Record<string, string>;
  internal: boolean;
  enableIPv4: boolean | undefined;
  enableIPv6: boolean;
  ipv4: { pool: string; gateway?: string; aux: Record<string, string> }[];
  ipv6: { pool: string; gateway?: string; aux: Record<string, string> }[];
}

function stripLength(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const plain = address.split('/')[0]!;
  const parsed = parseAddress(plain);
  return parsed.family === 4 ? plain : plain.toLowerCase();
}

export class NetworkManager {
  /** Called after a network is deleted (its services go with it). */
  onDeleted: ((networkId: string) => Promise<void>) | undefined;

  constructor(private readonly ctx: Context) {}

  list(): NetworkRecord[] {
    return Object.values(this.ctx.state.networks);
  }

  get(networkId: string): NetworkRecord {
    const network = this.ctx.state.networks[networkId];
    if (!network) {
      throw new NotFoundError(`network ${networkId.slice(0, 12)} is unknown to Membrane; if Membrane's state was lost, ` +
        'remove the network with `docker network rm` and create it again');
    }
    return network;
  }

  parseMtu(options: Record<string, string>): number {
    const raw = options[MTU_OPTION];
    if (raw === undefined || raw === '') return this.ctx.defaultMtu;
    const mtu = Number(raw);
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new InvalidArgumentError(`-o ${MTU_OPTION}=${raw} is not a valid MTU; give an integer between 68 and 65535 ` +
        '(1280 or more on networks with --ipv6)');
    }
    return mtu;
  }

  async create(request: CreateNetworkRequest): Promise<void> {
    const { ctx } = this;
    for (const key of Object.keys(request.options)) {
      if (!key.startsWith('membrane.')) continue;
      const valid = MEMBRANE_OPTIONS[key];
      if (!valid) {
        throw new InvalidArgumentError(`unknown option -o ${key}; Membrane's network options are ${Object.keys(MEMBRANE_OPTIONS).join(', ')}`);
      }
      if (!valid.includes(request.options[key]!)) {
        throw new InvalidArgumentError(`-o ${key}=${request.options[key]} is not valid; write one of ${valid.map((v) => `${key}=${v}`).join(', ')}`);
      }
    }
    const mtu = this.parseMtu(request.options);
    if (request.ipv6.length > 0 && mtu < 1280) {
      throw new InvalidArgumentError(`-o ${MTU_OPTION}=${mtu} is below 1280, the IPv6 minimum; raise it or drop --ipv6`);
    }
    const families: [4 | 6, CreateNetworkRequest['ipv4'], NetworkFamilyRecord[]][] = [[4, request.ipv4, []], [6, request.ipv6, []]];
    for (const [family, entries, out] of families) {
      for (const entry of entries) {
        const pool = formatPrefix(parsePrefix(entry.pool));
        const record = Object.values(ctx.state.pools).find((p) => p.pool === pool && p.family === family &&
          (p.networkId === undefined || p.networkId === request.networkId));
        if (!record) {
          throw new InvalidArgumentError(`subnet ${pool} was not allocated by Membrane's IPAM; create the network with ` +
            '`--ipam-driver membrane` (Membrane routes each container address itself and needs its own IPAM)');
        }
        const aux: Record<string, string> = {};
        for (const [name, address] of Object.entries(entry.aux)) aux[name] = stripLength(address)!;
        out.push({ pool, poolId: record.id, gateway: stripLength(entry.gateway), aux });
      }
    }
    const existing = ctx.state.networks[request.networkId];
    if (existing) {
      // Docker retried: same network, same answer.
      return;
    }
    const usedTables = new Set(Object.values(ctx.state.networks).map((n) => n.table));
    let table = ctx.tableBase;
    while (usedTables.has(table)) table++;
    const network: NetworkRecord = {
      id: request.networkId, ipv4: families[0][2], ipv6: families[1][2], internal: request.internal, mtu, table,
      options: { ...request.options }, createdAt: Date.now(), run: ctx.state.daemonRun, number: ctx.state.nextNetworkNumber ?? 1,
    };
    ctx.state.nextNetworkNumber = network.number! + 1;
    for (const entry of [...network.ipv4, ...network.ipv6]) {
      const pool = ctx.state.pools[entry.poolId!]!;
      pool.networkId = network.id;
      for (const address of Object.values(entry.aux)) ctx.ipam.markOwner(pool.id, address, 'aux');
    }
    ctx.state.networks[network.id] = network;
    await ctx.store.commit([['networks', network.id], ...[...network.ipv4, ...network.ipv6].map((e) => ['pools', e.poolId!])]);
    this.applyAll();
    await this.syncNetfilter();
    ctx.log.info('network created', { network: network.id, ipv4: network.ipv4.map((f) => f.pool), ipv6: network.ipv6.map((f) => f.pool), internal: network.internal, mtu });
  }

  /** Idempotent. Docker has already released the pools; endpoints left behind are cleaned up. */
  async delete(networkId: string, deleteEndpoint: (id: string) => void): Promise<void> {
    const { ctx } = this;
    const network = ctx.state.networks[networkId];
    if (!network) return;
    // Docker deletes a network only when it has no endpoints left, and ignores our answer: an
    // endpoint still recorded here missed its Leave/DeleteEndpoint, so it goes with the network.
    for (const endpoint of Object.values(ctx.state.endpoints)) {
      if (endpoint.networkId === networkId) {
        if (endpoint.joined) ctx.log.warn('deleting network with an endpoint still joined', { network: networkId, endpoint: endpoint.id });
        deleteEndpoint(endpoint.id);
      }
    }
    delete ctx.state.networks[networkId];
    for (const pool of Object.values(ctx.state.pools)) {
      if (pool.networkId === networkId) pool.networkId = undefined;
    }
    await ctx.store.commit();
    this.applyAll();
    await this.syncNetfilter();
    await this.onDeleted?.(networkId);
    ctx.log.info('network deleted', { network: networkId });
  }

  /** Forward accepts, masquerade and published ports for the whole state. */
  syncNetfilter(): Promise<void> {
    return this.ctx.netfilter.sync(this.list(), Object.values(this.ctx.state.endpoints));
  }

  /** Routes and rules for every network (cheap: a few entries per network pair). */
  applyAll(): void {
    this.ctx.dataplane.syncNetworks(this.list());
  }
}
