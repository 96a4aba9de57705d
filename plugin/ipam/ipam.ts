// Membrane's IPAM: pools and the addresses handed out of them. Pure bookkeeping over the
// persisted state; the caller commits the state before answering Docker.

import { AddressAllocator } from './allocator.js';
import {
  formatAddress, formatPrefix, nthSubnet, overlaps, parseAddress, parseNetwork, parsePrefix, prefixContainsPrefix,
  type Prefix,
} from './prefix.js';
import {
  AddressInUseError, InvalidArgumentError, IpamExhaustedError, NotFoundError, PoolOverlapError,
} from '../errors.js';
import type { AddressOwner, MembraneState, PoolRecord } from '../state/model.js';
import { assertUsableAddress, assertUsableNetwork } from './special-purpose.js';

export const LOCAL_ADDRESS_SPACE = 'membrane-local';
export const GLOBAL_ADDRESS_SPACE = 'membrane-global';
export const GATEWAY_REQUEST = 'com.docker.network.gateway';

export interface PoolRequest {
  addressSpace: string;
  pool: string;
  subPool: string;
  options: Record<string, string>;
  v6: boolean;
}

export interface IpamOptions {
  defaultIPv4Ranges: string[];
  defaultIPv4PoolLength: number;
  /** Prefixes already routed on the host (other than default routes and Membrane's own). */
  hostPrefixes: (family: 4 | 6) => Prefix[];
  /**
   * Called when a specific address is requested but taken: the owner may be a leftover of a
   * container that died while Membrane or dockerd was down. Returns true when it freed it.
   */
  reclaim?: (pool: PoolRecord, address: string) => boolean;
  now?: () => number;
  /** Prefixes pools must never overlap (the service VIP ranges). */
  reserved?: (family: 4 | 6) => Prefix[];
  /** Told every pool record that changes (the store then writes just those). */
  touch?: (path: readonly string[]) => void;
}

export class Ipam {
  private readonly allocators = new Map<string, AddressAllocator>();

  constructor(private readonly state: MembraneState, private readonly options: IpamOptions) {
    for (const record of Object.values(state.pools)) {
      this.allocators.set(record.id, new AddressAllocator({ pool: record.pool, range: record.range, state: record.allocator }));
    }
  }

  private now(): number {
    return (this.options.now ?? Date.now)();
  }

  /** Copies live allocators into their records (all, or the pools named); called when state is written. */
  syncToState(poolIds?: Iterable<string>): void {
    for (const id of poolIds ?? this.allocators.keys()) {
      const record = this.state.pools[id];
      const allocator = this.allocators.get(id);
      if (record && allocator) record.allocator = allocator.toState();
    }
  }

  private touched(poolId: string): void {
    this.options.touch?.(['pools', poolId]);
  }

  pool(poolId: string): PoolRecord {
    const record = this.state.pools[poolId];
    if (!record) {
      throw new NotFoundError(`unknown pool "${poolId}": Membrane has no such pool (it was released, or Membrane's ` +
        'state directory was lost); remove and recreate the network');
    }
    return record;
  }

  allocator(poolId: string): AddressAllocator {
    this.pool(poolId);
    return this.allocators.get(poolId)!;
  }

