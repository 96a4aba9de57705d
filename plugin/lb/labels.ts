// What a container's labels say about the services it backs:
//
//   membrane.service=api:80                     backend of service api, port 80/tcp
//   membrane.service=api:80,443/udp             ports 80/tcp and 443/udp
//   membrane.service=api:80@8080                frontend port 80, the container listens on 8080
//   membrane.service=api:80;admin:9000          two services
//   membrane.service.weight=3                   share of new flows (default 1; 0 = drained)
//
// Service names are DNS labels (they become NAME.<zone>), lowercase.

import { InvalidArgumentError } from '../errors.js';

export const SERVICE_LABEL = 'membrane.service';
export const WEIGHT_LABEL = 'membrane.service.weight';
export const MAX_WEIGHT = 65535;

export type ServiceProtocol = 'tcp' | 'udp';

export interface ServicePort {
  /** The frontend port clients connect to. */
  port: number;
  protocol: ServiceProtocol;
  /** The port the backend listens on. */
  targetPort: number;
}

export interface ServiceDeclaration {
  name: string;
  ports: ServicePort[];
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Checks a service name: a DNS label, because it becomes NAME.<zone>. */
export function checkServiceName(name: string, where = 'service name'): string {
  if (!NAME.test(name)) {
    throw new InvalidArgumentError(`${where} ${JSON.stringify(name)} is not a DNS label: use 1 to 63 lowercase letters, digits ` +
      'and hyphens, starting and ending with a letter or digit (it becomes NAME.svc.membrane)');
  }
  return name;
}

function port(text: string, what: string, where: string): number {
  if (!/^[1-9]\d{0,4}$/.test(text) || Number(text) > 65535) {
    throw new InvalidArgumentError(`${where}: ${what} ${JSON.stringify(text)} is not a port number (1 to 65535)`);
  }
  return Number(text);
}

/** Parses one port: `80`, `80/udp`, `80@8080`, `80/tcp@8080`. */
export function parseServicePort(text: string, where = 'port'): ServicePort {
  const match = /^(\d+)(?:\/(tcp|udp))?(?:@(\d+))?$/i.exec(text.trim());
  if (!match) {
    throw new InvalidArgumentError(`${where}: ${JSON.stringify(text)} is not a port; write PORT[/tcp|/udp][@TARGET_PORT], e.g. 80, 53/udp or 80@8080`);
  }
  const frontend = port(match[1]!, 'port', where);
  return { port: frontend, protocol: (match[2]?.toLowerCase() ?? 'tcp') as ServiceProtocol, targetPort: match[3] ? port(match[3], 'target port', where) : frontend };
}

/** Parses the value of a `membrane.service` label (see the top of this file). */
export function parseServiceLabel(value: string): ServiceDeclaration[] {
  const where = `label ${SERVICE_LABEL}=${JSON.stringify(value)}`;
  const out: ServiceDeclaration[] = [];
  for (const part of value.split(';').map((p) => p.trim()).filter(Boolean)) {
    const colon = part.indexOf(':');
    if (colon < 0) throw new InvalidArgumentError(`${where}: ${JSON.stringify(part)} has no ports; write NAME:PORT[,PORT...], e.g. api:80`);
    const name = checkServiceName(part.slice(0, colon).trim(), `${where}: service name`);
    if (out.some((d) => d.name === name)) throw new InvalidArgumentError(`${where}: service ${name} is named twice; list all its ports once`);
    const ports = part.slice(colon + 1).split(',').map((p) => parseServicePort(p, where));
    const seen = new Set<string>();
    for (const p of ports) {
      const key = `${p.port}/${p.protocol}`;
      if (seen.has(key)) throw new InvalidArgumentError(`${where}: port ${key} appears twice in service ${name}`);
      seen.add(key);
    }
    out.push({ name, ports });
  }
  if (out.length === 0) throw new InvalidArgumentError(`${where} is empty; write NAME:PORT, e.g. api:80`);
  return out;
}

/** Parses `membrane.service.weight` (default 1; 0 drains the backend). */
export function parseWeight(value: string | undefined): number {
  if (value === undefined || value === '') return 1;
  if (!/^\d+$/.test(value.trim()) || Number(value) > MAX_WEIGHT) {
    throw new InvalidArgumentError(`label ${WEIGHT_LABEL}=${JSON.stringify(value)} is not a weight: give a whole number from 0 ` +
      `(drained: no new flows) to ${MAX_WEIGHT}; the default is 1`);
  }
  return Number(value);
}

/** The service labels of a container, from its label map; errors are returned, not thrown. */
export function serviceLabelsOf(labels: Record<string, string>): { services: ServiceDeclaration[]; weight: number; error?: string } {
  try {
    const weight = parseWeight(labels[WEIGHT_LABEL]);
    const value = labels[SERVICE_LABEL];
    return { services: value === undefined ? [] : parseServiceLabel(value), weight };
  } catch (err) {
    return { services: [], weight: 1, error: (err as Error).message };
  }
}
