// The policy engine: keeps every endpoint's identity and compiled policy in step with the rules,
// the identities and the host's addresses, and applies the result to the datapath.
//
// Every change (an import, a delete, a container's labels arriving, an endpoint going away)
// ends in one regeneration: bring every endpoint's compiled policy up to date (recompiling only
// what the change touches: incremental.ts), write only the keys that changed into the maps,
// sync the ipcache, then bump the policy epoch so known flows are judged again (revocation).
// Changes that arrive together share one regeneration.

import { performance } from 'node:perf_hooks';
import type { Context } from '../network/networks.js';
import { AUDIT_OPTION, ENFORCEMENT_OPTION } from '../network/networks.js';
import type { EndpointRecord, NetworkRecord } from '../state/model.js';
import type { PolicyMaps } from '../datapath/policy-maps.js';
import type { EndpointMaps } from '../datapath/endpoint-maps.js';
import { ID_HOST, ID_INIT, POLICY_EGRESS, POLICY_INGRESS, type IpcacheValue } from '../datapath/codec.js';
import {
  CLASS_IDENTITY_NAMES, IdentityAllocator, INIT_LABELS, RESERVED_IDENTITIES, emptyIdentityState, type IdentityView,
} from '../identity/identities.js';
import { filterLabels, type LabelFilter } from '../identity/label-filter.js';
import type { EndpointLabels } from '../identity/watcher.js';
import { COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL } from '../identity/docker-labels.js';
import { PolicyCompiler, PolicyLookup, cidrsOf, classOf, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from './compile.js';
import { PolicyRepository, emptyPolicyState } from './repository.js';
import { IncrementalCompiler, type EndpointResult } from './incremental.js';
import { formatLabel, parseLabel } from './labels.js';
import { hasLabelPolicy, parseLabelPolicy } from './label-policy.js';
import type { EnforcementMode, Label, PolicyRule, StoredRule } from './types.js';
import { ConflictError, InvalidArgumentError, NotFoundError } from '../errors.js';

export interface PolicySettings {
  enforcement: EnforcementMode;
  audit: boolean;
  initFailOpen: boolean;
  labelFilter: LabelFilter;
}

export interface RegenerationReport {
  revision: number;
  endpoints: number;
  written: number;
  deleted: number;
  ipcache: { written: number; deleted: number };
  epoch?: number;
  ms: number;
}

/** Latency samples kept for status (Join -> identity applied). */
const LATENCY_SAMPLES = 1000;

function percentile(values: number[], p: number): number | undefined {
  if (!values.length) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export class PolicyEngine {
  readonly repository: PolicyRepository;
  readonly identities: IdentityAllocator;
  /** Join -> identity applied, in ms, most recent last. */
  readonly identityLatencyMs: number[] = [];
  /** Samples ever taken (identityLatencyMs keeps the last LATENCY_SAMPLES): a reader takes the new ones. */
  private identityLatencyTotal = 0;
  private readonly joinedAt = new Map<string, number>();
  private pending: Promise<RegenerationReport> | undefined;
  private lastReport: RegenerationReport | undefined;
  private revisionWaiters: { revision: number; resolve: () => void }[] = [];
  private collectedAtStart = false;
  /** Every endpoint's compiled policy, kept between changes (incremental.ts). */
  private readonly incremental = new IncrementalCompiler();
  private synced = false;

  constructor(private readonly ctx: Context, private readonly settings: PolicySettings,
    private readonly maps: PolicyMaps | undefined, private readonly endpointMaps: EndpointMaps | undefined,
    private readonly hostAddresses: () => string[]) {
    // Sections made here are written whole once; after that, commits name the records that changed.
    if (!ctx.state.identities) {
      ctx.state.identities = emptyIdentityState();
      ctx.store.touch(['identities']);
    }
    if (!ctx.state.policy) {
      ctx.state.policy = emptyPolicyState();
      ctx.store.touch(['policy']);
    }
    this.identities = new IdentityAllocator(ctx.state.identities);
    this.identities.onChange = (p) => ctx.store.touch(['identities', ...p]);
    this.repository = new PolicyRepository(ctx.state.policy);
    this.repository.onChange = (p) => ctx.store.touch(['policy', ...p]);
  }

  /** True when policy is enforced in the kernel (the BPF datapath); false on the routing datapath. */
  get enforcing(): boolean {
    return this.maps !== undefined;
  }

  get report(): RegenerationReport | undefined {
    return this.lastReport;
  }

  identityLatency(): { samples: number; total: number; p50?: number; p99?: number; max?: number } {
    const v = this.identityLatencyMs;
    return {
      samples: v.length, total: this.identityLatencyTotal, p50: percentile(v, 50), p99: percentile(v, 99),
      max: v.length ? Math.max(...v) : undefined,
    };
  }

  modeOf(network: NetworkRecord | undefined): EnforcementMode {
    const option = network?.options[ENFORCEMENT_OPTION];
    return option === 'default' || option === 'always' || option === 'never' ? option : this.settings.enforcement;
  }

  private auditOf(network: NetworkRecord | undefined): boolean {
    const option = network?.options[AUDIT_OPTION];
    return option === undefined ? this.settings.audit : option === 'true';
  }

  private labelsOf(endpoint: EndpointRecord): Label[] {
    return endpoint.identity === undefined || endpoint.identity === ID_INIT ? [...INIT_LABELS] : (endpoint.labels ?? []).map((l) => parseLabel(l));
  }

  /**
   * Gives a new endpoint the init identity and its compiled policy before its veth gets a
   * program (EndpointManager.create calls this): the container never runs unpoliced.
   */
  prepare(endpoint: EndpointRecord): void {
    endpoint.identity ??= ID_INIT;
    // Against the rules and identities of the last regeneration: a change since then has one
    // pending, which brings this endpoint up to date with the others.
    if (!this.synced) this.syncCompiler();
    const result = this.incremental.rebuild(endpoint.id, this.inputOf(endpoint));
    this.checkCapacity(endpoint, result.size);
    this.applyEndpoint(endpoint, result);
  }

  /** Join was answered: the clock for "Join -> identity applied" starts. */
  joined(endpoint: EndpointRecord): void {
    if (endpoint.identity === undefined || endpoint.identity === ID_INIT) this.joinedAt.set(endpoint.id, performance.now());
  }

  /** The endpoint is gone: its trie, its label policy and its latency clock. */
  async forget(endpoint: EndpointRecord): Promise<void> {
    this.joinedAt.delete(endpoint.id);
    if (endpoint.number !== undefined) this.maps?.remove(endpoint.number);
    if (this.repository.setOrigin(`endpoint:${endpoint.id}`, []).changed) await this.regenerate();
  }

  /**
   * Labels for an endpoint arrived from Docker (the event watcher, never a plugin handler):
   * its identity, and its label policy, then a regeneration.
   */
  async endpointLabels(update: EndpointLabels): Promise<void> {
    const endpoint = this.ctx.state.endpoints[update.endpointId];
    if (!endpoint) return;
    const { identity, info } = filterLabels(update.labels, this.settings.labelFilter);
    const labels = identity.map((l) => formatLabel(l));
    const { id } = this.identities.forLabels(identity);
    let changed = endpoint.identity !== id || JSON.stringify(endpoint.labels) !== JSON.stringify(labels);
    endpoint.identity = id;
    endpoint.labels = labels;
    endpoint.infoLabels = info.map((l) => formatLabel(l));
    endpoint.containerId = update.containerId;
    endpoint.containerName = update.containerName;
    this.ctx.store.touch(['endpoints', endpoint.id]);
    const network = this.ctx.state.networks[endpoint.networkId];
    if (network && update.networkName && network.name !== update.networkName) {
      network.name = update.networkName;
      this.ctx.store.touch(['networks', network.id]);
    }
    changed = this.applyLabelPolicy(endpoint, update, identity) || changed;
    if (!changed) return;
    try {
      await this.regenerate();
    } catch (err) {
      // A label policy too big for the maps must not block every later change: it is refused
      // like an invalid one, and the container stays default-deny.
      if (!(err instanceof ConflictError) || !this.repository.setOrigin(`endpoint:${endpoint.id}`, []).changed) throw err;
      endpoint.labelPolicyError = err.message;
      this.ctx.store.touch(['endpoints', endpoint.id]);
      await this.regenerate();
    }
    const started = this.joinedAt.get(endpoint.id);
    if (started !== undefined) {
      this.joinedAt.delete(endpoint.id);
      this.identityLatencyMs.push(performance.now() - started);
      this.identityLatencyTotal++;
      if (this.identityLatencyMs.length > LATENCY_SAMPLES) this.identityLatencyMs.shift();
    }
    this.ctx.log.info('endpoint identity applied', {
      endpoint: endpoint.id.slice(0, 12), container: update.containerName, identity: id, labels,
      sinceEvent: `${(performance.now() - update.receivedAt).toFixed(1)} ms`,
    });
  }

  /** A container's label policy becomes rules of origin endpoint:<id>. Returns whether anything changed. */
  private applyLabelPolicy(endpoint: EndpointRecord, update: EndpointLabels, identity: Label[]): boolean {
    const origin = `endpoint:${endpoint.id}`;
    const before = endpoint.labelPolicyError;
    if (!hasLabelPolicy(update.containerLabels)) {
      endpoint.labelPolicyError = undefined;
      return this.repository.setOrigin(origin, []).changed || before !== undefined;
    }
    const project = update.containerLabels[COMPOSE_PROJECT_LABEL];
    const service = update.containerLabels[COMPOSE_SERVICE_LABEL];
    const selectLabels: Record<string, string> = project && service
      ? { 'compose:project': project, 'compose:service': service }
      : Object.fromEntries(identity.filter((l) => l.source === 'container').map((l) => [`container:${l.key}`, l.value]));
    const policyOf = project && service ? `${project}/${service}` : update.containerName;
    let rules: PolicyRule[] = [];
    let error: string | undefined;
    if (!Object.keys(selectLabels).length) {
      error = 'a label policy needs the container to carry at least one identity label to select it by; add one, e.g. `-l app=NAME`';
    } else {
      const parsed = parseLabelPolicy(update.containerLabels, selectLabels, policyOf);
      if (parsed.issues.length) error = parsed.issues.map((i) => `${i.path}: ${i.message}`).join('; ');
      else rules = parsed.rules;
    }
    endpoint.labelPolicyError = error;
    if (error) {
      this.ctx.log.error('container label policy is invalid; the container stays default-deny in both directions',
        { endpoint: endpoint.id.slice(0, 12), container: update.containerName, error });
    }
    return this.repository.setOrigin(origin, rules).changed || before !== error;
  }

  /** Imports a validated document (all or nothing) and applies it. */
  async import(rules: PolicyRule[]): Promise<{ revision: number; added: StoredRule[]; replaced: number[] }> {
    return this.changeRules(() => {
      const result = this.repository.add(rules, 'api');
      this.maps?.resetCounters(result.added.map((r) => r.id));
      return result;
    });
  }

  /**
   * Applies a change to the rules as a whole: when the regeneration refuses it (a map would
   * overflow), the rules go back to what they were and the error reaches the caller. One state
   * write, by the regeneration, before the answer: a crash before it loses nothing that was
   * acknowledged, and the start-up regeneration rewrites the maps from the state.
   */
  private async changeRules<T>(change: () => T): Promise<T> {
    // The repository never edits a stored rule or its list in place (every change makes a new
    // list), so the list itself is the snapshot.
    const policy = this.ctx.state.policy!;
    const before = { revision: policy.revision, rules: policy.rules };
    const result = change();
    try {
      await this.regenerate();
    } catch (err) {
      Object.assign(policy, before);
      await this.regenerate();
      throw err;
    }
    return result;
  }

  async delete(labels: Label[], options: { all?: boolean } = {}): Promise<{ revision: number; deleted: StoredRule[] }> {
    return this.changeRules(() => this.repository.delete(labels, options));
  }

  /** Gives every CIDR the rules name an identity, and hands the rules and identities to the compiler. */
  private syncCompiler(cidrs: ReadonlySet<string> = cidrsOf(this.repository.rules())): void {
    for (const c of cidrs) this.identities.forCidr(c);
    this.incremental.sync(this.repository.rules(), this.identities);
    this.synced = true;
  }

  private inputOf(endpoint: EndpointRecord) {
    const network = this.ctx.state.networks[endpoint.networkId];
    return {
      identity: endpoint.identity ?? ID_INIT, labels: this.labelsOf(endpoint), mode: this.modeOf(network),
      audit: this.auditOf(network), initFailOpen: this.settings.initFailOpen, forceEnforce: endpoint.labelPolicyError !== undefined,
    };
  }

  /**
   * Refuses a compiled policy before anything is written when it needs more entries than the
   * endpoint's map holds (the kernel would refuse part of it, leaving a policy nobody asked for).
   */
  private checkCapacity(e: EndpointRecord, size: number): void {
    const capacity = this.maps?.capacity ?? Infinity;
    if (size <= capacity) return;
    // What the compiler holds no longer matches the maps: everything compiles afresh next time.
    this.incremental.forget();
    throw new ConflictError(`the policy would put ${size} entries into the policy map of endpoint ` +
      `${e.id.slice(0, 12)}${e.containerName ? ` (${e.containerName})` : ''}, which holds ${capacity}; nothing was applied. ` +
      'Use port ranges (endPort), wildcard selectors ({} or an entity) or fewer ports per rule');
  }

  /** Writes one endpoint's compiled policy into its trie and its endpoint entry; returns the write counts. */
  private applyEndpoint(endpoint: EndpointRecord, compiled: EndpointResult): { written: number; deleted: number } {
    let counts = { written: 0, deleted: 0 };
    if (this.maps && endpoint.number !== undefined) {
      counts = compiled.full
        ? this.maps.apply(endpoint.number, this.incremental.entries(endpoint.id))
        : this.maps.applyDelta(endpoint.number, this.incremental.changes(endpoint.id), () => this.incremental.entries(endpoint.id));
    }
    this.incremental.written(endpoint.id);
    const written = { ingress: compiled.enforceIngress, egress: compiled.enforceEgress, audit: compiled.audit, identity: endpoint.identity ?? ID_INIT };
    const before = endpoint.policy;
    endpoint.policy = { ...written, revision: this.repository.revision };
    // The endpoint entry carries the identity and the flags: rewrite it when either moved (an
    // identity that changes while the flags stay would leave peers judging it as init).
    if (!before || before.ingress !== written.ingress || before.egress !== written.egress || before.audit !== written.audit ||
      before.identity !== written.identity) {
      const network = this.ctx.state.networks[endpoint.networkId];
      if (network) this.endpointMaps?.refresh(endpoint, network);
    }
    return counts;
  }

  /** Ipcache: the host's own addresses, and every CIDR a rule names. */
  private ipcacheEntries(): Map<string, IpcacheValue> {
    const entries = new Map<string, IpcacheValue>();
    for (const v of this.identities.all()) {
      if (v.kind === 'cidr') entries.set(v.cidr!, { identity: v.id, classIdentity: classOf(v.id, v.family!) });
    }
    for (const address of this.hostAddresses()) entries.set(address, { identity: ID_HOST, classIdentity: 0 });
    return entries;
  }

  /**
   * Brings every endpoint's policy up to date and applies the differences; concurrent callers share one run.
   * Idle callers (nothing changed) still get a fresh run: the host's addresses may have moved.
   */
  regenerate(): Promise<RegenerationReport> {
    if (this.pending) return this.pending;
    this.pending = new Promise<RegenerationReport>((resolve, reject) => {
      setImmediate(() => {
        this.pending = undefined;
        try {
          resolve(this.regenerateNow());
        } catch (err) {
          reject(err);
        }
      });
    // Only what changed: rules, identities and endpoints named themselves as they changed. (An
    // endpoint's compiled `policy` is derived again at start and is written with its record.)
    }).finally(() => this.ctx.store.commit([]));
    return this.pending;
  }

  private regenerateNow(): RegenerationReport {
    const started = performance.now();
    const endpoints = Object.values(this.ctx.state.endpoints);
    // Identities nothing uses any more, before anything is compiled against them: CIDRs no rule
    // names, every time; label sets no endpoint has, once per daemon start (so a container that
    // restarts keeps its number while the daemon runs, and the state does not grow without end).
    const usedEndpointIdentities = this.collectedAtStart
      ? new Set(this.identities.all().filter((v) => v.kind === 'endpoint').map((v) => v.id))
      : new Set(endpoints.map((e) => e.identity ?? ID_INIT));
    const cidrs = cidrsOf(this.repository.rules());
    this.identities.collect(usedEndpointIdentities, cidrs);
    this.collectedAtStart = true;
    this.syncCompiler(cidrs);
    const live = new Set(endpoints.map((e) => e.id));
    for (const id of this.incremental.cachedEndpoints()) if (!live.has(id)) this.incremental.forget(id);
    // Every endpoint compiled (only what the change touches) and checked before anything is written.
    const compiled = endpoints.map((endpoint) => this.incremental.update(endpoint.id, this.inputOf(endpoint)));
    compiled.forEach((c, i) => this.checkCapacity(endpoints[i]!, c.size));
    let written = 0;
    let deleted = 0;
    endpoints.forEach((endpoint, i) => {
      const r = this.applyEndpoint(endpoint, compiled[i]!);
      written += r.written;
      deleted += r.deleted;
    });
    const ipcache = this.maps?.syncIpcache(this.ipcacheEntries()) ?? { written: 0, deleted: 0 };
    const epoch = this.maps?.bumpEpoch();
    const report: RegenerationReport = {
      revision: this.repository.revision, endpoints: endpoints.length, written, deleted, ipcache, epoch,
      ms: Math.round((performance.now() - started) * 100) / 100,
    };
    this.lastReport = report;
    this.revisionWaiters = this.revisionWaiters.filter((w) => (w.revision <= report.revision ? (w.resolve(), false) : true));
    this.ctx.log.debug('policy regenerated', { ...report });
    return report;
  }

  /** Resolves once every endpoint enforces `revision` (or a later one); rejects after `timeoutMs`. */
  waitForRevision(revision: number, timeoutMs: number): Promise<{ revision: number; endpoints: number }> {
    const realized = () => Object.values(this.ctx.state.endpoints).every((e) => (e.policy?.revision ?? 0) >= revision);
    const done = () => ({ revision: this.repository.revision, endpoints: Object.keys(this.ctx.state.endpoints).length });
    if (revision > this.repository.revision) {
      return Promise.reject(new InvalidArgumentError(`revision ${revision} does not exist yet (the current revision is ${this.repository.revision})`));
    }
    if (realized()) return Promise.resolve(done());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new NotFoundError(`not every endpoint enforces revision ${revision} after ${timeoutMs} ms`)), timeoutMs);
      this.revisionWaiters.push({ revision, resolve: () => { clearTimeout(timer); resolve(done()); } });
    });
  }

  /** What an endpoint's trie holds, for `membrane bpf policy get`. */
  endpointEntries(endpointId: string) {
    const endpoint = Object.values(this.ctx.state.endpoints).find((e) => e.id === endpointId || e.id.startsWith(endpointId) || String(e.number) === endpointId);
    if (!endpoint) throw new NotFoundError(`no endpoint ${endpointId}; see \`membrane endpoint list\``);
    const entries = this.maps && endpoint.number !== undefined ? this.maps.read(endpoint.number) : [];
    return { endpoint, entries };
  }

  /** Who a numeric identity is: its labels, or what a wildcard stands for. */
  describeIdentity(id: number): string {
    const view = this.identities.get(id);
    if (view) return view.labels.map((l) => formatLabel(l)).join(',');
    return CLASS_IDENTITY_NAMES[id] ?? `identity ${id}`;
  }

  /**
   * Explains the verdict on a flow between two label sets: each side's policy, every rule that
   * applies and what it says about this flow, and the result the datapath would reach.
   */
  trace(request: { src: Label[]; dst: Label[]; protocol: string; port: number }): TraceResult {
    const protocol = PROTOCOLS[request.protocol.toLowerCase()];
    if (protocol === undefined) throw new InvalidArgumentError(`protocol "${request.protocol}" is not one of tcp, udp, icmp, icmpv6`);
    // A scratch copy of the identities: tracing must not allocate identities for label sets nobody has.
    const scratch = new IdentityAllocator(structuredClone(this.ctx.state.identities!));
    const identityOf = (labels: Label[]): number => {
      const only = labels.length === 1 && labels[0]!.source === 'reserved' ? labels[0]!.key : undefined;
      const reserved = only === undefined ? undefined : RESERVED_IDENTITIES.find((v) => v.labels.some((l) => l.source === 'reserved' && l.key === only))?.id;
      return reserved ?? scratch.forLabels(labels).id;
    };
    const src = identityOf(request.src);
    const dst = identityOf(request.dst);
    const rules = this.repository.rules();
    for (const c of cidrsOf(rules)) scratch.forCidr(c);
    const networkOf = (labels: Label[]) => Object.values(this.ctx.state.networks).find((n) =>
      labels.some((l) => l.source === 'network' && l.key === 'name' && n.name === l.value));
    const side = (direction: 'egress' | 'ingress', self: number, selfLabels: Label[], remote: number): TraceSide => {
      if (self < 256 && self !== ID_INIT) {
        return { direction, enforced: false, verdict: 'allowed', rules: [], reason: 'not a Membrane endpoint: nothing to enforce on this side' };
      }
      const network = networkOf(selfLabels);
      const input = {
        identity: self, labels: self === ID_INIT ? [...INIT_LABELS] : selfLabels, mode: this.modeOf(network), audit: this.auditOf(network),
        initFailOpen: this.settings.initFailOpen,
      };
      const compiled = new PolicyCompiler(rules, scratch).compile(input);
      const enforced = direction === 'egress' ? compiled.enforceEgress : compiled.enforceIngress;
      if (!enforced) {
        return { direction, enforced, verdict: 'allowed', rules: [], reason: input.mode === 'never' ? 'enforcement mode is never' : `no rule selects it for ${direction}` };
      }
      const dir = direction === 'egress' ? POLICY_EGRESS : POLICY_INGRESS;
      const family = request.protocol.toLowerCase() === 'icmpv6' ? 6 : 4;
      const decision = new PolicyLookup(compiled.entries).decide(dir, remote, classOf(remote, family), protocol, request.port);
      // What each applying rule says on its own about this flow.
      const ruleViews = compiled.appliedRules[direction].map((id) => {
        const single = rules.filter((r) => r.id === id);
        const alone = new PolicyCompiler(single, scratch).compile({ ...input, mode: 'always' });
        const says = new PolicyLookup(alone.entries).decide(dir, remote, classOf(remote, family), protocol, request.port).verdict;
        const stored = single[0]!;
        return { id, labels: stored.rule.labels.map((l) => formatLabel(l)), origin: stored.origin, description: stored.rule.description, says };
      });
      return { direction, enforced, verdict: decision.verdict, decidedBy: decision.ruleId || undefined, rules: ruleViews,
        reason: decision.verdict === 'default-denied' ? 'no rule allows it: default deny' : decision.verdict === 'denied' ? 'a deny rule matches' : 'a rule allows it' };
    };
    const egress = side('egress', src, request.src, dst);
    const ingress = side('ingress', dst, request.dst, src);
    const verdict = egress.verdict !== 'allowed' ? egress.verdict : ingress.verdict;
    return {
      src: { identity: src, labels: request.src.map((l) => formatLabel(l)) },
      dst: { identity: dst, labels: request.dst.map((l) => formatLabel(l)) },
      protocol: request.protocol.toLowerCase(), port: request.port, revision: this.repository.revision, egress, ingress, verdict,
    };
  }

  /** Identities for `membrane identity list`, with the endpoints that have them. */
  identityList(): (IdentityView & { endpoints: string[] })[] {
    const endpoints = Object.values(this.ctx.state.endpoints);
    return this.identities.all().map((v) => ({ ...v, endpoints: endpoints.filter((e) => (e.identity ?? ID_INIT) === v.id).map((e) => e.id.slice(0, 12)) }));
  }
}

const PROTOCOLS: Record<string, number> = { tcp: IPPROTO_TCP, udp: IPPROTO_UDP, icmp: IPPROTO_ICMP, icmpv6: IPPROTO_ICMPV6 };

export interface TraceSide {
  direction: 'egress' | 'ingress';
  enforced: boolean;
  verdict: 'allowed' | 'denied' | 'default-denied';
  decidedBy?: number;
  reason: string;
  rules: { id: number; labels: string[]; origin: string; description?: string; says: string }[];
}

export interface TraceResult {
  src: { identity: number; labels: string[] };
  dst: { identity: number; labels: string[] };
  protocol: string;
  port: number;
  revision: number;
  egress: TraceSide;
  ingress: TraceSide;
  verdict: string;
}