  requestPool(request: PoolRequest): { poolId: string; pool: string; data: Record<string, string> } {
    if (request.addressSpace && request.addressSpace !== LOCAL_ADDRESS_SPACE && request.addressSpace !== GLOBAL_ADDRESS_SPACE) {
      throw new InvalidArgumentError(`unknown address space "${request.addressSpace}"; Membrane serves ` +
        `"${LOCAL_ADDRESS_SPACE}" and "${GLOBAL_ADDRESS_SPACE}"`);
    }
    const family: 4 | 6 = request.v6 ? 6 : 4;
    let prefix: Prefix;
    let automatic = false;
    if (request.pool) {
      prefix = parseNetwork(request.pool, 'subnet');
      if (prefix.family !== family) {
        throw new InvalidArgumentError(`subnet ${request.pool} is IPv${prefix.family} but Docker asked for an IPv${family} pool`);
      }
      assertUsableNetwork(prefix, 'subnet');
      this.assertNoOverlap(prefix);
    } else {
      if (request.subPool) {
        throw new InvalidArgumentError('--ip-range needs --subnet: give the subnet the range belongs to');
      }
      prefix = family === 6 ? this.nextIPv6Pool() : this.nextIPv4Pool();
      automatic = true;
    }
    let range: Prefix | undefined;
    if (request.subPool) {
      range = parseNetwork(request.subPool, '--ip-range');
      assertUsableNetwork(range, '--ip-range');
      if (!prefixContainsPrefix(prefix, range)) {
        throw new InvalidArgumentError(`--ip-range ${request.subPool} is not inside --subnet ${formatPrefix(prefix)}`);
      }
    }
    const poolText = formatPrefix(prefix);
    const rangeText = range ? formatPrefix(range) : undefined;
    const serial = this.state.nextPoolSerial ?? 1;
    this.state.nextPoolSerial = serial + 1;
    const id = `${serial}-${poolText}${rangeText ? `-${rangeText}` : ''}`;
    const allocator = new AddressAllocator({ pool: poolText, range: rangeText });
    const record: PoolRecord = {
      id, family, pool: poolText, range: rangeText, automatic, options: { ...request.options },
      allocator: allocator.toState(), owners: {}, createdAt: this.now(), run: this.state.daemonRun,
    };
    this.state.pools[id] = record;
    this.allocators.set(id, allocator);
    this.touched(id);
    return { poolId: id, pool: poolText, data: {} };
  }

  /** Idempotent: releasing an unknown pool succeeds (Docker retries and rolls back freely). */
  releasePool(poolId: string): boolean {
    if (!this.state.pools[poolId]) return false;
    delete this.state.pools[poolId];
    this.allocators.delete(poolId);
    this.touched(poolId);
    return true;
  }

  /**
   * Allocates one address. Endpoint addresses come back as /32 or /128: Membrane routes every
   * container address individually (the host is each container's next hop), so nothing but the
   * gateway is on-link inside the container. The gateway keeps the pool's prefix length so that
   * Docker shows the subnet as users expect.
   */
  requestAddress(poolId: string, address: string, options: Record<string, string>): string {
    const record = this.pool(poolId);
    const allocator = this.allocators.get(poolId)!;
    const isGateway = options[GATEWAY_REQUEST] !== undefined || options.RequestAddressType === GATEWAY_REQUEST;
    let preferred = address || undefined;
    if (preferred) {
      const parsed = parseAddress(preferred);
      // Inside a pool that passed the same check this always holds; pools persisted before the
      // check existed may still contain such addresses, and new containers must not get them.
      assertUsableAddress(parsed, isGateway ? 'gateway' : 'requested address (--ip, --ip6 or --aux-address)');
      preferred = formatAddress(parsed.family, parsed.value);
    } else if (isGateway) {
      // Gateways take the first usable address, as Docker's own IPAM does.
      const prefix = parsePrefix(record.pool);
      const first = prefix.family === 4 && prefix.length >= 31 ? prefix.network : prefix.network + 1n;
      preferred = formatAddress(prefix.family, first);
    }
    let allocated: string;
    try {
      allocated = allocator.allocate(preferred);
    } catch (err) {
      if (err instanceof AddressInUseError && preferred && this.options.reclaim?.(record, preferred)) {
        allocated = allocator.allocate(preferred);
      } else if (err instanceof AddressInUseError && isGateway && !address) {
        // The first address is taken (an aux address or --ip): any free one serves as gateway.
        allocated = allocator.allocate();
      } else {
        throw err;
      }
    }
    const kind: AddressOwner = isGateway ? 'gateway' : 'endpoint';
    record.owners[allocated] = { kind, since: this.now(), run: this.state.daemonRun };
    this.touched(poolId);
    const length = isGateway ? parsePrefix(record.pool).length : (record.family === 4 ? 32 : 128);
    return `${allocated}/${length}`;
  }

  /** Idempotent: releasing an address that is not allocated succeeds. */
  releaseAddress(poolId: string, address: string): boolean {
    const record = this.state.pools[poolId];
    if (!record) return false;
    let canonical: string;
    try {
      const parsed = parseAddress(address.split('/')[0]!);
      canonical = formatAddress(parsed.family, parsed.value);
    } catch {
      throw new InvalidArgumentError(`ReleaseAddress: "${address}" is not an IP address`);
    }
    delete record.owners[canonical];
    this.touched(poolId);
    return this.allocators.get(poolId)!.release(canonical);
  }

