// The service-name DNS responder: answer() on crafted packets for every rule (decoded with
// dns-packet, an independent implementation of the wire format), a real UDP round trip on loopback,
// property tests that throw random, truncated and mutated packets at it, and dig when installed.

import test from 'ava';
import dnsPacket from 'dns-packet';
import fc from 'fast-check';
import { execFile, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import winston from 'winston';
import { ConflictError, InvalidArgumentError } from '../errors.js';
import { silentLogger } from '../log.js';
import { CLASSIC_UDP_SIZE, DnsResponder, EDNS_UDP_SIZE, type DnsResponderOptions, type ServiceAnswer } from './dns-responder.js';

type Decoded = dnsPacket.DecodedPacket & { rcode: string; opcode: string };
/** @types/dns-packet leaves out ANY, which dns-packet encodes (255). */
type QType = dnsPacket.RecordType | 'ANY';
type Soa = { mname: string; rname: string; serial: number; refresh: number; retry: number; expire: number; minimum: number };

const MANY = Array.from({ length: 200 }, (_, i) => `10.97.${i >> 8}.${i & 0xff}`);
const MANY6 = Array.from({ length: 200 }, (_, i) => `fd00:97::${i.toString(16)}`);

const SERVICES: Record<string, ServiceAnswer> = {
  web: { ipv4: ['10.96.0.10', '10.96.0.11'], ipv6: ['fd00:96::a', '::ffff:10.96.0.10'] },
  v4only: { ipv4: ['10.96.0.20'], ipv6: [] },
  'a.b': { ipv4: ['10.96.0.30'], ipv6: [] },
  many: { ipv4: MANY, ipv6: MANY6 },
};

function responder(options: Partial<DnsResponderOptions> = {}): { dns: DnsResponder; calls: [string, string][] } {
  const calls: [string, string][] = [];
  const dns = new DnsResponder({
    zone: 'svc.membrane',
    resolve: (client, name) => {
      calls.push([client, name]);
      return SERVICES[name] ?? (name.startsWith('many') ? SERVICES.many : undefined);
    },
    log: silentLogger(),
    ...options,
  });
  return { dns, calls };
}

interface QueryOptions {
  id?: number;
  flags?: number;
  klass?: dnsPacket.RecordClass;
  edns?: { udpPayloadSize: number; flags?: number; ednsVersion?: number };
}

function query(name: string, type: QType = 'A', o: QueryOptions = {}): Buffer {
  return dnsPacket.encode({
    type: 'query', id: o.id ?? 0x1234, flags: o.flags ?? dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type: type as dnsPacket.RecordType, class: o.klass ?? 'IN' }],
    additionals: o.edns ? [{ type: 'OPT', name: '.', udpPayloadSize: o.edns.udpPayloadSize, extendedRcode: 0,
      ednsVersion: o.edns.ednsVersion ?? 0, flags: o.edns.flags ?? 0, flag_do: false, options: [] }] : [],
  });
}

/** A packet from raw parts, for what dns-packet will not encode. */
function raw(header: { id?: number; flags?: number; qd?: number; an?: number; ns?: number; ar?: number }, body: number[] | Buffer): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(header.id ?? 0x4321, 0);
  h.writeUInt16BE(header.flags ?? 0x0100, 2);
  h.writeUInt16BE(header.qd ?? 1, 4);
  h.writeUInt16BE(header.an ?? 0, 6);
  h.writeUInt16BE(header.ns ?? 0, 8);
  h.writeUInt16BE(header.ar ?? 0, 10);
  return Buffer.concat([h, Buffer.from(body)]);
}

/** Wire form of a name from its labels (strings or raw bytes). */
function wireName(labels: (string | number[])[]): number[] {
  return [...labels.flatMap((l) => { const b = typeof l === 'string' ? [...Buffer.from(l, 'latin1')] : l; return [b.length, ...b]; }), 0];
}

const A_IN = [0, 1, 0, 1];

function decode(reply: Buffer | undefined): Decoded {
  if (!reply) throw new Error('expected a reply, got none');
  return dnsPacket.decode(reply) as Decoded;
}

function soaOf(rr: dnsPacket.Answer | undefined): Soa {
  if (rr?.type !== 'SOA') throw new Error(`expected an SOA record, got ${rr?.type}`);
  return rr.data as Soa;
}

function dataOf(answers: dnsPacket.Answer[] | undefined): unknown[] {
  return (answers ?? []).map((a) => (a as { data: unknown }).data);
}

// ---- answers ----

test('A: every address with the TTL, AA set, RA off, RD and ID copied, the question echoed', (t) => {
  const { dns, calls } = responder();
  const reply = decode(dns.answer(query('web.svc.membrane', 'A', { id: 0xbeef }), '10.0.0.2'));
  t.like(reply, { id: 0xbeef, type: 'response', rcode: 'NOERROR', opcode: 'QUERY', flag_aa: true, flag_ra: false, flag_rd: true, flag_tc: false });
  t.deepEqual(reply.questions, [{ name: 'web.svc.membrane', type: 'A', class: 'IN' }]);
  t.deepEqual(reply.answers?.map((a) => [a.name, a.type, (a as { ttl: number }).ttl, (a as { class: string }).class]),
    [['web.svc.membrane', 'A', 5, 'IN'], ['web.svc.membrane', 'A', 5, 'IN']]);
  t.deepEqual(dataOf(reply.answers), ['10.96.0.10', '10.96.0.11']);
  t.deepEqual(reply.authorities, []);
  t.deepEqual(reply.additionals, []);
  t.deepEqual(calls, [['10.0.0.2', 'web']]);
});

