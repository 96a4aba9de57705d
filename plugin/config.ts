// Daemon configuration: defaults, then /etc/membrane/config.json (or --config), then MEMBRANE_*
// environment variables (what `docker plugin set` and systemd units can change).

import fs from 'node:fs';
import { InvalidArgumentError } from './errors.js';
import { parseNetwork, prefixContainsPrefix } from './ipam/prefix.js';
import { assertUsableNetwork } from './ipam/special-purpose.js';

export interface MembraneConfig {
  /** Where the state file lives. */
  stateDir: string;
  /** The Docker plugin socket; its base name is the driver name (`membrane`). */
  pluginSocket: string;
  /** The management API socket (mode 0600). */
  apiSocket: string;
  /** Ranges that IPv4 pools are carved from when `docker network create` gives no --subnet. */
  defaultIPv4Ranges: string[];
  /** Prefix length of those IPv4 pools. */
  defaultIPv4PoolLength: number;
  /** Node ULA /48 for IPv6 pools; generated once (RFC 4193) and persisted when empty. */
  ulaPrefix: string;
  /** MTU of container interfaces when the network gives no com.docker.network.driver.mtu. */
  defaultMtu: number;
  /** Routing-rule priority of the per-network isolation rules (must be below main's 32766). */
  rulePriority: number;
  /** First routing-table id used for per-network isolation tables. */
  tableBase: number;
  /** Install iptables FORWARD accepts and IPv4 masquerade (off only when the host manages its own firewall). */
  manageNetfilter: boolean;
  /**
   * 'bpf': Membrane's BPF programs on every endpoint (ARP/NDP, anti-spoofing, conntrack, direct
   * delivery between local containers). 'routing': host routing, iptables and the kernel's own
   * neighbour handling only.
   */
  datapath: 'bpf' | 'routing';
  /**
   * How programs are attached: 'auto' uses tcx links where the kernel has them (a named probe)
   * and the clsact qdisc otherwise; 'tcx' or 'clsact' force one. tcx links are owned and
   * pinned; clsact attaches ~30x faster here (see README).
   */
  attachMode: 'auto' | 'tcx' | 'clsact';
  /** Emit a trace event for 1 in N forwarded packets (`membrane monitor --type trace`); 0 = none. */
  traceSample: number;
  /**
   * Veth pairs kept prepared (created, programs attached, policy map ready) for the next
   * CreateEndpoints, so Docker does not wait for the kernel's grace periods; 0 = none.
   */
  preparedEndpoints: number;
  /**
   * Receive packet steering on every endpoint's host-side veth: a flow's packets from the
   * container are processed on one CPU (picked by flow hash) instead of on whichever CPU sent
   * them. Without it, a TCP sender that transmits from two CPUs (its own, and the one where its
   * ACKs arrive) has its segments reordered between the two CPUs' backlogs, and the receiver's
   * duplicate ACKs make it retransmit (README, "Retransmits"). Off by default until its cost is
   * measured: a flow hashed onto its sender's own CPU may move less.
   */
  receiveSteering: boolean;
  /** Where the kernel's network devices are in sysfs; a managed plugin sees the host's under a bind mount. */
  sysClassNet: string;
  /** Conntrack table size (entries) for the BPF datapath; changing it migrates the pinned map. */
  conntrackMax: number;
  /** Where Membrane pins its BPF maps and links (on a bpffs). */
  bpfPinDir: string;
  /** Where the kernel's sysctls are; a managed plugin sees the host's under a bind mount. */
  procSys: string;
  logLevel: string;
  /**
   * Policy enforcement for networks without `-o membrane.enforcement`: 'default' (an endpoint
   * denies by default in a direction once a rule selects it there), 'always', 'never'.
   */
  policyEnforcement: 'default' | 'always' | 'never';
  /** Report policy denies instead of enforcing them, on every network (`-o membrane.policy-audit` per network). */
  policyAudit: boolean;
  /**
   * What an endpoint may do before its container's labels are known (the init identity):
   * 'deny' (fail closed: nothing but ARP/NDP) or 'allow' (treated like any unselected endpoint).
   */
  initPolicy: 'deny' | 'allow';
  /** Label prefixes (`source:key`) that make a label identity-relevant; empty = every label not excluded. */
  labelInclude: string[];
  /** Label prefixes kept out of identities; empty means the built-in list of high-churn labels. */
  labelExclude: string[];
  /** Emit a policy verdict event for every new flow (`membrane monitor --type policy`); drops are always reported. */
  policyVerdictEvents: boolean;
  /** Where IPv4 service VIPs come from. They never leave the host: a range nothing else on the host routes. */
  serviceIPv4Range: string;
  /** Where IPv6 service VIPs come from; empty: the first /112 of the node ULA's subnet 0 (which pools never use). */
  serviceIPv6Range: string;
  /** The DNS zone of service names: NAME.<zone> resolves to a service's VIPs. */
  serviceZone: string;
  /** Answer NAME.<zone> for containers (their queries to any DNS server are caught on their veth). */
  serviceDns: boolean;
  /** Port of the daemon's DNS responder (on the host's addresses; queries are redirected to it). */
  serviceDnsPort: number;
  /** Translate connect() and sendmsg() to VIPs in the socket layer (cgroup programs); per packet otherwise. */
  serviceSocketLB: boolean;
  /** An event for every new flow to a service (`membrane monitor --type service`). */
  serviceEvents: boolean;
  /** Where the host's cgroup-v2 hierarchy is (the socket-level programs attach at its root); empty: the first cgroup2 mount. */
  cgroupRoot: string;
  /** Where the host's /run is (Docker's network namespaces, /run/docker/netns); a managed plugin sees it under a bind mount. */
  hostRun: string;
}

