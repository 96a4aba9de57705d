// One errors module. Every failure Membrane reports has a stable string `code` (what scripts and
// the CLI switch on) and a message that says what to do about it. Conversion to Docker's
// {"Err": "..."} happens in exactly one place, plugin/docker/http.ts.

export type ErrorCode =
  | 'MEMBRANE_INVALID_ARGUMENT'
  | 'MEMBRANE_NOT_FOUND'
  | 'MEMBRANE_CONFLICT'
  | 'MEMBRANE_IPAM_EXHAUSTED'
  | 'MEMBRANE_IPAM_ADDRESS_IN_USE'
  | 'MEMBRANE_IPAM_POOL_OVERLAP'
  | 'MEMBRANE_IPAM_OUT_OF_POOL'
  | 'MEMBRANE_KERNEL'
  | 'MEMBRANE_NOT_SUPPORTED'
  | 'MEMBRANE_STATE'
  | 'MEMBRANE_NETFILTER'
  | 'MEMBRANE_POLICY_INVALID'
  | 'MEMBRANE_CAPACITY'
  | 'MEMBRANE_INTERNAL';

export class MembraneError extends Error {
  readonly code: ErrorCode;
  /** HTTP status used on the management API; Docker only cares that it is not 200. */
  readonly status: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; status?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options?.status ?? 500;
  }

  override get name(): string {
    return this.constructor.name;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** A request carried a value we cannot act on. The message names the field and what to send instead. */
export class InvalidArgumentError extends MembraneError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MEMBRANE_INVALID_ARGUMENT', message, { ...options, status: 400 });
  }
}

export class NotFoundError extends MembraneError {
  constructor(message: string) {
    super('MEMBRANE_NOT_FOUND', message, { status: 404 });
  }
}

export class ConflictError extends MembraneError {
  constructor(message: string) {
    super('MEMBRANE_CONFLICT', message, { status: 409 });
  }
}

export class IpamExhaustedError extends MembraneError {
  readonly pool: string;
  constructor(pool: string, detail: string) {
    super('MEMBRANE_IPAM_EXHAUSTED', `address pool ${pool} is exhausted (${detail}); ` +
      'remove unused containers from the network, or create a network with a larger --subnet', { status: 507 });
    this.pool = pool;
  }
}

export class AddressInUseError extends MembraneError {
  constructor(address: string, pool: string) {
    super('MEMBRANE_IPAM_ADDRESS_IN_USE', `address ${address} in pool ${pool} is already allocated; ` +
      'pick another --ip/--ip6, or stop the container that holds it', { status: 409 });
  }
}

export class PoolOverlapError extends MembraneError {
  constructor(requested: string, existing: string, owner: string) {
    super('MEMBRANE_IPAM_POOL_OVERLAP', `subnet ${requested} overlaps ${existing} (${owner}); ` +
      'choose a --subnet that does not overlap, or remove the other network first', { status: 409 });
  }
}

export class OutOfPoolError extends MembraneError {
  constructor(address: string, pool: string) {
    super('MEMBRANE_IPAM_OUT_OF_POOL', `address ${address} is not inside pool ${pool}; ` +
      'pick an --ip/--ip6 inside the network\'s --subnet', { status: 400 });
  }
}

/** A change does not fit a kernel map (or another fixed limit): refused before anything is written. */
export class CapacityError extends MembraneError {
  readonly map: string;
  constructor(map: string, message: string) {
    super('MEMBRANE_CAPACITY', message, { status: 507 });
    this.map = map;
  }
}

/** A netlink or bpf() call failed. Carries the kernel's errno and the operation. */
export class KernelError extends MembraneError {
  readonly errno: number;
  readonly syscallCode: string;
  readonly op: string;
  constructor(op: string, errno: number, syscallCode: string, detail: string, options?: { cause?: unknown }) {
    super('MEMBRANE_KERNEL', `${op} failed: ${detail} (${syscallCode})`, options);
    this.errno = errno;
    this.syscallCode = syscallCode;
    this.op = op;
  }
}

/** The kernel or host lacks something Membrane needs; `feature` names the probe. */
export class NotSupportedError extends MembraneError {
  readonly feature: string;
  constructor(feature: string, message: string) {
    super('MEMBRANE_NOT_SUPPORTED', message, { status: 501 });
    this.feature = feature;
  }
}

export class StateError extends MembraneError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MEMBRANE_STATE', message, options);
  }
}

export class NetfilterError extends MembraneError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MEMBRANE_NETFILTER', message, options);
  }
}

/**
 * A policy document (or a container's label policy) is invalid. `issues` lists every problem with
 * its path in the document and what to write instead; nothing of the document was applied.
 */
export class PolicyInvalidError extends MembraneError {
  readonly issues: { path: string; message: string }[];
  constructor(issues: { path: string; message: string }[], what = 'policy') {
    const shown = issues.slice(0, 20).map((i) => `  ${i.path || '(document)'}: ${i.message}`).join('\n');
    const more = issues.length > 20 ? `\n  ... and ${issues.length - 20} more` : '';
    super('MEMBRANE_POLICY_INVALID', `${what} is invalid, nothing was applied (${issues.length} ` +
      `problem${issues.length === 1 ? '' : 's'}):\n${shown}${more}`, { status: 400 });
    this.issues = issues;
  }

  override toJSON(): { code: ErrorCode; message: string; issues: { path: string; message: string }[] } {
    return { code: this.code, message: this.message, issues: this.issues };
  }
}

/** Wraps anything that is not already a MembraneError, keeping the original as `cause`. */
export function asMembraneError(err: unknown): MembraneError {
  if (err instanceof MembraneError) return err;
  const native = err as { errno?: unknown; code?: unknown; op?: unknown; message?: unknown };
  if (typeof native?.errno === 'number' && typeof native.op === 'string') {
    return new KernelError(native.op, native.errno, String(native.code ?? 'UNKNOWN'),
      String(native.message ?? 'unknown error'), { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new MembraneError('MEMBRANE_INTERNAL', `internal error: ${message}`, { cause: err });
}
