// Docker's view of a container, turned into Membrane labels. Pure: the watcher does the I/O.
//
// - Image labels, then container labels over them (same key: the container's value), all with
//   source `container`. Docker already copies image labels into a container's Config.Labels at
//   create time (checked on 20.10), so the image mostly adds nothing; it is read anyway (cached by
//   image id, so it costs one call per image) to not depend on that engine behaviour.
// - Compose's project and service as `compose:project` / `compose:service`: the only compose
//   labels that name what a container is (the other com.docker.compose.* ones are bookkeeping,
//   excluded from identities by the default label filter).
// - The Docker network the endpoint is on as `network:name`.

import { compareLabels } from '../policy/labels.js';
import type { Label } from '../policy/types.js';

/** The parts of `GET /containers/{id}/json` (or of a list entry turned into that shape) used here. */
export interface ContainerInspectLike {
  Id: string;
  /** `/name`. */
  Name?: string;
  /** The image id (`sha256:...`). */
  Image?: string;
  Config?: { Labels?: Record<string, string> | null } | null;
  State?: { Running?: boolean; Restarting?: boolean; Health?: { Status?: string } | null } | null;
  NetworkSettings?: { Networks?: Record<string, NetworkAttachmentLike> | null } | null;
}

/** One entry of `NetworkSettings.Networks`; both ids are empty while the container is starting. */
export interface NetworkAttachmentLike {
  NetworkID?: string;
  EndpointID?: string;
}

/** The parts of `GET /images/{id}/json` used here. */
export interface ImageInspectLike {
  Id?: string;
  Config?: { Labels?: Record<string, string> | null; Healthcheck?: { Test?: string[] | null } | null } | null;
}

export const COMPOSE_PROJECT_LABEL = 'com.docker.compose.project';
export const COMPOSE_SERVICE_LABEL = 'com.docker.compose.service';

/** Image labels overlaid with the container's own (what `docker inspect` shows on the container). */
export function mergedContainerLabels(container: ContainerInspectLike, image: ImageInspectLike | undefined): Record<string, string> {
  return { ...(image?.Config?.Labels ?? {}), ...(container.Config?.Labels ?? {}) };
}

/** Sorted (policy/labels.ts compareLabels), one label per `source:key` (the last one given wins). */
export function normalizeLabels(labels: Iterable<Label>): Label[] {
  const byKey = new Map<string, Label>();
  for (const label of labels) byKey.set(`${label.source}:${label.key}`, label);
  return [...byKey.values()].sort(compareLabels);
}

/** Every label of the endpoint `container` has on `networkName` (unfiltered). */
export function labelsFor(container: ContainerInspectLike, image: ImageInspectLike | undefined, networkName: string): Label[] {
  const merged = mergedContainerLabels(container, image);
  const labels: Label[] = Object.entries(merged).map(([key, value]) => ({ source: 'container', key, value }));
  const project = merged[COMPOSE_PROJECT_LABEL];
  const service = merged[COMPOSE_SERVICE_LABEL];
  if (project !== undefined) labels.push({ source: 'compose', key: 'project', value: project });
  if (service !== undefined) labels.push({ source: 'compose', key: 'service', value: service });
  labels.push({ source: 'network', key: 'name', value: networkName });
  return normalizeLabels(labels);
}

/** Docker's `/name` without the slash. */
export function containerName(container: Pick<ContainerInspectLike, 'Name' | 'Id'>): string {
  return (container.Name ?? '').replace(/^\//, '') || container.Id.slice(0, 12);
}

/** A container's health as Docker reports it: 'none' without a HEALTHCHECK. */
export type ContainerHealth = 'none' | 'starting' | 'healthy' | 'unhealthy';

/**
 * From an inspect (State.Health.Status), or from a container list entry, whose only trace of
 * health is its status text (`Up 3 seconds (health: starting)`, `(healthy)`, `(unhealthy)`:
 * what `docker ps` shows, built by the daemon from the same state).
 */
export function healthOf(source: { State?: { Health?: { Status?: string } | null } | null; Status?: string }): ContainerHealth {
  const status = source.State?.Health?.Status;
  if (status === 'starting' || status === 'healthy' || status === 'unhealthy') return status;
  const text = source.Status ?? '';
  if (text.includes('(health: starting)')) return 'starting';
  if (text.includes('(unhealthy)')) return 'unhealthy';
  if (text.includes('(healthy)')) return 'healthy';
  return 'none';
}
