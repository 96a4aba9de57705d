// Management API for identities and policy: import, get, delete, validate, wait, trace, the
// verdict counters, and what an endpoint's policy map holds.

import express, { type Express } from 'express';
import { InvalidArgumentError } from '../errors.js';
import type { PolicyEngine } from '../policy/engine.js';
import { checkPolicyText, formatPolicy, parsePolicyText } from '../policy/parse.js';
import { parseLabelList } from '../policy/labels.js';
import { protocolName, VERDICTS } from '../datapath/codec.js';
import type { StoredRule } from '../policy/types.js';
import type { PolicyMaps } from '../datapath/policy-maps.js';

function formatFormat(value: unknown): 'json' | 'yaml' | undefined {
  if (value === undefined || value === '') return undefined;
  if (value === 'json' || value === 'yaml') return value;
  throw new InvalidArgumentError(`format must be json or yaml, not ${JSON.stringify(value)}`);
}

function labelsQuery(value: unknown) {
  return typeof value === 'string' && value ? parseLabelList(value, 'any') : [];
}

/** A stored rule as the API shows it: Cilium's shape plus Membrane's bookkeeping. */
export function showRule(r: StoredRule): Record<string, unknown> {
  return { id: r.id, origin: r.origin, revision: r.revision, rule: (formatPolicy([r.rule]) as unknown[])[0] };
}

/** What a VIP (or NAME.<zone>) stands for, for a trace: its service and each backend's labels and target port. */
export type VipResolver = (destination: string, port: number, protocol: string) => {
  service: string; vip: string; backends: { container?: string; endpointId: string; labels: string; targetPort: number; state: string }[];
} | undefined;

export function addPolicyRoutes(app: Express, policy: PolicyEngine, maps: PolicyMaps | undefined, resolveVip?: VipResolver): void {
  const text = express.text({ type: () => true, limit: '64mb' });
  app.post('/v1/policy', text, async (req, res) => {
    const rules = parsePolicyText(typeof req.body === 'string' ? req.body : '', formatFormat(req.query.format));
    const result = await policy.import(rules);
    res.json({ revision: result.revision, added: result.added.map((r) => r.id), replaced: result.replaced, enforced: policy.enforcing });
  });
  app.post('/v1/policy/validate', text, (req, res) => {
    const { rules, issues } = checkPolicyText(typeof req.body === 'string' ? req.body : '', formatFormat(req.query.format));
    res.json({ valid: issues.length === 0, rules: rules.length, issues });
  });
  app.get('/v1/policy', (req, res) => {
    const rules = policy.repository.find(labelsQuery(req.query.labels));
    res.json({ revision: policy.repository.revision, rules: rules.map(showRule) });
  });
  app.delete('/v1/policy', async (req, res) => {
    const result = await policy.delete(labelsQuery(req.query.labels), { all: req.query.all === 'true' || req.query.all === '1' });
    res.json({ revision: result.revision, deleted: result.deleted.map((r) => r.id) });
  });
  app.get('/v1/policy/wait', async (req, res) => {
    const revision = Number(req.query.revision);
    if (!Number.isInteger(revision) || revision < 0) throw new InvalidArgumentError('revision must be a policy revision number (see `membrane policy get`)');
    const timeout = Math.min(Number(req.query.timeout ?? 30_000) || 30_000, 600_000);
    res.json(await policy.waitForRevision(revision, timeout));
  });
  app.post('/v1/policy/trace', express.json(), (req, res) => {
    const body = req.body as { src?: unknown; dst?: unknown; port?: unknown; protocol?: unknown };
    if (typeof body.src !== 'string' || typeof body.dst !== 'string') {
      throw new InvalidArgumentError('trace needs src and dst label lists, e.g. {"src": "app=api", "dst": "app=db", "port": 5432, "protocol": "tcp"}');
    }
    const port = Number(body.port ?? 0);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgumentError(`port ${String(body.port)} is not 0-65535`);
    const protocol = typeof body.protocol === 'string' ? body.protocol : 'tcp';
    // A VIP is never its own peer: policy judges the backend a flow to it reaches, so the trace is per backend.
    const service = resolveVip?.(body.dst.trim(), port, protocol);
    if (service) {
      const src = parseLabelList(body.src, 'container');
      const backends = service.backends.map((b) => ({
        ...b, trace: policy.trace({ src, dst: parseLabelList(b.labels, 'container'), port: b.targetPort, protocol }),
      }));
      const verdicts = new Set(backends.map((b) => b.trace.verdict));
      res.json({
        service: service.service, vip: service.vip, port, protocol, backends,
        verdict: backends.length === 0 ? 'no-backend' : verdicts.size === 1 ? [...verdicts][0] : 'depends-on-backend',
      });
      return;
    }
    res.json(policy.trace({
      src: parseLabelList(body.src, 'container'), dst: parseLabelList(body.dst, 'container'),
      port, protocol: typeof body.protocol === 'string' ? body.protocol : 'tcp',
    }));
  });
  app.get('/v1/policy/verdicts', (_req, res) => {
    const rules = policy.repository.rules();
    const counters = maps?.verdictCounters(rules.map((r) => r.id)) ?? new Map();
    res.json([...counters.entries()].map(([ruleId, c]) => ({
      ruleId, labels: rules.find((r) => r.id === ruleId)?.rule.labels ?? [], allowed: c.allowed.toString(), denied: c.denied.toString(),
    })));
  });
  app.get('/v1/identities', (_req, res) => {
    res.json(policy.identityList());
  });
  app.get('/v1/bpf/policy/:endpoint', (req, res) => {
    const { endpoint, entries } = policy.endpointEntries(String(req.params.endpoint));
    res.json({
      endpoint: endpoint.id, number: endpoint.number, identity: endpoint.identity, policy: endpoint.policy ?? null,
      entries: entries.map(({ key, entry }) => ({
        direction: key.direction === 1 ? 'egress' : 'ingress', identity: key.identity, peer: policy.describeIdentity(key.identity),
        protocol: key.protocol ? protocolName(key.protocol) : 'any',
        port: key.protocol === 0 || key.portBits === 0 ? 'any' : key.portBits === 16 ? String(key.port) : `${key.port}-${key.port + 2 ** (16 - key.portBits) - 1}`,
        verdict: VERDICTS[entry.verdict], ruleId: entry.ruleId,
      })).sort((a, b) => a.direction.localeCompare(b.direction) || a.identity - b.identity),
    });
  });
}