test('RD clear in the query: clear in the answer; CD is copied', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('web.svc.membrane', 'A', { flags: dnsPacket.CHECKING_DISABLED }), '10.0.0.2'));
  t.like(reply, { rcode: 'NOERROR', flag_rd: false, flag_cd: true, flag_ad: false, flag_aa: true });
});

test('AAAA: the IPv6 addresses, IPv4-mapped ones included', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('web.svc.membrane', 'AAAA'), 'fd00::2'));
  t.like(reply, { rcode: 'NOERROR', flag_aa: true });
  t.deepEqual(reply.answers?.map((a) => a.type), ['AAAA', 'AAAA']);
  t.deepEqual(dataOf(reply.answers), ['fd00:96::a', '::ffff:a60:a']);
});

test('any case: resolve() gets the lowercased name, the answer keeps the question\'s own case (0x20)', (t) => {
  const { dns, calls } = responder();
  const q = query('wEb.SvC.MEMBRANE', 'A');
  const reply = dns.answer(q, '10.0.0.2')!;
  const decoded = decode(reply);
  t.is(decoded.questions?.[0]?.name, 'wEb.SvC.MEMBRANE');
  t.deepEqual(decoded.answers?.map((a) => a.name), ['wEb.SvC.MEMBRANE', 'wEb.SvC.MEMBRANE']);
  // Byte for byte: the question section of the reply is the query's.
  t.deepEqual(reply.subarray(12, q.length), q.subarray(12));
  t.deepEqual(calls, [['10.0.0.2', 'web']]);
});

test('a trailing-dot, upper-case zone option is the same zone', (t) => {
  const { dns } = responder({ zone: 'Cluster.LOCAL.' });
  t.is(dns.zone, 'cluster.local');
  t.is(decode(dns.answer(query('web.cluster.local'), '10.0.0.2')).rcode, 'NOERROR');
  t.is(decode(dns.answer(query('web.svc.membrane'), '10.0.0.2')).rcode, 'REFUSED');
});

test('ttlSeconds sets the records\' TTL and the SOA\'s', (t) => {
  const { dns } = responder({ ttlSeconds: 30 });
  t.deepEqual(decode(dns.answer(query('web.svc.membrane'), '10.0.0.2')).answers?.map((a) => (a as { ttl: number }).ttl), [30, 30]);
  const nx = decode(dns.answer(query('nope.svc.membrane'), '10.0.0.2'));
  t.is((nx.authorities?.[0] as { ttl: number }).ttl, 30);
  t.is(soaOf(nx.authorities?.[0]).minimum, 30);
});

// ---- negative answers (RFC 2308) ----

function assertZoneSoa(t: import('ava').ExecutionContext, rr: dnsPacket.Answer | undefined, owner = 'svc.membrane', ttl = 5): void {
  t.is(rr?.name, owner);
  t.is((rr as { ttl: number }).ttl, ttl);
  const soa = soaOf(rr);
  t.is(soa.mname.toLowerCase(), 'ns.svc.membrane');
  t.is(soa.rname.toLowerCase(), 'hostmaster.svc.membrane');
  t.true(soa.serial > 0 && soa.refresh > 0 && soa.retry > 0 && soa.expire > soa.refresh);
  t.is(soa.minimum, ttl);
}

test('NODATA: a known name without an address of the family is NOERROR, no answer, the SOA', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('v4only.svc.membrane', 'AAAA'), '10.0.0.2'));
  t.like(reply, { rcode: 'NOERROR', flag_aa: true });
  t.deepEqual(reply.answers, []);
  t.is(reply.authorities?.length, 1);
  assertZoneSoa(t, reply.authorities?.[0]);
  t.is(dns.respond(query('v4only.svc.membrane', 'AAAA'), '10.0.0.2').outcome, 'nodata');
});

test('NXDOMAIN: an unknown name in the zone, with the SOA, authoritative', (t) => {
  const { dns, calls } = responder();
  const reply = decode(dns.answer(query('nope.svc.membrane', 'A'), '10.0.0.2'));
  t.like(reply, { rcode: 'NXDOMAIN', flag_aa: true, flag_ra: false });
  t.deepEqual(reply.answers, []);
  assertZoneSoa(t, reply.authorities?.[0]);
  t.deepEqual(calls, [['10.0.0.2', 'nope']]);
  t.is(dns.respond(query('nope.svc.membrane', 'AAAA'), '10.0.0.2').outcome, 'nxdomain');
});

test('the SOA owner keeps the case the question gave the zone', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('Nope.SVC.Membrane', 'A'), '10.0.0.2'));
  t.is(reply.authorities?.[0]?.name, 'SVC.Membrane');
  t.is(soaOf(reply.authorities?.[0]).mname, 'ns.SVC.Membrane');
});

