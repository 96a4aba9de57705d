// An in-memory stand-in for the native addon (its rtnetlink half, NetlinkAddon), for unit tests: links (veth pairs),
// addresses, routes and rules of one network namespace, with the kernel's answers where Membrane
// depends on them: errors carry errno/code/op like the addon's, EEXIST on duplicate creates,
// ENODEV for unknown links, ESRCH for a route delete that matches nothing, ENOENT for a rule
// delete that matches nothing, and deleting either end of a veth removes the pair together with
// its addresses and every route through it.
//
// Deliberately not modelled: routes the kernel adds by itself (local table, connected prefix
// routes), multipath, namespaces other than this one, IFF_LOWER_UP/carrier.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type {
  AddrInfo, AddrOptions, Family, LinkInfo, NetlinkAddon, RouteInfo, RouteSpec, RuleInfo, RuleSpec, VethOptions, LinkSetOptions,
} from './native.js';
import { formatAddress, parseAddress } from '../ipam/prefix.js';

const ERRNO: Record<string, number> = {
  ENOENT: 2, ESRCH: 3, EEXIST: 17, ENODEV: 19, EINVAL: 22, ERANGE: 34, ENETDOWN: 100, EADDRNOTAVAIL: 99,
};

const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory', ESRCH: 'No such process', EEXIST: 'File exists', ENODEV: 'No such device',
  EINVAL: 'Invalid argument', ERANGE: 'Numerical result out of range', ENETDOWN: 'Network is down',
  EADDRNOTAVAIL: 'Cannot assign requested address',
};

export interface FakeKernelError extends Error {
  errno: number;
  code: string;
  op: string;
}

/**
 * A stand-in for /proc/sys under `dir` with the forwarding switches the daemon turns on (both
 * off), for a core built with the fake netlink: returns the directory to pass as `procSys`.
 */
export function fakeProcSys(dir: string): string {
  const procSys = path.join(dir, 'proc-sys');
  fs.mkdirSync(path.join(procSys, 'net', 'ipv4'), { recursive: true });
  fs.mkdirSync(path.join(procSys, 'net', 'ipv6', 'conf', 'all'), { recursive: true });
  fs.writeFileSync(path.join(procSys, 'net', 'ipv4', 'ip_forward'), '0\n');
  fs.writeFileSync(path.join(procSys, 'net', 'ipv6', 'conf', 'all', 'forwarding'), '0\n');
  return procSys;
}

/** An error shaped exactly like the addon's: '<op>: <strerror>', errno, code, op. */
export function kernelError(code: keyof typeof ERRNO & string, op: string, extack?: string): FakeKernelError {
  const error = new Error(`${op}: ${STRERROR[code] ?? code}${extack ? `; kernel: ${extack}` : ''}`) as FakeKernelError;
  error.errno = ERRNO[code]!;
  error.code = code;
  error.op = op;
  return error;
}

const IFNAMSIZ = 16;
const MAIN_TABLE = 254;
const RTPROT_KERNEL = 2;
const RTPROT_STATIC = 4;

type FakeLink = LinkInfo;

function canonical(family: Family, address: string, what: string): string {
  let parsed;
  try {
    parsed = parseAddress(address);
  } catch {
    throw new TypeError(`${what}: '${address}' is not an IPv${family} address`);
  }
  if (parsed.family !== family) throw new TypeError(`${what}: '${address}' is not an IPv${family} address`);
  return formatAddress(parsed.family, parsed.value);
}

function hostBitsSet(family: Family, address: string, length: number): boolean {
  const bits = family === 4 ? 32 : 128;
  const value = parseAddress(address).value;
  const mask = length === 0 ? 0n : ((1n << BigInt(length)) - 1n) << BigInt(bits - length);
  return (value & ~mask & ((1n << BigInt(bits)) - 1n)) !== 0n;
}

function randomMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = (bytes[0]! & 0xfe) | 0x02; // locally administered unicast, as the kernel's eth_random_addr
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function checkMac(mac: string, what: string): string {
  if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(mac)) {
    throw new TypeError(`${what} is not a MAC address (aa:bb:cc:dd:ee:ff): '${mac}'`);
  }
  return mac.toLowerCase();
}

function routeMatchesKey(a: RouteInfo, b: { family: Family; table: number; type: string; dst: string; dstLen: number; oif: number }): boolean {
  return a.family === b.family && a.table === b.table && a.type === b.type && a.dst === b.dst &&
    a.dstLen === b.dstLen && a.oif === b.oif;
}

export class FakeNetlink implements NetlinkAddon {
  private readonly links = new Map<number, FakeLink>();
  private addrs: AddrInfo[] = [];
  private routes: RouteInfo[] = [];
  private rules: RuleInfo[] = [];
  private nextIndex = 2;
  /** Every call, in order, as 'method' (for tests that check what was or was not done). */
  readonly calls: string[] = [];

  constructor() {
    this.links.set(1, { index: 1, name: 'lo', mtu: 65536, mac: '00:00:00:00:00:00', up: true, kind: '', alias: '', linkIndex: 0, group: 0 });
    // The rules every namespace starts with.
    for (const [family, priority, table] of [[4, 0, 255], [4, 32766, 254], [4, 32767, 253], [6, 0, 255], [6, 32766, 254]] as const) {
      this.rules.push({ family, priority, src: '', srcLen: 0, dst: '', dstLen: 0, table, action: 'lookup', protocol: RTPROT_KERNEL });
    }
  }

  // ---- links ----------------------------------------------------------------------------------

  linkCreateVeth(name: string, peerName: string, options: VethOptions): number {
    this.calls.push('linkCreateVeth');
    const op = `RTM_NEWLINK veth ${name}`;
    for (const n of [name, peerName]) {
      if (typeof n !== 'string' || n.length === 0 || n.length >= IFNAMSIZ || /[\s/:]/.test(n)) {
        throw kernelError('EINVAL', op, `invalid interface name '${n}'`);
      }
    }
    if (name === peerName) throw kernelError('EEXIST', op);
    if (this.findByName(name) || this.findByName(peerName)) throw kernelError('EEXIST', op);
    const mtu = options.mtu ?? 1500;
    if (mtu < 68 || mtu > 65535) throw kernelError('EINVAL', op, `mtu ${mtu} out of range`);
    const mac = options.mac ? checkMac(options.mac, 'linkCreateVeth: options.mac') : randomMac();
    const peerMac = options.peerMac ? checkMac(options.peerMac, 'linkCreateVeth: options.peerMac') : randomMac();
    const index = this.nextIndex++;
    const peerIndex = this.nextIndex++;
    this.links.set(index, { index, name, mtu, mac, up: false, kind: 'veth', alias: options.alias ?? '', linkIndex: peerIndex, group: 0 });
    this.links.set(peerIndex, { index: peerIndex, name: peerName, mtu, mac: peerMac, up: false, kind: 'veth', alias: '', linkIndex: index, group: 0 });
    return index;
  }

  linkDelete(index: number): void {
    this.calls.push('linkDelete');
    const link = this.links.get(index);
    if (!link) throw kernelError('ENODEV', `RTM_DELLINK ${index}`);
    this.dropLink(link);
  }

  linkGetByName(name: string): LinkInfo | null {
    const link = this.findByName(name);
    return link ? { ...link } : null;
  }

  linkGetByIndex(index: number): LinkInfo | null {
    const link = this.links.get(index);
    return link ? { ...link } : null;
  }

  linkList(): LinkInfo[] {
    return [...this.links.values()].map((l) => ({ ...l }));
  }

  linkSetUp(index: number, up: boolean): void {
    this.calls.push('linkSetUp');
    const link = this.links.get(index);
    if (!link) throw kernelError('ENODEV', `RTM_NEWLINK ${up ? 'up' : 'down'} ${index}`);
    // Taking a link down flushes the routes through it, as the kernel does.
    if (link.up && !up) this.routes = this.routes.filter((r) => r.oif !== index);
    link.up = up;
  }

