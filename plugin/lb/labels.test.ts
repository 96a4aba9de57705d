// The membrane.service and membrane.service.weight labels: every accepted form, and every refusal
// with the message a user sees (the container then backs no service; serviceLabelsOf says why).

import test from 'ava';
import fc from 'fast-check';
import { InvalidArgumentError } from '../errors.js';
import {
  checkServiceName, MAX_WEIGHT, parseServiceLabel, parseServicePort, parseWeight, SERVICE_LABEL, serviceLabelsOf,
  type ServiceDeclaration, type ServicePort, WEIGHT_LABEL,
} from './labels.js';

const tcp = (port: number, targetPort = port): ServicePort => ({ port, protocol: 'tcp', targetPort });
const udp = (port: number, targetPort = port): ServicePort => ({ port, protocol: 'udp', targetPort });

/** The `where` prefix every label error starts with. */
const where = (value: string) => `label membrane.service=${JSON.stringify(value)}`;

/** Asserts parseServiceLabel(value) throws InvalidArgumentError with exactly `message`. */
function refuses(t: import('ava').ExecutionContext, value: string, message: string): void {
  const err = t.throws(() => parseServiceLabel(value), { instanceOf: InvalidArgumentError });
  t.is(err?.message, message, `message for ${JSON.stringify(value)}`);
}

const PORT_HINT = 'is not a port; write PORT[/tcp|/udp][@TARGET_PORT], e.g. 80, 53/udp or 80@8080';
const NAME_HINT = 'is not a DNS label: use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a ' +
  'letter or digit (it becomes NAME.svc.membrane)';

// ---- constants ------------------------------------------------------------------------------------

test('the label keys and the largest weight are what the documentation names', (t) => {
  t.is(SERVICE_LABEL, 'membrane.service');
  t.is(WEIGHT_LABEL, 'membrane.service.weight');
  t.is(MAX_WEIGHT, 65535);
});

// ---- accepted forms -------------------------------------------------------------------------------

test('NAME:PORT is one TCP port whose target is the same port', (t) => {
  t.deepEqual(parseServiceLabel('api:80'), [{ name: 'api', ports: [tcp(80)] }]);
});

test('several ports are separated by commas, and /udp or /tcp picks the protocol', (t) => {
  t.deepEqual(parseServiceLabel('api:80,443/udp'), [{ name: 'api', ports: [tcp(80), udp(443)] }]);
  t.deepEqual(parseServiceLabel('dns:53/udp,53/tcp'), [{ name: 'dns', ports: [udp(53), tcp(53)] }], 'one port number on both protocols is two ports');
});

test('the protocol is case-insensitive and comes out lowercase', (t) => {
  t.deepEqual(parseServiceLabel('api:80/TCP,53/Udp'), [{ name: 'api', ports: [tcp(80), udp(53)] }]);
});

test('@TARGET gives the port the backend listens on, with or without a protocol', (t) => {
  t.deepEqual(parseServiceLabel('api:80@8080'), [{ name: 'api', ports: [tcp(80, 8080)] }]);
  t.deepEqual(parseServiceLabel('api:80/tcp@8080,53/udp@5353'), [{ name: 'api', ports: [tcp(80, 8080), udp(53, 5353)] }]);
  t.deepEqual(parseServiceLabel('api:80@8080,443@8080'), [{ name: 'api', ports: [tcp(80, 8080), tcp(443, 8080)] }],
    'two frontend ports may share a target port');
});

test('the documented example: api:80,443/udp@8443;admin:9000', (t) => {
  t.deepEqual(parseServiceLabel('api:80,443/udp@8443;admin:9000'), [
    { name: 'api', ports: [tcp(80), udp(443, 8443)] },
    { name: 'admin', ports: [tcp(9000)] },
  ]);
});

test('semicolons separate services, in the order given; empty parts are ignored', (t) => {
  t.deepEqual(parseServiceLabel('b:1;a:2;c:3'), [{ name: 'b', ports: [tcp(1)] }, { name: 'a', ports: [tcp(2)] }, { name: 'c', ports: [tcp(3)] }]);
  t.deepEqual(parseServiceLabel(';api:80;;admin:9000;'), [{ name: 'api', ports: [tcp(80)] }, { name: 'admin', ports: [tcp(9000)] }]);
});

test('whitespace around services, names, ports and separators is ignored', (t) => {
  t.deepEqual(parseServiceLabel('  api : 80 , 443/udp@8443 ;  admin:9000\t'), [
    { name: 'api', ports: [tcp(80), udp(443, 8443)] },
    { name: 'admin', ports: [tcp(9000)] },
  ]);
});

test('the port range ends are 1 and 65535, for frontends and targets', (t) => {
  t.deepEqual(parseServiceLabel('edge:1@65535,65535@1'), [{ name: 'edge', ports: [tcp(1, 65535), tcp(65535, 1)] }]);
});

