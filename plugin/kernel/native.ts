// The contract of the native addon (native/): a thin, syscall-shaped layer over rtnetlink.
// Everything here is synchronous: each call is one netlink request and its acknowledgement,
// well under a millisecond, and running them on the event loop keeps every state change of a
// Docker request atomic with respect to other requests.
//
// Errors thrown by the addon are plain Error objects carrying:
//   errno: number      positive errno from the kernel (e.g. 17)
//   code:  string      its symbolic name (e.g. 'EEXIST')
//   op:    string      the operation (e.g. 'RTM_NEWLINK veth mbr0123456789a')
//   message            '<op>: <strerror>[; kernel: <extended ack message>]'
// Validation and defaults live in TypeScript (plugin/kernel/links.ts, routes.ts); the addon only
// checks argument types.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';

export type Family = 4 | 6;

export interface LinkInfo {
  index: number;
  name: string;
  mtu: number;
  /** Lower-case colon hex, '' when the link has no hardware address. */
  mac: string;
  /** IFF_UP is set. */
  up: boolean;
  /** IFLA_INFO_KIND ('veth', 'bridge', ...) or '' for links without one (lo, physical). */
  kind: string;
  /** IFLA_IFALIAS or ''. Membrane marks the links it owns with 'membrane:<endpoint id>'. */
  alias: string;
  /** IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace); 0 if absent. */
  linkIndex: number;
  /** IFLA_GROUP (0 unless set). */
  group: number;
}

export interface VethOptions {
  mtu?: number;
  /** MAC of the host-side end, colon hex. Kernel picks a random one when absent. */
  mac?: string;
  /** MAC of the peer (container-side) end. */
  peerMac?: string;
  /** IFLA_IFALIAS of the host-side end. */
  alias?: string;
}

export interface AddrInfo {
  index: number;
  family: Family;
  address: string;
  prefixLen: number;
  /** IFA_FLAGS (IFA_F_NODAD = 0x02, IFA_F_NOPREFIXROUTE = 0x200, ...). */
  flags: number;
}

export interface AddrOptions {
  /** IFA_F_NODAD: skip IPv6 duplicate address detection. */
  nodad?: boolean;
  /** IFA_F_NOPREFIXROUTE: do not add the connected prefix route. */
  noprefixroute?: boolean;
}

export type RouteType = 'unicast' | 'local' | 'blackhole' | 'unreachable' | 'prohibit' | 'throw';
export type RouteScope = 'universe' | 'link' | 'host';

export interface RouteSpec {
  family: Family;
  /** Destination network address; '0.0.0.0' or '::' with dstLen 0 for a default route. */
  dst: string;
  dstLen: number;
  /** Routing table id; 254 (main) when absent. Ids above 255 use RTA_TABLE. */
  table?: number;
  type?: RouteType;
  /** Output interface index (RTA_OIF). */
  oif?: number;
  /** Next hop (RTA_GATEWAY). */
  gateway?: string;
  /** Preferred source (RTA_PREFSRC). */
  prefsrc?: string;
  scope?: RouteScope;
  /** rtm_protocol; Membrane tags its routes with its own protocol number (see routes.ts). */
  protocol?: number;
  /** RTA_PRIORITY (metric). */
  priority?: number;
}

export interface RouteInfo {
  family: Family;
  dst: string;
  dstLen: number;
  table: number;
  type: RouteType | string;
  oif: number;
  gateway: string;
  prefsrc: string;
  scope: RouteScope | string;
  protocol: number;
  priority: number;
}

export interface RuleSpec {
  family: Family;
  /** FRA_PRIORITY. */
  priority: number;
  /** Source selector (FRA_SRC); omit for 'from all'. */
  src?: string;
  srcLen?: number;
  /** Destination selector (FRA_DST). */
  dst?: string;
  dstLen?: number;
  /** FRA_TABLE for action 'lookup'. */
  table?: number;
  /** FR_ACT_TO_TBL ('lookup'), FR_ACT_BLACKHOLE, FR_ACT_UNREACHABLE, FR_ACT_PROHIBIT. Default 'lookup'. */
  action?: 'lookup' | 'blackhole' | 'unreachable' | 'prohibit';
  /** FRA_PROTOCOL (kernel >= 4.17); used to find our own rules again. */
  protocol?: number;
}

export interface RuleInfo {
  family: Family;
  priority: number;
  src: string;
  srcLen: number;
  dst: string;
  dstLen: number;
  table: number;
  action: string;
  protocol: number;
}

// ---- bpf (libbpf) -------------------------------------------------------------------------

export interface BpfMapInfo {
  /** BPF_MAP_TYPE_* number (1 hash, 2 array, 5 percpu hash, 6 percpu array, 9 LRU hash, 11 LPM trie, 27 ringbuf, ...). */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  /** Kernel map name (at most 15 characters). */
  name: string;
  id: number;
}

export interface BpfObjectMap {
  name: string;
  /** fd of the live map (valid after objectLoad). */
  fd: number;
  info: BpfMapInfo;
}

export interface BpfObjectProgram {
  /** C function name. */
  name: string;
  /** ELF section name (e.g. 'tc'). */
  section: string;
  fd: number;
}

