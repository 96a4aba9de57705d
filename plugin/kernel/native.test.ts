// Exercises the native addon against the real kernel (as root, in the host network namespace).
// Every object gets a unique name, address or table and is removed in t.teardown, so a failing
// test leaves nothing behind and parallel runs do not collide.
import { randomBytes, randomInt } from 'node:crypto';
import test, { type ExecutionContext } from 'ava';
import { native, type RouteSpec, type RuleSpec } from './native.js';

const nl = native();

// Not a number any routing daemon uses; marks what these tests created.
const PROTO = 199;

/** 'mbt' + 8 hex + suffix: at most 12 characters, within IFNAMSIZ. */
function uniqueName(): string {
  return 'mbt' + randomBytes(4).toString('hex');
}

function uniqueTable(): number {
  return 4_000_000 + randomInt(1_000_000);
}

interface KernelError extends Error {
  errno: number;
  code: string;
  op: string;
}

/** Creates a veth pair and registers its removal (deleting one end removes both). */
function makeVeth(t: ExecutionContext, options: Parameters<typeof nl.linkCreateVeth>[2] = {}) {
  const name = uniqueName();
  const host = name + 'a';
  const peer = name + 'b';
  t.teardown(() => {
    for (const n of [host, peer]) {
      const link = nl.linkGetByName(n);
      if (link) {
        try {
          nl.linkDelete(link.index);
        } catch {
          // the other end's deletion took this one with it
        }
      }
    }
  });
  const index = nl.linkCreateVeth(host, peer, options);
  return { host, peer, index };
}

function cleanTable(t: ExecutionContext, table: number) {
  t.teardown(() => {
    for (const family of [4, 6] as const) {
      for (const r of nl.routeList(family, table)) {
        try {
          nl.routeDel({ family, dst: r.dst, dstLen: r.dstLen, table });
        } catch {
          // already gone
        }
      }
    }
  });
}

test('veth create with mtu, mac and alias reads back on both ends', (t) => {
  const { host, peer, index } = makeVeth(t, {
    mtu: 1400,
    mac: '02:aa:bb:cc:dd:01',
    peerMac: '02:AA:BB:CC:DD:02',
    alias: 'membrane:test',
  });
  t.true(index > 0);

  const h = nl.linkGetByName(host);
  const p = nl.linkGetByName(peer);
  t.truthy(h);
  t.truthy(p);
  t.is(h!.index, index);
  t.is(h!.name, host);
  t.is(h!.kind, 'veth');
  t.is(h!.mtu, 1400);
  t.is(h!.mac, '02:aa:bb:cc:dd:01');
  t.is(h!.alias, 'membrane:test');
  t.false(h!.up);
  t.is(h!.linkIndex, p!.index);

  t.is(p!.kind, 'veth');
  t.is(p!.mtu, 1400);
  t.is(p!.mac, '02:aa:bb:cc:dd:02');
  t.is(p!.alias, '');
  t.is(p!.linkIndex, index);

  t.deepEqual(nl.linkGetByIndex(index), h);
  const names = nl.linkList().map((l) => l.name);
  t.true(names.includes(host));
  t.true(names.includes(peer));
});

test('duplicate veth create throws EEXIST with op', (t) => {
  const { host, peer } = makeVeth(t);
  const err = t.throws<KernelError>(() => nl.linkCreateVeth(host, peer, {}));
  t.is(err?.errno, 17);
  t.is(err?.code, 'EEXIST');
  t.is(err?.op, `RTM_NEWLINK veth ${host}`);
  t.true(err?.message.startsWith(`RTM_NEWLINK veth ${host}: `));
});

test('linkSetUp and linkSetAlias', (t) => {
  const { host, index } = makeVeth(t);
  nl.linkSetUp(index, true);
  t.true(nl.linkGetByName(host)!.up);
  nl.linkSetUp(index, false);
  t.false(nl.linkGetByName(host)!.up);
  nl.linkSetAlias(index, 'membrane:other');
  t.is(nl.linkGetByIndex(index)!.alias, 'membrane:other');
  nl.linkSetAlias(index, '');
  t.is(nl.linkGetByIndex(index)!.alias, '');
});