export const DEFAULT_CONFIG: MembraneConfig = {
  stateDir: '/var/lib/membrane',
  pluginSocket: '/run/docker/plugins/membrane.sock',
  apiSocket: '/run/membrane/membrane.sock',
  defaultIPv4Ranges: ['10.210.0.0/16'],
  defaultIPv4PoolLength: 24,
  ulaPrefix: '',
  defaultMtu: 1500,
  rulePriority: 9000,
  tableBase: 0x4d420000,
  manageNetfilter: true,
  datapath: 'bpf',
  attachMode: 'auto',
  traceSample: 0,
  preparedEndpoints: 8,
  receiveSteering: false,
  sysClassNet: '/sys/class/net',
  conntrackMax: 262144,
  bpfPinDir: '/sys/fs/bpf/membrane',
  procSys: '/proc/sys',
  logLevel: 'info',
  policyEnforcement: 'default',
  policyAudit: false,
  initPolicy: 'deny',
  labelInclude: [],
  labelExclude: [],
  policyVerdictEvents: true,
  serviceIPv4Range: '10.211.0.0/16',
  serviceIPv6Range: '',
  serviceZone: 'svc.membrane',
  serviceDns: true,
  serviceDnsPort: 15353,
  serviceSocketLB: true,
  serviceEvents: true,
  cgroupRoot: '',
  hostRun: '/run',
};

const ENV: Record<string, keyof MembraneConfig> = {
  MEMBRANE_STATE_DIR: 'stateDir',
  MEMBRANE_PLUGIN_SOCKET: 'pluginSocket',
  MEMBRANE_API_SOCKET: 'apiSocket',
  MEMBRANE_DEFAULT_IPV4_RANGES: 'defaultIPv4Ranges',
  MEMBRANE_DEFAULT_IPV4_POOL_LENGTH: 'defaultIPv4PoolLength',
  MEMBRANE_ULA_PREFIX: 'ulaPrefix',
  MEMBRANE_DEFAULT_MTU: 'defaultMtu',
  MEMBRANE_MANAGE_NETFILTER: 'manageNetfilter',
  MEMBRANE_PROC_SYS: 'procSys',
  MEMBRANE_DATAPATH: 'datapath',
  MEMBRANE_ATTACH_MODE: 'attachMode',
  MEMBRANE_TRACE_SAMPLE: 'traceSample',
  MEMBRANE_PREPARED_ENDPOINTS: 'preparedEndpoints',
  MEMBRANE_RECEIVE_STEERING: 'receiveSteering',
  MEMBRANE_SYS_CLASS_NET: 'sysClassNet',
  MEMBRANE_CONNTRACK_MAX: 'conntrackMax',
  MEMBRANE_BPF_PIN_DIR: 'bpfPinDir',
  MEMBRANE_LOG_LEVEL: 'logLevel',
  MEMBRANE_POLICY_ENFORCEMENT: 'policyEnforcement',
  MEMBRANE_POLICY_AUDIT: 'policyAudit',
  MEMBRANE_INIT_POLICY: 'initPolicy',
  MEMBRANE_LABEL_INCLUDE: 'labelInclude',
  MEMBRANE_LABEL_EXCLUDE: 'labelExclude',
  MEMBRANE_POLICY_VERDICT_EVENTS: 'policyVerdictEvents',
  MEMBRANE_SERVICE_IPV4_RANGE: 'serviceIPv4Range',
  MEMBRANE_SERVICE_IPV6_RANGE: 'serviceIPv6Range',
  MEMBRANE_SERVICE_ZONE: 'serviceZone',
  MEMBRANE_SERVICE_DNS: 'serviceDns',
  MEMBRANE_SERVICE_DNS_PORT: 'serviceDnsPort',
  MEMBRANE_SERVICE_SOCKET_LB: 'serviceSocketLB',
  MEMBRANE_SERVICE_EVENTS: 'serviceEvents',
  MEMBRANE_CGROUP_ROOT: 'cgroupRoot',
  MEMBRANE_HOST_RUN: 'hostRun',
};