test('resolve() is asked per client: the same name can exist for one and not another', (t) => {
  const dns = new DnsResponder({ zone: 'svc.membrane', resolve: (client, name) => (client === '10.0.0.2' && name === 'db' ? { ipv4: ['10.96.1.1'], ipv6: [] } : undefined) });
  t.is(decode(dns.answer(query('db.svc.membrane'), '10.0.0.2')).rcode, 'NOERROR');
  t.is(decode(dns.answer(query('db.svc.membrane'), '10.0.0.3')).rcode, 'NXDOMAIN');
});

// ---- the apex ----

test('apex SOA: the SOA as the answer', (t) => {
  const { dns, calls } = responder();
  const reply = decode(dns.answer(query('svc.membrane', 'SOA'), '10.0.0.2'));
  t.like(reply, { rcode: 'NOERROR', flag_aa: true });
  t.is(reply.answers?.length, 1);
  assertZoneSoa(t, reply.answers?.[0]);
  t.deepEqual(reply.authorities, []);
  t.deepEqual(calls, [], 'the apex is not a service');
});

test('apex NS: ns.<zone>', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('SVC.membrane', 'NS'), '10.0.0.2'));
  t.like(reply, { rcode: 'NOERROR', flag_aa: true });
  t.deepEqual(reply.answers?.map((a) => [a.name, a.type, (a as { data: string }).data]), [['SVC.membrane', 'NS', 'ns.SVC.membrane']]);
});

test('apex A, AAAA, TXT: NODATA with the SOA; ANY: SOA and NS', (t) => {
  const { dns } = responder();
  for (const type of ['A', 'AAAA', 'TXT'] as const) {
    const reply = decode(dns.answer(query('svc.membrane', type), '10.0.0.2'));
    t.like(reply, { rcode: 'NOERROR', flag_aa: true }, type);
    t.deepEqual(reply.answers, [], type);
    assertZoneSoa(t, reply.authorities?.[0]);
  }
  const any = decode(dns.answer(query('svc.membrane', 'ANY'), '10.0.0.2'));
  t.deepEqual(any.answers?.map((a) => a.type), ['SOA', 'NS']);
});

// ---- names of more labels, other types ----

test('a.b.<zone>: resolve() is asked for "a.b"; known answers, unknown is NXDOMAIN', (t) => {
  const { dns, calls } = responder();
  const known = decode(dns.answer(query('A.b.svc.membrane'), '10.0.0.2'));
  t.is(known.rcode, 'NOERROR');
  t.deepEqual(dataOf(known.answers), ['10.96.0.30']);
  t.is(decode(dns.answer(query('x.web.svc.membrane'), '10.0.0.2')).rcode, 'NXDOMAIN');
  t.deepEqual(calls, [['10.0.0.2', 'a.b'], ['10.0.0.2', 'x.web']]);
});

test('SRV, TXT, MX, PTR, CNAME for a known name: NODATA', (t) => {
  const { dns } = responder();
  for (const type of ['SRV', 'TXT', 'MX', 'PTR', 'CNAME'] as const) {
    const reply = decode(dns.answer(query('web.svc.membrane', type), '10.0.0.2'));
    t.like(reply, { rcode: 'NOERROR', flag_aa: true }, type);
    t.deepEqual(reply.answers, [], type);
    t.is(reply.authorities?.[0]?.type, 'SOA', type);
  }
});

test('ANY for a known name: its A and AAAA records', (t) => {
  const { dns } = responder();
  const reply = decode(dns.answer(query('web.svc.membrane', 'ANY'), '10.0.0.2'));
  t.is(reply.rcode, 'NOERROR');
  t.deepEqual(reply.answers?.map((a) => a.type), ['A', 'A', 'AAAA', 'AAAA']);
});

test('labels a string cannot carry (a literal dot, non-ASCII bytes) name no service: NXDOMAIN, question echoed exactly', (t) => {
  const { dns, calls } = responder();
  for (const label of ['a.b', [0xff, 0x41], [0x41, 0x00], 'we b']) {
    const q = raw({}, [...wireName([label, 'svc', 'membrane']), ...A_IN]);
    const reply = dns.answer(q, '10.0.0.2')!;
    t.is(decode(reply).rcode, 'NXDOMAIN');
    t.deepEqual(reply.subarray(12, q.length), q.subarray(12));
  }
  t.deepEqual(calls, [], 'resolve() was never asked');
});

// ---- outside the zone, errors ----

test('questions outside the zone: REFUSED, not authoritative, question echoed', (t) => {
  const { dns, calls } = responder();
  for (const name of ['example.com', 'membrane', 'xsvc.membrane', 'web.svc.membrane.evil', 'web.svcmembrane', '.']) {
    const reply = decode(dns.answer(query(name), '10.0.0.2'));
    t.like(reply, { rcode: 'REFUSED', flag_aa: false }, name);
    t.is(reply.questions?.length, 1);
    t.deepEqual(reply.answers, []);
  }
  t.deepEqual(calls, []);
});

test('a class other than IN (CHAOS version.bind, or the zone in CH): REFUSED', (t) => {
  const { dns } = responder();
  t.is(decode(dns.answer(query('web.svc.membrane', 'A', { klass: 'CH' }), '10.0.0.2')).rcode, 'REFUSED');
  t.is(decode(dns.answer(query('version.bind', 'TXT', { klass: 'CH' }), '10.0.0.2')).rcode, 'REFUSED');
});

