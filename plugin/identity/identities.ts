// Security identities: a number for each set of identity-relevant labels, the same number for
// the same set across daemon restarts (persisted in the state file), and a number for each
// CIDR that a policy rule names. Numbers below 256 are reserved (bpf/lib/common.h ID_*).

import type { Label } from '../policy/types.js';
import {
  ID_ANY, ID_CLASS_ENDPOINTS, ID_CLASS_WORLD_IPV4, ID_CLASS_WORLD_IPV6, ID_FIRST_CIDR, ID_FIRST_ENDPOINT, ID_HOST, ID_INIT, ID_WORLD_IPV4, ID_WORLD_IPV6,
} from '../datapath/codec.js';
import { formatLabel, labelSetKey, parseLabel } from '../policy/labels.js';
import { parsePrefix } from '../ipam/prefix.js';
import { MembraneError } from '../errors.js';

export interface IdentityState {
  /** Label set key (labelSetKey) -> identity and its labels (formatted). */
  endpoint: Record<string, { id: number; labels: string[] }>;
  /** Canonical CIDR -> identity. */
  cidr: Record<string, number>;
  nextEndpoint: number;
  nextCidr: number;
}

export function emptyIdentityState(): IdentityState {
  return { endpoint: {}, cidr: {}, nextEndpoint: ID_FIRST_ENDPOINT, nextCidr: ID_FIRST_CIDR };
}

export type IdentityKind = 'reserved' | 'endpoint' | 'cidr';

export interface IdentityView {
  id: number;
  kind: IdentityKind;
  labels: Label[];
  /** CIDR identities: the prefix, and its family. */
  cidr?: string;
  family?: 4 | 6;
}

const reserved = (id: number, ...labels: string[]): IdentityView => ({ id, kind: 'reserved', labels: labels.map((l) => parseLabel(l)) });

/** Identities every node has. Selectors can name them by their `reserved:` labels. */
export const RESERVED_IDENTITIES: readonly IdentityView[] = [
  reserved(ID_HOST, 'reserved:host'),
  reserved(ID_INIT, 'reserved:init'),
  { ...reserved(ID_WORLD_IPV4, 'reserved:world', 'reserved:world-ipv4'), family: 4 },
  { ...reserved(ID_WORLD_IPV6, 'reserved:world', 'reserved:world-ipv6'), family: 6 },
];

export const INIT_LABELS: readonly Label[] = [{ source: 'reserved', key: 'init', value: '' }];

/** Wildcard identities that only appear in policy keys, by the names `membrane identity list` shows. */
export const CLASS_IDENTITY_NAMES: Record<number, string> = {
  [ID_ANY]: 'any', [ID_CLASS_ENDPOINTS]: 'any endpoint', [ID_CLASS_WORLD_IPV4]: 'any IPv4 world address',
  [ID_CLASS_WORLD_IPV6]: 'any IPv6 world address',
};

const MAX_ENDPOINT_IDENTITY = ID_FIRST_CIDR - 1;
const MAX_CIDR_IDENTITY = 0xffff_fffe;

export class IdentityAllocator {
  private readonly byId = new Map<number, IdentityView>();

  /** `state` is owned by the caller (the persisted state); this class mutates it in place. */
  constructor(private readonly state: IdentityState) {
    for (const r of RESERVED_IDENTITIES) this.byId.set(r.id, r);
    for (const { id, labels } of Object.values(state.endpoint)) {
      this.byId.set(id, { id, kind: 'endpoint', labels: labels.map((l) => parseLabel(l)) });
    }
    for (const [cidr, id] of Object.entries(state.cidr)) this.byId.set(id, cidrView(cidr, id));
  }

  /** Told the path (under the identity state) of every record written or deleted, and of the counters. */
  onChange: ((path: string[]) => void) | undefined;

  /** The identity of a label set, allocated when the set is new. */
  forLabels(labels: readonly Label[]): { id: number; allocated: boolean } {
    const key = labelSetKey([...labels]);
    const known = this.state.endpoint[key];
    if (known) return { id: known.id, allocated: false };
    const id = this.nextFree(this.state.nextEndpoint, ID_FIRST_ENDPOINT, MAX_ENDPOINT_IDENTITY, 'endpoint');
    this.state.nextEndpoint = id + 1 > MAX_ENDPOINT_IDENTITY ? ID_FIRST_ENDPOINT : id + 1;
    const sorted = [...labels].map((l) => formatLabel(l)).sort();
    this.state.endpoint[key] = { id, labels: sorted };
    this.byId.set(id, { id, kind: 'endpoint', labels: sorted.map((l) => parseLabel(l)) });
    this.onChange?.(['endpoint', key]);
    this.onChange?.(['nextEndpoint']);
    return { id, allocated: true };
  }

  /** The identity of a canonical CIDR named by policy, allocated when new. */
  forCidr(cidr: string): number {
    const known = this.state.cidr[cidr];
    if (known !== undefined) return known;
    const id = this.nextFree(this.state.nextCidr, ID_FIRST_CIDR, MAX_CIDR_IDENTITY, 'CIDR');
    this.state.nextCidr = id + 1 > MAX_CIDR_IDENTITY ? ID_FIRST_CIDR : id + 1;
    this.state.cidr[cidr] = id;
    this.byId.set(id, cidrView(cidr, id));
    this.onChange?.(['cidr', cidr]);
    this.onChange?.(['nextCidr']);
    return id;
  }

  private nextFree(start: number, first: number, last: number, what: string): number {
    let id = start;
    for (let tries = 0; tries <= last - first; tries++) {
      if (!this.byId.has(id)) return id;
      id = id >= last ? first : id + 1;
    }
    throw new MembraneError('MEMBRANE_CONFLICT', `every ${what} identity is in use; ` +
      'remove unused label sets (restart the daemon to collect them) or CIDRs from policy');
  }

  get(id: number): IdentityView | undefined {
    return this.byId.get(id);
  }

  all(): IdentityView[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  /**
   * Forgets identities nothing uses any more: endpoint identities of label sets no endpoint
   * has, and CIDR identities of CIDRs no rule names. Returns how many went.
   */
  collect(usedEndpointIds: ReadonlySet<number>, usedCidrs: ReadonlySet<string>): number {
    let removed = 0;
    for (const [key, { id }] of Object.entries(this.state.endpoint)) {
      if (usedEndpointIds.has(id)) continue;
      delete this.state.endpoint[key];
      this.byId.delete(id);
      this.onChange?.(['endpoint', key]);
      removed++;
    }
    for (const [cidr, id] of Object.entries(this.state.cidr)) {
      if (usedCidrs.has(cidr)) continue;
      delete this.state.cidr[cidr];
      this.byId.delete(id);
      this.onChange?.(['cidr', cidr]);
      removed++;
    }
    return removed;
  }
}

function cidrView(cidr: string, id: number): IdentityView {
  const family = parsePrefix(cidr).family;
  return {
    id, kind: 'cidr', cidr, family,
    labels: [{ source: 'cidr', key: cidr.replaceAll(':', '-'), value: '' }, { source: 'reserved', key: 'world', value: '' }],
  };
}