test('linkSet renames, re-addresses and regroups a link in one request', (t) => {
  const { host, peer, index } = makeVeth(t);
  const peerIndex = nl.linkGetByName(peer)!.index;
  const renamed = uniqueName() + 'r';
  nl.linkSet(index, { name: renamed, mtu: 1400, group: 0x4d42 });
  // makeVeth's teardown deletes by the old names: the peer still carries one, which removes both.
  t.is(nl.linkGetByName(host), null);
  const link = nl.linkGetByIndex(index)!;
  t.is(link.name, renamed);
  t.is(link.mtu, 1400);
  t.is(link.group, 0x4d42);
  nl.linkSet(peerIndex, { mac: '02:aa:bb:cc:dd:ee', mtu: 1400 });
  t.is(nl.linkGetByIndex(peerIndex)!.mac, '02:aa:bb:cc:dd:ee');
  const err = t.throws(() => nl.linkSet(index, { name: peer })) as unknown as KernelError;
  t.is(err.code, 'EEXIST');
  t.throws(() => nl.linkSet(index, { name: 'x'.repeat(16) }), { instanceOf: TypeError });
  t.throws(() => nl.linkSet(index, { mac: 'not-a-mac' }), { instanceOf: TypeError });
});

test('linkDeleteGroup deletes every link of a group in one request, and only those', (t) => {
  const group = 0x4d420000 + randomInt(0xffff);
  const doomed = [makeVeth(t), makeVeth(t), makeVeth(t)];
  const kept = makeVeth(t);
  for (const v of doomed) nl.linkSet(v.index, { group });
  t.true(nl.linkDeleteGroup(group));
  for (const v of doomed) {
    t.is(nl.linkGetByName(v.host), null);
    t.is(nl.linkGetByName(v.peer), null);
  }
  t.truthy(nl.linkGetByName(kept.host));
  t.false(nl.linkDeleteGroup(group));
  t.throws(() => nl.linkDeleteGroup(0), { instanceOf: TypeError });
});

test('linkDeleteGroupAsync deletes a group on a worker thread while the event loop runs', async (t) => {
  const group = 0x4d430000 + randomInt(0xffff);
  const doomed = [makeVeth(t), makeVeth(t)];
  for (const v of doomed) nl.linkSet(v.index, { group });
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 1);
  try {
    t.true(await nl.linkDeleteGroupAsync(group));
  } finally {
    clearInterval(ticker);
  }
  for (const v of doomed) t.is(nl.linkGetByName(v.host), null);
  t.log(`event loop turns during the deletion: ${ticks}`);
  t.false(await nl.linkDeleteGroupAsync(group));
  t.throws(() => nl.linkDeleteGroupAsync(0), { instanceOf: TypeError });
});

test('addrAdd v4 /32 and v6 /128 nodad, addrList, addrDel', (t) => {
  const { index } = makeVeth(t);
  const v4 = `198.51.100.${randomInt(1, 255)}`;
  const v6 = `2001:db8:${randomInt(0xffff).toString(16)}::${randomInt(1, 0xffff).toString(16)}`;
  nl.addrAdd(index, 4, v4, 32, {});
  nl.addrAdd(index, 6, v6, 128, { nodad: true, noprefixroute: true });

  const a4 = nl.addrList(4, index);
  t.deepEqual(a4.map((a) => [a.index, a.family, a.address, a.prefixLen]), [[index, 4, v4, 32]]);
  const a6 = nl.addrList(6, index).find((a) => a.address === v6);
  t.truthy(a6);
  t.is(a6!.prefixLen, 128);
  t.is(a6!.family, 6);
  t.truthy(a6!.flags & 0x02, 'IFA_F_NODAD');
  t.truthy(a6!.flags & 0x200, 'IFA_F_NOPREFIXROUTE');
  t.true(nl.addrList(4, 0).some((a) => a.index === index && a.address === v4));

  const dup = t.throws<KernelError>(() => nl.addrAdd(index, 4, v4, 32, {}));
  t.is(dup?.code, 'EEXIST');

  nl.addrDel(index, 4, v4, 32);
  nl.addrDel(index, 6, v6, 128);
  t.deepEqual(nl.addrList(4, index), []);
  t.false(nl.addrList(6, index).some((a) => a.address === v6));
});

