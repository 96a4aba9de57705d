// The authoritative DNS responder for service names: NAME.<zone> (svc.membrane by default) to the
// service's virtual IPs. Queries arrive as plain UDP: Docker's embedded resolver forwards names it
// does not know to the upstream server, and Membrane's BPF program on the container's veth rewrites
// the destination of those for our zone to this socket, keeping the container's source address
// (so `resolve` can answer per client) and rewriting our answer's source back to the upstream's.
//
// The wire format is read and written here, not with a DNS library, for three reasons:
// - the question is echoed byte for byte, so 0x20 case randomisation and labels a string cannot
//   hold (binary octets, a literal '.') come back exactly as asked;
// - owner names are compression pointers into the question (RFC 1035 4.1.4), 16 bytes per A
//   record, so a handful of VIPs fits in 512 bytes even under a 253-character name;
// - every length is checked against the packet before it is read, so a hostile datagram can only
//   ever earn a FORMERR or be dropped, and the work per packet is bounded by its size.
//
// There is no TCP listener: a truncated answer (TC) still carries every record that fit (as
// miekg/dns's Truncate does), which is what a client without a TCP path can use.

import dgram from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';
import { ConflictError, InvalidArgumentError } from '../errors.js';
import { parseAddress } from '../ipam/prefix.js';
import { silentLogger, type Logger } from '../log.js';

export interface ServiceAnswer { ipv4: string[]; ipv6: string[] }

export interface DnsResponderOptions {
  /** The zone, e.g. 'svc.membrane' (case-insensitive, no trailing dot needed). */
  zone: string;
  /** TTL of answers in seconds (small: VIPs are stable but services come and go). Default 5. */
  ttlSeconds?: number;
  /**
   * The service's virtual IPs as seen by the client at `clientAddress`, or undefined if there is
   * no such service for it. `name` is the lowercased label(s) before the zone ('a.b' for
   * a.b.<zone>). Called synchronously on the packet path: it must be a fast lookup.
   */
  resolve: (clientAddress: string, name: string) => ServiceAnswer | undefined;
  log?: Logger;
}

/** What the responder did with one datagram; each outcome has a counter in `stats`. */
export type DnsOutcome =
  | 'answered' | 'nodata' | 'nxdomain' | 'refused' | 'formerr' | 'notimp' | 'servfail' | 'badvers' | 'dropped';

export interface DnsResult {
  /** The datagram to send back, or undefined to send nothing. */
  reply: Buffer | undefined;
  outcome: DnsOutcome;
  /** The answer did not fit the client's UDP size: TC is set and some records were left out. */
  truncated: boolean;
  /** Why the answer is SERVFAIL: what `resolve` threw, or the bad address it returned. */
  error?: unknown;
}

export type DnsStats = Record<'queries' | DnsOutcome | 'truncated' | 'sendFailed', number>;

export const DEFAULT_TTL_SECONDS = 5;
/** What we advertise and never exceed: the DNS flag day 2020 size, safe from fragmentation. */
export const EDNS_UDP_SIZE = 1232;
/** The limit without EDNS (RFC 1035 4.2.1), and the floor of any advertised size (RFC 6891 6.2.5). */
export const CLASSIC_UDP_SIZE = 512;

const HEADER_BYTES = 12;
const MAX_NAME_BYTES = 255; // RFC 1035 2.3.4, wire form including the root label
const MAX_LABEL_BYTES = 63;

const TYPE_A = 1;
const TYPE_NS = 2;
const TYPE_SOA = 6;
const TYPE_AAAA = 28;
const TYPE_OPT = 41;
const TYPE_IXFR = 251;
const TYPE_AXFR = 252;
const TYPE_ANY = 255;
const CLASS_IN = 1;

const RCODE_NOERROR = 0;
const RCODE_FORMERR = 1;
const RCODE_SERVFAIL = 2;
const RCODE_NXDOMAIN = 3;
const RCODE_NOTIMP = 4;
const RCODE_REFUSED = 5;
const RCODE_BADVERS = 16; // extended: its upper 8 bits live in the OPT record (RFC 6891 6.1.3)

