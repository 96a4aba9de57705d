// Named, cached kernel feature probes with three outcomes: 'yes', 'no', or an exception when the
// probe itself could not decide (inconclusive results are not cached).

import { randomBytes } from 'node:crypto';
import type { NativeAddon } from './kernel/native.js';

export type ProbeResult = 'yes' | 'no';

const cache = new Map<string, ProbeResult>();

/** errno codes that mean "this kernel does not do that", as opposed to "the probe broke". */
const UNSUPPORTED = new Set(['EINVAL', 'EOPNOTSUPP', 'ENOTSUPP', 'ERRNO_524', 'ENOSYS']);

/**
 * tcx (Linux >= 6.6): BPF_LINK_CREATE with BPF_TCX_INGRESS on a throwaway veth pair, with a
 * real tc program. Never touches an interface anyone else uses.
 */
export function probeTcx(nl: NativeAddon, tcProgFd: number): ProbeResult {
  const cached = cache.get('tcx');
  if (cached) return cached;
  const name = `mbprobe${randomBytes(3).toString('hex')}`;
  const ifindex = nl.linkCreateVeth(name, `${name}p`, {});
  let result: ProbeResult;
  try {
    const link = nl.tcxAttach(ifindex, tcProgFd, 'ingress');
    nl.bpfClose(link);
    result = 'yes';
  } catch (err) {
    if (!UNSUPPORTED.has(String((err as { code?: unknown }).code))) throw err;
    result = 'no';
  } finally {
    nl.linkDelete(ifindex);
  }
  cache.set('tcx', result);
  return result;
}