export interface BpfObjectOptions {
  /**
   * Map name -> pin path. libbpf reuses a compatible map already pinned there (BPF_OBJ_GET) and
   * pins newly created ones. The caller removes or migrates incompatible pins first.
   */
  pinPaths?: Record<string, string>;
  /** Map name -> max_entries override (bpf_map__set_max_entries) before load. */
  maxEntries?: Record<string, number>;
  /** Bytes for the .rodata section (load-time constants), replacing its initial value; must match its size. */
  rodata?: Buffer;
  /** Program name -> false to leave a program out of the load (a hook or helper the kernel lacks). */
  autoload?: Record<string, boolean>;
}

export interface BpfObject {
  /** Closes every fd libbpf holds for the object (bpf_object__close); pinned maps and pinned links live on. */
  close(): void;
  maps: BpfObjectMap[];
  programs: BpfObjectProgram[];
}

export interface ProgTestRunResult {
  /** The program's return value (TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7, ...). */
  retval: number;
  /** The packet after the program ran. */
  data: Buffer;
  /** Average ns per run as the kernel measured it. */
  durationNs: number;
  /** The __sk_buff after the run, when ctxIn was given (same size). */
  ctx?: Buffer;
}

export type TcDirection = 'ingress' | 'egress';

export type CgroupHook = 'connect4' | 'connect6' | 'sendmsg4' | 'sendmsg6' | 'recvmsg4' | 'recvmsg6' | 'getpeername4' | 'getpeername6';

export interface IterRunResult {
  path: string;
  /** What the iterator wrote (bpf_seq_write); absent when the namespace could not be entered. */
  output?: Buffer;
  errno?: number;
  code?: string;
  message?: string;
}

export interface RingbufConsumer {
  /** Stops polling and frees the ring buffer manager. */
  close(): void;
}

export interface LinkSetOptions {
  name?: string;
  mtu?: number;
  /** Lower-case colon hex. */
  mac?: string;
  /** IFLA_GROUP: links in one group can be deleted together (linkDeleteGroup). */
  group?: number;
}

/** rtnetlink: links, addresses, routes, rules. */
export interface NetlinkAddon {
  /** Creates a veth pair in the current network namespace and returns the ifindex of `name`. */
  linkCreateVeth(name: string, peerName: string, options: VethOptions): number;
  /** Deletes a link by ifindex (deleting one end of a veth deletes both). */
  linkDelete(index: number): void;
  linkGetByName(name: string): LinkInfo | null;
  linkGetByIndex(index: number): LinkInfo | null;
  linkList(): LinkInfo[];
  linkSetUp(index: number, up: boolean): void;
  linkSetAlias(index: number, alias: string): void;
  /** Changes any of a link's name, MTU, MAC and group in one request (none waits for RCU). */
  linkSet(index: number, options: LinkSetOptions): void;
  /**
   * Deletes every link in `group` with one request, so the kernel's grace periods are paid once
   * for the batch. False when the group has no links. Group 0 (every link's default) is refused.
   */
  linkDeleteGroup(group: number): boolean;
  /** linkDeleteGroup on a worker thread with its own netlink socket: the event loop does not wait for the kernel. */
  linkDeleteGroupAsync(group: number): Promise<boolean>;

  addrAdd(index: number, family: Family, address: string, prefixLen: number, options: AddrOptions): void;
  addrDel(index: number, family: Family, address: string, prefixLen: number): void;
  /** All addresses of `family`, optionally filtered to one ifindex (0 = all). */
  addrList(family: Family, index: number): AddrInfo[];

  /** RTM_NEWROUTE with NLM_F_CREATE|NLM_F_EXCL, or NLM_F_REPLACE when replace is true. */
  routeAdd(route: RouteSpec, replace: boolean): void;
  routeDel(route: RouteSpec): void;
  /** Dumps routes of one family; table 0 = every table. */
  routeList(family: Family, table: number): RouteInfo[];

  ruleAdd(rule: RuleSpec): void;
  ruleDel(rule: RuleSpec): void;
  ruleList(family: Family): RuleInfo[];
}

