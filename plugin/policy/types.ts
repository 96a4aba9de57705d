// The policy language: documents shaped like Cilium's rules (see README "Policy"), as they are
// after validation. parse.ts turns JSON/YAML text into these, reporting every error with its path;
// compile.ts turns them into per-endpoint map entries.
//
// Labels are `source:key=value`. A selector key without a source (`app`) matches that key from
// any source; with one (`container:app`) only from that source.

/** One label of an endpoint or identity: `source:key=value` (value may be empty). */
export interface Label {
  source: string;
  key: string;
  value: string;
}

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

export interface SelectorExpression {
  /** `key` or `source:key`. */
  key: string;
  operator: SelectorOperator;
  /** Required (non-empty) for In/NotIn, absent for Exists/DoesNotExist. */
  values?: string[];
}

/** Kubernetes-style label selector. `{}` selects every endpoint. */
export interface EndpointSelector {
  /** `key` or `source:key` -> value; all must match. */
  matchLabels?: Record<string, string>;
  /** All must hold. */
  matchExpressions?: SelectorExpression[];
}

/**
 * Named peers. `host`: this machine's own addresses. `world`: every address that is neither a
 * Membrane endpoint nor the host. `all`: anything. `init`: endpoints whose labels are not yet
 * known. `network`: every endpoint on the selected endpoint's own Docker network.
 */
export type Entity = 'host' | 'world' | 'all' | 'init' | 'network';
export const ENTITIES: readonly Entity[] = ['host', 'world', 'all', 'init', 'network'];

export type PortProtocol = 'TCP' | 'UDP' | 'ANY';

export interface PortProtocolSpec {
  /** 1-65535; 0 or absent = every port of the protocol. */
  port: number;
  /** Inclusive end of a range starting at `port` (port <= endPort <= 65535). */
  endPort?: number;
  /** ANY = TCP and UDP. */
  protocol: PortProtocol;
}

export interface PortRule {
  ports: PortProtocolSpec[];
}

export type IcmpFamily = 'IPv4' | 'IPv6';

/** An ICMP (IPv4) or ICMPv6 type. */
export interface IcmpField {
  family: IcmpFamily;
  /** 0-255. */
  type: number;
}

export interface IcmpRule {
  fields: IcmpField[];
}

export interface CidrSet {
  /** Canonical CIDR (a bare address becomes /32 or /128). */
  cidr: string;
  /** Canonical CIDRs, each inside `cidr`. */
  except: string[];
}

/**
 * One element of `ingress`/`ingressDeny` (peers are `from*`) or `egress`/`egressDeny`
 * (peers are `to*`); the parser normalises both spellings into this shape.
 *
 * Peers: the union of `endpoints`, `cidr`, `cidrSet` and `entities`. When none of the four
 * is given, the element allows (or denies) every peer (subject to `requires`).
 * Ports: the union of `toPorts` and `icmps`; when neither is given, every protocol and port.
 */
export interface PolicyPeerRule {
  endpoints?: EndpointSelector[];
  /** Allow rules only: every peer must also match each of these (grants nothing by itself). */
  requires?: EndpointSelector[];
  cidr?: string[];
  cidrSet?: CidrSet[];
  entities?: Entity[];
  toPorts?: PortRule[];
  icmps?: IcmpRule[];
}

export interface PolicyRule {
  endpointSelector: EndpointSelector;
  ingress?: PolicyPeerRule[];
  egress?: PolicyPeerRule[];
  ingressDeny?: PolicyPeerRule[];
  egressDeny?: PolicyPeerRule[];
  /** Used to list and delete rules (`membrane policy get|delete key=value`). */
  labels: Label[];
  description?: string;
}

/** A rule as the repository holds it: with its number and where it came from. */
export interface StoredRule {
  /** Small stable number: verdict counters and events name rules by it (1..65535). */
  id: number;
  rule: PolicyRule;
  /** 'api' for imported rules, 'endpoint:<endpoint id>' for a container's label policy. */
  origin: string;
  /** Policy revision that added it. */
  revision: number;
}

/** A validation problem: where (`[0].ingress[1].toPorts[0].ports[0].port`) and what to write instead. */
export interface PolicyIssue {
  path: string;
  message: string;
}

export type EnforcementMode = 'default' | 'always' | 'never';
export const ENFORCEMENT_MODES: readonly EnforcementMode[] = ['default', 'always', 'never'];
