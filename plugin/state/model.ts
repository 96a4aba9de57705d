// The persisted state: what Membrane promised Docker. Everything else (kernel links, routes,
// rules, netfilter) is derived from this and repaired to match it at start.

import type { AllocatorState } from '../ipam/allocator.js';
import type { IdentityState } from '../identity/identities.js';
import type { PolicyState } from '../policy/repository.js';
import type { ServiceDeclaration } from '../lb/labels.js';
import type { BackendLifecycle, ServicesState } from '../lb/services.js';

export const STATE_VERSION = 1;

export type AddressOwner = 'gateway' | 'aux' | 'endpoint';

export interface PoolRecord {
  /**
   * Opaque to Docker: '<serial>-<cidr>[-<range>]'. Never derived from the CIDR alone: a stale
   * network that dockerd removes at start releases its old pool ids, and those must not hit a
   * newer pool with the same subnet.
   */
  id: string;
  family: 4 | 6;
  /** Canonical CIDR. */
  pool: string;
  /** The --ip-range sub-pool, if any. */
  range?: string;
  /** True when Membrane chose the subnet (no --subnet). */
  automatic: boolean;
  /** Docker's --ipam-opt map, remembered per pool (Docker never resends it). */
  options: Record<string, string>;
  allocator: AllocatorState;
  /** Why each address is taken, since when (ms since epoch, for display) and by which daemon run. */
  owners: Record<string, { kind: AddressOwner; since: number; run?: number }>;
  /** Set once CreateNetwork names this pool. */
  networkId?: string;
  /** Wall-clock ms since the epoch: for display only (the clock steps, see plugin/clock.ts). */
  createdAt: number;
  /** The daemon run that created it (MembraneState.daemonRun); absent means a run before runs were counted. */
  run?: number;
}

export interface NetworkFamilyRecord {
  pool: string;
  poolId?: string;
  /** Gateway address without prefix length, if Docker allocated one. */
  gateway?: string;
  aux: Record<string, string>;
}

export interface NetworkRecord {
  id: string;
  ipv4: NetworkFamilyRecord[];
  ipv6: NetworkFamilyRecord[];
  internal: boolean;
  mtu: number;
  /** Routing table holding this network's isolation routes. */
  table: number;
  /** Small numeric id the BPF datapath uses (endpoint_info.network_id). */
  number?: number;
  /** The -o options Docker passed (com.docker.network.generic). */
  options: Record<string, string>;
  /** Docker's name for it, once learned from Docker (the plugin protocol never says). */
  name?: string;
  /** Wall-clock ms since the epoch: for display only. */
  createdAt: number;
  /** The daemon run that created it. */
  run?: number;
}

/** One `-p` binding Docker asked for. */
export interface PortMapping {
  protocol: 'tcp' | 'udp' | 'sctp';
  /** Port inside the container. */
  port: number;
  hostPort: number;
  /** '' for every host address. */
  hostIP: string;
}

export interface EndpointRecord {
  id: string;
  networkId: string;
  /** Host-side veth name: 'mbr' + the first 12 hex digits of the endpoint id. */
  hostIfName: string;
  /** Container-side veth name until Docker moves and renames it: 'mbc' + 12 hex digits. */
  containerIfName: string;
  mac: string;
  /** True when Membrane chose the MAC (Docker sent none) and must report it back. */
  macGenerated: boolean;
  ipv4?: string;
  ipv6?: string;
  mtu: number;
  joined: boolean;
  sandboxKey?: string;
  /** Small numeric id the BPF datapath uses (endpoint_info.endpoint_id, events, conntrack). */
  number?: number;
  /** ifindex of the host-side veth when it was last plumbed. */
  ifindex?: number;
  /** Ports the container publishes (from Docker's portmap option). */
  ports?: PortMapping[];
  /** True between ProgramExternalConnectivity and RevokeExternalConnectivity: ports are live. */
  published?: boolean;
  /** Wall-clock ms since the epoch: for display only. */
  createdAt: number;
  /** The daemon run that created it. */
  run?: number;
  /** Security identity (ID_INIT = 5 until the container's labels are known). */
  identity?: number;
  /** Identity-relevant labels (`source:key=value`), once known from Docker. */
  labels?: string[];
  /** Labels that are shown but not part of the identity (filtered out as high-churn or Membrane's own). */
  infoLabels?: string[];
  containerId?: string;
  containerName?: string;
  /** What the datapath enforces for it, as last compiled and written into its endpoint entry. */
  policy?: { ingress: boolean; egress: boolean; audit: boolean; revision: number; identity?: number };
  /** Why its label policy was refused (it then stays default-deny in both directions). */
  labelPolicyError?: string;
  /** The services its container's membrane.service labels declare, its weight, or why they are invalid. */
  serviceLabels?: { services: ServiceDeclaration[]; weight: number; error?: string };
  /** Whether it may get new service flows (HEALTHCHECK, `docker stop`); absent: ready. */
  lifecycle?: BackendLifecycle;
}

export interface MembraneState {
  version: number;
  /**
   * How many daemons have started on this state, this one included. Records carry the run that
   * created them, so "created before this daemon started" (what reconciliation with Docker may
   * release) is decided without a clock: the wall clock steps (NTP, RTC corrections right after
   * boot) and the monotonic clock restarts with every boot.
   */
  daemonRun?: number;
  /** The node's ULA /48 for automatic IPv6 pools. */
  ulaPrefix: string;
  /** Next /64 index inside the ULA to try for an automatic pool; only grows. */
  nextIPv6Subnet: number;
  /** Next IPv4 pool index to try inside the default ranges; wraps. */
  nextIPv4Subnet: number;
  /** Serial number of the next pool id; only grows. */
  nextPoolSerial: number;
  /** Next numeric endpoint and network ids for the BPF datapath; only grow. */
  nextEndpointNumber?: number;
  nextNetworkNumber?: number;
  /** BPF map geometry in use (persisted so a restart never recreates maps by accident). */
  datapathGeometry?: { conntrackMax: number; endpointsMax: number };
  pools: Record<string, PoolRecord>;
  networks: Record<string, NetworkRecord>;
  endpoints: Record<string, EndpointRecord>;
  /** Label sets and CIDRs -> identities (stable across restarts). */
  identities?: IdentityState;
  /** Every policy rule, and the revision. */
  policy?: PolicyState;
  /** Services, their VIPs, and the stable frontend and backend ids. */
  services?: ServicesState;
}

/**
 * The top-level keys of MembraneState the store writes only when a commit names them (records by
 * id, or a whole section); the other top-level fields are small and go with every write.
 */
export const STATE_COLLECTIONS = ['pools', 'networks', 'endpoints', 'identities', 'policy', 'services'] as const;

export function emptyState(ulaPrefix: string): MembraneState {
  return { version: STATE_VERSION, ulaPrefix, nextIPv6Subnet: 1, nextIPv4Subnet: 0, nextPoolSerial: 1, pools: {}, networks: {}, endpoints: {} };
}

/** True when the record was created by an earlier daemon run than the current one. */
export function fromEarlierRun(record: { run?: number }, state: Pick<MembraneState, 'daemonRun'>): boolean {
  return (record.run ?? 0) < (state.daemonRun ?? 0);
}