  /** Marks an address as an aux address (Docker does not say so in RequestAddress). */
  markOwner(poolId: string, address: string, kind: AddressOwner): void {
    const record = this.state.pools[poolId];
    if (record?.owners[address]) {
      record.owners[address].kind = kind;
      this.touched(poolId);
    }
  }

  /** Finds the pool of one family that contains an address. */
  poolContaining(address: string): PoolRecord | undefined {
    const parsed = parseAddress(address);
    for (const record of Object.values(this.state.pools)) {
      if (record.family !== parsed.family) continue;
      const prefix = parsePrefix(record.pool);
      if (overlaps(prefix, { family: parsed.family, network: parsed.value, length: parsed.family === 4 ? 32 : 128 })) {
        return record;
      }
    }
    return undefined;
  }

  private assertNoOverlap(prefix: Prefix): void {
    for (const reserved of this.options.reserved?.(prefix.family) ?? []) {
      if (overlaps(reserved, prefix)) {
        throw new PoolOverlapError(formatPrefix(prefix), formatPrefix(reserved), 'the service VIP range (serviceIPv4Range / serviceIPv6Range)');
      }
    }
    for (const record of Object.values(this.state.pools)) {
      if (record.family !== prefix.family) continue;
      const existing = parsePrefix(record.pool);
      if (overlaps(existing, prefix)) {
        const owner = record.networkId ? `network ${record.networkId.slice(0, 12)}` : 'a pool being created';
        throw new PoolOverlapError(formatPrefix(prefix), record.pool, owner);
      }
    }
  }

  private isFree(prefix: Prefix): boolean {
    for (const record of Object.values(this.state.pools)) {
      if (record.family === prefix.family && overlaps(parsePrefix(record.pool), prefix)) return false;
    }
    for (const hostPrefix of [...this.options.hostPrefixes(prefix.family), ...(this.options.reserved?.(prefix.family) ?? [])]) {
      if (overlaps(hostPrefix, prefix)) return false;
    }
    return true;
  }

  /**
   * A new /64 from the node ULA on every call: Docker asks again when it dislikes a pool and
   * loops forever if it gets the same one back.
   */
  private nextIPv6Pool(): Prefix {
    const ula = parsePrefix(this.state.ulaPrefix);
    const count = 1 << (64 - ula.length);
    for (let tried = 0; tried < count; tried++) {
      const index = (this.state.nextIPv6Subnet + tried) % count;
      if (index === 0) continue; // subnet 0 of the ULA is left for the host's own use
      const candidate = nthSubnet(ula, 64, BigInt(index));
      if (this.isFree(candidate)) {
        this.state.nextIPv6Subnet = (index + 1) % count;
        return candidate;
      }
    }
    throw new IpamExhaustedError(formatPrefix(ula), 'every /64 of the node ULA prefix is in use');
  }

  private nextIPv4Pool(): Prefix {
    const length = this.options.defaultIPv4PoolLength;
    const ranges = this.options.defaultIPv4Ranges.map((r) => parsePrefix(r));
    const perRange = ranges.map((r) => (r.length > length ? 0 : 1 << (length - r.length)));
    const total = perRange.reduce((a, b) => a + b, 0);
    for (let tried = 0; tried < total; tried++) {
      let index = (this.state.nextIPv4Subnet + tried) % total;
      let rangeIndex = 0;
      while (index >= perRange[rangeIndex]!) index -= perRange[rangeIndex++]!;
      const candidate = nthSubnet(ranges[rangeIndex]!, length, BigInt(index));
      if (this.isFree(candidate)) {
        this.state.nextIPv4Subnet = (this.state.nextIPv4Subnet + tried + 1) % total;
        return candidate;
      }
    }
    throw new IpamExhaustedError(this.options.defaultIPv4Ranges.join(','),
      `no free /${length} left in the default IPv4 ranges; give --subnet, or add ranges to defaultIPv4Ranges`);
  }
}
