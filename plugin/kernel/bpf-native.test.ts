// Exercises the bpf half of the native addon against the real kernel (as root, with BPF, BTF and
// tcx). The fixture objects are compiled from native/test/*.bpf.c by native/test/build-fixture.sh
// (clang). Every veth, pin and fd a test creates is released in t.teardown, so a failing test
// leaves nothing behind.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { native, type BpfObject, type BpfObjectOptions } from './native.js';
import { tcxForTests } from '../features.js';

const nl = native();

// Compiled output runs from <root>/dist/plugin/kernel.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const fixtureDir = path.join(root, 'native', 'build', 'test');
const FIXTURE = path.join(fixtureDir, 'fixture.bpf.o');
const BROKEN = path.join(fixtureDir, 'broken.bpf.o');
// Named probe, decided at load so skipped tests say why in their title.
const TCX = tcxForTests(nl, path.join(root, 'bpf', 'build', 'membrane.bpf.o'));
const tcxTest = TCX === 'yes' ? test : test.skip;
const tcxSkip = TCX === 'yes' ? '' : ' [skip: kernel lacks tcx (probe tcx)]';
const BPFFS = '/sys/fs/bpf';

const TC_ACT_OK = 0;
const TC_ACT_SHOT = 2;
const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_RINGBUF = 27;
const BPF_NOEXIST = 1;

interface KernelError extends Error {
  errno: number;
  code: string;
  op: string;
  verifierLog?: string;
}

test.before(() => {
  execFileSync('bash', [path.join(root, 'native', 'test', 'build-fixture.sh')], { stdio: 'inherit' });
  try {
    execFileSync('mountpoint', ['-q', BPFFS]);
  } catch {
    execFileSync('mount', ['-t', 'bpf', 'bpf', BPFFS]);
  }
});

function unique(): string {
  return 'mbt' + randomBytes(4).toString('hex');
}

/** Loads a fixture object and registers its close. */
function load(t: ExecutionContext, options: BpfObjectOptions = {}, file = FIXTURE): BpfObject {
  const obj = nl.bpfObjectLoad(file, options);
  t.teardown(() => obj.close());
  return obj;
}

function mapFd(obj: BpfObject, name: string): number {
  const map = obj.maps.find((m) => m.name === name);
  if (!map) throw new Error(`no map ${name} in [${obj.maps.map((m) => m.name).join(', ')}]`);
  return map.fd;
}

function progFd(obj: BpfObject): number {
  const prog = obj.programs.find((p) => p.name === 'fixture_prog');
  if (!prog) throw new Error('no fixture_prog');
  return prog.fd;
}