  linkSetAlias(index: number, alias: string): void {
    this.calls.push('linkSetAlias');
    const link = this.links.get(index);
    if (!link) throw kernelError('ENODEV', `RTM_NEWLINK alias ${index}`);
    link.alias = alias;
  }

  linkSet(index: number, options: LinkSetOptions): void {
    this.calls.push('linkSet');
    const op = `RTM_NEWLINK set ${index}`;
    const link = this.links.get(index);
    if (!link) throw kernelError('ENODEV', op);
    if (options.name !== undefined) {
      if (options.name.length === 0 || options.name.length >= IFNAMSIZ || /[\s/:]/.test(options.name)) {
        throw kernelError('EINVAL', op, `invalid interface name '${options.name}'`);
      }
      const other = this.findByName(options.name);
      if (other && other !== link) throw kernelError('EEXIST', op);
    }
    if (options.mtu !== undefined && (options.mtu < 68 || options.mtu > 65535)) throw kernelError('EINVAL', op, `mtu ${options.mtu} out of range`);
    const mac = options.mac !== undefined ? checkMac(options.mac, 'linkSet: options.mac') : undefined;
    if (options.name !== undefined) link.name = options.name;
    if (options.mtu !== undefined) link.mtu = options.mtu;
    if (mac !== undefined) link.mac = mac;
    if (options.group !== undefined) link.group = options.group;
  }

  linkDeleteGroup(group: number): boolean {
    this.calls.push('linkDeleteGroup');
    if (group === 0) throw new TypeError('linkDeleteGroup: group 0 is every link\'s default group; refusing to delete it');
    const doomed = [...this.links.values()].filter((l) => l.group === group);
    for (const link of doomed) if (this.links.has(link.index)) this.dropLink(link);
    return doomed.length > 0;
  }