function coerce(key: keyof MembraneConfig, raw: unknown, where: string): unknown {
  const expected = DEFAULT_CONFIG[key];
  if (Array.isArray(expected)) {
    if (typeof raw === 'string') return raw.split(',').map((s) => s.trim()).filter(Boolean);
    if (Array.isArray(raw) && raw.every((s) => typeof s === 'string')) return raw;
  } else if (typeof expected === 'number') {
    const n = typeof raw === 'string' ? Number(raw) : raw;
    if (typeof n === 'number' && Number.isInteger(n)) return n;
  } else if (typeof expected === 'boolean') {
    if (typeof raw === 'boolean') return raw;
    if (raw === 'true' || raw === '1') return true;
    if (raw === 'false' || raw === '0') return false;
  } else if (typeof raw === 'string') {
    return raw;
  }
  throw new InvalidArgumentError(`${where}: ${key} must be ${Array.isArray(expected) ? 'a list of strings' : typeof expected}, got ${JSON.stringify(raw)}`);
}

export function loadConfig(file?: string, env: NodeJS.ProcessEnv = process.env): MembraneConfig {
  const config: MembraneConfig = { ...DEFAULT_CONFIG };
  const path = file ?? env.MEMBRANE_CONFIG ?? '/etc/membrane/config.json';
  if (fs.existsSync(path)) {
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(fs.readFileSync(path, 'utf8'));
    } catch (err) {
      throw new InvalidArgumentError(`config file ${path} is not valid JSON: ${(err as Error).message}`);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new InvalidArgumentError(`config file ${path} must contain a JSON object of settings, e.g. {"defaultMtu": 1450}`);
    }
    for (const [key, value] of Object.entries(parsed)) {
      if (!(key in DEFAULT_CONFIG)) {
        throw new InvalidArgumentError(`config file ${path}: unknown key "${key}"; known keys: ${Object.keys(DEFAULT_CONFIG).join(', ')}`);
      }
      (config as unknown as Record<string, unknown>)[key] = coerce(key as keyof MembraneConfig, value, path);
    }
  } else if (file) {
    throw new InvalidArgumentError(`config file ${file} does not exist`);
  }
  for (const [name, key] of Object.entries(ENV)) {
    const raw = env[name];
    if (raw !== undefined && raw !== '') {
      (config as unknown as Record<string, unknown>)[key] = coerce(key, raw, `environment ${name}`);
    }
  }
  if (config.defaultIPv4PoolLength < 8 || config.defaultIPv4PoolLength > 30) {
    throw new InvalidArgumentError(`defaultIPv4PoolLength must be between 8 and 30, got ${config.defaultIPv4PoolLength}`);
  }
  if (config.datapath !== 'bpf' && config.datapath !== 'routing') {
    throw new InvalidArgumentError(`datapath must be "bpf" or "routing", got ${JSON.stringify(config.datapath)}`);
  }
  if (!['auto', 'tcx', 'clsact'].includes(config.attachMode)) {
    throw new InvalidArgumentError(`attachMode must be "auto", "tcx" or "clsact", got ${JSON.stringify(config.attachMode)}`);
  }
  if (config.preparedEndpoints < 0 || config.preparedEndpoints > 256) {
    throw new InvalidArgumentError(`preparedEndpoints must be 0 (none) to 256, got ${config.preparedEndpoints}`);
  }
  if (config.traceSample < 0) {
    throw new InvalidArgumentError(`traceSample must be 0 (off) or a positive N (1 in N packets), got ${config.traceSample}`);
  }
  if (config.conntrackMax < 1024 || config.conntrackMax > 16_777_216) {
    throw new InvalidArgumentError(`conntrackMax must be between 1024 and 16777216 entries, got ${config.conntrackMax}`);
  }
  if (!['default', 'always', 'never'].includes(config.policyEnforcement)) {
    throw new InvalidArgumentError(`policyEnforcement must be "default", "always" or "never", got ${JSON.stringify(config.policyEnforcement)}`);
  }
  if (!['deny', 'allow'].includes(config.initPolicy)) {
    throw new InvalidArgumentError(`initPolicy must be "deny" (fail closed) or "allow", got ${JSON.stringify(config.initPolicy)}`);
  }
  if (config.defaultMtu < 1280 || config.defaultMtu > 65535) {
    throw new InvalidArgumentError(`defaultMtu must be between 1280 (IPv6 minimum) and 65535, got ${config.defaultMtu}`);
  }
  checkAddressRanges(config);
  return config;
}