const FLAG_QR = 0x8000;
const OPCODE_MASK = 0x7800;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_CD = 0x0010;
const EDNS_FLAG_DO = 0x8000;

// SOA timers. Nothing transfers this zone (it is synthesised per client), so the serial never has
// to change and the timers only need to be plausible; MINIMUM is the negative-caching TTL.
const SOA_SERIAL = 1;
const SOA_REFRESH = 3600;
const SOA_RETRY = 600;
const SOA_EXPIRE = 86400;

/** Replies waiting in a socket's send queue beyond which new ones are dropped (bounded memory). */
const MAX_SEND_QUEUE = 1024;
/** At most one warning per interval; the rest are counted in the next one. */
const WARN_INTERVAL_MS = 60_000;
/** Attempts to find a port free on every address when listening on port 0. */
const PORT_ATTEMPTS = 5;

interface Question {
  /** The labels, subarrays of the query (original case). */
  labels: Buffer[];
  /** Offset of each label's length byte: where a compression pointer to that suffix points. */
  offsets: number[];
  type: number;
  klass: number;
  /** Offset just past QCLASS. */
  end: number;
}

interface Edns { udpSize: number; version: number; flags: number }

interface Rr { owner: number; type: number; ttl: number; rdata: Buffer }

export class DnsResponder {
  /** Counters for status and metrics; `queries` counts every datagram received. */
  readonly stats: DnsStats = {
    queries: 0, answered: 0, nodata: 0, nxdomain: 0, refused: 0, formerr: 0, notimp: 0, servfail: 0,
    badvers: 0, dropped: 0, truncated: 0, sendFailed: 0,
  };

  private readonly zoneLabels: Buffer[];
  private readonly ttl: number;
  private readonly resolve: DnsResponderOptions['resolve'];
  private readonly log: Logger;
  private sockets: dgram.Socket[] = [];
  /** Set from the start of listen() to close(), so that two listen() calls cannot both bind. */
  private listening = false;
  private boundPort = 0;
  private lastWarnAt = -Infinity;
  private suppressedWarnings = 0;

  constructor(options: DnsResponderOptions) {
    this.zoneLabels = parseZone(options.zone);
    this.ttl = options.ttlSeconds ?? DEFAULT_TTL_SECONDS;
    // RFC 2181 8: a TTL is 0..2^31-1.
    if (!Number.isInteger(this.ttl) || this.ttl < 0 || this.ttl > 0x7fffffff) {
      throw new InvalidArgumentError(`invalid DNS ttlSeconds ${String(options.ttlSeconds)}: expected a whole number of seconds from 0 to 2147483647, e.g. 5`);
    }
    if (typeof options.resolve !== 'function') throw new InvalidArgumentError('DnsResponder needs a resolve(clientAddress, name) function');
    this.resolve = options.resolve;
    this.log = options.log ?? silentLogger();
  }

  /** The bound UDP port (0 before listen()). */
  get port(): number {
    return this.boundPort;
  }