  linkDeleteGroupAsync(group: number): Promise<boolean> {
    try {
      return Promise.resolve(this.linkDeleteGroup(group));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // ---- addresses ------------------------------------------------------------------------------

  addrAdd(index: number, family: Family, address: string, prefixLen: number, options: AddrOptions): void {
    this.calls.push('addrAdd');
    const op = `RTM_NEWADDR ${address}/${prefixLen} dev ${index}`;
    const addr = canonical(family, address, 'addrAdd: address');
    if (prefixLen > (family === 4 ? 32 : 128)) throw kernelError('EINVAL', op);
    if (!this.links.has(index)) throw kernelError('ENODEV', op);
    if (this.addrs.some((a) => a.index === index && a.family === family && a.address === addr)) throw kernelError('EEXIST', op);
    const flags = (options.nodad ? 0x02 : 0) | (options.noprefixroute ? 0x200 : 0) | (family === 6 ? 0x80 : 0);
    this.addrs.push({ index, family, address: addr, prefixLen, flags });
  }

  addrDel(index: number, family: Family, address: string, prefixLen: number): void {
    this.calls.push('addrDel');
    const op = `RTM_DELADDR ${address}/${prefixLen} dev ${index}`;
    const addr = canonical(family, address, 'addrDel: address');
    if (!this.links.has(index)) throw kernelError('ENODEV', op);
    const at = this.addrs.findIndex((a) => a.index === index && a.family === family && a.address === addr &&
      (family === 6 || a.prefixLen === prefixLen));
    if (at < 0) throw kernelError('EADDRNOTAVAIL', op);
    this.addrs.splice(at, 1);
  }

  addrList(family: Family, index: number): AddrInfo[] {
    return this.addrs.filter((a) => a.family === family && (index === 0 || a.index === index)).map((a) => ({ ...a }));
  }

  // ---- routes ---------------------------------------------------------------------------------

  routeAdd(route: RouteSpec, replace: boolean): void {
    this.calls.push('routeAdd');
    const table = route.table ?? MAIN_TABLE;
    const type = route.type ?? 'unicast';
    const op = `RTM_NEWROUTE ${route.type ? `${route.type} ` : ''}${route.dst}/${route.dstLen} table ${table}`;
    const dst = canonical(route.family, route.dst, 'routeAdd: route.dst');
    const bits = route.family === 4 ? 32 : 128;
    if (!Number.isInteger(route.dstLen) || route.dstLen < 0 || route.dstLen > bits) throw kernelError('EINVAL', op);
    if (route.family === 4 && hostBitsSet(4, dst, route.dstLen)) {
      throw kernelError('EINVAL', op, 'Invalid prefix for given prefix length');
    }
    const oif = route.oif ?? 0;
    if (oif !== 0) {
      const link = this.links.get(oif);
      if (!link) throw kernelError('ENODEV', op);
      if (route.family === 4 && type === 'unicast' && !link.up) throw kernelError('ENETDOWN', op, 'Device for nexthop is not up');
    } else if (type === 'unicast' && !route.gateway) {
      throw kernelError('ENODEV', op);
    }
    const gateway = route.gateway ? canonical(route.family, route.gateway, 'routeAdd: route.gateway') : '';
    const info: RouteInfo = {
      family: route.family, dst, dstLen: route.dstLen, table, type, oif, gateway,
      prefsrc: route.prefsrc ? canonical(route.family, route.prefsrc, 'routeAdd: route.prefsrc') : '',
      scope: route.scope ?? (type === 'local' ? 'host' : type === 'unicast' && !gateway ? 'link' : 'universe'),
      protocol: route.protocol ?? RTPROT_STATIC, priority: route.priority ?? 0,
    };
    const at = this.routes.findIndex((r) => routeMatchesKey(r, info));
    if (at >= 0) {
      if (!replace) throw kernelError('EEXIST', op);
      this.routes[at] = info;
    } else {
      this.routes.push(info);
    }
  }

  /** Fields the caller leaves out are wildcards, as in RTM_DELROUTE; the first match goes. */
  routeDel(route: RouteSpec): void {
    this.calls.push('routeDel');
    const table = route.table ?? MAIN_TABLE;
    const op = `RTM_DELROUTE ${route.type ? `${route.type} ` : ''}${route.dst}/${route.dstLen} table ${table}`;
    const dst = canonical(route.family, route.dst, 'routeDel: route.dst');
    if (route.oif && !this.links.has(route.oif)) throw kernelError('ENODEV', op);
    const gateway = route.gateway ? canonical(route.family, route.gateway, 'routeDel: route.gateway') : undefined;
    const at = this.routes.findIndex((r) => r.family === route.family && r.table === table && r.dst === dst &&
      r.dstLen === route.dstLen && (route.type === undefined || r.type === route.type) &&
      (!route.oif || r.oif === route.oif) && (!route.protocol || r.protocol === route.protocol) &&
      (gateway === undefined || r.gateway === gateway) && (!route.priority || r.priority === route.priority));
    if (at < 0) throw kernelError('ESRCH', op);
    this.routes.splice(at, 1);
  }

  routeList(family: Family, table: number): RouteInfo[] {
    return this.routes.filter((r) => r.family === family && (table === 0 || r.table === table)).map((r) => ({ ...r }));
  }

  // ---- rules ----------------------------------------------------------------------------------

  ruleAdd(rule: RuleSpec): void {
    this.calls.push('ruleAdd');
    const info = this.ruleInfo(rule, 'RTM_NEWRULE');
    if (info.action === 'lookup' && info.table === 0) throw kernelError('EINVAL', this.ruleOp('RTM_NEWRULE', rule));
    const same = this.rules.some((r) => r.family === info.family && r.priority === info.priority && r.src === info.src &&
      r.srcLen === info.srcLen && r.dst === info.dst && r.dstLen === info.dstLen && r.table === info.table &&
      r.action === info.action && r.protocol === info.protocol);
    if (same) throw kernelError('EEXIST', this.ruleOp('RTM_NEWRULE', rule));
    this.rules.push(info);
  }

  /** Unset selectors, table and protocol are wildcards, as in RTM_DELRULE; the first match goes. */
  ruleDel(rule: RuleSpec): void {
    this.calls.push('ruleDel');
    const want = this.ruleInfo(rule, 'RTM_DELRULE');
    const at = this.rules.findIndex((r) => r.family === want.family && r.priority === want.priority &&
      r.action === want.action && (rule.src === undefined || (r.src === want.src && r.srcLen === want.srcLen)) &&
      (rule.dst === undefined || (r.dst === want.dst && r.dstLen === want.dstLen)) &&
      (rule.table === undefined || r.table === want.table) && (!rule.protocol || r.protocol === want.protocol));
    if (at < 0) throw kernelError('ENOENT', this.ruleOp('RTM_DELRULE', rule));
    this.rules.splice(at, 1);
  }

  ruleList(family: Family): RuleInfo[] {
    return this.rules.filter((r) => r.family === family).map((r) => ({ ...r }));
  }

  // ---- test helpers ---------------------------------------------------------------------------

  /**
   * The container's namespace died: the pair vanishes (with its addresses and routes) without
   * anyone calling linkDelete. Throws when no link has that name.
   */
  removeLink(name: string): void {
    const link = this.findByName(name);
    if (!link) throw new Error(`FakeNetlink.removeLink: no link named ${name}`);
    this.dropLink(link);
  }

  /** Routes in every table of both families. */
  allRoutes(): RouteInfo[] {
    return this.routes.map((r) => ({ ...r }));
  }

  /** Rules of both families. */
  allRules(): RuleInfo[] {
    return this.rules.map((r) => ({ ...r }));
  }

  /** Links other than lo. */
  userLinks(): LinkInfo[] {
    return this.linkList().filter((l) => l.index !== 1);
  }

  private findByName(name: string): FakeLink | undefined {
    for (const link of this.links.values()) if (link.name === name) return link;
    return undefined;
  }

  private dropLink(link: FakeLink): void {
    const gone = new Set([link.index]);
    if (link.kind === 'veth' && link.linkIndex && this.links.has(link.linkIndex)) gone.add(link.linkIndex);
    for (const index of gone) this.links.delete(index);
    this.addrs = this.addrs.filter((a) => !gone.has(a.index));
    this.routes = this.routes.filter((r) => !gone.has(r.oif));
  }

  private ruleInfo(rule: RuleSpec, verb: string): RuleInfo {
    const bits = rule.family === 4 ? 32 : 128;
    const side = (address: string | undefined, length: number | undefined, what: string): [string, number] => {
      if (address === undefined) return ['', 0];
      const len = length ?? bits;
      if (len > bits) throw kernelError('EINVAL', this.ruleOp(verb, rule));
      return [canonical(rule.family, address, what), len];
    };
    const [src, srcLen] = side(rule.src, rule.srcLen, `rule.src`);
    const [dst, dstLen] = side(rule.dst, rule.dstLen, `rule.dst`);
    return {
      family: rule.family, priority: rule.priority, src, srcLen, dst, dstLen, table: rule.table ?? 0,
      action: rule.action ?? 'lookup', protocol: rule.protocol ?? 0,
    };
  }

  private ruleOp(verb: string, rule: RuleSpec): string {
    return `${verb} pref ${rule.priority}${rule.src !== undefined ? ` from ${rule.src}/${rule.srcLen ?? (rule.family === 4 ? 32 : 128)}` : ''}` +
      `${rule.dst !== undefined ? ` to ${rule.dst}/${rule.dstLen ?? (rule.family === 4 ? 32 : 128)}` : ''} ${rule.action ?? 'lookup'}` +
      `${rule.table !== undefined ? ` ${rule.table}` : ''}`;
  }
}