/** The rodata of fixture.bpf.c: `const volatile __u32 verdict`. */
function verdict(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

/** The kernel's id of a program, from its fd (the contract hands out fds only). */
function progId(fd: number): number {
  const m = /^prog_id:\s*(\d+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`fd ${fd} is not a bpf program`);
  return Number(m[1]);
}

/** An Ethernet frame of `len` bytes (test runs of tc programs need at least the header). */
function packet(len: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt16BE(0x86dd, 12);
  return b;
}

function makeVeth(t: ExecutionContext): { name: string; index: number } {
  const name = unique() + 'a';
  const peer = name.slice(0, -1) + 'b';
  t.teardown(() => {
    const link = nl.linkGetByName(name);
    if (link) nl.linkDelete(link.index);
  });
  return { name, index: nl.linkCreateVeth(name, peer, {}) };
}

/** A fresh directory in bpffs, removed (with the pins in it) at teardown. */
function pinDir(t: ExecutionContext): string {
  const dir = path.join(BPFFS, unique());
  fs.mkdirSync(dir);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('load with rodata: the test run returns the load-time verdict and counts the packet', (t) => {
  const obj = load(t, { rodata: verdict(TC_ACT_SHOT) });
  t.deepEqual(obj.programs.map((p) => [p.name, p.section]), [['fixture_prog', 'tc']]);
  const counts = obj.maps.find((m) => m.name === 'fixture_counts')!;
  t.like(counts.info, { type: BPF_MAP_TYPE_HASH, keySize: 4, valueSize: 8, maxEntries: 16, name: 'fixture_counts' });
  t.true(counts.info.id > 0);
  t.deepEqual(nl.bpfMapInfo(counts.fd), counts.info);
  t.like(obj.maps.find((m) => m.name === 'fixture_events')!.info, { type: BPF_MAP_TYPE_RINGBUF, maxEntries: 4096 });

  const run = nl.bpfProgTestRun(progFd(obj), packet(64), {});
  t.is(run.retval, TC_ACT_SHOT);
  t.deepEqual(run.data, packet(64));
  t.is(typeof run.durationNs, 'number');
  t.is(run.ctx, undefined);
  t.deepEqual(nl.bpfMapLookup(counts.fd, u32(64)), u64(1));

  nl.bpfProgTestRun(progFd(obj), packet(64), { repeat: 4 });
  t.deepEqual(nl.bpfMapLookup(counts.fd, u32(64)), u64(5));
});

test('without rodata the program returns the compiled-in default; ctxIn gives ctx back', (t) => {
  const obj = load(t);
  // struct __sk_buff is 192 bytes; the kernel takes (and hands back) a few fields, mark among them.
  const ctxIn = Buffer.alloc(192);
  ctxIn.writeUInt32LE(0x4d42, 8); // __sk_buff.mark
  const run = nl.bpfProgTestRun(progFd(obj), packet(60), { ctxIn, dataSizeOut: 1500 });
  t.is(run.retval, TC_ACT_OK);
  t.is(run.data.length, 60);
  t.is(run.ctx?.length, 192);
  t.is(run.ctx!.readUInt32LE(8), 0x4d42);

  // A shorter context (the rest reads as zeros) comes back just as short.
  const short = nl.bpfProgTestRun(progFd(obj), packet(60), { ctxIn: ctxIn.subarray(0, 12) });
  t.is(short.ctx?.length, 12);
  t.is(short.ctx!.readUInt32LE(8), 0x4d42);
});

test('rodata of the wrong size is a TypeError naming the expected size', (t) => {
  const err = t.throws(() => nl.bpfObjectLoad(FIXTURE, { rodata: Buffer.alloc(8) }), { instanceOf: TypeError });
  t.regex(err!.message, /must be 4 bytes/);
});

test('unknown map names in options fail with ENOENT', (t) => {
  const err = t.throws<KernelError>(() => nl.bpfObjectLoad(FIXTURE, { maxEntries: { no_such_map: 4 } }));
  t.is(err!.code, 'ENOENT');
  t.regex(err!.op, /no_such_map/);
});

test('maxEntries overrides the compiled size', (t) => {
  const obj = load(t, { maxEntries: { fixture_counts: 1024 } });
  t.is(nl.bpfMapInfo(mapFd(obj, 'fixture_counts')).maxEntries, 1024);
});

test('map update, lookup, iteration and delete', (t) => {
  const fd = mapFd(load(t), 'fixture_counts');
  t.is(nl.bpfMapNextKey(fd, null), null);
  t.is(nl.bpfMapLookup(fd, u32(1)), null);

  for (const k of [1, 2, 3]) nl.bpfMapUpdate(fd, u32(k), u64(k * 100), 0);
  t.deepEqual(nl.bpfMapLookup(fd, u32(2)), u64(200));

  const keys: number[] = [];
  for (let k = nl.bpfMapNextKey(fd, null); k; k = nl.bpfMapNextKey(fd, k)) keys.push(k.readUInt32LE());
  t.deepEqual(keys.sort(), [1, 2, 3]);

  const exists = t.throws<KernelError>(() => nl.bpfMapUpdate(fd, u32(1), u64(0), BPF_NOEXIST));
  t.like(exists, { errno: 17, code: 'EEXIST', op: `BPF_MAP_UPDATE_ELEM ${fd}` });
  t.is(exists!.message, `BPF_MAP_UPDATE_ELEM ${fd}: File exists`);

  t.true(nl.bpfMapDelete(fd, u32(2)));
  t.false(nl.bpfMapDelete(fd, u32(2)));
  t.is(nl.bpfMapLookup(fd, u32(2)), null);
});

test('key and value sizes are checked against the map', (t) => {
  const fd = mapFd(load(t), 'fixture_counts');
  const key = t.throws(() => nl.bpfMapLookup(fd, Buffer.alloc(8)), { instanceOf: TypeError });
  t.regex(key!.message, /key must be 4 bytes/);
  const value = t.throws(() => nl.bpfMapUpdate(fd, u32(1), Buffer.alloc(4), 0), { instanceOf: TypeError });
  t.regex(value!.message, /value must be 8 bytes/);
  t.throws(() => nl.bpfMapDelete(fd, Buffer.alloc(2)), { instanceOf: TypeError });
  t.throws(() => nl.bpfMapNextKey(fd, Buffer.alloc(5)), { instanceOf: TypeError });
  t.throws(() => nl.bpfMapLookup(fd, 'key' as unknown as Buffer), { instanceOf: TypeError });
});

test('pinned maps are reused by the next load; bpfObjPin and bpfObjGet round-trip', (t) => {
  const dir = pinDir(t);
  const pinPaths = { fixture_counts: path.join(dir, 'counts') };

  const first = nl.bpfObjectLoad(FIXTURE, { pinPaths });
  t.teardown(() => first.close());
  const firstInfo = first.maps.find((m) => m.name === 'fixture_counts')!.info;
  nl.bpfMapUpdate(mapFd(first, 'fixture_counts'), u32(7), u64(77), 0);
  first.close();
  first.close(); // idempotent
  t.true(fs.existsSync(pinPaths.fixture_counts));

  const second = load(t, { pinPaths });
  const counts = second.maps.find((m) => m.name === 'fixture_counts')!;
  t.is(counts.info.id, firstInfo.id);
  t.deepEqual(nl.bpfMapLookup(counts.fd, u32(7)), u64(77));

  const fd = nl.bpfObjGet(pinPaths.fixture_counts);
  t.teardown(() => nl.bpfClose(fd));
  t.is(nl.bpfMapInfo(fd).id, firstInfo.id);

  const eventsPin = path.join(dir, 'events');
  nl.bpfObjPin(mapFd(second, 'fixture_events'), eventsPin);
  const events = nl.bpfObjGet(eventsPin);
  t.teardown(() => nl.bpfClose(events));
  t.is(nl.bpfMapInfo(events).id, second.maps.find((m) => m.name === 'fixture_events')!.info.id);

  t.like(t.throws<KernelError>(() => nl.bpfObjPin(events, eventsPin)), { code: 'EEXIST' });
  t.like(t.throws<KernelError>(() => nl.bpfObjGet(path.join(dir, 'absent'))), { code: 'ENOENT', errno: 2 });
});

test('a program the verifier rejects fails the load with the verifier log', (t) => {
  const err = t.throws<KernelError>(() => nl.bpfObjectLoad(BROKEN, {}));
  t.is(err!.errno, 13);
  t.is(err!.code, 'EACCES');
  t.is(err!.op, `bpf_object__load ${BROKEN}`);
  t.is(typeof err!.verifierLog, 'string');
  t.regex(err!.verifierLog!, /invalid access to packet/);
  t.regex(err!.verifierLog!, /broken_prog/);
});

test('a missing object file fails with ENOENT', (t) => {
  const err = t.throws<KernelError>(() => nl.bpfObjectLoad('/nonexistent/membrane.bpf.o', {}));
  t.like(err, { errno: 2, code: 'ENOENT' });
  t.regex(err!.verifierLog!, /nonexistent/);
});

tcxTest(`tcx: attach, query, swap the program through the link, detach by closing the link${tcxSkip}`, (t) => {
  const { index } = makeVeth(t);
  const a = load(t);
  const b = load(t, { rodata: verdict(TC_ACT_SHOT) });
  const idA = progId(progFd(a));
  const idB = progId(progFd(b));
  t.not(idA, idB);

  t.deepEqual(nl.tcxQuery(index, 'ingress'), []);
  const link = nl.tcxAttach(index, progFd(a), 'ingress');
  let closed = false;
  t.teardown(() => {
    if (!closed) nl.bpfClose(link);
  });
  t.deepEqual(nl.tcxQuery(index, 'ingress'), [idA]);
  t.deepEqual(nl.tcxQuery(index, 'egress'), []);

  nl.bpfLinkUpdate(link, progFd(b));
  t.deepEqual(nl.tcxQuery(index, 'ingress'), [idB]);

  nl.bpfClose(link);
  closed = true;
  t.deepEqual(nl.tcxQuery(index, 'ingress'), []);
});

tcxTest(`tcx errors carry errno and op${tcxSkip}`, (t) => {
  const obj = load(t);
  const err = t.throws<KernelError>(() => nl.tcxAttach(0x7ffffff0, progFd(obj), 'egress'));
  t.is(err!.code, 'ENODEV');
  t.is(err!.op, `BPF_LINK_CREATE tcx egress ${0x7ffffff0}`);
  t.like(t.throws<KernelError>(() => nl.tcxQuery(0x7ffffff0, 'ingress')), { code: 'ENODEV' });
  t.throws(() => nl.tcxAttach(1, progFd(obj), 'sideways' as 'ingress'), { instanceOf: TypeError });
});

test('clsact: attach, replace and detach a direct-action filter', (t) => {
  const { name, index } = makeVeth(t);
  const a = load(t);
  const b = load(t);
  const filters = (dir: string) => execFileSync('tc', ['filter', 'show', 'dev', name, dir], { encoding: 'utf8' });

  nl.tcAttach(index, progFd(a), 'ingress', 1, 1);
  t.regex(filters('ingress'), new RegExp(`id ${progId(progFd(a))}\\b`));
  t.regex(filters('ingress'), /direct-action/);
  t.is(filters('egress').trim(), '');

  // Same handle and priority: replaced, not added.
  nl.tcAttach(index, progFd(b), 'ingress', 1, 1);
  const after = filters('ingress');
  t.regex(after, new RegExp(`id ${progId(progFd(b))}\\b`));
  t.notRegex(after, new RegExp(`id ${progId(progFd(a))}\\b`));

  nl.tcAttach(index, progFd(a), 'egress', 1, 1);
  t.regex(filters('egress'), new RegExp(`id ${progId(progFd(a))}\\b`));

  nl.tcDetach(index, 'ingress', 1, 1);
  t.is(filters('ingress').trim(), '');
  t.regex(filters('egress'), /direct-action/);
  nl.tcDetach(index, 'egress', 1, 1);
  t.is(filters('egress').trim(), '');

  const again = t.throws<KernelError>(() => nl.tcDetach(index, 'ingress', 1, 1));
  t.true(again!.errno > 0);
  t.is(typeof again!.code, 'string');
});

test('ring buffer records reach the callback from the event loop', async (t) => {
  const obj = load(t);
  const events = mapFd(obj, 'fixture_events');
  const lengths = [60, 70, 80];
  const seen: number[] = [];
  let consumer: ReturnType<typeof nl.ringbufConsume> | undefined;
  t.teardown(() => consumer?.close());

  const all = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out with records ${JSON.stringify(seen)}`)), 5000);
    consumer = nl.ringbufConsume(events, (record) => {
      t.is(record.length, 8);
      seen.push(Number(record.readBigUInt64LE()));
      if (seen.length === lengths.length) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  for (const len of lengths) nl.bpfProgTestRun(progFd(obj), packet(len), {});
  await all;
  t.deepEqual(seen, lengths);

  // After close() nothing more arrives, and closing again is harmless.
  consumer!.close();
  consumer!.close();
  nl.bpfProgTestRun(progFd(obj), packet(90), {});
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.deepEqual(seen, lengths);
});

test('ringbufConsume on a map that is not a ring buffer fails with errno', (t) => {
  const obj = load(t);
  const err = t.throws<KernelError>(() => nl.ringbufConsume(mapFd(obj, 'fixture_counts'), () => {}));
  t.true(err!.errno > 0);
  t.regex(err!.op, /^ring_buffer__new /);
  t.throws(() => nl.ringbufConsume(mapFd(obj, 'fixture_events'), 'nope' as unknown as () => void), {
    instanceOf: TypeError,
  });
});

test('bpfClose of a closed fd is EBADF; possible CPUs is positive', (t) => {
  t.like(t.throws<KernelError>(() => nl.bpfClose(0x7fffffff)), { errno: 9, code: 'EBADF' });
  t.true(nl.bpfNumPossibleCpus() >= 1);
});

test('bpfMapUpdateAsync and bpfMapDeleteBatchAsync write on a worker thread, copying their buffers', async (t) => {
  const BPF_MAP_TYPE_HASH = 1;
  const fd = nl.bpfMapCreate(BPF_MAP_TYPE_HASH, 4, 8, 16, { name: 'mbt_async' });
  t.teardown(() => nl.bpfClose(fd));
  const key = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
  const value = Buffer.from('abcdefgh');
  const pending = nl.bpfMapUpdateAsync(fd, key(1), value, 0);
  value.fill(0); // the worker has its own copy
  await pending;
  await nl.bpfMapUpdateAsync(fd, key(2), Buffer.from('12345678'), 0);
  t.is(nl.bpfMapLookup(fd, key(1))?.toString(), 'abcdefgh');
  await nl.bpfMapDeleteBatchAsync(fd, Buffer.concat([key(1), key(7), key(2)]));
  t.is(nl.bpfMapLookup(fd, key(1)), null);
  t.is(nl.bpfMapLookup(fd, key(2)), null);
  await t.throwsAsync(nl.bpfMapUpdateAsync(fd, key(3), Buffer.from('12345678'), 1 /* BPF_NOEXIST */).then(() =>
    nl.bpfMapUpdateAsync(fd, key(3), Buffer.from('12345678'), 1)), { message: /BPF_MAP_UPDATE_ELEM/ });
  t.throws(() => nl.bpfMapUpdateAsync(fd, Buffer.alloc(3), value, 0), { instanceOf: TypeError });
});