/**
 * The ranges Membrane carves automatic pools from must be networks that can hold containers:
 * checked here, at start, so a bad setting stops the daemon with a message instead of failing
 * every later `docker network create`.
 */
function checkAddressRanges(config: MembraneConfig): void {
  if (config.defaultIPv4Ranges.length === 0) {
    throw new InvalidArgumentError('defaultIPv4Ranges is empty: give at least one private IPv4 range, e.g. ["10.210.0.0/16"]');
  }
  for (const range of config.defaultIPv4Ranges) {
    const prefix = parseNetwork(range, 'defaultIPv4Ranges entry');
    if (prefix.family !== 4) {
      throw new InvalidArgumentError(`defaultIPv4Ranges entry ${range} is not IPv4; IPv6 pools come from ulaPrefix`);
    }
    assertUsableNetwork(prefix, 'defaultIPv4Ranges entry');
  }
  const service4 = parseNetwork(config.serviceIPv4Range, 'serviceIPv4Range');
  if (service4.family !== 4 || service4.length > 30) {
    throw new InvalidArgumentError(`serviceIPv4Range ${config.serviceIPv4Range} must be an IPv4 network of /30 or larger, e.g. 10.211.0.0/16`);
  }
  assertUsableNetwork(service4, 'serviceIPv4Range');
  for (const range of config.defaultIPv4Ranges) {
    const pools = parseNetwork(range, 'defaultIPv4Ranges entry');
    if (prefixContainsPrefix(pools, service4) || prefixContainsPrefix(service4, pools)) {
      throw new InvalidArgumentError(`serviceIPv4Range ${config.serviceIPv4Range} overlaps defaultIPv4Ranges entry ${range}: ` +
        'VIPs and container addresses must not share addresses; move one of them');
    }
  }
  if (config.serviceIPv6Range) {
    const service6 = parseNetwork(config.serviceIPv6Range, 'serviceIPv6Range');
    if (service6.family !== 6 || service6.length > 126) {
      throw new InvalidArgumentError(`serviceIPv6Range ${config.serviceIPv6Range} must be an IPv6 network of /126 or larger, e.g. fd00:96::/112`);
    }
    assertUsableNetwork(service6, 'serviceIPv6Range');
  }
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(config.serviceZone) || config.serviceZone.length > 60) {
    throw new InvalidArgumentError(`serviceZone ${JSON.stringify(config.serviceZone)} is not a DNS name of lowercase labels (at most 60 characters), e.g. svc.membrane`);
  }
  if (config.serviceDnsPort < 1 || config.serviceDnsPort > 65535) {
    throw new InvalidArgumentError(`serviceDnsPort must be a port from 1 to 65535, got ${config.serviceDnsPort}`);
  }
  if (config.ulaPrefix) {
    const prefix = parseNetwork(config.ulaPrefix, 'ulaPrefix');
    if (prefix.family !== 6 || prefix.length > 63) {
      throw new InvalidArgumentError(`ulaPrefix ${config.ulaPrefix} must be an IPv6 prefix of /63 or shorter (Membrane hands out ` +
        '/64s from it), e.g. a /48 from fd00::/8; leave it out to have one generated');
    }
    assertUsableNetwork(prefix, 'ulaPrefix');
  }
}
