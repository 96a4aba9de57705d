#!/usr/bin/env node
// The `membrane` command: `membrane daemon` runs the plugin; every other command is a client of
// the management API socket and prints a table (default) or JSON (-o json).

import fs from 'node:fs';
import http from 'node:http';
import { Command, Option } from 'commander';
import { loadConfig, DEFAULT_CONFIG } from '../config.js';
import { createLogger } from '../log.js';
import { asMembraneError } from '../errors.js';

type Row = Record<string, unknown>;

/** Where the managed plugin (config.json) puts its API socket: on its state mount. */
const MANAGED_PLUGIN_API_SOCKET = '/var/lib/membrane/membrane.sock';

function defaultApiSocket(): string {
  if (process.env.MEMBRANE_API_SOCKET) return process.env.MEMBRANE_API_SOCKET;
  if (!fs.existsSync(DEFAULT_CONFIG.apiSocket) && fs.existsSync(MANAGED_PLUGIN_API_SOCKET)) return MANAGED_PLUGIN_API_SOCKET;
  return DEFAULT_CONFIG.apiSocket;
}

function apiGet(socket: string, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(body);
        } catch {
          reject(new Error(`management API answered ${res.statusCode} with non-JSON: ${body.slice(0, 200)}`));
          return;
        }
        if (res.statusCode !== 200) {
          reject(new Error((parsed as { message?: string }).message ?? `management API answered ${res.statusCode}`));
          return;
        }
        resolve(parsed);
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new Error(`cannot reach the Membrane daemon at ${socket} (${err.code}); is it running? Start it with ` +
          '`membrane daemon` or `systemctl start membrane`'));
      } else if (err.code === 'EACCES') {
        reject(new Error(`permission denied on ${socket}; the management API is root-only, run with sudo`));
      } else {
        reject(err);
      }
    });
    req.end();
  });
}

/** Follows an NDJSON stream from the API, one parsed object per line, until the process is interrupted. */
function apiStream(socket: string, path: string, onRow: (row: Row) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path, method: 'GET' }, (res) => {
      if (res.statusCode !== 200) {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => reject(new Error((() => { try { return (JSON.parse(body) as { message: string }).message; } catch { return body; } })())));
        return;
      }
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let newline: number;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line) onRow(JSON.parse(line) as Row);
        }
      });
      res.on('end', () => resolve());
    });
    req.on('error', reject);
    req.end();
  });
}

/** Plain aligned columns; no borders so the output greps and cuts well. */
export function table(rows: Row[], columns: [string, string][]): string {
  const cells = rows.map((row) => columns.map(([key]) => {
    const value = row[key];
    if (value === undefined || value === null || value === '') return '-';
    return Array.isArray(value) ? value.join(',') : String(value);
  }));
  const header = columns.map(([, title]) => title);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (values: string[]) => values.map((v, i) => (i === values.length - 1 ? v : v.padEnd(widths[i]!))).join('  ');
  return [line(header), ...cells.map(line)].join('\n');
}

function short(id: unknown): string {
  return typeof id === 'string' ? id.slice(0, 12) : '';
}

