// CPU masks as sysfs writes and reads them (rps_cpus): hexadecimal, in comma-separated groups of
// 32 bits, most significant first ("ff,ffffffff" for 40 CPUs).

import os from 'node:os';

/** A mask of CPUs 0 .. count-1; '' for one CPU or none (steering among one CPU does nothing). */
export function cpuMaskOf(count: number): string {
  if (!Number.isInteger(count) || count < 2) return '';
  const mask = (1n << BigInt(count)) - 1n;
  const groups: string[] = [];
  for (let rest = mask; rest > 0n; rest >>= 32n) groups.unshift((rest & 0xffffffffn).toString(16));
  return groups.map((g, i) => (i === 0 ? g : g.padStart(8, '0'))).join(',');
}

/** Every CPU this machine has. */
export function allCpusMask(): string {
  return cpuMaskOf(os.cpus().length);
}

/** The mask's value, however sysfs padded or grouped it; NaN-free: garbage reads as -1n. */
export function parseCpuMask(text: string): bigint {
  const hex = text.trim().replace(/,/g, '');
  if (!/^[0-9a-fA-F]*$/.test(hex)) return -1n;
  return hex ? BigInt(`0x${hex}`) : 0n;
}
