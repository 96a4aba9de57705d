// The management API: versioned REST on its own unix socket (mode 0600; root only). The CLI is
// its only client today; everything it shows comes from here.

import express, { type Request, type Response, type NextFunction } from 'express';
import { asMembraneError } from '../errors.js';
import type { CallStats } from '../docker/http.js';
import type { Context, NetworkManager } from '../network/networks.js';
import type { EndpointManager } from '../endpoints/endpoints.js';
import { parsePrefix, prefixSize } from '../ipam/prefix.js';
import type { BpfAddon } from '../kernel/native.js';
import type { EndpointMaps } from '../datapath/endpoint-maps.js';
import { EventMonitor, listBpfEndpoints, listConntrack, readMetrics } from '../datapath/inspect.js';
import { kernelTimeToEpochMs } from '../clock.js';
import type { PolicyEngine } from '../policy/engine.js';
import type { PolicyMaps } from '../datapath/policy-maps.js';
import { addPolicyRoutes } from './policy-routes.js';
import { addServiceRoutes } from './service-routes.js';
import type { ServiceManager } from '../lb/services.js';
import type { LbMaps } from '../datapath/lb-maps.js';

export interface DatapathSource {
  bpf: BpfAddon;
  maps: EndpointMaps;
  monitor: EventMonitor;
  pinDir: string;
  features: Record<string, string>;
}

export interface StatusSource {
  version: string;
  startedAt: number;
  stateFile: string;
  pluginSocket: string;
  stats: Map<string, CallStats>;
  lastKernelSync?: unknown;
  lastDockerReconcile?: unknown;
  datapath?: DatapathSource;
  /** Kernel work queued for idle moments (idle-work.ts). */
  idle?: { pending: number; done: number; failed: number; busyMs: number; longestStepMs: number };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return Math.round(sorted[Math.max(0, index)]! * 1000) / 1000;
}