  /** Binds UDP sockets (one per address, udp4/udp6 as fits) on `port` (0 = any free port; then `port` tells which). */
  async listen(addresses: string[], port: number): Promise<void> {
    if (this.listening) throw new ConflictError(`the DNS responder already listens (port ${this.boundPort}); close() it first`);
    if (!Array.isArray(addresses) || addresses.length === 0) throw new InvalidArgumentError('the DNS responder needs at least one address to listen on, e.g. 127.0.0.1');
    for (const address of addresses) {
      if (typeof address !== 'string' || (!isIPv4(address) && !isIPv6(address))) {
        throw new InvalidArgumentError(`invalid DNS listen address ${JSON.stringify(address)}: expected an IPv4 or IPv6 address like 127.0.0.1 or ::1`);
      }
    }
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new InvalidArgumentError(`invalid DNS port ${String(port)}: expected 0 (any free port) to 65535`);
    }
    this.listening = true;
    // With port 0 the first socket picks the port and the others must get the same one, which may
    // be taken on their address: then start over with a new port.
    for (let attempt = 1; ; attempt++) {
      const bound: dgram.Socket[] = [];
      try {
        let chosen = port;
        for (const address of addresses) {
          const socket = await this.bind(address, chosen);
          bound.push(socket);
          chosen = socket.address().port;
        }
        this.sockets = bound;
        this.boundPort = chosen;
        this.log.info('DNS responder listening', { addresses, port: chosen, zone: this.zone });
        return;
      } catch (err) {
        await Promise.all(bound.map(closeSocket));
        const inUse = (err as { code?: unknown }).code === 'EADDRINUSE';
        if (port !== 0 || !inUse || attempt >= PORT_ATTEMPTS) {
          this.listening = false;
          throw err;
        }
      }
    }
  }

  /** Closes the sockets. Call it after listen() has settled. */
  async close(): Promise<void> {
    const sockets = this.sockets;
    this.listening = false;
    this.sockets = [];
    this.boundPort = 0;
    await Promise.all(sockets.map(closeSocket));
  }

  /** The zone as configured: lowercase, without the trailing dot. */
  get zone(): string {
    return this.zoneLabels.map((l) => l.toString('latin1')).join('.');
  }

  /** Pure: the answer to one query packet from a client, or undefined to send nothing. Exported for unit tests. */
  answer(query: Buffer, clientAddress: string): Buffer | undefined {
    return this.respond(query, clientAddress).reply;
  }

  /** Pure, like answer(), and also says what it decided (for the counters). Never throws. */
  respond(query: Buffer, clientAddress: string): DnsResult {
    try {
      return this.decide(query, clientAddress);
    } catch (err) {
      // Not reachable by design: every read is bounds-checked. If it happens anyway, say nothing.
      return { reply: undefined, outcome: 'dropped', truncated: false, error: err };
    }
  }

  private decide(query: Buffer, clientAddress: string): DnsResult {
    // RFC 1035 / RFC 8906: too short for a header, or a response (answering it could start a
    // loop between two responders): drop.
    if (query.length < HEADER_BYTES) return drop();
    const flags = query.readUInt16BE(2);
    if (flags & FLAG_QR) return drop();
    if (flags & OPCODE_MASK) return this.fail(query, undefined, undefined, RCODE_NOTIMP, 'notimp');

    const qdcount = query.readUInt16BE(4);
    const ancount = query.readUInt16BE(6);
    const nscount = query.readUInt16BE(8);
    const arcount = query.readUInt16BE(10);
    // A QUERY carries exactly one question and nothing in the answer and authority sections.
    if (qdcount !== 1 || ancount !== 0 || nscount !== 0) return this.fail(query, undefined, undefined, RCODE_FORMERR, 'formerr');
    const question = parseQuestion(query);
    if (!question) return this.fail(query, undefined, undefined, RCODE_FORMERR, 'formerr');
    const edns = parseAdditional(query, question.end, arcount);
    if (edns === 'malformed') return this.fail(query, question, undefined, RCODE_FORMERR, 'formerr');
    // We speak EDNS version 0 only (RFC 6891 6.1.3).
    if (edns && edns.version !== 0) return this.fail(query, question, edns, RCODE_BADVERS, 'badvers');

    const zoneStart = question.labels.length - this.zoneLabels.length;
    if (question.klass !== CLASS_IN || zoneStart < 0 || !this.zoneLabels.every((z, i) => asciiEqualsLower(question.labels[zoneStart + i]!, z))) {
      return this.fail(query, question, edns, RCODE_REFUSED, 'refused');
    }
    // Zone transfers are not offered (and are TCP-only anyway).
    if (question.type === TYPE_AXFR || question.type === TYPE_IXFR) return this.fail(query, question, edns, RCODE_REFUSED, 'refused');

    // Owner names are pointers into the question: QNAME at 12, the zone apex where its labels start.
    const qname = HEADER_BYTES;
    const apex = zoneStart === 0 ? qname : question.offsets[zoneStart]!;
    // RFC 2308: negative answers carry the zone's SOA, whose MINIMUM (= its TTL here) bounds caching.
    const soa: Rr = { owner: apex, type: TYPE_SOA, ttl: this.ttl, rdata: this.soaRdata(apex) };

    if (zoneStart === 0) {
      const ns: Rr = { owner: qname, type: TYPE_NS, ttl: this.ttl, rdata: relativeName('ns', apex) };
      const answers = question.type === TYPE_SOA ? [soa]
        : question.type === TYPE_NS ? [ns]
          : question.type === TYPE_ANY ? [soa, ns] : [];
      return this.reply(query, question, edns, RCODE_NOERROR, FLAG_AA, answers, soa);
    }

    const name = serviceName(question.labels.slice(0, zoneStart));
    try {
      const service = name === undefined ? undefined : this.resolve(clientAddress, name);
      if (service === undefined) return this.reply(query, question, edns, RCODE_NXDOMAIN, FLAG_AA, [], soa);
      // ANY (RFC 8482 allows a subset): both address families, nothing else. Other types: NODATA.
      const wantA = question.type === TYPE_A || question.type === TYPE_ANY;
      const wantAAAA = question.type === TYPE_AAAA || question.type === TYPE_ANY;
      // Generated lazily, so a huge list costs only what fits in the packet.
      const answers = chain(wantA ? addressRecords(service.ipv4, 4, qname, this.ttl) : [],
        wantAAAA ? addressRecords(service.ipv6, 6, qname, this.ttl) : []);
      return this.reply(query, question, edns, RCODE_NOERROR, FLAG_AA, answers, soa);
    } catch (err) {
      // resolve() threw, or returned something that is not a list of addresses of the family.
      return { ...this.fail(query, question, edns, RCODE_SERVFAIL, 'servfail'), error: err };
    }
  }

  /** An error answer: no records, not authoritative; the question echoed when we could read it. */
  private fail(query: Buffer, question: Question | undefined, edns: Edns | undefined, rcode: number, outcome: DnsOutcome): DnsResult {
    return { ...this.reply(query, question, edns, rcode, 0, [], undefined), outcome };
  }

  /** Writes the reply; `negative` (the SOA) goes to the authority section when no answer was written. */
  private reply(query: Buffer, question: Question | undefined, edns: Edns | undefined, rcode: number,
    aa: number, answers: Iterable<Rr>, negative: Rr | undefined): DnsResult {
    // Never more than the client can take, nor more than we advertise.
    const limit = edns ? Math.min(Math.max(edns.udpSize, CLASSIC_UDP_SIZE), EDNS_UDP_SIZE) : CLASSIC_UDP_SIZE;
    const out = Buffer.alloc(limit);
    let at = HEADER_BYTES;
    if (question) at += query.copy(out, at, HEADER_BYTES, question.end);
    const optBytes = edns ? 11 : 0;
    let truncated = false;
    const counts = [0, 0];
    for (let s = 0; s < 2 && !truncated; s++) {
      const section = s === 0 ? answers : counts[0] === 0 && negative ? [negative] : [];
      for (const rr of section) {
        if (at + 12 + rr.rdata.length + optBytes > limit) {
          truncated = true;
          break;
        }
        at = out.writeUInt16BE(0xc000 | rr.owner, at);
        at = out.writeUInt16BE(rr.type, at);
        at = out.writeUInt16BE(CLASS_IN, at);
        at = out.writeUInt32BE(rr.ttl, at);
        at = out.writeUInt16BE(rr.rdata.length, at);
        at += rr.rdata.copy(out, at);
        counts[s]!++;
      }
    }
    if (edns) {
      // OPT: root owner, CLASS = our UDP size, TTL = extended RCODE | version 0 | flags (DO echoed, RFC 3225).
      at = out.writeUInt8(0, at);
      at = out.writeUInt16BE(TYPE_OPT, at);
      at = out.writeUInt16BE(EDNS_UDP_SIZE, at);
      at = out.writeUInt32BE(((rcode >> 4) << 24 | (edns.flags & EDNS_FLAG_DO)) >>> 0, at);
      at = out.writeUInt16BE(0, at);
    }
    const queryFlags = query.readUInt16BE(2);
    out.writeUInt16BE(query.readUInt16BE(0), 0);
    out.writeUInt16BE(FLAG_QR | (queryFlags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | aa | (truncated ? FLAG_TC : 0) | (rcode & 0xf), 2);
    out.writeUInt16BE(question ? 1 : 0, 4);
    out.writeUInt16BE(counts[0]!, 6);
    out.writeUInt16BE(counts[1]!, 8);
    out.writeUInt16BE(edns ? 1 : 0, 10);
    const outcome: DnsOutcome = rcode === RCODE_NXDOMAIN ? 'nxdomain' : counts[0]! > 0 || truncated ? 'answered' : 'nodata';
    return { reply: out.subarray(0, at), outcome, truncated };
  }

  private soaRdata(apex: number): Buffer {
    const mname = relativeName('ns', apex);
    const rname = relativeName('hostmaster', apex);
    const timers = Buffer.alloc(20);
    [SOA_SERIAL, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, this.ttl].forEach((v, i) => timers.writeUInt32BE(v, i * 4));
    return Buffer.concat([mname, rname, timers]);
  }

  private bind(address: string, port: number): Promise<dgram.Socket> {
    // ipv6Only: a udp6 socket on :: must not also claim the IPv4 port another socket binds.
    const socket = isIPv6(address) ? dgram.createSocket({ type: 'udp6', ipv6Only: true }) : dgram.createSocket('udp4');
    socket.on('message', (msg, rinfo) => this.onMessage(socket, msg, rinfo));
    return new Promise((resolve, reject) => {
      const onBindError = (err: Error) => {
        void closeSocket(socket);
        reject(err);
      };
      socket.once('error', onBindError);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', onBindError);
        // An unhandled 'error' event would crash the daemon.
        socket.on('error', (err) => this.warn('DNS responder socket error', { address, err: err.message }));
        resolve(socket);
      });
    });
  }

  /** Synchronous and bounded: decide, count, hand the reply to the kernel. */
  private onMessage(socket: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    this.stats.queries++;
    // A link-local source carries its interface (%eth0); the client is the address.
    const result = this.respond(msg, rinfo.address.replace(/%.*$/, ''));
    this.stats[result.outcome]++;
    if (result.truncated) this.stats.truncated++;
    if (result.error !== undefined) {
      this.warn('DNS query failed', { client: rinfo.address, outcome: result.outcome, err: String(result.error) });
    }
    if (!result.reply) return;
    if (socket.getSendQueueCount() >= MAX_SEND_QUEUE) {
      this.stats.sendFailed++;
      return;
    }
    socket.send(result.reply, rinfo.port, rinfo.address, (err) => {
      if (!err) return;
      this.stats.sendFailed++;
      this.warn('DNS reply not sent', { client: rinfo.address, err: err.message });
    });
  }

  /** A misbehaving client or resolver must not flood the log: one line per interval. */
  private warn(message: string, meta: Record<string, unknown>): void {
    const now = performance.now();
    if (now - this.lastWarnAt < WARN_INTERVAL_MS) {
      this.suppressedWarnings++;
      return;
    }
    this.log.warn(message, { ...meta, suppressedSinceLastWarning: this.suppressedWarnings });
    this.lastWarnAt = now;
    this.suppressedWarnings = 0;
  }
}