test('routes in a dedicated table: unicast via oif, reject types, replace, delete', (t) => {
  const { index } = makeVeth(t);
  nl.linkSetUp(index, true);
  const table = uniqueTable();
  cleanTable(t, table);
  const octet = randomInt(1, 250);
  const dst = `203.0.113.${octet}`;

  const route: RouteSpec = { family: 4, dst, dstLen: 32, table, oif: index, protocol: PROTO };
  nl.routeAdd(route, false);
  let routes = nl.routeList(4, table);
  t.is(routes.length, 1);
  t.like(routes[0], {
    family: 4,
    dst,
    dstLen: 32,
    table,
    type: 'unicast',
    oif: index,
    gateway: '',
    scope: 'link',
    protocol: PROTO,
  });

  const dup = t.throws<KernelError>(() => nl.routeAdd(route, false));
  t.is(dup?.errno, 17);
  t.is(dup?.code, 'EEXIST');
  t.true(dup?.op.startsWith('RTM_NEWROUTE'));

  for (const [i, type] of (['unreachable', 'prohibit', 'throw', 'blackhole'] as const).entries()) {
    nl.routeAdd({ family: 4, dst: `203.0.113.${octet + 1 + i}`, dstLen: 32, table, type, protocol: PROTO }, false);
  }
  routes = nl.routeList(4, table);
  t.deepEqual(routes.map((r) => r.type).sort(), ['blackhole', 'prohibit', 'throw', 'unicast', 'unreachable']);
  t.true(routes.every((r) => r.table === table && r.protocol === PROTO));
  t.false(nl.routeList(4, 254).some((r) => r.table === table), 'table filter');

  nl.routeAdd({ ...route, type: 'blackhole', oif: undefined }, true);
  routes = nl.routeList(4, table).filter((r) => r.dst === dst);
  t.is(routes.length, 1);
  t.is(routes[0]!.type, 'blackhole');

  nl.routeDel({ family: 4, dst, dstLen: 32, table });
  t.false(nl.routeList(4, table).some((r) => r.dst === dst));
  const missing = t.throws<KernelError>(() => nl.routeDel({ family: 4, dst, dstLen: 32, table }));
  t.is(missing?.code, 'ESRCH');
});

test('IPv6 route via oif in a dedicated table', (t) => {
  const { index } = makeVeth(t);
  nl.linkSetUp(index, true);
  const table = uniqueTable();
  cleanTable(t, table);
  const dst = `2001:db8:${randomInt(0xffff).toString(16)}::1`;
  nl.routeAdd({ family: 6, dst, dstLen: 128, table, oif: index, protocol: PROTO, priority: 77 }, false);
  const routes = nl.routeList(6, table);
  t.is(routes.length, 1);
  t.like(routes[0], { family: 6, dst, dstLen: 128, table, type: 'unicast', oif: index, protocol: PROTO, priority: 77 });
  nl.routeDel({ family: 6, dst, dstLen: 128, table, oif: index });
  t.deepEqual(nl.routeList(6, table), []);
});

test('ruleAdd with src prefix, table and protocol; ruleList; ruleDel', (t) => {
  const table = uniqueTable();
  const src = `198.51.100.${randomInt(0, 64) * 4}`;
  const rule: RuleSpec = { family: 4, priority: 20000 + randomInt(10000), src, srcLen: 30, table, protocol: PROTO };
  const find = () =>
    nl.ruleList(4).filter((r) => r.priority === rule.priority && r.table === table && r.src === src);
  t.teardown(() => {
    if (find().length > 0) nl.ruleDel(rule);
  });

  nl.ruleAdd(rule);
  const found = find();
  t.is(found.length, 1);
  t.like(found[0], { family: 4, src, srcLen: 30, dst: '', dstLen: 0, table, action: 'lookup', protocol: PROTO });

  const dup = t.throws<KernelError>(() => nl.ruleAdd(rule));
  t.is(dup?.code, 'EEXIST');
  t.true(dup?.op.startsWith('RTM_NEWRULE'));

  nl.ruleDel(rule);
  t.is(find().length, 0);
});

test('linkDelete removes both ends; missing links read as null', (t) => {
  const { host, peer, index } = makeVeth(t);
  const peerIndex = nl.linkGetByName(peer)!.index;
  nl.linkDelete(index);
  t.is(nl.linkGetByName(host), null);
  t.is(nl.linkGetByName(peer), null);
  t.is(nl.linkGetByIndex(index), null);
  t.is(nl.linkGetByIndex(peerIndex), null);
  const err = t.throws<KernelError>(() => nl.linkDelete(index));
  t.is(err?.code, 'ENODEV');
});

test('bad arguments throw TypeErrors naming the argument', (t) => {
  t.throws(() => nl.addrAdd(1, 4, '10.0.0.300', 32, {}), { instanceOf: TypeError, message: /addrAdd: address/ });
  t.throws(() => nl.routeAdd({ family: 6, dst: '::', dstLen: 0, gateway: '10.0.0.1' }, false), {
    instanceOf: TypeError,
    message: /route\.gateway/,
  });
  t.throws(() => nl.linkCreateVeth('mbtx', 'mbty', { mac: 'nope' }), {
    instanceOf: TypeError,
    message: /options\.mac/,
  });
  t.throws(() => nl.linkGetByIndex(-1), { instanceOf: TypeError });
  t.throws(() => nl.routeList(5 as 4, 0), { instanceOf: TypeError, message: /family/ });
});
