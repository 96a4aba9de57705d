// Virtual IPs for services: one IPv4 and one IPv6 address per (network, service name), out of the
// configured service ranges. The first choice is a hash of the pair, so a service deleted and
// created again (a compose project taken down and up) gets the same VIP back unless another
// service took it meanwhile; the choice is persisted with the service, so a restart never moves it.

import { InvalidArgumentError, IpamExhaustedError } from '../errors.js';
import { formatAddress, formatPrefix, parseAddress, prefixContainsPrefix, prefixSize, type Prefix } from '../ipam/prefix.js';
import { murmurHash3_32 } from './maglev.js';

/** Addresses of the range a VIP may take: not the network address, and for IPv4 not the broadcast address. */
function usable(range: Prefix): { first: bigint; count: bigint } {
  const size = prefixSize(range);
  if (range.family === 4 && size >= 4n) return { first: 1n, count: size - 2n };
  if (size >= 2n) return { first: 1n, count: size - 1n };
  return { first: 0n, count: size };
}

/** Picks the VIP of `key` (e.g. "<network id>/<name>") in `range`, skipping `taken` addresses. */
export function pickVip(range: Prefix, key: string, taken: ReadonlySet<string>): string {
  const { first, count } = usable(range);
  const start = BigInt(murmurHash3_32(Buffer.from(key, 'utf8'), 0x5649_5031)) % count;
  // Linear probing, bounded by the range: a full range is an error, not a loop.
  const limit = count < 1_000_000n ? count : 1_000_000n;
  for (let i = 0n; i < limit; i++) {
    const address = formatAddress(range.family, range.network + first + ((start + i) % count));
    if (!taken.has(address)) return address;
  }
  throw new IpamExhaustedError(formatPrefix(range), 'every address of the service range is a VIP already; ' +
    'delete services you no longer need, or configure a larger serviceIPv4Range / serviceIPv6Range');
}

/** Checks a VIP the user asked for: inside the range, not the network or broadcast address, not taken. */
export function checkRequestedVip(range: Prefix, address: string, taken: ReadonlySet<string>, what: string): string {
  const parsed = parseAddress(address);
  const canonical = formatAddress(parsed.family, parsed.value);
  if (parsed.family !== range.family || !prefixContainsPrefix(range, { family: parsed.family, network: parsed.value, length: parsed.family === 4 ? 32 : 128 })) {
    throw new InvalidArgumentError(`${what} ${address} is not inside the service range ${formatPrefix(range)}; ` +
      'give an address from it, or leave the VIP out and Membrane picks one');
  }
  const { first, count } = usable(range);
  const offset = parsed.value - range.network;
  if (offset < first || offset >= first + count) {
    throw new InvalidArgumentError(`${what} ${address} is the network or broadcast address of ${formatPrefix(range)}; give another`);
  }
  if (taken.has(canonical)) throw new InvalidArgumentError(`${what} ${address} is already the VIP of another service`);
  return canonical;
}
