// Which labels make up a security identity. Every distinct set of identity-relevant labels is a
// distinct identity, so a label that changes per container or per build (a config hash, a build
// timestamp, a replica number) would give every container its own identity and make label-based
// policy useless. Those labels stay on the endpoint as information only.
//
// Semantics (Cilium's `--label-prefix-file`, which users found confusing, spelled out here):
// - Prefixes are matched against the formatted `source:key` (no value), e.g.
//   `container:com.docker.compose.` matches `container:com.docker.compose.config-hash`.
//   A prefix is a plain string prefix: `container:app` also matches `container:application`.
// - The longest matching prefix decides; when the same prefix is both included and excluded,
//   exclusion wins.
// - With no include prefix configured, a label counts unless an exclude prefix matches it.
//   With at least one include prefix configured, a label counts only if its longest match is an
//   include prefix (labels matching nothing are excluded).
// - Keys under `membrane.` (a container's label policy and other Membrane settings) never count,
//   whatever the filter says: changing a container's policy must not change its identity.

import type { Label } from '../policy/types.js';

export interface LabelFilter {
  /** `source:key` prefixes that make a label identity-relevant. */
  include: string[];
  /** `source:key` prefixes that make a label information only. */
  exclude: string[];
}

/**
 * Labels that are noise for identity: bookkeeping that differs per container, per replica or per
 * build. Deliberately NOT excluded: `version`/`release` style keys users set themselves for
 * canary policies, and `maintainer` (stable per image).
 */
export const DEFAULT_LABEL_EXCLUDES: readonly string[] = [
  // Compose bookkeeping: config-hash, container-number, oneoff, version, image (digest),
  // depends_on, project.config_files, project.working_dir, replace... The two meaningful ones,
  // project and service, arrive separately as `compose:project` and `compose:service`.
  'container:com.docker.compose.',
  // Swarm task/node ids and service ids: one value per task.
  'container:com.docker.swarm.',
  // OCI image annotations: created (a timestamp), revision (a commit), version, source, url.
  'container:org.opencontainers.image.',
  // The older label-schema.org convention: build-date, vcs-ref, version, schema-version.
  'container:org.label-schema.',
  // Red Hat / buildah image metadata that changes on every rebuild.
  'container:build-date',
  'container:vcs-ref',
  'container:vcs-type',
  'container:com.redhat.build-host',
  'container:io.buildah.version',
  // cri-dockerd (Kubernetes on Docker): pod uid, container hash, restart counts, annotations.
  'container:io.kubernetes.',
  'container:annotation.',
];

export const DEFAULT_LABEL_FILTER: LabelFilter = { include: [], exclude: [...DEFAULT_LABEL_EXCLUDES] };

/** Label keys (any source) reserved for Membrane's own settings; never identity-relevant. */
export const MEMBRANE_KEY_PREFIX = 'membrane.';

/** `source:key`, the string prefixes are matched against. */
export function labelPrefixSubject(label: Label): string {
  return `${label.source}:${label.key}`;
}

/** The longest prefix in `prefixes` that `subject` starts with, as its length; -1 if none. */
function longestMatch(subject: string, prefixes: readonly string[]): number {
  let best = -1;
  for (const prefix of prefixes) {
    if (prefix.length > best && subject.startsWith(prefix)) best = prefix.length;
  }
  return best;
}

export function isIdentityRelevant(label: Label, filter: LabelFilter): boolean {
  if (label.key.startsWith(MEMBRANE_KEY_PREFIX)) return false;
  const subject = labelPrefixSubject(label);
  const included = longestMatch(subject, filter.include);
  const excluded = longestMatch(subject, filter.exclude);
  if (excluded >= 0 && excluded >= included) return false;
  if (included >= 0) return true;
  return filter.include.length === 0;
}

/** Splits `labels` (order kept) into the identity-relevant ones and the information-only rest. */
export function filterLabels(labels: readonly Label[], filter: LabelFilter = DEFAULT_LABEL_FILTER): { identity: Label[]; info: Label[] } {
  const identity: Label[] = [];
  const info: Label[] = [];
  for (const label of labels) (isIdentityRelevant(label, filter) ? identity : info).push(label);
  return { identity, info };
}
