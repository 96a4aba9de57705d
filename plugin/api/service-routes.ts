// Management API for services: create, list, get, delete, and the load balancer's maps as the
// kernel holds them.

import express, { type Express } from 'express';
import { InvalidArgumentError } from '../errors.js';
import type { ServiceManager, ServiceView } from '../lb/services.js';
import { parseServicePort, type ServicePort } from '../lb/labels.js';
import { parseLabelList } from '../policy/labels.js';
import type { EndpointSelector } from '../policy/types.js';
import type { BpfAddon } from '../kernel/native.js';
import type { Datapath } from '../datapath/loader.js';
import type { LbMaps } from '../datapath/lb-maps.js';
import { mapEntries } from '../datapath/iterate.js';
import { CT_ENTRY, CT_KEY, CT_KEY_F_SERVICE } from '../datapath/maps.js';
import { hasExpired, kernelNowNs } from '../clock.js';

export interface ServiceDatapath {
  bpf: BpfAddon;
  datapath: Datapath;
  lb: LbMaps;
}

/** Live connections per destination (`address|port|protocol`), from conntrack: what each backend is serving. */
export function connectionsByDestination(bpf: BpfAddon, datapath: Datapath, limit = 1_000_000): Map<string, number> {
  const now = kernelNowNs();
  const out = new Map<string, number>();
  for (const [key, value] of mapEntries(bpf, datapath.map('mb_conntrack'), limit)) {
    const k = CT_KEY.decode(key);
    if (k.flags & CT_KEY_F_SERVICE) continue;
    const e = CT_ENTRY.decode(value);
    if (hasExpired(e.expiresNs, now) || e.state === 'closing') continue;
    const destination = `${k.daddr}|${k.dport}|${k.proto === 17 ? 'udp' : 'tcp'}`;
    out.set(destination, (out.get(destination) ?? 0) + 1);
  }
  return out;
}

function withConnections(view: ServiceView, connections: Map<string, number> | undefined) {
  return {
    ...view,
    backends: view.backends.map((b) => ({
      ...b,
      connections: connections === undefined ? null
        : b.addresses.reduce((sum, a) => sum + b.ports.reduce((s, p) => s + (connections.get(`${a}|${p.targetPort}|${p.protocol}`) ?? 0), 0), 0),
    })),
  };
}

function parsePorts(value: unknown): ServicePort[] {
  const list = Array.isArray(value) ? value : typeof value === 'string' ? value.split(',') : undefined;
  if (!list || list.length === 0 || !list.every((p) => typeof p === 'string')) {
    throw new InvalidArgumentError('ports must be a list of PORT[/tcp|/udp][@TARGET_PORT], e.g. ["80/tcp", "53/udp", "80@8080"]');
  }
  return list.map((p) => parseServicePort(p, 'ports'));
}

function parseSelector(value: unknown): EndpointSelector {
  if (typeof value === 'string') return { matchLabels: Object.fromEntries(parseLabelList(value, 'any').map((l) => [l.source === 'any' ? l.key : `${l.source}:${l.key}`, l.value])) };
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const matchLabels = (value as { matchLabels?: unknown }).matchLabels;
    if (matchLabels && typeof matchLabels === 'object' && Object.values(matchLabels).every((v) => typeof v === 'string')) {
      return { matchLabels: matchLabels as Record<string, string> };
    }
  }
  throw new InvalidArgumentError('selector must be labels like "app=api,tier=web" or {"matchLabels": {"app": "api"}}: the endpoints the service balances over');
}

const optionalString = (value: unknown, what: string): string | undefined => {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new InvalidArgumentError(`${what} must be a string`);
  return value;
};

export function addServiceRoutes(app: Express, services: ServiceManager, datapath: ServiceDatapath | undefined): void {
  const connections = () => (datapath ? connectionsByDestination(datapath.bpf, datapath.datapath) : undefined);
  app.get('/v1/services', (_req, res) => {
    const counts = connections();
    res.json(services.list().map((v) => withConnections(v, counts)));
  });
  app.get('/v1/services/:name', (req, res) => {
    const key = services.find(String(req.params.name), optionalString(req.query.network, 'network'));
    res.json(withConnections(services.view(key)!, connections()));
  });
  // One service, or a list of them (all or nothing, one plan and one state write for the lot).
  app.post('/v1/services', express.json({ limit: '64mb' }), async (req, res) => {
    const many = Array.isArray(req.body);
    const bodies = (many ? req.body : [req.body ?? {}]) as Record<string, unknown>[];
    const requests = bodies.map((body, i) => {
      const where = many ? `[${i}]` : '';
      if (!body || typeof body !== 'object' || typeof body.name !== 'string') {
        throw new InvalidArgumentError(`${where}name is required: the service name (a DNS label such as api)`);
      }
      return {
        name: body.name, network: optionalString(body.network, 'network'), ports: parsePorts(body.ports),
        selector: parseSelector(body.selector), vip4: optionalString(body.vip4, 'vip4'), vip6: optionalString(body.vip6, 'vip6'),
      };
    });
    const views = await services.createMany(requests);
    // Not counted here (connections: null; GET counts them): counting walks all of conntrack, which
    // under load holds 100k entries and took ~440 ms, 50 times the change itself.
    const shown = views.map((v) => withConnections(v, undefined));
    res.status(201).json(many ? { services: shown, timing: services.lastChange } : { ...shown[0], timing: services.lastChange });
  });
  app.delete('/v1/services/:name', async (req, res) => {
    const view = await services.delete(String(req.params.name), optionalString(req.query.network, 'network'));
    res.json({ ...view, timing: services.lastChange });
  });
  app.get('/v1/bpf/lb', (_req, res) => {
    if (!datapath) {
      res.status(501).json({ code: 'MEMBRANE_NOT_SUPPORTED', message: 'the load balancer needs the BPF datapath (datapath: "bpf")' });
      return;
    }
    const held = datapath.lb.read();
    res.json({
      frontends: held.frontends.map((f) => ({ ...f, service: services.describeFrontend(f.frontendId) ?? null })),
      backends: held.backends,
    });
  });
}