export function createApiApp(ctx: Context, networks: NetworkManager, endpoints: EndpointManager, status: StatusSource,
  policy: PolicyEngine, policyMaps?: PolicyMaps, services?: ServiceManager, lbMaps?: LbMaps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.get('/v1/status', (req, res) => {
    // ?samples=1 adds the recent raw latencies (a benchmark takes the samples of one phase).
    const withSamples = req.query.samples === '1';
    const calls: Record<string, unknown> = {};
    for (const [method, s] of status.stats) {
      const sorted = [...s.recent].sort((a, b) => a - b);
      calls[method] = {
        count: s.count, errors: s.errors, p50Ms: percentile(sorted, 50), p99Ms: percentile(sorted, 99),
        ...(withSamples ? { recentMs: s.recent } : {}),
      };
    }
    res.json({
      version: status.version, pid: process.pid, uptimeSeconds: Math.round(process.uptime()),
      pluginSocket: status.pluginSocket, stateFile: status.stateFile, stateWrites: ctx.store.writes,
      ulaPrefix: ctx.state.ulaPrefix, networks: networks.list().length, endpoints: endpoints.list().length,
      pools: Object.keys(ctx.state.pools).length, dockerCalls: calls,
      state: { writes: ctx.store.writes, snapshots: ctx.store.snapshots, journalLines: ctx.store.journalLines },
      preparedEndpoints: ctx.dataplane.prepared
        ? { ready: ctx.dataplane.prepared.size, taken: ctx.dataplane.prepared.taken, missed: ctx.dataplane.prepared.missed }
        : null,
      backgroundWork: status.idle ? {
        pending: status.idle.pending, done: status.idle.done, failed: status.idle.failed,
        busyMs: Math.round(status.idle.busyMs), longestStepMs: Math.round(status.idle.longestStepMs * 10) / 10,
        linksDeleted: ctx.dataplane.janitor.deleted, linkBatches: ctx.dataplane.janitor.batches,
      } : null,
      datapath: status.datapath ? { mode: 'bpf', features: status.datapath.features } : { mode: 'routing' },
      lastKernelSync: status.lastKernelSync ?? null, lastDockerReconcile: status.lastDockerReconcile ?? null,
      policy: {
        enforced: policy.enforcing, revision: policy.repository.revision, rules: policy.repository.rules().length,
        identities: policy.identities.all().length,
        joinToIdentityMs: { ...policy.identityLatency(), ...(withSamples ? { recentMs: policy.identityLatencyMs } : {}) },
        lastRegeneration: policy.report ?? null,
      },
    });
  });
  const bpfOnly = (res: Response): DatapathSource | undefined => {
    if (!status.datapath) {
      res.status(409).json({ code: 'MEMBRANE_NOT_SUPPORTED', message: 'the BPF datapath is off (datapath: "routing"); nothing to show' });
    }
    return status.datapath;
  };
  app.get('/v1/datapath', (_req, res) => {
    const dp = status.datapath;
    res.json(dp
      ? { mode: 'bpf', pinDir: dp.pinDir, features: dp.features, geometry: ctx.state.datapathGeometry ?? null, migrations: dp.maps.datapath.migrations }
      : { mode: 'routing' });
  });
  app.get('/v1/bpf/endpoints', (_req, res) => {
    const dp = bpfOnly(res);
    if (dp) res.json(listBpfEndpoints(dp.bpf, dp.maps.datapath));
  });
  app.get('/v1/bpf/ct', (req, res) => {
    const dp = bpfOnly(res);
    const limit = Math.min(Number(req.query.limit ?? 10000) || 10000, 1_000_000);
    if (dp) res.json(listConntrack(dp.bpf, dp.maps.datapath, limit));
  });
  app.get('/v1/bpf/metrics', (_req, res) => {
    const dp = bpfOnly(res);
    if (dp) res.json(readMetrics(dp.bpf, dp.maps.datapath));
  });
  // A stream of datapath events, one JSON object per line, until the client goes away.
  app.get('/v1/monitor', (req, res) => {
    const dp = bpfOnly(res);
    if (!dp) return;
    const type = typeof req.query.type === 'string' ? req.query.type : '';
    res.status(200).type('application/x-ndjson');
    res.flushHeaders();
    const unsubscribe = dp.monitor.subscribe((event) => {
      if (type && event.type !== type) return;
      // Both sides' labels, so a verdict reads as "app=api -> app=db", not as two numbers.
      const labels = event.policy ? {
        srcLabels: policy.describeIdentity(event.policy.srcIdentity), dstLabels: policy.describeIdentity(event.policy.dstIdentity),
      } : {};
      // A flow to a service: which service and port the frontend is.
      const service = event.service && services ? { service: { ...event.service, ...services.describeFrontend(event.service.frontendId) } } : {};
      // tsNs is the kernel's clock (ns since boot); time is the wall clock it corresponds to.
      const time = new Date(kernelTimeToEpochMs(event.tsNs)).toISOString();
      res.write(`${JSON.stringify({ time, ...event, ...labels, ...service, tsNs: event.tsNs.toString() })}\n`);
    });
    req.on('close', unsubscribe);
  });
  app.get('/v1/networks', (_req, res) => {
    res.json(networks.list().map((n) => ({
      ...n, endpoints: endpoints.list().filter((e) => e.networkId === n.id).length,
    })));
  });
  app.get('/v1/networks/:id', (req, res) => {
    const match = networks.list().filter((n) => n.id.startsWith(String(req.params.id)));
    if (match.length !== 1) {
      res.status(404).json({ code: 'MEMBRANE_NOT_FOUND', message: `no single network matches "${req.params.id}"` });
      return;
    }
    res.json(match[0]);
  });
  app.get('/v1/endpoints', (_req, res) => {
    res.json(endpoints.list().map((e) => ({ ...e, networkName: ctx.state.networks[e.networkId]?.name ?? null })));
  });
  app.get('/v1/ipam', (_req, res) => {
    res.json({
      ulaPrefix: ctx.state.ulaPrefix,
      pools: Object.values(ctx.state.pools).map((p) => {
        const allocator = ctx.ipam.allocator(p.id);
        return {
          id: p.id, family: p.family, pool: p.pool, range: p.range ?? null, automatic: p.automatic,
          networkId: p.networkId ?? null, size: prefixSize(parsePrefix(p.range ?? p.pool)).toString(),
          allocated: allocator.allocatedCount(), addresses: Object.fromEntries(Object.entries(p.owners).map(([a, o]) => [a, o.kind])),
        };
      }),
    });
  });
  addPolicyRoutes(app, policy, policyMaps, services ? (destination, port, protocol) => services.traceTarget(destination, port, protocol) : undefined);
  if (services) {
    addServiceRoutes(app, services, status.datapath && lbMaps ? { bpf: status.datapath.bpf, datapath: status.datapath.maps.datapath, lb: lbMaps } : undefined);
  }
  app.use((req: Request, res: Response) => {
    res.status(404).json({ code: 'MEMBRANE_NOT_FOUND', message: `no API route ${req.method} ${req.path}; see /v1/status, /v1/networks, /v1/endpoints, /v1/ipam, /v1/policy, /v1/identities` });
  });
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const error = asMembraneError(err);
    res.status(error.status).json(error.toJSON());
  });
  return app;
}