test('zone transfers (AXFR, IXFR): REFUSED', (t) => {
  const { dns } = responder();
  t.is(decode(dns.answer(query('svc.membrane', 'AXFR'), '10.0.0.2')).rcode, 'REFUSED');
  t.is(decode(dns.answer(query('svc.membrane', 'IXFR'), '10.0.0.2')).rcode, 'REFUSED');
});

test('not exactly one question, or records in the answer or authority section: FORMERR, ID kept', (t) => {
  const { dns } = responder();
  const q = [...wireName(['web', 'svc', 'membrane']), ...A_IN];
  for (const [what, header, body] of [
    ['no question', { qd: 0 }, []],
    ['two questions', { qd: 2 }, [...q, ...q]],
    ['an answer record', { an: 1 }, [...q, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]],
    ['an authority record', { ns: 1 }, [...q, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]],
  ] as const) {
    const result = dns.respond(raw({ id: 77, ...header }, [...body]), '10.0.0.2');
    t.is(result.outcome, 'formerr', what);
    t.like(decode(result.reply), { id: 77, rcode: 'FORMERR', flag_aa: false, flag_rd: true }, what);
  }
});

test('a malformed question (truncated, a pointer, an over-long label or name): FORMERR', (t) => {
  const { dns } = responder();
  const long = Array.from({ length: 5 }, () => 'x'.repeat(60));
  for (const [what, body] of [
    ['cut in a label', [3, 0x77, 0x65]],
    ['no type and class', wireName(['web', 'svc', 'membrane'])],
    ['half a type', [...wireName(['web']), 0]],
    ['a compression pointer', [0xc0, 12, ...A_IN]],
    ['a 64-byte label', [64, ...Buffer.alloc(64, 0x61), 0, ...A_IN]],
    ['an extended label type', [0x40, 0, ...A_IN]],
    ['a 306-byte name', [...wireName([...long, 'svc', 'membrane']), ...A_IN]],
  ] as const) {
    const result = dns.respond(raw({}, [...body]), '10.0.0.2');
    t.is(result.outcome, 'formerr', what);
    const reply = decode(result.reply);
    t.is(reply.rcode, 'FORMERR', what);
    t.deepEqual(reply.questions, [], what);
  }
});

test('a name of exactly 255 bytes is a name; 256 is FORMERR', (t) => {
  const { dns } = responder();
  // 3 x 61 + 58 + 'svc' (4) + 'membrane' (9) + the root (1) = 255.
  const name = wireName(['x'.repeat(60), 'x'.repeat(60), 'x'.repeat(60), 'x'.repeat(57), 'svc', 'membrane']);
  t.is(name.length, 255);
  t.is(decode(dns.answer(raw({}, [...name, ...A_IN]), '10.0.0.2')).rcode, 'NXDOMAIN');
  const tooLong = wireName(['x'.repeat(60), 'x'.repeat(60), 'x'.repeat(60), 'x'.repeat(58), 'svc', 'membrane']);
  t.is(dns.respond(raw({}, [...tooLong, ...A_IN]), '10.0.0.2').outcome, 'formerr');
});

test('responses and packets shorter than a header are dropped', (t) => {
  const { dns } = responder();
  const response = query('web.svc.membrane');
  response.writeUInt16BE(response.readUInt16BE(2) | 0x8000, 2);
  t.is(dns.answer(response, '10.0.0.2'), undefined);
  t.is(dns.respond(response, '10.0.0.2').outcome, 'dropped');
  for (let n = 0; n < 12; n++) t.is(dns.answer(Buffer.alloc(n), '10.0.0.2'), undefined);
});

test('opcodes other than QUERY (IQUERY, STATUS, NOTIFY, UPDATE): NOTIMP, header only, opcode echoed', (t) => {
  const { dns } = responder();
  for (const opcode of [1, 2, 4, 5, 15]) {
    const result = dns.respond(query('web.svc.membrane', 'A', { flags: (opcode << 11) | dnsPacket.RECURSION_DESIRED }), '10.0.0.2');
    t.is(result.outcome, 'notimp');
    const reply = decode(result.reply);
    t.is(reply.rcode, 'NOTIMP');
    t.is((reply.flags! >> 11) & 0xf, opcode);
  }
});

test('resolve() throwing, or returning an address of the wrong family or no address at all: SERVFAIL, never a throw', (t) => {
  const cases: [string, DnsResponderOptions['resolve']][] = [
    ['throws', () => { throw new Error('boom'); }],
    ['IPv4 among IPv6', () => ({ ipv4: [], ipv6: ['10.0.0.1'] })],
    ['not an address', () => ({ ipv4: ['10.0.0.300'], ipv6: [] })],
    ['not a list', () => ({ ipv4: undefined, ipv6: [] }) as unknown as ServiceAnswer],
  ];
  for (const [what, resolve] of cases) {
    const dns = new DnsResponder({ zone: 'svc.membrane', resolve });
    const result = dns.respond(query('web.svc.membrane', 'ANY', { edns: { udpPayloadSize: 1232 } }), '10.0.0.2');
    t.is(result.outcome, 'servfail', what);
    t.truthy(result.error, what);
    const reply = decode(result.reply);
    t.like(reply, { rcode: 'SERVFAIL', flag_aa: false }, what);
    t.deepEqual(reply.answers, [], what);
    t.is(reply.additionals?.[0]?.type, 'OPT', what);
  }
});