function drop(): DnsResult {
  return { reply: undefined, outcome: 'dropped', truncated: false };
}

function parseZone(zone: unknown): Buffer[] {
  const text = typeof zone === 'string' ? zone.toLowerCase().replace(/\.$/, '') : '';
  const labels = text.split('.');
  // Leaving room for a service label (up to 63 characters) under the zone.
  const valid = text !== '' && text.length + 2 <= MAX_NAME_BYTES - 64
    && labels.every((l) => l.length >= 1 && l.length <= MAX_LABEL_BYTES && /^[a-z0-9_-]+$/.test(l));
  if (!valid) {
    throw new InvalidArgumentError(`invalid DNS zone ${JSON.stringify(zone)}: expected a domain name like svc.membrane ` +
      '(labels of letters, digits, - and _, at most 189 characters in all)');
  }
  return labels.map((l) => Buffer.from(l, 'latin1'));
}

/** Reads the single question right after the header. Pointers are refused: nothing precedes it to point at. */
function parseQuestion(query: Buffer): Question | undefined {
  const labels: Buffer[] = [];
  const offsets: number[] = [];
  let at = HEADER_BYTES;
  for (;;) {
    if (at >= query.length) return undefined;
    const len = query[at]!;
    if (len === 0) break;
    if (len > MAX_LABEL_BYTES || at + 1 + len > query.length) return undefined;
    offsets.push(at);
    labels.push(query.subarray(at + 1, at + 1 + len));
    at += 1 + len;
    if (at + 1 - HEADER_BYTES > MAX_NAME_BYTES) return undefined;
  }
  at++;
  if (at + 4 > query.length) return undefined;
  return { labels, offsets, type: query.readUInt16BE(at), klass: query.readUInt16BE(at + 2), end: at + 4 };
}