/** bpf(2) through libbpf: objects, maps, programs, links, ring buffers. */
export interface BpfAddon {
  // bpf: objects, maps, programs, links. Every call throws the same errno-carrying errors;
  // a failed load also carries `verifierLog` (string) with libbpf's and the verifier's output.
  bpfObjectLoad(path: string, options: BpfObjectOptions): BpfObject;
  /** BPF_OBJ_GET on a pinned map or link; returns an fd the caller owns (close with bpfClose). */
  bpfObjGet(path: string): number;
  bpfObjPin(fd: number, path: string): void;
  bpfClose(fd: number): void;
  bpfMapInfo(fd: number): BpfMapInfo;
  /** Value, or null when the key is absent (ENOENT). For per-CPU maps, all CPUs' values concatenated. */
  bpfMapLookup(fd: number, key: Buffer): Buffer | null;
  /** flags: 0 BPF_ANY, 1 BPF_NOEXIST, 2 BPF_EXIST. */
  bpfMapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): void;
  /** false when the key was absent. */
  bpfMapDelete(fd: number, key: Buffer): boolean;
  /** The key after `key` (first key when null), or null at the end. */
  bpfMapNextKey(fd: number, key: Buffer | null): Buffer | null;
  /**
   * BPF_MAP_LOOKUP_BATCH (kernel >= 5.6): up to `max` entries, keys and values concatenated at
   * their sizes. Throws EINVAL for map types without batch support.
   */
  bpfMapLookupBatch(fd: number, max: number): { count: number; keys: Buffer; values: Buffer };
  /** BPF_MAP_UPDATE_BATCH of concatenated keys and values; flags as bpfMapUpdate. Returns the count applied. */
  bpfMapUpdateBatch(fd: number, keys: Buffer, values: Buffer, flags: number): number;
  /** BPF_MAP_DELETE_BATCH of concatenated keys; missing keys are skipped. */
  bpfMapDeleteBatch(fd: number, keys: Buffer): number;
  /** bpfMapUpdate on a worker thread: for maps of maps, whose writes wait for an RCU grace period. */
  bpfMapUpdateAsync(fd: number, key: Buffer, value: Buffer, flags: number): Promise<void>;
  /** bpfMapDeleteBatch on a worker thread (missing keys are skipped). */
  bpfMapDeleteBatchAsync(fd: number, keys: Buffer): Promise<void>;
  /**
   * BPF_MAP_CREATE for maps the daemon makes itself (the per-endpoint policy maps that go into
   * mb_policy). Returns an fd the caller owns. In a map of maps the value written is the inner
   * map's fd (u32), and a lookup returns its id (open it with bpfMapGetFdById).
   */
  bpfMapCreate(type: number, keySize: number, valueSize: number, maxEntries: number, options?: { flags?: number; name?: string }): number;
  bpfMapGetFdById(id: number): number;
  /** Number of possible CPUs (libbpf_num_possible_cpus), the stride of per-CPU values. */
  bpfNumPossibleCpus(): number;
  /** BPF_PROG_TEST_RUN on a tc program with a packet (and optionally a struct __sk_buff ctx). */
  bpfProgTestRun(progFd: number, data: Buffer, options: { repeat?: number; ctxIn?: Buffer; dataSizeOut?: number }): ProgTestRunResult;
  /** BPF_LINK_CREATE with BPF_TCX_INGRESS/EGRESS (kernel >= 6.6); returns the link fd. */
  tcxAttach(ifindex: number, progFd: number, direction: TcDirection): number;
  /** BPF_LINK_UPDATE: atomically swaps the link's program. */
  bpfLinkUpdate(linkFd: number, progFd: number): void;
  /** bpf_tc_hook_create (clsact) + bpf_tc_attach at handle/priority (replacing what is there). */
  tcAttach(ifindex: number, progFd: number, direction: TcDirection, handle: number, priority: number): void;
  tcDetach(ifindex: number, direction: TcDirection, handle: number, priority: number): void;
  /** Prog ids attached via tcx on an interface/direction (BPF_PROG_QUERY). */
  tcxQuery(ifindex: number, direction: TcDirection): number[];
  /** Consumes a BPF ringbuf map: `onRecord` gets a copy of each record, from the event loop (uv_poll on the epoll fd; no busy polling). */
  ringbufConsume(mapFd: number, onRecord: (record: Buffer) => void): RingbufConsumer;
  /** BPF_LINK_CREATE of a cgroup sock_addr program on the cgroup-v2 directory `cgroupPath`; the caller pins or closes the link. */
  cgroupLinkCreate(cgroupPath: string, progFd: number, hook: CgroupHook): number;
  /** BPF_LINK_CREATE of an iterator program (iter/tcp, iter/udp). */
  iterLinkCreate(progFd: number): number;
  /** Runs the iterator to its end once inside each network namespace (on a thread of its own); its output or the error per namespace. */
  iterRun(linkFd: number, netnsPaths: string[]): IterRunResult[];
}

export type NativeAddon = NetlinkAddon & BpfAddon;

/** Where the compiled addon lives; MEMBRANE_NATIVE overrides (tests, packaging). */
function addonCandidates(): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // here = <root>/dist/plugin/kernel at run time.
  const root = path.resolve(here, '..', '..', '..');
  const fromEnv = process.env.MEMBRANE_NATIVE ? [process.env.MEMBRANE_NATIVE] : [];
  return [...fromEnv, path.join(root, 'native', 'build', 'Release', 'membrane_native.node')];
}

let loaded: NativeAddon | undefined;

/** Loads the addon once. Throws an error naming every path it tried and how to build it. */
export function native(): NativeAddon {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const candidate of addonCandidates()) {
    tried.push(candidate);
    if (fs.existsSync(candidate)) {
      loaded = require(candidate) as NativeAddon;
      return loaded;
    }
  }
  throw new Error(`membrane native addon not found (looked in: ${tried.join(', ')}); ` +
    'build it with `npm run build:native` (needs libmnl-dev, libbpf-dev, libelf-dev, zlib1g-dev, g++, python3)');
}