// ---- EDNS(0) ----

test('EDNS: an OPT in the query gets an OPT (UDP size 1232, DO echoed) in the answer; none without', (t) => {
  const { dns } = responder();
  const withOpt = decode(dns.answer(query('web.svc.membrane', 'A', { edns: { udpPayloadSize: 4096, flags: dnsPacket.DNSSEC_OK } }), '10.0.0.2'));
  t.is(withOpt.rcode, 'NOERROR');
  t.is(withOpt.additionals?.length, 1);
  t.like(withOpt.additionals?.[0], { type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, ednsVersion: 0, extendedRcode: 0, flag_do: true });
  const plain = decode(dns.answer(query('web.svc.membrane', 'A', { edns: { udpPayloadSize: 4096 } }), '10.0.0.2'));
  t.like(plain.additionals?.[0], { type: 'OPT', flag_do: false });
  t.deepEqual(decode(dns.answer(query('web.svc.membrane'), '10.0.0.2')).additionals, []);
  // Negative answers too, after the SOA.
  const nx = decode(dns.answer(query('nope.svc.membrane', 'A', { edns: { udpPayloadSize: 1232 } }), '10.0.0.2'));
  t.deepEqual([nx.rcode, nx.authorities?.[0]?.type, nx.additionals?.[0]?.type], ['NXDOMAIN', 'SOA', 'OPT']);
});

test('EDNS options in the query (cookie, padding) are skipped, not echoed', (t) => {
  const { dns } = responder();
  const q = dnsPacket.encode({
    type: 'query', id: 1, questions: [{ name: 'web.svc.membrane', type: 'A' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false,
      options: [{ code: 10, data: Buffer.alloc(8, 7) } as unknown as dnsPacket.PacketOpt, { code: 12, length: 40 } as dnsPacket.PacketOpt] }],
  });
  const reply = decode(dns.answer(q, '10.0.0.2'));
  t.is(reply.rcode, 'NOERROR');
  t.deepEqual((reply.additionals?.[0] as dnsPacket.OptAnswer).options, []);
});

test('EDNS version 1: BADVERS (extended RCODE 16) with an OPT of version 0, no answer', (t) => {
  const { dns } = responder();
  const result = dns.respond(query('web.svc.membrane', 'A', { edns: { udpPayloadSize: 1232, ednsVersion: 1 } }), '10.0.0.2');
  t.is(result.outcome, 'badvers');
  const reply = decode(result.reply);
  const opt = reply.additionals?.[0] as dnsPacket.OptAnswer;
  t.is(((opt.extendedRcode << 4) | (reply.flags! & 0xf)), 16);
  t.is(opt.ednsVersion, 0);
  t.deepEqual(reply.answers, []);
});