/**
 * Walks the additional section for the OPT record (RFC 6891 6.1.1: at most one, owned by the
 * root). Other records (TSIG, ...) are skipped. Bounded: every record consumes at least 11 bytes.
 */
function parseAdditional(query: Buffer, start: number, arcount: number): Edns | undefined | 'malformed' {
  let edns: Edns | undefined;
  let at = start;
  for (let i = 0; i < arcount; i++) {
    const nameStart = at;
    at = skipName(query, at);
    if (at < 0 || at + 10 > query.length) return 'malformed';
    const type = query.readUInt16BE(at);
    const rdlength = query.readUInt16BE(at + 8);
    if (at + 10 + rdlength > query.length) return 'malformed';
    if (type === TYPE_OPT) {
      if (edns || query[nameStart] !== 0) return 'malformed';
      edns = { udpSize: query.readUInt16BE(at + 2), version: query[at + 5]!, flags: query.readUInt16BE(at + 6) };
    }
    at += 10 + rdlength;
  }
  return edns;
}

/** The offset after a name (labels ending in the root or a pointer), or -1 if it runs off the packet. */
function skipName(query: Buffer, at: number): number {
  for (;;) {
    if (at >= query.length) return -1;
    const len = query[at]!;
    if (len === 0) return at + 1;
    if ((len & 0xc0) === 0xc0) return at + 2 <= query.length ? at + 2 : -1;
    if (len > MAX_LABEL_BYTES) return -1;
    at += 1 + len;
  }
}

