// Starts of the datapath against the real kernel, in a pin directory of the test's own: a second
// start with the same build takes the programs from their pins instead of loading them again; a
// missing map pin or another build loads them afresh.

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { unloadablePrograms } from '../features.js';
import { native } from '../kernel/native.js';
import { silentLogger } from '../log.js';
import { DEFAULT_GEOMETRY, Datapath } from './loader.js';
import { OBJECT } from './test-fixture.js';

const nl = native();

function start(pinDir: string, object = OBJECT): Datapath {
  const datapath = new Datapath(nl, object, silentLogger(), pinDir);
  datapath.start({ geometry: DEFAULT_GEOMETRY, attachMode: 'clsact', traceSample: 0, probeTcx: () => 'yes', skipPrograms: unloadablePrograms() });
  return datapath;
}

test('a start with the same build and every map pinned reuses the pinned programs; otherwise they are loaded', (t) => {
  const pinDir = `/sys/fs/bpf/mbtest-loader-${randomBytes(3).toString('hex')}`;
  const copyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-loader-'));
  t.teardown(() => {
    fs.rmSync(pinDir, { recursive: true, force: true });
    fs.rmSync(copyDir, { recursive: true, force: true });
  });
  const first = start(pinDir);
  t.false(first.programsReused, 'nothing pinned yet: loaded');
  const loadedFd = first.program('from_container');
  t.true(loadedFd > 0);
  first.close();
  const builds = () => fs.readdirSync(path.join(pinDir, 'progs'));
  t.is(builds().length, 1, 'one build pinned');
  t.true(fs.readdirSync(path.join(pinDir, 'progs', builds()[0]!)).includes('from_container'));
  const firstBuild = builds()[0];

  const second = start(pinDir);
  t.true(second.programsReused, 'same build, every map pinned: the pins are used');
  // The pinned program is a real one: it runs.
  const packet = Buffer.alloc(64);
  t.notThrows(() => nl.bpfProgTestRun(second.program('from_container'), packet, { repeat: 1 }));
  second.close();

  // A map pin gone: the pinned programs point at a map that is not the new one; load them.
  fs.rmSync(path.join(pinDir, 'mb_config'));
  const third = start(pinDir);
  t.false(third.programsReused);
  third.close();
  const again = start(pinDir);
  t.true(again.programsReused, 'and the next start reuses what that load pinned');
  again.close();

  // Another build (the same code with a byte more at the end of the file): loaded, and pinned anew.
  const other = path.join(copyDir, 'other.bpf.o');
  fs.writeFileSync(other, Buffer.concat([fs.readFileSync(OBJECT), Buffer.alloc(8)]));
  const fourth = start(pinDir, other);
  t.false(fourth.programsReused);
  fourth.close();
  t.is(builds().length, 1, 'the other build replaced the first');
  t.not(builds()[0], firstBuild);
  const back = start(pinDir);
  t.false(back.programsReused, 'back to the first build: loaded again');
  back.close();
});