test('names are DNS labels: digits, hyphens inside, up to 63 characters', (t) => {
  const longest = `a${'b'.repeat(61)}c`;
  t.is(longest.length, 63);
  for (const name of ['a', '0', 'web-1', '1api', 'a--b', longest]) {
    t.deepEqual(parseServiceLabel(`${name}:80`), [{ name, ports: [tcp(80)] }], name);
    t.is(checkServiceName(name), name);
  }
});

test('parseServicePort accepts every form on its own, trimmed', (t) => {
  t.deepEqual(parseServicePort('80'), tcp(80));
  t.deepEqual(parseServicePort(' 53/udp '), udp(53));
  t.deepEqual(parseServicePort('80@8080'), tcp(80, 8080));
  t.deepEqual(parseServicePort('80/tcp@8080'), tcp(80, 8080));
});

test('property: a declaration written out in label syntax parses back to itself', (t) => {
  const name = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
  const port = fc.record({
    port: fc.integer({ min: 1, max: 65535 }),
    protocol: fc.constantFrom<'tcp' | 'udp'>('tcp', 'udp'),
    targetPort: fc.integer({ min: 1, max: 65535 }),
  });
  const ports = fc.uniqueArray(port, { minLength: 1, maxLength: 5, selector: (p) => `${p.port}/${p.protocol}` });
  const declarations = fc.uniqueArray(fc.record({ name, ports }), { minLength: 1, maxLength: 4, selector: (d) => d.name });
  fc.assert(fc.property(declarations, fc.boolean(), (list: ServiceDeclaration[], spaces) => {
    const sp = spaces ? ' ' : '';
    const text = list.map((d) => `${sp}${d.name}${sp}:${d.ports.map((p) => {
      // Each of the optional parts, written out or left to its default.
      const proto = p.protocol === 'udp' || p.port % 2 === 0 ? `/${p.protocol}` : '';
      const target = p.targetPort !== p.port || p.port % 3 === 0 ? `@${p.targetPort}` : '';
      return `${sp}${p.port}${proto}${target}${sp}`;
    }).join(',')}`).join(`${sp};${sp}`);
    t.deepEqual(parseServiceLabel(text), list, text);
  }), { numRuns: 200 });
});

// ---- refusals ---------------------------------------------------------------------------------------

test('a name that is not a DNS label is refused, naming the label', (t) => {
  for (const name of ['API', 'a_b', '-api', 'api-', 'a.b', `a${'b'.repeat(63)}`, 'ä']) {
    refuses(t, `${name}:80`, `${where(`${name}:80`)}: service name ${JSON.stringify(name)} ${NAME_HINT}`);
  }
  refuses(t, ':80', `${where(':80')}: service name "" ${NAME_HINT}`);
});

test('checkServiceName refuses with its own wording', (t) => {
  const err = t.throws(() => checkServiceName('Web'), { instanceOf: InvalidArgumentError });
  t.is(err?.message, `service name "Web" ${NAME_HINT}`);
  t.throws(() => checkServiceName('Web', '--name'), { message: /^--name "Web" is not a DNS label/ });
});

test('a service named twice is refused', (t) => {
  refuses(t, 'api:80;api:443', `${where('api:80;api:443')}: service api is named twice; list all its ports once`);
  refuses(t, 'api:80; api :443', `${where('api:80; api :443')}: service api is named twice; list all its ports once`);
});

test('a port given twice in one service is refused, targets notwithstanding', (t) => {
  refuses(t, 'api:80,80', `${where('api:80,80')}: port 80/tcp appears twice in service api`);
  refuses(t, 'api:80@8080,80/tcp@9090', `${where('api:80@8080,80/tcp@9090')}: port 80/tcp appears twice in service api`);
  refuses(t, 'api:53/udp,53/UDP', `${where('api:53/udp,53/UDP')}: port 53/udp appears twice in service api`);
  // The same port in two services is fine.
  t.deepEqual(parseServiceLabel('a:80;b:80'), [{ name: 'a', ports: [tcp(80)] }, { name: 'b', ports: [tcp(80)] }]);
});

test('port numbers outside 1..65535 or with leading zeros are refused, for frontends and targets', (t) => {
  for (const bad of ['0', '65536', '99999', '123456', '080', '00']) {
    refuses(t, `api:${bad}`, `${where(`api:${bad}`)}: port ${JSON.stringify(bad)} is not a port number (1 to 65535)`);
    refuses(t, `api:80@${bad}`, `${where(`api:80@${bad}`)}: target port ${JSON.stringify(bad)} is not a port number (1 to 65535)`);
  }
});

test('text that is not a port is refused with the syntax', (t) => {
  for (const bad of ['http', '80/sctp', '80/', '-1', '80@', '@80', '80 /udp', '1.5', '80@8080@9090', '']) {
    const value = `api:${bad}`;
    refuses(t, value, `${where(value)}: ${JSON.stringify(bad)} ${PORT_HINT}`);
  }
  refuses(t, 'api:80,', `${where('api:80,')}: "" ${PORT_HINT}`);
  refuses(t, 'api:80,,443', `${where('api:80,,443')}: "" ${PORT_HINT}`);
});