function asciiEqualsLower(label: Buffer, lower: Buffer): boolean {
  if (label.length !== lower.length) return false;
  for (let i = 0; i < label.length; i++) {
    const c = label[i]!;
    if ((c >= 0x41 && c <= 0x5a ? c | 0x20 : c) !== lower[i]) return false;
  }
  return true;
}

/**
 * The lowercased service name for resolve(), or undefined when the labels cannot name a service:
 * only printable ASCII other than '.' maps one-to-one onto the 'a.b' string form.
 */
function serviceName(labels: Buffer[]): string | undefined {
  for (const label of labels) {
    for (const c of label) {
      if (c <= 0x20 || c >= 0x7f || c === 0x2e) return undefined;
    }
  }
  return labels.map((l) => l.toString('latin1')).join('.').toLowerCase();
}

function* addressRecords(addresses: string[], family: 4 | 6, owner: number, ttl: number): Generator<Rr> {
  for (const address of addresses) {
    const parsed = parseAddress(address);
    if (parsed.family !== family) throw new InvalidArgumentError(`resolve() listed ${address} among the IPv${family} addresses`);
    const rdata = Buffer.alloc(family === 4 ? 4 : 16);
    for (let i = rdata.length - 1, v = parsed.value; i >= 0; i--, v >>= 8n) rdata[i] = Number(v & 0xffn);
    yield { owner, type: family === 4 ? TYPE_A : TYPE_AAAA, ttl, rdata };
  }
}

/** `label` followed by a compression pointer to `suffix`. */
function relativeName(label: string, suffix: number): Buffer {
  const out = Buffer.alloc(label.length + 3);
  out[0] = label.length;
  out.write(label, 1, 'latin1');
  out.writeUInt16BE(0xc000 | suffix, label.length + 1);
  return out;
}

function* chain<T>(...iterables: Iterable<T>[]): Generator<T> {
  for (const it of iterables) yield* it;
}

function closeSocket(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}
