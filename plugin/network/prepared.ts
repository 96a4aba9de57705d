// Endpoints prepared ahead of demand: veth pairs created, with their sysctls set, the datapath's
// programs attached and a policy map ready, before Docker asks for them. CreateEndpoint then
// takes one and only renames and re-addresses it (requests that wait for no RCU grace period),
// instead of paying the kernel's grace periods for tcx attachment and the map-of-maps insert
// (about 30 ms here) while Docker waits.
//
// A prepared pair is named 'mbp' + 12 random hex digits (its peer 'mbq' + the same), carries the
// alias 'membrane-pool:<endpoint number>' and is down. Its endpoint number is reserved from the
// state's counter when it is made, so the policy map keyed by that number is ready too. Nothing
// about it is persisted: a daemon that dies leaves its prepared pairs for the next start to remove
// (removeLeftovers), and a clean stop removes them (discardAll). Until an endpoint takes it, no
// endpoint entry names its ifindex, so its programs drop whatever might arrive.
//
// Why not recycle a deleted container's pair instead: its container side has lived in a
// container's namespace, where a container with CAP_NET_ADMIN may have attached qdiscs, filters or
// XDP programs that would follow the device into the next container. A fresh pair carries nothing.

import { randomBytes } from 'node:crypto';
import type { IdleWork } from '../idle-work.js';
import type { NetlinkAddon } from '../kernel/native.js';

export const POOL_ALIAS_PREFIX = 'membrane-pool:';
/** Quiet time before a refill step: longer than the gaps between the calls of one container start. */
export const PREPARE_QUIET_MS = 60;
/** Host sides of prepared pairs. */
export const POOL_HOST_IF = /^mbp[0-9a-f]{12}$/;

export interface PreparedPair {
  hostName: string;
  peerName: string;
  hostIndex: number;
  peerIndex: number;
  /** The endpoint number reserved for whoever takes it. */
  number: number;
}

export interface PreparedEndpointHooks {
  /** Reserves an endpoint number (the state's counter; persisted with the next commit). */
  reserveNumber(): number;
  /** Host-side settings that follow the device through a rename (sysctls). */
  configure(pair: PreparedPair): void;
  /** Datapath steps (attach programs, ready the policy map), each run on its own idle turn. */
  datapathSteps(pair: PreparedPair): Array<() => void>;
  /** Undoes datapathSteps for a pair that is removed without being taken. */
  release(pair: PreparedPair): void;
  /** Queues a link for batched deletion. */
  deleteLink(index: number): void;
}

export class PreparedEndpoints {
  private readonly ready: PreparedPair[] = [];
  private preparing = 0;
  /** Pairs handed out since start, and CreateEndpoints that found none ready. */
  taken = 0;
  missed = 0;
  private stopped = false;

  constructor(private readonly nl: NetlinkAddon, private readonly idle: IdleWork,
    private readonly target: number, private readonly hooks: PreparedEndpointHooks) {}

  get size(): number {
    return this.ready.length;
  }

  /** Names of pairs that exist (ready or being prepared): start-up pruning must not remove their pins. */
  readonly names = new Set<string>();

  /** Queues preparation until `target` pairs are ready or being prepared. */
  fill(): void {
    while (!this.stopped && this.ready.length + this.preparing < this.target) this.prepareOne();
  }

  /** A ready pair, or undefined (the caller creates one the slow way); refills in the background. */
  take(): PreparedPair | undefined {
    const pair = this.ready.shift();
    if (pair) this.taken++;
    else if (this.target > 0) this.missed++;
    this.fill();
    return pair;
  }

  /** The pair's new owner could not use it: delete it rather than hand it out again. */
  spoil(pair: PreparedPair): void {
    this.names.delete(pair.hostName);
    this.hooks.release(pair);
    this.hooks.deleteLink(pair.hostIndex);
  }

  /** Clean stop: every ready pair is removed (links in one batch, through the caller's janitor). */
  discardAll(): void {
    this.stopped = true;
    for (const pair of this.ready.splice(0)) this.spoil(pair);
  }

  /** Pairs a daemon that died left behind: their links go (their pins and maps are pruned at start). */
  removeLeftovers(): string[] {
    const removed: string[] = [];
    for (const link of this.nl.linkList()) {
      if (!link.alias.startsWith(POOL_ALIAS_PREFIX)) continue;
      this.hooks.deleteLink(link.index);
      removed.push(link.name);
    }
    return removed;
  }

  private prepareOne(): void {
    const hex = randomBytes(6).toString('hex');
    const number = this.hooks.reserveNumber();
    const pair: PreparedPair = { hostName: `mbp${hex}`, peerName: `mbq${hex}`, hostIndex: 0, peerIndex: 0, number };
    this.preparing++;
    this.names.add(pair.hostName);
    let created = false;
    const finish = (ok: boolean): void => {
      this.preparing--;
      if (ok && !this.stopped) {
        this.ready.push(pair);
        return;
      }
      this.names.delete(pair.hostName);
      if (created) {
        this.hooks.release(pair);
        this.hooks.deleteLink(pair.hostIndex);
      }
    };
    this.idle.add({
      name: `prepare endpoint ${pair.hostName}`,
      // The pool has pairs to spare: its refill waits for the longer gaps (see IdleTask.quietMs).
      quietMs: PREPARE_QUIET_MS,
      steps: [
        () => {
          if (this.stopped) throw new Error('daemon stopping');
          pair.hostIndex = this.nl.linkCreateVeth(pair.hostName, pair.peerName, { alias: `${POOL_ALIAS_PREFIX}${number}` });
          created = true;
          pair.peerIndex = this.nl.linkGetByName(pair.peerName)!.index;
          this.hooks.configure(pair);
        },
        ...this.hooks.datapathSteps(pair).map((step) => () => {
          if (this.stopped) throw new Error('daemon stopping');
          step();
        }),
        () => finish(true),
      ],
      abort: () => finish(false),
    });
  }
}
