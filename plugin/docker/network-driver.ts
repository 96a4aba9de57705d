// Docker's NetworkDriver protocol: parse and validate, call a manager, answer.

import type { Body, Handler } from './http.js';
import { obj, str, stringMap } from './http.js';
import { InvalidArgumentError } from '../errors.js';
import type { NetworkManager } from '../network/networks.js';
import type { EndpointManager } from '../endpoints/endpoints.js';
import { parsePortMap } from '../netfilter/iptables.js';

const GENERIC = 'com.docker.network.generic';
const ENABLE_IPV4 = 'com.docker.network.enable_ipv4';
const ENABLE_IPV6 = 'com.docker.network.enable_ipv6';
const INTERNAL = 'com.docker.network.internal';
const PORTMAP = 'com.docker.network.portmap';

function bool(options: Body, key: string): boolean | undefined {
  const value = options[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'boolean') return value;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new InvalidArgumentError(`option ${key} must be a boolean, got ${JSON.stringify(value)}`);
}

function ipData(body: Body, field: string): { pool: string; gateway?: string; aux: Record<string, string> }[] {
  const list = body[field];
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) throw new InvalidArgumentError(`${field} must be a list`);
  return list.map((entry, i) => {
    if (typeof entry !== 'object' || entry === null) throw new InvalidArgumentError(`${field}[${i}] must be an object`);
    const e = entry as Body;
    return { pool: str(e, 'Pool'), gateway: str(e, 'Gateway', false) || undefined, aux: stringMap(e, 'AuxAddresses') };
  });
}

export function networkRoutes(networks: NetworkManager, endpoints: EndpointManager): Record<string, Handler> {
  return {
    'NetworkDriver.GetCapabilities': () => ({ Scope: 'local', ConnectivityScope: 'local', GwAllocChecker: false }),
    'NetworkDriver.CreateNetwork': async (body) => {
      const options = obj(body, 'Options');
      const generic = stringMap(options, GENERIC);
      const enableIPv4 = bool(options, ENABLE_IPV4);
      const request = {
        networkId: str(body, 'NetworkID'), options: generic, internal: bool(options, INTERNAL) === true,
        enableIPv4, enableIPv6: bool(options, ENABLE_IPV6) === true,
        ipv4: enableIPv4 === false ? [] : ipData(body, 'IPv4Data'), ipv6: ipData(body, 'IPv6Data'),
      };
      if (!request.enableIPv6) request.ipv6 = [];
      await networks.create(request);
      return {};
    },
    'NetworkDriver.DeleteNetwork': async (body) => {
      await networks.delete(str(body, 'NetworkID'), (id) => endpoints.deleteNow(id));
      return {};
    },
    // Swarm-manager calls; only sent to global-scope drivers, answered sanely anyway.
    'NetworkDriver.AllocateNetwork': (body) => ({ Options: stringMap(body, 'Options') }),
    'NetworkDriver.FreeNetwork': () => ({}),
    'NetworkDriver.GwAllocCheck': () => ({ SkipIPv4: false, SkipIPv6: false }),
    'NetworkDriver.CreateEndpoint': async (body) => {
      const iface = obj(body, 'Interface');
      const { macAddress } = await endpoints.create({
        networkId: str(body, 'NetworkID'), endpointId: str(body, 'EndpointID'),
        address: str(iface, 'Address', false), addressIPv6: str(iface, 'AddressIPv6', false),
        macAddress: str(iface, 'MacAddress', false), ports: parsePortMap(obj(body, 'Options')[PORTMAP]),
      });
      // Fill-only rule: report only what Docker left empty, or Docker rejects the endpoint.
      return macAddress ? { Interface: { MacAddress: macAddress } } : {};
    },
    'NetworkDriver.DeleteEndpoint': async (body) => {
      await endpoints.delete(str(body, 'EndpointID'));
      return {};
    },
    'NetworkDriver.EndpointOperInfo': (body) => {
      const id = str(body, 'EndpointID', false);
      const endpoint = endpoints.list().find((e) => e.id === id);
      if (!endpoint) return { Value: {} };
      return {
        Value: {
          'membrane.host_interface': endpoint.hostIfName, 'membrane.mac': endpoint.mac,
          ...(endpoint.ipv4 ? { 'membrane.ipv4': endpoint.ipv4 } : {}),
          ...(endpoint.ipv6 ? { 'membrane.ipv6': endpoint.ipv6 } : {}),
        },
      };
    },
    'NetworkDriver.Join': async (body) => endpoints.join(str(body, 'NetworkID'), str(body, 'EndpointID'), str(body, 'SandboxKey', false)),
    'NetworkDriver.Leave': async (body) => {
      await endpoints.leave(str(body, 'NetworkID'), str(body, 'EndpointID'));
      return {};
    },
    // Egress is per network (routes, masquerade); per container there are only published ports.
    'NetworkDriver.ProgramExternalConnectivity': async (body) => {
      const options = obj(body, 'Options');
      await endpoints.program(str(body, 'NetworkID'), str(body, 'EndpointID'),
        options[PORTMAP] === undefined ? undefined : parsePortMap(options[PORTMAP]));
      return {};
    },
    'NetworkDriver.RevokeExternalConnectivity': async (body) => {
      await endpoints.revoke(str(body, 'NetworkID'), str(body, 'EndpointID'));
      return {};
    },
    'NetworkDriver.DiscoverNew': () => ({}),
    'NetworkDriver.DiscoverDelete': () => ({}),
  };
}

export const pluginActivation = { Implements: ['NetworkDriver', 'IpamDriver'] };
