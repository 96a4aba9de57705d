// Walking a whole BPF map: batch lookups where the kernel supports them for the map type (a few
// syscalls for thousands of entries), key-by-key iteration otherwise.

import type { BpfAddon } from '../kernel/native.js';

/** Every [key, value] of the map, at most `max` of them. */
export function mapEntries(bpf: BpfAddon, fd: number, max: number): [Buffer, Buffer][] {
  const out: [Buffer, Buffer][] = [];
  try {
    const { count, keys, values } = bpf.bpfMapLookupBatch(fd, max);
    if (count === 0) return out;
    const keySize = keys.length / count;
    const valueSize = values.length / count;
    for (let i = 0; i < count; i++) {
      out.push([keys.subarray(i * keySize, (i + 1) * keySize), values.subarray(i * valueSize, (i + 1) * valueSize)]);
    }
    return out;
  } catch (err) {
    if ((err as { code?: string }).code !== 'EINVAL' && (err as { code?: string }).code !== 'ENOTSUPP') throw err;
  }
  let key: Buffer | null = null;
  for (let i = 0; i < max; i++) {
    key = bpf.bpfMapNextKey(fd, key);
    if (!key) break;
    const value = bpf.bpfMapLookup(fd, key);
    if (value) out.push([key, value]);
  }
  return out;
}
