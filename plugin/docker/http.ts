// Docker's plugin transport: POST /<Interface>.<Method> on a unix socket, JSON bodies that may be
// empty and carry no Content-Type, answers that must never be an empty 200. This is the one place
// where a MembraneError becomes Docker's {"Err": "..."}.

import express, { type Request, type Response } from 'express';
import { performance } from 'node:perf_hooks';
import { asMembraneError, InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';

export type Body = Record<string, unknown>;
export type Handler = (body: Body) => Promise<unknown> | unknown;

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';

/** Parses a plugin request body: empty means {}, anything else must be a JSON object. */
export function parseBody(raw: Buffer | undefined): Body {
  const text = raw && raw.length > 0 ? raw.toString('utf8').trim() : '';
  if (text === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`request body is not JSON (${(err as Error).message})`);
  }
  if (parsed === null) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InvalidArgumentError('request body must be a JSON object');
  }
  return parsed as Body;
}

export interface CallStats {
  count: number;
  errors: number;
  /** Recent durations in ms (ring of the last 1024), for p50/p99 in /v1/status. */
  recent: number[];
}

export function createPluginApp(routes: Record<string, Handler>, log: Logger, stats: Map<string, CallStats>,
  idle?: { requestStarted(): void; requestFinished(): void }): express.Express {
  const app = express();
  app.disable('x-powered-by');
  // Docker sends no Content-Type: take every body raw and parse it ourselves.
  app.use(express.raw({ type: () => true, limit: '4mb' }));
  app.post('/:method', async (req: Request, res: Response) => {
    const method = String(req.params.method);
    const handler = routes[method];
    res.type(PLUGIN_CONTENT_TYPE);
    if (!handler) {
      res.status(404).send(JSON.stringify({ Err: `${method} is not implemented by Membrane` }));
      return;
    }
    const started = performance.now();
    let status = 200;
    let payload: unknown;
    const raw = Buffer.isBuffer(req.body) ? req.body : undefined;
    // Background kernel work waits while Docker is talking to us (see idle-work.ts).
    idle?.requestStarted();
    try {
      const body = parseBody(raw);
      payload = (await handler(body)) ?? {};
    } catch (err) {
      const error = asMembraneError(err);
      status = error.status >= 400 && error.status !== 404 ? error.status : 500;
      payload = { Err: error.message };
      log.warn('docker call failed', { method, code: error.code, error: error.message });
    } finally {
      idle?.requestFinished();
    }
    const ms = performance.now() - started;
    let entry = stats.get(method);
    if (!entry) stats.set(method, entry = { count: 0, errors: 0, recent: [] });
    entry.count++;
    if (status !== 200) entry.errors++;
    entry.recent.push(ms);
    if (entry.recent.length > 1024) entry.recent.shift();
    log.debug('docker call', { method, status, ms: Math.round(ms * 1000) / 1000 });
    // Whole bodies only at the most verbose level: they are how protocol fixtures are recorded.
    log.silly('docker call bodies', { method, status, request: raw?.toString('utf8') ?? '', response: payload });
    res.status(status).send(JSON.stringify(payload));
  });
  app.use((req: Request, res: Response) => {
    res.status(404).type(PLUGIN_CONTENT_TYPE).send(JSON.stringify({ Err: `${req.method} ${req.path} is not a plugin call` }));
  });
  return app;
}

// Field readers that turn a malformed request into an error naming the field.

export function str(body: Body, field: string, required = true): string {
  const value = body[field];
  if (value === undefined || value === null || value === '') {
    if (required) throw new InvalidArgumentError(`request is missing ${field}`);
    return '';
  }
  if (typeof value !== 'string') throw new InvalidArgumentError(`${field} must be a string, got ${JSON.stringify(value)}`);
  return value;
}

export function obj(body: Body, field: string): Body {
  const value = body[field];
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new InvalidArgumentError(`${field} must be an object`);
  return value as Body;
}

/** A map whose values Docker sends as strings; non-string values are ignored, not fatal. */
export function stringMap(body: Body, field: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(obj(body, field))) {
    if (typeof value === 'string') out[key] = value;
    else if (typeof value === 'number' || typeof value === 'boolean') out[key] = String(value);
  }
  return out;
}