async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program.name('membrane').description('Membrane: routed IPv6-first networking and IPAM for Docker')
    .option('--api <socket>', 'management API socket (default: $MEMBRANE_API_SOCKET, else the first that exists of ' +
      `${DEFAULT_CONFIG.apiSocket} and ${MANAGED_PLUGIN_API_SOCKET})`)
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'));
  const output = () => program.opts<{ output: string }>().output;
  const api = () => program.opts<{ api?: string }>().api ?? defaultApiSocket();
  const print = (data: unknown, render: () => string) => {
    process.stdout.write(`${output() === 'json' ? JSON.stringify(data, null, 2) : render()}\n`);
  };

  program.command('daemon').description('run the plugin daemon (Docker NetworkDriver + IpamDriver)')
    .option('-c, --config <file>', 'configuration file (default /etc/membrane/config.json if it exists)')
    .action(async (opts: { config?: string }) => {
      const config = loadConfig(opts.config);
      const log = createLogger(config.logLevel);
      const { startDaemon } = await import('../daemon.js');
      const daemon = await startDaemon(config, log);
      let stopping = false;
      const stop = async (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info('stopping', { signal });
        await daemon.stop();
        process.exit(0);
      };
      process.on('SIGTERM', () => void stop('SIGTERM'));
      process.on('SIGINT', () => void stop('SIGINT'));
    });

  program.command('status').description('daemon status and Docker call latencies').action(async () => {
    const status = await apiGet(api(), '/v1/status') as Row & { dockerCalls: Record<string, Row> };
    print(status, () => {
      const head = ['version', 'pid', 'uptimeSeconds', 'pluginSocket', 'stateFile', 'stateWrites', 'ulaPrefix', 'networks', 'endpoints', 'pools']
        .map((k) => `${k.padEnd(14)} ${String(status[k])}`).join('\n');
      const datapath = status.datapath as { mode: string; features?: Record<string, string> };
      const features = Object.entries(datapath.features ?? {}).map(([k, v]) => `${k}: ${v}`).join(', ');
      const dpLine = `${'datapath'.padEnd(14)} ${datapath.mode}${features ? ` (${features})` : ''}`;
      const calls = Object.entries(status.dockerCalls).map(([method, s]) => ({ method, ...s }));
      return `${head}\n${dpLine}\n\n${table(calls, [['method', 'DOCKER CALL'], ['count', 'COUNT'], ['errors', 'ERRORS'], ['p50Ms', 'P50 MS'], ['p99Ms', 'P99 MS']])}`;
    });
  });

  const network = program.command('network').description('networks Membrane serves');
  network.command('list').alias('ls').description('list networks').action(async () => {
    const rows = await apiGet(api(), '/v1/networks') as Row[];
    print(rows, () => table(rows.map((n) => ({
      ...n, id: short(n.id),
      ipv4: (n.ipv4 as Row[]).map((f) => `${f.pool} gw ${f.gateway ?? '-'}`),
      ipv6: (n.ipv6 as Row[]).map((f) => `${f.pool} gw ${f.gateway ?? '-'}`),
      internal: n.internal ? 'yes' : 'no',
    })), [['id', 'NETWORK ID'], ['ipv4', 'IPV4'], ['ipv6', 'IPV6'], ['internal', 'INTERNAL'], ['mtu', 'MTU'], ['endpoints', 'ENDPOINTS']]));
  });

  const endpoint = program.command('endpoint').description('container endpoints');
  endpoint.command('list').alias('ls').description('list endpoints').action(async () => {
    const rows = await apiGet(api(), '/v1/endpoints') as Row[];
    print(rows, () => table(rows.map((e) => ({ ...e, id: short(e.id), networkId: short(e.networkId), joined: e.joined ? 'yes' : 'no' })),
      [['id', 'ENDPOINT ID'], ['networkId', 'NETWORK'], ['hostIfName', 'HOST IF'], ['ipv4', 'IPV4'], ['ipv6', 'IPV6'], ['mac', 'MAC'], ['joined', 'JOINED']]));
  });

  program.command('monitor').description('stream datapath events (drops with their reason, sampled traces) until interrupted')
    .addOption(new Option('--type <type>', 'only this kind of event').choices(['drop', 'trace']))
    .action(async (opts: { type?: string }) => {
      await apiStream(api(), `/v1/monitor${opts.type ? `?type=${opts.type}` : ''}`, (event: Row) => {
        if (output() === 'json') {
          process.stdout.write(`${JSON.stringify(event)}\n`);
          return;
        }
        const ports = (port: unknown) => (port ? `:${port}` : '');
        const flow = event.family ? `${event.proto} ${event.saddr}${ports(event.sport)} -> ${event.daddr}${ports(event.dport)}` : 'arp/other';
        process.stdout.write(`${String(event.type).toUpperCase().padEnd(5)} ${String(event.reason).padEnd(18)} ${String(event.direction).padEnd(14)} ` +
          `endpoint ${event.endpointId} if ${event.ifindex}  ${flow}  len ${event.len}\n`);
      });
    });

  const bpf = program.command('bpf').description('the BPF datapath\'s maps, as the kernel holds them');
  bpf.command('endpoint').description('endpoint map').command('list').alias('ls').description('mb_endpoints_by_if entries').action(async () => {
    const rows = await apiGet(api(), '/v1/bpf/endpoints') as Row[];
    print(rows, () => table(rows, [['endpointId', 'ID'], ['ifindex', 'IFINDEX'], ['networkId', 'NETWORK'], ['identity', 'IDENTITY'],
      ['mac', 'MAC'], ['hostMac', 'HOST MAC'], ['ipv4', 'IPV4'], ['ipv6', 'IPV6']]));
  });
  bpf.command('ct').description('connection tracking').command('list').alias('ls').description('mb_conntrack entries')
    .option('--limit <n>', 'at most this many entries', '10000')
    .action(async (opts: { limit: string }) => {
      const rows = await apiGet(api(), `/v1/bpf/ct?limit=${encodeURIComponent(opts.limit)}`) as Row[];
      print(rows, () => table(rows.map((r) => ({ ...r, src: `${r.src}:${r.sport}`, dst: `${r.dst}:${r.dport}`,
        packets: `${r.packetsOriginal}/${r.packetsReply}` })),
      [['proto', 'PROTO'], ['src', 'SOURCE'], ['dst', 'DESTINATION'], ['state', 'STATE'], ['expiresInSeconds', 'EXPIRES S'],
        ['packets', 'PACKETS ORIG/REPLY'], ['endpointId', 'ENDPOINT']]));
    });
  bpf.command('metrics').description('packets and bytes by verdict reason and direction').action(async () => {
    const rows = await apiGet(api(), '/v1/bpf/metrics') as Row[];
    print(rows, () => table(rows.map((r) => ({ ...r, verdict: r.drop ? 'drop' : 'forward' })),
      [['verdict', 'VERDICT'], ['reason', 'REASON'], ['direction', 'DIRECTION'], ['packets', 'PACKETS'], ['bytes', 'BYTES']]));
  });

  const ipam = program.command('ipam').description('address management');
  ipam.command('show').description('pools and their allocations').action(async () => {
    const data = await apiGet(api(), '/v1/ipam') as { ulaPrefix: string; pools: Row[] };
    print(data, () => `node ULA prefix: ${data.ulaPrefix}\n\n${table(data.pools.map((p) => ({ ...p, networkId: short(p.networkId) })),
      [['pool', 'POOL'], ['range', 'RANGE'], ['networkId', 'NETWORK'], ['allocated', 'ALLOCATED'], ['size', 'SIZE'], ['automatic', 'AUTO']])}`);
  });

  await program.parseAsync(argv);
}

main(process.argv).catch((err: unknown) => {
  const error = asMembraneError(err);
  process.stderr.write(`membrane: ${error.code === 'MEMBRANE_INTERNAL' ? (err as Error).message : error.message}\n`);
  process.exit(1);
});