test('a service without a colon has no ports', (t) => {
  refuses(t, 'api', `${where('api')}: "api" has no ports; write NAME:PORT[,PORT...], e.g. api:80`);
  refuses(t, 'api:80;admin', `${where('api:80;admin')}: "admin" has no ports; write NAME:PORT[,PORT...], e.g. api:80`);
});

test('an empty label, or one of only separators and spaces, is refused', (t) => {
  for (const value of ['', '   ', ';', ' ; ;; ']) {
    refuses(t, value, `${where(value)} is empty; write NAME:PORT, e.g. api:80`);
  }
});

test('parseServicePort refusals name the caller\'s context', (t) => {
  t.throws(() => parseServicePort('x'), { instanceOf: InvalidArgumentError, message: `port: "x" ${PORT_HINT}` });
  t.throws(() => parseServicePort('0', 'ports'), { instanceOf: InvalidArgumentError, message: 'ports: port "0" is not a port number (1 to 65535)' });
});

// ---- weight -----------------------------------------------------------------------------------------

test('the weight is 1 without the label or with an empty one', (t) => {
  t.is(parseWeight(undefined), 1);
  t.is(parseWeight(''), 1);
});

test('weights 0 (drained) through 65535 are taken as given', (t) => {
  t.is(parseWeight('0'), 0);
  t.is(parseWeight('1'), 1);
  t.is(parseWeight('3'), 3);
  t.is(parseWeight('65535'), MAX_WEIGHT);
  t.is(parseWeight(' 7 '), 7, 'surrounding whitespace is ignored');
  t.is(parseWeight('007'), 7, 'leading zeros are accepted for a weight');
});

test('property: every whole number 0..65535 is its own weight', (t) => {
  fc.assert(fc.property(fc.integer({ min: 0, max: MAX_WEIGHT }), (w) => {
    t.is(parseWeight(String(w)), w);
  }), { numRuns: 300 });
});

test('a weight that is not a whole number in 0..65535 is refused with the range', (t) => {
  for (const bad of ['65536', '100000', '-1', '1.5', 'abc', '1e3', '0x10', '+1', ' ', '3 3']) {
    t.throws(() => parseWeight(bad), {
      instanceOf: InvalidArgumentError,
      message: `label membrane.service.weight=${JSON.stringify(bad)} is not a weight: give a whole number from 0 ` +
        '(drained: no new flows) to 65535; the default is 1',
    }, JSON.stringify(bad));
  }
});

// ---- serviceLabelsOf ----------------------------------------------------------------------------------

test('serviceLabelsOf: no labels means no services and weight 1, without an error', (t) => {
  t.deepEqual(serviceLabelsOf({}), { services: [], weight: 1 });
  t.deepEqual(serviceLabelsOf({ 'com.example': 'x' }), { services: [], weight: 1 });
});

test('serviceLabelsOf: services and weight from the two labels', (t) => {
  t.deepEqual(serviceLabelsOf({ 'membrane.service': 'web:80@8080;admin:9000/udp', 'membrane.service.weight': '3' }), {
    services: [{ name: 'web', ports: [tcp(80, 8080)] }, { name: 'admin', ports: [udp(9000)] }], weight: 3,
  });
  t.deepEqual(serviceLabelsOf({ 'membrane.service.weight': '0' }), { services: [], weight: 0 }, 'a weight alone is kept');
});

test('serviceLabelsOf returns a bad service label as an error instead of throwing', (t) => {
  const result = serviceLabelsOf({ 'membrane.service': 'api:0', 'membrane.service.weight': '2' });
  t.deepEqual(result, { services: [], weight: 1, error: `${where('api:0')}: port "0" is not a port number (1 to 65535)` });
  t.deepEqual(serviceLabelsOf({ 'membrane.service': '' }).error, `${where('')} is empty; write NAME:PORT, e.g. api:80`);
});

test('serviceLabelsOf returns a bad weight as an error, and then no services at all', (t) => {
  const result = serviceLabelsOf({ 'membrane.service': 'api:80', 'membrane.service.weight': 'heavy' });
  t.deepEqual(result, {
    services: [], weight: 1,
    error: 'label membrane.service.weight="heavy" is not a weight: give a whole number from 0 (drained: no new flows) to 65535; the default is 1',
  });
});

test('property: serviceLabelsOf never throws, whatever the label values', (t) => {
  fc.assert(fc.property(fc.option(fc.string({ maxLength: 40 }), { nil: undefined }), fc.option(fc.string({ maxLength: 8 }), { nil: undefined }), (service, weight) => {
    const labels: Record<string, string> = {};
    if (service !== undefined) labels[SERVICE_LABEL] = service;
    if (weight !== undefined) labels[WEIGHT_LABEL] = weight;
    const result = serviceLabelsOf(labels);
    if (result.error !== undefined) {
      t.deepEqual(result.services, []);
      t.is(result.weight, 1);
    } else {
      t.true(Number.isInteger(result.weight) && result.weight >= 0 && result.weight <= MAX_WEIGHT);
    }
  }), { numRuns: 300 });
});