test('two OPT records, or an OPT not owned by the root: FORMERR', (t) => {
  const { dns } = responder();
  const q = [...wireName(['web', 'svc', 'membrane']), ...A_IN];
  const opt = [0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
  const namedOpt = [1, 0x78, 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
  t.is(dns.respond(raw({ ar: 2 }, [...q, ...opt, ...opt]), '10.0.0.2').outcome, 'formerr');
  t.is(dns.respond(raw({ ar: 1 }, [...q, ...namedOpt]), '10.0.0.2').outcome, 'formerr');
  // A cut-off additional section, or one that claims more records than it holds.
  t.is(dns.respond(raw({ ar: 1 }, [...q, ...opt.slice(0, 8)]), '10.0.0.2').outcome, 'formerr');
  t.is(dns.respond(raw({ ar: 2 }, [...q, ...opt]), '10.0.0.2').outcome, 'formerr');
  // Another record type in the additional section (a TSIG, say) is skipped; the OPT still counts.
  const other = [0xc0, 12, 0, 250, 0, 255, 0, 0, 0, 0, 0, 2, 0xaa, 0xbb];
  const reply = decode(dns.answer(raw({ ar: 2 }, [...q, ...other, ...opt]), '10.0.0.2'));
  t.is(reply.rcode, 'NOERROR');
  t.is(reply.additionals?.[0]?.type, 'OPT');
});

// ---- sizes and truncation ----

function answerCount(reply: Buffer): number {
  return reply.readUInt16BE(6);
}

test('without EDNS an answer never exceeds 512 bytes: whole records that fit, then TC', (t) => {
  const { dns } = responder();
  const q = query('many.svc.membrane', 'A');
  const result = dns.respond(q, '10.0.0.2');
  const reply = result.reply!;
  t.true(result.truncated);
  t.is(result.outcome, 'answered');
  t.true(reply.length <= CLASSIC_UDP_SIZE);
  // 12 header + the question + 16 bytes per compressed A record.
  t.is(answerCount(reply), Math.floor((CLASSIC_UDP_SIZE - q.length) / 16));
  const decoded = decode(reply);
  t.true(decoded.flag_tc);
  t.deepEqual(dataOf(decoded.answers), MANY.slice(0, answerCount(reply)));
  t.deepEqual(decoded.authorities, []);
});

test('EDNS: the advertised size is honoured, never above 1232 and never below 512', (t) => {
  const { dns } = responder();
  for (const [advertised, limit] of [[4096, 1232], [1232, 1232], [800, 800], [511, 512], [100, 512]] as const) {
    const reply = dns.answer(query('many.svc.membrane', 'AAAA', { edns: { udpPayloadSize: advertised } }), '10.0.0.2')!;
    t.true(reply.length <= limit, `advertised ${advertised}`);
    t.true(reply.length > limit - 28, `advertised ${advertised}: filled up`);
    const decoded = decode(reply);
    t.true(decoded.flag_tc);
    t.is(decoded.additionals?.[0]?.type, 'OPT', 'the OPT survives truncation');
  }
});

test('a handful of VIPs fits in 512 bytes even under the longest name: 8 A and 4 AAAA, no TC', (t) => {
  const dns = new DnsResponder({ zone: 'svc.membrane', resolve: () => ({ ipv4: MANY.slice(0, 8), ipv6: MANY6.slice(0, 4) }) });
  const name = wireName(['x'.repeat(60), 'x'.repeat(60), 'x'.repeat(60), 'x'.repeat(57), 'svc', 'membrane']);
  for (const [qtype, count] of [[1, 8], [28, 4], [255, 12]] as const) {
    const reply = dns.answer(raw({}, [...name, 0, qtype, 0, 1]), '10.0.0.2')!;
    t.true(reply.length <= CLASSIC_UDP_SIZE);
    const decoded = decode(reply);
    t.false(decoded.flag_tc);
    t.is(decoded.answers?.length, count);
  }
});

test('a huge address list costs only what fits: resolve() may return thousands', (t) => {
  let parsed = 0;
  const list = new Proxy(Array.from({ length: 100_000 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 0xff}.${i & 0xff}`), {
    get(target, key, receiver) {
      if (typeof key === 'string' && /^\d+$/.test(key)) parsed++;
      return Reflect.get(target, key, receiver);
    },
  });
  const dns = new DnsResponder({ zone: 'svc.membrane', resolve: () => ({ ipv4: list, ipv6: [] }) });
  const reply = decode(dns.answer(query('big.svc.membrane', 'A', { edns: { udpPayloadSize: 1232 } }), '10.0.0.2'));
  t.true(reply.flag_tc);
  t.true(parsed < 100, `read ${parsed} addresses`);
});

// ---- options ----

test('invalid options: InvalidArgumentError naming what to write', (t) => {
  const resolve = () => undefined;
  for (const zone of ['', '.', 'a..b', 'bad zone', 'x'.repeat(64), `${'a'.repeat(63)}.${'a'.repeat(63)}.${'a'.repeat(63)}.b`, 5 as unknown as string]) {
    t.throws(() => new DnsResponder({ zone, resolve }), { instanceOf: InvalidArgumentError, message: /zone/ }, String(zone));
  }
  for (const ttlSeconds of [-1, 1.5, 2 ** 31, Number.NaN]) {
    t.throws(() => new DnsResponder({ zone: 'svc.membrane', ttlSeconds, resolve }), { instanceOf: InvalidArgumentError, message: /ttlSeconds/ });
  }
  t.throws(() => new DnsResponder({ zone: 'svc.membrane', resolve: undefined as unknown as DnsResponderOptions['resolve'] }), { instanceOf: InvalidArgumentError });
  t.notThrows(() => new DnsResponder({ zone: 'svc.membrane', ttlSeconds: 0, resolve }));
});

// ---- property tests ----

const labelArb = fc.oneof(
  fc.constantFrom('web', 'WeB', 'v4only', 'many', 'nope', 'a', 'A.b', 'svc', 'membrane', 'x-y'),
  fc.stringMatching(/^[a-zA-Z0-9_-]{1,63}$/),
);
const randomCase = (s: string) => fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length })
  .map((upper) => [...s].map((c, i) => (upper[i] ? c.toUpperCase() : c)).join(''));
const nameArb = fc.tuple(fc.array(labelArb, { maxLength: 4 }), fc.oneof(randomCase('svc.membrane'), fc.constantFrom('example.com', 'membrane', 'svc.membrane.org', '')))
  .map(([labels, suffix]) => [...labels, suffix].filter((l) => l !== '').join('.'))
  .filter((n) => n.length > 0 && n.length <= 253);
const typeArb = fc.constantFrom<QType>('A', 'AAAA', 'ANY', 'TXT', 'SRV', 'SOA', 'NS', 'MX', 'PTR', 'CNAME', 'AXFR', 'CAA');
const queryArb = fc.record({
  name: nameArb,
  type: typeArb,
  id: fc.integer({ min: 0, max: 0xffff }),
  flags: fc.integer({ min: 0, max: 0x7fff }).map((f) => f & ~0x7800 & ~0xf), // opcode QUERY, rcode 0
  klass: fc.constantFrom<dnsPacket.RecordClass>('IN', 'IN', 'IN', 'CH', 'ANY'),
  edns: fc.option(fc.record({ udpPayloadSize: fc.integer({ min: 0, max: 0xffff }), flags: fc.constantFrom(0, dnsPacket.DNSSEC_OK), ednsVersion: fc.constantFrom(0, 0, 0, 1) }), { nil: undefined }),
});

/** Everything a reply must satisfy, whatever the query. */
function checkReply(reply: Buffer | undefined, queryBytes: Buffer): Decoded | undefined {
  if (!reply) return undefined;
  const decoded = decode(reply); // throws if it does not decode
  if (decoded.id !== queryBytes.readUInt16BE(0)) throw new Error('ID not echoed');
  if (!decoded.flag_qr || decoded.flag_ra) throw new Error('QR must be set, RA clear');
  if (reply.length > EDNS_UDP_SIZE) throw new Error(`reply of ${reply.length} bytes`);
  if (!decoded.additionals?.length && reply.length > CLASSIC_UDP_SIZE) throw new Error('over 512 bytes without EDNS');
  return decoded;
}

test('property: random bytes never throw; what is answered decodes', (t) => {
  const { dns } = responder();
  fc.assert(fc.property(fc.uint8Array({ maxLength: 700 }), (bytes) => {
    const q = Buffer.from(bytes);
    checkReply(dns.answer(q, '10.0.0.2'), q);
  }), { numRuns: 3000 });
  t.pass();
});

test('property: random well-formed queries get a well-formed answer that echoes the question', (t) => {
  const { dns } = responder();
  fc.assert(fc.property(queryArb, (o) => {
    const q = query(o.name, o.type, o);
    const reply = dns.answer(q, '10.0.0.2');
    const decoded = checkReply(reply, q)!;
    // dns-packet encodes an advertised size of 0 as 4096.
    const limit = o.edns ? Math.min(Math.max(o.edns.udpPayloadSize || 4096, CLASSIC_UDP_SIZE), EDNS_UDP_SIZE) : CLASSIC_UDP_SIZE;
    if (reply!.length > limit) throw new Error(`${reply!.length} bytes for a limit of ${limit}`);
    const inZone = /(^|\.)svc\.membrane$/i.test(o.name);
    if (decoded.questions?.[0]?.name !== o.name) throw new Error(`question ${decoded.questions?.[0]?.name} for ${o.name}`);
    if (o.edns && !decoded.additionals?.some((a) => a.type === 'OPT')) throw new Error('OPT missing');
    if (!o.edns && decoded.additionals?.length) throw new Error('OPT without EDNS');
    if (o.edns?.ednsVersion === 1) return;
    const refused = !inZone || o.klass !== 'IN' || o.type === 'AXFR';
    if (refused !== (decoded.rcode === 'REFUSED')) throw new Error(`${decoded.rcode} for ${o.name} ${o.type} ${o.klass}`);
    if (!refused && !decoded.flag_aa) throw new Error('an answer from the zone must be authoritative');
    for (const a of decoded.answers ?? []) {
      if (a.type !== 'SOA' && a.type !== 'NS' && a.name !== o.name) throw new Error(`owner ${a.name} for ${o.name}`);
    }
    if (decoded.rcode === 'NXDOMAIN' || (decoded.rcode === 'NOERROR' && !decoded.answers?.length && !decoded.flag_tc)) {
      if (decoded.authorities?.[0]?.type !== 'SOA') throw new Error('negative answer without SOA');
    }
  }), { numRuns: 3000 });
  t.pass();
});

test('property: truncated and bit-flipped queries never throw; what is answered decodes', (t) => {
  const { dns } = responder();
  const mutatedArb = fc.tuple(queryArb, fc.nat(), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }));
  fc.assert(fc.property(mutatedArb, ([o, cut, flips]) => {
    const full = query(o.name, o.type, o);
    const q = Buffer.from(full.subarray(0, Math.max(2, full.length - (cut % full.length))));
    for (const [at, value] of flips) q[at % q.length] = value;
    checkReply(dns.answer(q, '10.0.0.2'), q);
  }), { numRuns: 3000 });
  t.pass();
});

// ---- over the network, loopback only ----

// Decided synchronously: ava wants every test declared before the file's first await.
const haveIpv6Loopback = Object.values(networkInterfaces()).flat().some((i) => i?.address === '::1');
const haveDig = spawnSync('dig', ['-v']).error === undefined;
const LOOPBACKS = haveIpv6Loopback ? ['127.0.0.1', '::1'] : ['127.0.0.1'];

/** Sends `packet`, resolves with the first datagram back (or rejects after 2 s). */
function udpExchange(address: string, port: number, packets: Buffer[]): Promise<Buffer> {
  const socket = dgram.createSocket(isIPv6(address) ? 'udp6' : 'udp4');
  return new Promise<Buffer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer from ${address} port ${port}`)), 2000);
    socket.once('message', (msg) => { clearTimeout(timer); resolve(msg); });
    socket.once('error', reject);
    for (const p of packets) socket.send(p, port, address);
  }).finally(() => socket.close());
}

