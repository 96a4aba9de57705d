// Docker inspect output -> Membrane labels, on output shaped like Docker 20.10's.

import test from 'ava';
import { containerName, labelsFor, mergedContainerLabels, normalizeLabels, type ContainerInspectLike, type ImageInspectLike } from './docker-labels.js';
import { filterLabels } from './label-filter.js';

/** A docker-compose 1.29 container (trimmed GET /containers/{id}/json). */
const composeContainer: ContainerInspectLike & Record<string, unknown> = {
  Id: '6f1c0b3d2e4a5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff',
  Created: '2024-05-01T10:00:01.123456789Z',
  Name: '/shop_web_1',
  Image: 'sha256:0d8ad0a2b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbcc',
  State: { Status: 'running', Running: true, Paused: false, Restarting: false, Pid: 4242 } as ContainerInspectLike['State'],
  Config: {
    Hostname: '6f1c0b3d2e4a',
    Image: 'shop/web:1.4',
    Labels: {
      'com.docker.compose.config-hash': '3b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4',
      'com.docker.compose.container-number': '1',
      'com.docker.compose.oneoff': 'False',
      'com.docker.compose.project': 'shop',
      'com.docker.compose.project.config_files': 'docker-compose.yml',
      'com.docker.compose.project.working_dir': '/srv/shop',
      'com.docker.compose.service': 'web',
      'com.docker.compose.version': '1.29.2',
      // Copied from the image by Docker at create time, then overridden by the compose file.
      'org.opencontainers.image.version': '1.4.0',
      tier: 'frontend',
      'membrane.policy': '{"ingress":[{"fromEndpoints":[{"matchLabels":{"tier":"frontend"}}]}]}',
    },
  } as ContainerInspectLike['Config'],
  NetworkSettings: {
    Networks: {
      shop_backend: { NetworkID: 'a1b2c3', EndpointID: 'e1e2e3', IPAddress: '10.210.0.5' } as { NetworkID: string; EndpointID: string },
    },
  },
};

/** Its image (trimmed GET /images/{id}/json). */
const image: ImageInspectLike & Record<string, unknown> = {
  Id: 'sha256:0d8ad0a2b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbcc',
  RepoTags: ['shop/web:1.4'],
  Config: {
    Labels: {
      maintainer: 'shop-team@example.com',
      'org.opencontainers.image.created': '2024-04-30T22:13:09Z',
      'org.opencontainers.image.revision': '5e1f2a9',
      'org.opencontainers.image.version': '1.4.0-rc1',
      tier: 'backend',
    },
  },
};

test('compose container: image then container labels, compose project/service, network name; sorted', (t) => {
  const labels = labelsFor(composeContainer, image, 'shop_backend');
  const printed = labels.map((l) => `${l.source}:${l.key}=${l.value}`);
  t.deepEqual(printed, [
    'compose:project=shop',
    'compose:service=web',
    'container:com.docker.compose.config-hash=3b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4',
    'container:com.docker.compose.container-number=1',
    'container:com.docker.compose.oneoff=False',
    'container:com.docker.compose.project=shop',
    'container:com.docker.compose.project.config_files=docker-compose.yml',
    'container:com.docker.compose.project.working_dir=/srv/shop',
    'container:com.docker.compose.service=web',
    'container:com.docker.compose.version=1.29.2',
    'container:maintainer=shop-team@example.com',
    'container:membrane.policy={"ingress":[{"fromEndpoints":[{"matchLabels":{"tier":"frontend"}}]}]}',
    'container:org.opencontainers.image.created=2024-04-30T22:13:09Z',
    'container:org.opencontainers.image.revision=5e1f2a9',
    'container:org.opencontainers.image.version=1.4.0',
    'container:tier=frontend',
    'network:name=shop_backend',
  ]);
});

test('with the default filter, a compose replica gets a small stable identity', (t) => {
  const replica2: ContainerInspectLike = {
    ...composeContainer,
    Name: '/shop_web_2',
    Config: { Labels: { ...composeContainer.Config!.Labels, 'com.docker.compose.container-number': '2', 'com.docker.compose.config-hash': 'ffff' } },
  };
  const identity = (c: ContainerInspectLike) => filterLabels(labelsFor(c, image, 'shop_backend')).identity;
  t.deepEqual(identity(composeContainer).map((l) => `${l.source}:${l.key}=${l.value}`),
    ['compose:project=shop', 'compose:service=web', 'container:maintainer=shop-team@example.com', 'container:tier=frontend', 'network:name=shop_backend']);
  t.deepEqual(identity(replica2), identity(composeContainer));
});

test('no image, null labels, no compose labels: only the network label', (t) => {
  const bare: ContainerInspectLike = { Id: 'c0ffee', Name: '/x', Config: { Labels: null } };
  t.deepEqual(labelsFor(bare, undefined, 'n1'), [{ source: 'network', key: 'name', value: 'n1' }]);
  t.deepEqual(labelsFor({ Id: 'c0ffee' }, { Config: null }, 'n1'), [{ source: 'network', key: 'name', value: 'n1' }]);
});

test('compose labels inherited from the image count too (container overrides image)', (t) => {
  const img: ImageInspectLike = { Config: { Labels: { 'com.docker.compose.project': 'from-image', 'com.docker.compose.service': 'svc' } } };
  const container: ContainerInspectLike = { Id: 'c1', Config: { Labels: { 'com.docker.compose.project': 'from-container' } } };
  const compose = labelsFor(container, img, 'n').filter((l) => l.source === 'compose');
  t.deepEqual(compose, [{ source: 'compose', key: 'project', value: 'from-container' }, { source: 'compose', key: 'service', value: 'svc' }]);
  t.is(mergedContainerLabels(container, img)['com.docker.compose.project'], 'from-container');
});

test('empty values and unusual keys survive; ordering is byte order, not locale', (t) => {
  const container: ContainerInspectLike = { Id: 'c1', Config: { Labels: { 'Zeta': '', 'alpha': 'ü', 'beta=x': 'y', 'ä': '1' } } };
  const keys = labelsFor(container, undefined, 'n').map((l) => l.key);
  t.deepEqual(keys, ['Zeta', 'alpha', 'beta=x', 'ä', 'name']);
  t.is(labelsFor(container, undefined, 'n')[0]!.value, '');
});

test('normalizeLabels keeps one label per source:key (last wins) and sorts', (t) => {
  const out = normalizeLabels([
    { source: 'network', key: 'name', value: 'b' },
    { source: 'container', key: 'app', value: 'x' },
    { source: 'container', key: 'app', value: 'y' },
  ]);
  t.deepEqual(out, [{ source: 'container', key: 'app', value: 'y' }, { source: 'network', key: 'name', value: 'b' }]);
});

test('containerName drops the leading slash and falls back to the short id', (t) => {
  t.is(containerName(composeContainer), 'shop_web_1');
  t.is(containerName({ Id: '0123456789abcdef0123' }), '0123456789ab');
});
