// Named, cached kernel feature probes with three outcomes: 'yes', 'no', or an exception when the
// probe itself could not decide (inconclusive results are not cached).

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
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

/** True when the running kernel's release is at least major.minor. */
export function kernelAtLeast(major: number, minor: number, release = os.release()): boolean {
  const [maj, min] = release.split(/[.-]/).map(Number);
  return maj! > major || (maj === major && min! >= minor);
}

/**
 * For tests that need tcx: the named probe, run with a tc program from `objectPath`. A "no" on a
 * kernel that must have tcx (6.6+) is a broken probe, not a reason to skip: it throws, so a probe
 * can never hide a bug behind a skipped test.
 */
export function tcxForTests(nl: NativeAddon, objectPath: string): ProbeResult {
  const obj = nl.bpfObjectLoad(objectPath, objectLoadOptionsForTests());
  try {
    const prog = obj.programs.find((p) => p.section.startsWith('tc'));
    if (!prog) throw new Error(`${objectPath} has no tc program to probe with`);
    const result = probeTcx(nl, prog.fd);
    if (result === 'no' && kernelAtLeast(6, 6)) {
      throw new Error(`probe tcx says "no" on Linux ${os.release()} (>= 6.6, which has tcx): the probe is broken`);
    }
    return result;
  } finally {
    obj.close();
  }
}

/**
 * A kernel function BPF programs may call (a kfunc such as bpf_sock_destroy, Linux 6.5+): present
 * when the kernel's BTF names it. 'no' when the BTF lacks it; an exception when there is no BTF
 * to read (inconclusive: Membrane's object needs BTF anyway).
 */
export function probeKfunc(name: string, vmlinux = '/sys/kernel/btf/vmlinux'): ProbeResult {
  const key = `kfunc:${name}`;
  const cached = cache.get(key);
  if (cached) return cached;
  const btf = fs.readFileSync(vmlinux);
  // BTF names live in its string section, each NUL-terminated.
  const result: ProbeResult = btf.includes(Buffer.from(`\0${name}\0`)) ? 'yes' : 'no';
  cache.set(key, result);
  return result;
}

/**
 * The cgroup-v2 mount the socket-level programs attach to: /sys/fs/cgroup, or .../unified on a
 * hybrid host. With `under`, only a mount at or below it counts: a managed plugin sees its own
 * (namespaced) cgroup at /sys/fs/cgroup and the host's where config.json binds it.
 */
export function findCgroup2Root(under = '', mounts = '/proc/self/mounts'): string | undefined {
  for (const line of fs.readFileSync(mounts, 'utf8').split('\n')) {
    const [, raw, type] = line.split(' ');
    if (type !== 'cgroup2' || !raw) continue;
    const mountPoint = raw.replace(/\\040/g, ' ');
    if (!under || mountPoint === under || mountPoint.startsWith(`${under.replace(/\/$/, '')}/`)) return mountPoint;
  }
  return undefined;
}

/** Programs of Membrane's object that need bpf_sock_destroy (Linux 6.5+). */
export const SOCKET_DESTROY_PROGRAMS = ['sock_destroy_tcp', 'sock_destroy_udp'] as const;

/** The programs of Membrane's object this kernel cannot load, by the named probes (left out of a load). */
export function unloadablePrograms(): string[] {
  return probeKfunc('bpf_sock_destroy') === 'yes' ? [] : [...SOCKET_DESTROY_PROGRAMS];
}

/**
 * For tests and benchmarks that load Membrane's object: bpfObjectLoad options leaving out what the
 * kernel lacks. A "no" on a kernel that must have bpf_sock_destroy (6.5+) is a broken probe: it
 * throws rather than let a test skip what it should test.
 */
export function objectLoadOptionsForTests(): { autoload: Record<string, boolean> } {
  const skip = unloadablePrograms();
  if (skip.length && kernelAtLeast(6, 5)) {
    throw new Error(`probe kfunc:bpf_sock_destroy says "no" on Linux ${os.release()} (>= 6.5, which has it): the probe is broken`);
  }
  return { autoload: Object.fromEntries(skip.map((name) => [name, false])) };
}