test(`UDP round trip on ${LOOPBACKS.join(' and ')}, one port: A, AAAA, NXDOMAIN; the client is the source address${haveIpv6Loopback ? '' : ' [::1 skipped: no IPv6 loopback]'}`, async (t) => {
  const { dns, calls } = responder();
  t.is(dns.port, 0);
  await dns.listen(LOOPBACKS, 0);
  t.teardown(() => dns.close());
  t.true(dns.port > 0);
  for (const address of LOOPBACKS) {
    const a = decode(await udpExchange(address, dns.port, [query('web.svc.membrane', 'A', { id: 1 })]));
    t.like(a, { id: 1, rcode: 'NOERROR', flag_aa: true });
    t.deepEqual(dataOf(a.answers), ['10.96.0.10', '10.96.0.11']);
    const aaaa = decode(await udpExchange(address, dns.port, [query('Web.svc.membrane', 'AAAA', { id: 2, edns: { udpPayloadSize: 1232 } })]));
    t.like(aaaa, { id: 2, rcode: 'NOERROR' });
    t.deepEqual(dataOf(aaaa.answers), ['fd00:96::a', '::ffff:a60:a']);
    t.is(aaaa.additionals?.[0]?.type, 'OPT');
    const nx = decode(await udpExchange(address, dns.port, [query('nope.svc.membrane', 'A', { id: 3 })]));
    t.like(nx, { id: 3, rcode: 'NXDOMAIN' });
  }
  t.deepEqual(calls.map(([client]) => client), LOOPBACKS.flatMap((a) => [a, a, a]));
  t.like(dns.stats, { queries: 3 * LOOPBACKS.length, answered: 2 * LOOPBACKS.length, nxdomain: LOOPBACKS.length, dropped: 0 });
});

