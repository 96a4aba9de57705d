import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { IdleWork } from './idle-work.js';
import { silentLogger } from './log.js';

test('a step waits until no call is in flight and the line has been quiet', async (t) => {
  const idle = new IdleWork(silentLogger(), 30);
  const ran: string[] = [];
  idle.requestStarted();
  idle.add({ name: 'a', steps: [() => ran.push('a1'), () => ran.push('a2')] });
  await sleep(60);
  t.deepEqual(ran, [], 'nothing runs while a call is in flight');
  idle.requestFinished();
  await sleep(10);
  t.deepEqual(ran, [], 'nor right after it');
  await sleep(80);
  t.deepEqual(ran, ['a1', 'a2']);
  t.is(idle.pending, 0);
  t.is(idle.done, 1);
});

test('a call arriving between two steps holds back the rest', async (t) => {
  const idle = new IdleWork(silentLogger(), 20);
  const ran: string[] = [];
  idle.add({ name: 'a', steps: [() => { ran.push('a1'); idle.requestStarted(); }, () => ran.push('a2')] });
  await sleep(80);
  t.deepEqual(ran, ['a1']);
  idle.requestFinished();
  await sleep(80);
  t.deepEqual(ran, ['a1', 'a2']);
});

test('a failing step drops the rest of its task and runs its abort; other tasks go on', async (t) => {
  const idle = new IdleWork(silentLogger(), 0);
  const ran: string[] = [];
  idle.add({ name: 'bad', steps: [() => { throw new Error('boom'); }, () => ran.push('never')], abort: () => ran.push('aborted') });
  idle.add({ name: 'good', steps: [() => ran.push('good')] });
  await idle.drain();
  t.deepEqual(ran, ['aborted', 'good']);
  t.is(idle.failed, 1);
});

test('drain runs work queued while draining (a task that queues another)', async (t) => {
  const idle = new IdleWork(silentLogger(), 60_000);
  const ran: string[] = [];
  idle.add({ name: 'first', steps: [() => idle.add({ name: 'second', steps: [() => ran.push('second')] })] });
  await idle.drain();
  t.deepEqual(ran, ['second']);
});

test('a task asking for a longer quiet time lets shorter-waiting tasks queued after it go first', async (t) => {
  const idle = new IdleWork(silentLogger(), 10);
  const ran: string[] = [];
  idle.requestStarted();
  idle.add({ name: 'patient', quietMs: 400, steps: [() => ran.push('patient')] });
  idle.add({ name: 'eager', steps: [() => ran.push('eager')] });
  idle.requestFinished();
  await sleep(150);
  t.deepEqual(ran, ['eager']);
  await sleep(600);
  t.deepEqual(ran, ['eager', 'patient']);
});
