import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_CONFIG, loadConfig } from './config.js';
import { InvalidArgumentError } from './errors.js';

const dirs: string[] = [];
test.after.always(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-config-'));
  dirs.push(dir);
  return dir;
}

/** A config file with `content` (an object is JSON-encoded). */
function configFile(content: unknown): string {
  const file = path.join(tempDir(), 'config.json');
  fs.writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

/** An environment whose default config path does not exist (never /etc/membrane of the host). */
function env(vars: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { MEMBRANE_CONFIG: path.join(tempDir(), 'absent.json'), ...vars };
}

test('defaults when there is no config file and no environment', (t) => {
  const config = loadConfig(undefined, env());
  t.deepEqual(config, DEFAULT_CONFIG);
  t.is(config.stateDir, '/var/lib/membrane');
  t.is(config.pluginSocket, '/run/docker/plugins/membrane.sock');
  t.deepEqual(config.defaultIPv4Ranges, ['10.210.0.0/16']);
  t.is(config.defaultIPv4PoolLength, 24);
  t.is(config.ulaPrefix, '');
  t.is(config.defaultMtu, 1500);
  t.true(config.rulePriority < 32766, 'isolation rules sit before the main table lookup');
  t.true(config.manageNetfilter);
});

test('an explicit config file that does not exist is an error naming it', (t) => {
  const missing = path.join(tempDir(), 'nope.json');
  const err = t.throws(() => loadConfig(missing, env()), { instanceOf: InvalidArgumentError });
  t.true(err?.message.includes(missing));
});

test('file values override the defaults; the rest stay default', (t) => {
  const file = configFile({
    stateDir: '/srv/membrane', defaultIPv4Ranges: ['10.1.0.0/16', '10.2.0.0/16'], defaultIPv4PoolLength: 26,
    ulaPrefix: 'fd12:3456:789a::/48', defaultMtu: 9000, manageNetfilter: false, logLevel: 'debug', tableBase: 5000,
  });
  const config = loadConfig(file, env());
  t.deepEqual(config, {
    ...DEFAULT_CONFIG, stateDir: '/srv/membrane', defaultIPv4Ranges: ['10.1.0.0/16', '10.2.0.0/16'], defaultIPv4PoolLength: 26,
    ulaPrefix: 'fd12:3456:789a::/48', defaultMtu: 9000, manageNetfilter: false, logLevel: 'debug', tableBase: 5000,
  });
});

test('MEMBRANE_CONFIG names the file when no path is given', (t) => {
  const file = configFile({ stateDir: '/from/env/file' });
  t.is(loadConfig(undefined, { MEMBRANE_CONFIG: file }).stateDir, '/from/env/file');
});

test('environment overrides the file', (t) => {
  const file = configFile({ stateDir: '/srv/membrane', defaultMtu: 9000, manageNetfilter: true });
  const config = loadConfig(file, env({
    MEMBRANE_STATE_DIR: '/env/state',
    MEMBRANE_DEFAULT_IPV4_RANGES: '10.50.0.0/16, 10.60.0.0/16,,',
    MEMBRANE_DEFAULT_IPV4_POOL_LENGTH: '28',
    MEMBRANE_DEFAULT_MTU: '1450',
    MEMBRANE_MANAGE_NETFILTER: 'false',
    MEMBRANE_ULA_PREFIX: 'fd00:1:2::/48',
    MEMBRANE_LOG_LEVEL: 'silly',
    MEMBRANE_PLUGIN_SOCKET: '/run/docker/plugins/mb.sock',
    MEMBRANE_API_SOCKET: '/run/mb/api.sock',
  }));
  t.is(config.stateDir, '/env/state');
  t.deepEqual(config.defaultIPv4Ranges, ['10.50.0.0/16', '10.60.0.0/16']);
  t.is(config.defaultIPv4PoolLength, 28);
  t.is(config.defaultMtu, 1450);
  t.false(config.manageNetfilter);
  t.is(config.ulaPrefix, 'fd00:1:2::/48');
  t.is(config.logLevel, 'silly');
  t.is(config.pluginSocket, '/run/docker/plugins/mb.sock');
  t.is(config.apiSocket, '/run/mb/api.sock');
});

test('environment booleans: true/false/1/0', (t) => {
  for (const [raw, expected] of [['true', true], ['1', true], ['false', false], ['0', false]] as const) {
    const base = expected ? { manageNetfilter: false } : { manageNetfilter: true };
    t.is(loadConfig(configFile(base), env({ MEMBRANE_MANAGE_NETFILTER: raw })).manageNetfilter, expected, raw);
  }
});

test('an empty environment variable is ignored', (t) => {
  const config = loadConfig(undefined, env({ MEMBRANE_DEFAULT_IPV4_RANGES: '', MEMBRANE_DEFAULT_MTU: '' }));
  t.deepEqual(config.defaultIPv4Ranges, DEFAULT_CONFIG.defaultIPv4Ranges);
  t.is(config.defaultMtu, DEFAULT_CONFIG.defaultMtu);
});

test('an unknown key in the file is an error naming the key', (t) => {
  const file = configFile({ stateDir: '/x', defaultIpv4Ranges: ['10.0.0.0/8'] });
  const err = t.throws(() => loadConfig(file, env()), { instanceOf: InvalidArgumentError });
  t.regex(err?.message ?? '', /defaultIpv4Ranges/);
  t.true(err?.message.includes(file));
  t.regex(err?.message ?? '', /defaultIPv4Ranges/, 'lists the known keys, so the typo is easy to spot');
});

test('a config file that is not JSON is an error naming the file', (t) => {
  const file = configFile('{ "stateDir": "/x", }');
  const err = t.throws(() => loadConfig(file, env()), { instanceOf: InvalidArgumentError });
  t.true(err?.message.includes(file));
  t.regex(err?.message ?? '', /JSON/);
});

test('wrongly typed values in the file are errors naming the key', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ defaultMtu: 'big' }, /defaultMtu/],
    [{ defaultMtu: 1500.5 }, /defaultMtu/],
    [{ manageNetfilter: 'yes' }, /manageNetfilter/],
    [{ defaultIPv4Ranges: [10] }, /defaultIPv4Ranges/],
    [{ defaultIPv4Ranges: { a: '10.0.0.0/8' } }, /defaultIPv4Ranges/],
    [{ stateDir: 5 }, /stateDir/],
    [{ logLevel: null }, /logLevel/],
  ];
  for (const [content, pattern] of cases) {
    const err = t.throws(() => loadConfig(configFile(content), env()), { instanceOf: InvalidArgumentError }, JSON.stringify(content));
    t.regex(err?.message ?? '', pattern);
  }
});