test('over UDP: garbage is dropped and counted, the next query is still answered', async (t) => {
  const { dns } = responder();
  await dns.listen(['127.0.0.1'], 0);
  t.teardown(() => dns.close());
  // No answer to the garbage or the response, so the first datagram back is the query's.
  const response = query('web.svc.membrane', 'A', { id: 8 });
  response[2] = response[2]! | 0x80;
  const reply = decode(await udpExchange('127.0.0.1', dns.port, [Buffer.from([1, 2, 3]), response, query('web.svc.membrane', 'A', { id: 9 })]));
  t.is(reply.id, 9);
  t.like(dns.stats, { queries: 3, dropped: 2, answered: 1 });
});

test('over UDP: a throwing resolve() is SERVFAIL and one rate-limited warning', async (t) => {
  const lines: string[] = [];
  const log = winston.createLogger({ transports: [new winston.transports.Stream({ stream: new Writable({ write(chunk, _e, cb) { lines.push(String(chunk)); cb(); } }) })] });
  const dns = new DnsResponder({ zone: 'svc.membrane', resolve: () => { throw new Error('index corrupt'); }, log });
  await dns.listen(['127.0.0.1'], 0);
  t.teardown(() => dns.close());
  for (const id of [1, 2, 3]) t.is(decode(await udpExchange('127.0.0.1', dns.port, [query('web.svc.membrane', 'A', { id })])).rcode, 'SERVFAIL');
  t.is(dns.stats.servfail, 3);
  const warnings = lines.filter((l) => l.includes('DNS query failed'));
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /index corrupt/);
});

test('listen: validates its arguments, refuses a second listen, reports a taken port; close() is idempotent', async (t) => {
  const { dns } = responder();
  await t.throwsAsync(dns.listen([], 0), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(dns.listen(['localhost'], 0), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(dns.listen(['127.0.0.1'], 65536), { instanceOf: InvalidArgumentError });
  // Twice at once: the second is refused, not a second set of sockets.
  const first = dns.listen(['127.0.0.1'], 0);
  await t.throwsAsync(dns.listen(['127.0.0.1'], 0), { instanceOf: ConflictError });
  await first;
  await t.throwsAsync(dns.listen(['127.0.0.1'], 0), { instanceOf: ConflictError });
  const other = responder().dns;
  await t.throwsAsync(other.listen(['127.0.0.1'], dns.port), { code: 'EADDRINUSE' });
  t.is(other.port, 0);
  await dns.close();
  await dns.close();
  t.is(dns.port, 0);
  // The port is free again, and the responder can listen again.
  await dns.listen(['127.0.0.1'], 0);
  await dns.close();
});

(haveDig ? test : test.skip)(`dig resolves through the responder${haveDig ? '' : ' [skip: dig not installed]'}`, async (t) => {
  const { dns } = responder();
  await dns.listen(['127.0.0.1'], 0);
  t.teardown(() => dns.close());
  // Asynchronous: the responder runs in this process, a blocking exec would starve it.
  const dig = (...args: string[]) => promisify(execFile)('dig', ['@127.0.0.1', '-p', String(dns.port), '+tries=1', '+time=2', ...args]);
  const a = await dig('+short', 'WEB.svc.membrane', 'A');
  t.deepEqual(a.stdout.trim().split('\n'), ['10.96.0.10', '10.96.0.11']);
  const aaaa = await dig('+short', 'web.svc.membrane', 'AAAA');
  t.deepEqual(aaaa.stdout.trim().split('\n'), ['fd00:96::a', '::ffff:10.96.0.10']);
  const nx = await dig('nope.svc.membrane', 'A');
  t.regex(nx.stdout, /status: NXDOMAIN/);
  t.regex(nx.stdout, /flags: qr aa rd;/);
});
