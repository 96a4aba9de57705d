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
  return apiRequest(socket, 'GET', path);
}

function apiRequest(socket: string, method: string, path: string, body?: string, contentType = 'text/plain'): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': contentType, 'content-length': Buffer.byteLength(body) };
    const req = http.request({ socketPath: socket, path, method, headers }, (res) => {
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
        if ((res.statusCode ?? 500) >= 300) {
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
    req.end(body);
  });
}

/** A policy file's text, or standard input for "-". */
function readDocument(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file === '-' ? 'standard input' : file}: ${(err as Error).message}`);
  }
}

/** A policy verdict or drop as one line: who, what, which rule. */
function policyLine(event: Row): string {
  const p = event.policy as Row | undefined;
  if (!p) return '';
  const audit = p.audit ? ' (audit: let through)' : '';
  return `  ${event.srcLabels ?? p.srcIdentity} -> ${event.dstLabels ?? p.dstIdentity}  ${p.verdict}${audit} by ${p.direction} ` +
    `policy of endpoint ${p.endpointId}, rule ${p.ruleId || 'none (default deny)'}`;
}

/** The service of a translated flow: `service api 80/tcp -> backend 12`. */
function serviceLine(event: Row): string {
  const s = event.service as Row | undefined;
  if (!s) return '';
  return `  service ${s.service ?? `frontend ${s.frontendId}`}${s.port ? ` ${s.port}/${s.protocol}` : ''}${s.backendId ? ` -> backend ${s.backendId}` : ' (no backend)'}`;
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
      ...n, id: short(n.id), name: n.name ?? '-',
      ipv4: (n.ipv4 as Row[]).map((f) => `${f.pool} gw ${f.gateway ?? '-'}`),
      ipv6: (n.ipv6 as Row[]).map((f) => `${f.pool} gw ${f.gateway ?? '-'}`),
      internal: n.internal ? 'yes' : 'no',
    })), [['id', 'NETWORK ID'], ['name', 'NAME'], ['ipv4', 'IPV4'], ['ipv6', 'IPV6'], ['internal', 'INTERNAL'], ['mtu', 'MTU'], ['endpoints', 'ENDPOINTS']]));
  });

  const endpoint = program.command('endpoint').description('container endpoints');
  endpoint.command('list').alias('ls').description('list endpoints').action(async () => {
    const rows = await apiGet(api(), '/v1/endpoints') as Row[];
    print(rows, () => {
      const listed = table(rows.map((e) => {
        const policy = e.policy as { ingress: boolean; egress: boolean; audit: boolean; revision: number } | undefined;
        return {
          // People think in network names; the id is in -o json (networkId) and shown until Docker told the name.
          ...e, id: short(e.id), network: e.networkName ?? short(e.networkId), joined: e.joined ? 'yes' : 'no',
          identity: e.identity === 5 || e.identity === undefined ? '5 (init)' : e.identity,
          enforcement: policy ? `${policy.ingress ? 'in' : '-'}/${policy.egress ? 'out' : '-'}${policy.audit ? ' audit' : ''}` : '-',
          labels: (e.labels as string[] | undefined)?.join(','),
          error: e.labelPolicyError ? 'LABEL POLICY INVALID' : '',
        };
      }), [['id', 'ENDPOINT ID'], ['network', 'NETWORK'], ['containerName', 'CONTAINER'], ['hostIfName', 'HOST IF'], ['ipv4', 'IPV4'], ['ipv6', 'IPV6'],
        ['identity', 'IDENTITY'], ['enforcement', 'POLICY IN/OUT'], ['labels', 'LABELS'], ['error', 'ERROR']]);
      const errors = rows.filter((e) => e.labelPolicyError).map((e) => `${short(e.id)} ${String(e.containerName ?? '')}: ${String(e.labelPolicyError)}`);
      return errors.length ? `${listed}\n\nlabel policy errors (these endpoints deny everything not allowed by imported rules):\n${errors.join('\n')}` : listed;
    });
  });

  const policyCommand = program.command('policy').description('label-based L3/L4 policy (Cilium-shaped JSON or YAML rules)');
  policyCommand.command('import').description('import rules from a file (or - for stdin): all or nothing; prints the new revision')
    .argument('<file>', 'JSON or YAML policy document')
    .addOption(new Option('--format <format>', 'document format (default: detected)').choices(['json', 'yaml']))
    .action(async (file: string, opts: { format?: string }) => {
      const result = await apiRequest(api(), 'POST', `/v1/policy${opts.format ? `?format=${opts.format}` : ''}`, readDocument(file)) as Row;
      print(result, () => `Revision: ${result.revision}\nadded rules: ${(result.added as number[]).join(', ') || '-'}` +
        `${(result.replaced as number[]).length ? `\nreplaced rules: ${(result.replaced as number[]).join(', ')}` : ''}` +
        `${result.enforced ? '' : '\nwarning: the datapath is "routing": policy is stored but not enforced'}`);
    });
  policyCommand.command('validate').description('check a policy document without importing it; every problem is listed')
    .argument('<file>', 'JSON or YAML policy document')
    .action(async (file: string) => {
      const result = await apiRequest(api(), 'POST', '/v1/policy/validate', readDocument(file)) as { valid: boolean; rules: number; issues: Row[] };
      print(result, () => result.valid ? `valid: ${result.rules} rule${result.rules === 1 ? '' : 's'}`
        : `invalid (${result.issues.length} problem${result.issues.length === 1 ? '' : 's'}):\n${result.issues.map((i) => `  ${i.path || '(document)'}: ${i.message}`).join('\n')}`);
      if (!result.valid) process.exitCode = 1;
    });
  policyCommand.command('get').description('rules carrying all the given labels (all rules without labels)')
    .argument('[labels]', 'key=value[,source:key=value...]')
    .action(async (labels?: string) => {
      const result = await apiGet(api(), `/v1/policy${labels ? `?labels=${encodeURIComponent(labels)}` : ''}`) as { revision: number; rules: Row[] };
      if (output() === 'json') {
        print(result, () => '');
        return;
      }
      const document = result.rules.map((r) => ({ ...(r.rule as Row), '#': `rule ${r.id} from ${r.origin}, revision ${r.revision}` }));
      process.stdout.write(`${JSON.stringify(document, null, 2)}\nRevision: ${result.revision}\n`);
    });
  policyCommand.command('delete').description('delete imported rules carrying all the given labels')
    .argument('[labels]', 'key=value[,source:key=value...]')
    .option('--all', 'delete every imported rule (label policies of containers stay)')
    .action(async (labels: string | undefined, opts: { all?: boolean }) => {
      const query = [labels ? `labels=${encodeURIComponent(labels)}` : '', opts.all ? 'all=true' : ''].filter(Boolean).join('&');
      const result = await apiRequest(api(), 'DELETE', `/v1/policy${query ? `?${query}` : ''}`) as { revision: number; deleted: number[] };
      print(result, () => `Revision: ${result.revision}\ndeleted rules: ${result.deleted.join(', ') || 'none matched'}`);
    });
  policyCommand.command('wait').description('block until every endpoint enforces revision REV')
    .argument('<revision>', 'policy revision (printed by import and delete)')
    .option('--timeout <seconds>', 'give up after this long', '60')
    .action(async (revision: string, opts: { timeout: string }) => {
      const result = await apiGet(api(), `/v1/policy/wait?revision=${encodeURIComponent(revision)}&timeout=${Number(opts.timeout) * 1000}`) as Row;
      print(result, () => `revision ${revision} is enforced by all ${result.endpoints} endpoints (current revision ${result.revision})`);
    });
  policyCommand.command('trace').description('explain the verdict on a flow between two label sets, or to a service VIP')
    .requiredOption('-s, --src <labels>', 'labels of the sender, e.g. app=api (source container: unless given)')
    .requiredOption('-d, --dst <labels>', 'labels of the receiver, or a service VIP or NAME.svc.membrane (traced per backend)')
    .option('--dport <port/proto>', 'destination port and protocol, e.g. 5432/tcp, 53/udp, 8/icmp (type)', '0/tcp')
    .action(async (opts: { src: string; dst: string; dport: string }) => {
      const [port, protocol = 'tcp'] = opts.dport.split('/');
      const result = await apiRequest(api(), 'POST', '/v1/policy/trace', JSON.stringify({ src: opts.src, dst: opts.dst, port: Number(port), protocol }),
        'application/json') as Row & { egress: Row & { rules: Row[] }; ingress: Row & { rules: Row[] }; src: Row; dst: Row };
      if (result.service) {
        const backends = result.backends as (Row & { trace: Row })[];
        print(result, () => [`Tracing ${opts.src} -> service ${result.service} (${result.vip}:${port}/${protocol}): policy judges the backend a flow reaches`,
          ...backends.map((b) => `  backend ${b.container ?? short(b.endpointId)} (${b.state}) on ${b.targetPort}/${protocol}: ${String(b.trace.verdict).toUpperCase()}`),
          `Final verdict: ${String(result.verdict).toUpperCase()}`].join('\n'));
        return;
      }
      print(result, () => {
        const side = (title: string, s: Row & { rules: Row[] }) => [
          `${title}: ${s.enforced ? 'enforced' : 'not enforced'} -> ${String(s.verdict).toUpperCase()} (${s.reason}${s.decidedBy ? `, rule ${s.decidedBy}` : ''})`,
          ...s.rules.map((r) => `    rule ${r.id} [${(r.labels as string[]).join(',') || 'no labels'}] from ${r.origin}: ${r.says === 'default-denied' ? 'says nothing about this flow' : r.says}`),
        ].join('\n');
        return [`Tracing ${(result.src.labels as string[]).join(',')} (identity ${result.src.identity}) -> ` +
          `${(result.dst.labels as string[]).join(',')} (identity ${result.dst.identity}) on ${port}/${result.protocol}, policy revision ${result.revision}`,
        side('  egress of the sender', result.egress), side('  ingress of the receiver', result.ingress),
        `Final verdict: ${String(result.verdict).toUpperCase()}`].join('\n');
      });
    });
  policyCommand.command('verdicts').description('flows allowed and denied by each rule (0 = default deny)').action(async () => {
    const rows = await apiGet(api(), '/v1/policy/verdicts') as Row[];
    print(rows, () => table(rows.map((r) => ({ ...r, labels: (r.labels as Row[]).map((l) => `${l.source}:${l.key}=${l.value}`) })),
      [['ruleId', 'RULE'], ['labels', 'LABELS'], ['allowed', 'ALLOWED FLOWS'], ['denied', 'DENIED FLOWS']]));
  });

  program.command('identity').description('security identities').command('list').alias('ls').description('every identity and who has it')
    .action(async () => {
      const rows = await apiGet(api(), '/v1/identities') as Row[];
      print(rows, () => table(rows.map((r) => ({ ...r, labels: (r.labels as Row[]).map((l) => `${l.source}:${l.key}${l.value ? `=${l.value}` : ''}`), endpoints: r.endpoints })),
        [['id', 'ID'], ['kind', 'KIND'], ['labels', 'LABELS'], ['endpoints', 'ENDPOINTS']]));
    });

  program.command('monitor').description('stream datapath events (drops with their reason, sampled traces) until interrupted')
    .addOption(new Option('--type <type>', 'only this kind of event').choices(['drop', 'trace', 'policy', 'service']))
    .action(async (opts: { type?: string }) => {
      await apiStream(api(), `/v1/monitor${opts.type ? `?type=${opts.type}` : ''}`, (event: Row) => {
        if (output() === 'json') {
          process.stdout.write(`${JSON.stringify(event)}\n`);
          return;
        }
        const ports = (port: unknown) => (port ? `:${port}` : '');
        const flow = event.family ? `${event.proto} ${event.saddr}${ports(event.sport)} -> ${event.daddr}${ports(event.dport)}` : 'arp/other';
        process.stdout.write(`${String(event.time ?? '').slice(11, 23)} ${String(event.type).toUpperCase().padEnd(5)} ${String(event.reason).padEnd(18)} ${String(event.direction).padEnd(14)} ` +
          `endpoint ${event.endpointId} if ${event.ifindex}  ${flow}  len ${event.len}${policyLine(event)}${serviceLine(event)}\n`);
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
        packets: `${r.packetsOriginal}/${r.packetsReply}`,
        service: r.frontendId ? `${r.kind} fe ${r.frontendId} be ${r.backendId}${r.hairpin ? ' hairpin' : ''}` : r.kind === 'flow' ? '' : r.kind })),
      [['proto', 'PROTO'], ['src', 'SOURCE'], ['dst', 'DESTINATION'], ['state', 'STATE'], ['expiresInSeconds', 'EXPIRES S'],
        ['packets', 'PACKETS ORIG/REPLY'], ['endpointId', 'ENDPOINT'], ['service', 'SERVICE']]));
    });
  bpf.command('policy').description('per-endpoint policy maps').command('get').description('what an endpoint\'s policy map holds')
    .argument('<endpoint>', 'endpoint id (or its first characters) or number')
    .action(async (endpointId: string) => {
      const result = await apiGet(api(), `/v1/bpf/policy/${encodeURIComponent(endpointId)}`) as Row & { entries: Row[] };
      const policy = result.policy as Row | null;
      print(result, () => `endpoint ${short(result.endpoint)} (number ${result.number}, identity ${result.identity}); enforcing ingress: ` +
        `${policy?.ingress ? 'yes' : 'no'}, egress: ${policy?.egress ? 'yes' : 'no'}${policy?.audit ? ' (audit)' : ''}\n\n` +
        table(result.entries, [['direction', 'DIRECTION'], ['identity', 'IDENTITY'], ['peer', 'PEER LABELS'], ['protocol', 'PROTO'], ['port', 'PORT'],
          ['verdict', 'VERDICT'], ['ruleId', 'RULE']]));
    });
  bpf.command('lb').description('the load balancer\'s maps').command('list').alias('ls')
    .description('frontends with their Maglev tables (slots per backend) and backends, as the kernel holds them')
    .action(async () => {
      const data = await apiGet(api(), '/v1/bpf/lb') as { frontends: Row[]; backends: Row[] };
      print(data, () => `${table(data.frontends.map((f) => ({
        ...f, frontend: `${f.vip}:${f.port}/${f.protocol}`, service: (f.service as Row | null)?.service,
        slots: Object.entries(f.slotsPerBackend as Record<string, number>).map(([id, n]) => `${id}:${n}`),
      })), [['frontendId', 'ID'], ['frontend', 'FRONTEND'], ['service', 'SERVICE'], ['backendCount', 'BACKENDS'], ['tableSize', 'TABLE SIZE'], ['slots', 'SLOTS BY BACKEND ID']])}\n\n` +
        table(data.backends.map((b) => ({ ...b, backend: `${b.address}:${b.port}` })),
          [['backendId', 'BACKEND ID'], ['frontendId', 'FRONTEND'], ['backend', 'ADDRESS'], ['state', 'STATE'], ['endpointId', 'ENDPOINT']]));
    });
  bpf.command('metrics').description('packets and bytes by verdict reason and direction').action(async () => {
    const rows = await apiGet(api(), '/v1/bpf/metrics') as Row[];
    print(rows, () => table(rows.map((r) => ({ ...r, verdict: r.drop ? 'drop' : 'forward' })),
      [['verdict', 'VERDICT'], ['reason', 'REASON'], ['direction', 'DIRECTION'], ['packets', 'PACKETS'], ['bytes', 'BYTES']]));
  });

  const service = program.command('service').description('services: virtual IPs balanced over containers');
  const portsText = (ports: Row[]) => ports.map((p) => `${p.port}/${p.protocol}${p.targetPort !== p.port ? `@${p.targetPort}` : ''}`);
  const serviceTable = (rows: Row[]) => table(rows.map((s) => ({
    ...s, network: s.networkName ?? short(s.network),
    vips: [s.vip4, s.vip6].filter(Boolean), ports: portsText(s.ports as Row[]),
    backends: (s.backends as Row[]).map((b) => `${b.container ?? short(b.endpointId)}(w${b.weight} ${b.state}${b.connections === null ? '' : ` ${b.connections} conn`})`),
  })), [['name', 'NAME'], ['network', 'NETWORK'], ['vips', 'VIPS'], ['ports', 'PORTS'], ['origin', 'ORIGIN'], ['backends', 'BACKENDS (WEIGHT STATE CONNECTIONS)']]);
  service.command('create').description('a service balanced over the endpoints a selector picks')
    .argument('<name>', 'service name (a DNS label: it resolves as NAME.svc.membrane)')
    .requiredOption('--selector <labels>', 'the endpoints it balances over, e.g. app=api,tier=web')
    .option('--port <port>', 'frontend port PORT[/tcp|/udp][@TARGET_PORT] (repeatable)', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--network <network>', 'the Docker network (name or id); needed when there is more than one')
    .option('--vip <address>', 'ask for this IPv4 or IPv6 VIP (repeatable) instead of one Membrane picks', (v: string, all: string[]) => [...all, v], [] as string[])
    .action(async (name: string, opts: { selector: string; port: string[]; network?: string; vip: string[] }) => {
      const vip4 = opts.vip.find((v) => !v.includes(':'));
      const vip6 = opts.vip.find((v) => v.includes(':'));
      const body = JSON.stringify({ name, selector: opts.selector, ports: opts.port, network: opts.network, vip4, vip6 });
      const created = await apiRequest(api(), 'POST', '/v1/services', body, 'application/json') as Row;
      print(created, () => serviceTable([created]));
    });
  service.command('list').alias('ls').description('every service: VIPs, ports, backends with weight, state and connections')
    .action(async () => {
      const rows = await apiGet(api(), '/v1/services') as Row[];
      print(rows, () => serviceTable(rows));
    });
  service.command('get').description('one service').argument('<name>').option('--network <network>')
    .action(async (name: string, opts: { network?: string }) => {
      const row = await apiGet(api(), `/v1/services/${encodeURIComponent(name)}${opts.network ? `?network=${encodeURIComponent(opts.network)}` : ''}`) as Row;
      print(row, () => `${serviceTable([row])}

dns name: ${row.dnsName}${row.selector ? `
selector: ${row.selector}` : ''}`);
    });
  service.command('delete').alias('rm').description('delete a service').argument('<name>').option('--network <network>')
    .action(async (name: string, opts: { network?: string }) => {
      const row = await apiRequest(api(), 'DELETE', `/v1/services/${encodeURIComponent(name)}${opts.network ? `?network=${encodeURIComponent(opts.network)}` : ''}`) as Row;
      print(row, () => `deleted service ${row.name} (${[row.vip4, row.vip6].filter(Boolean).join(', ')})`);
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
