import test from 'ava';
import { cpuMaskOf, parseCpuMask } from './cpu-mask.js';

test('cpuMaskOf writes sysfs bitmaps: low bits set, 32-bit groups, nothing for one CPU', (t) => {
  t.is(cpuMaskOf(1), '');
  t.is(cpuMaskOf(0), '');
  t.is(cpuMaskOf(2), '3');
  t.is(cpuMaskOf(8), 'ff');
  t.is(cpuMaskOf(32), 'ffffffff');
  t.is(cpuMaskOf(40), 'ff,ffffffff');
  t.is(cpuMaskOf(65), '1,ffffffff,ffffffff');
});

test('parseCpuMask reads what the kernel prints back, padded and grouped', (t) => {
  t.is(parseCpuMask('00000003\n'), 3n);
  t.is(parseCpuMask('00000000,00000003'), 3n);
  t.is(parseCpuMask('ff,ffffffff'), 0xffffffffffn);
  t.is(parseCpuMask('0'), 0n);
  t.is(parseCpuMask('zz'), -1n);
});