test('wrongly typed environment values are errors naming the variable', (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ MEMBRANE_DEFAULT_MTU: 'abc' }, /MEMBRANE_DEFAULT_MTU/],
    [{ MEMBRANE_DEFAULT_IPV4_POOL_LENGTH: '24.5' }, /MEMBRANE_DEFAULT_IPV4_POOL_LENGTH/],
    [{ MEMBRANE_MANAGE_NETFILTER: 'maybe' }, /MEMBRANE_MANAGE_NETFILTER/],
  ];
  for (const [vars, pattern] of cases) {
    const err = t.throws(() => loadConfig(undefined, env(vars)), { instanceOf: InvalidArgumentError }, JSON.stringify(vars));
    t.regex(err?.message ?? '', pattern);
  }
});

test('out-of-range numbers are errors', (t) => {
  t.throws(() => loadConfig(configFile({ defaultIPv4PoolLength: 31 }), env()), { instanceOf: InvalidArgumentError, message: /defaultIPv4PoolLength/ });
  t.throws(() => loadConfig(configFile({ defaultIPv4PoolLength: 4 }), env()), { instanceOf: InvalidArgumentError, message: /defaultIPv4PoolLength/ });
  t.throws(() => loadConfig(undefined, env({ MEMBRANE_DEFAULT_MTU: '1000' })), { instanceOf: InvalidArgumentError, message: /defaultMtu/ });
  t.throws(() => loadConfig(undefined, env({ MEMBRANE_DEFAULT_MTU: '70000' })), { instanceOf: InvalidArgumentError, message: /defaultMtu/ });
});

test('a config file whose top level is not an object is an error naming the file', (t) => {
  for (const content of ['null', '42', '"stateDir"', '["stateDir"]']) {
    const file = configFile(content);
    const err = t.throws(() => loadConfig(file, env()), { instanceOf: InvalidArgumentError }, `config file containing ${content}`);
    t.true(err?.message.includes(file) ?? false, content);
  }
});

test('default ranges and the node ULA in special-purpose space, with host bits, or of the wrong family stop the daemon at start', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ defaultIPv4Ranges: ['127.16.0.0/16'] }, /^defaultIPv4Ranges entry 127\.16\.0\.0\/16 lies in special-purpose .*loopback.*private range/],
    [{ defaultIPv4Ranges: ['10.0.0.0/8', '224.0.0.0/8'] }, /defaultIPv4Ranges entry 224\.0\.0\.0\/8 .*multicast/],
    [{ defaultIPv4Ranges: ['169.254.0.0/16'] }, /link local/],
    [{ defaultIPv4Ranges: ['10.1.2.3/16'] }, /host bits set: the network it lies in is 10\.1\.0\.0\/16/],
    [{ defaultIPv4Ranges: ['fd00::/48'] }, /is not IPv4/],
    [{ defaultIPv4Ranges: [] }, /defaultIPv4Ranges is empty/],
    [{ ulaPrefix: 'fe80::/48' }, /^ulaPrefix fe80::\/48 lies in special-purpose .*link-local/],
    [{ ulaPrefix: 'ff00::/48' }, /multicast/],
    [{ ulaPrefix: 'fd00::1/48' }, /host bits set/],
    [{ ulaPrefix: 'fd00::/64' }, /\/63 or shorter/],
    [{ ulaPrefix: '10.0.0.0/8' }, /must be an IPv6 prefix/],
  ];
  for (const [settings, message] of cases) {
    const err = t.throws(() => loadConfig(configFile(settings), env()), { instanceOf: InvalidArgumentError }, JSON.stringify(settings));
    t.regex(err!.message, message, JSON.stringify(settings));
  }
  t.regex(t.throws(() => loadConfig(undefined, env({ MEMBRANE_DEFAULT_IPV4_RANGES: '0.0.0.0/8' })))!.message, /"this network"/);
  t.notThrows(() => loadConfig(configFile({ defaultIPv4Ranges: ['172.20.0.0/14', '192.168.0.0/16'], ulaPrefix: 'fd12:3456:789a::/48' }), env()));
});
