// Docker's IpamDriver protocol mapped onto Membrane's IPAM. Each state change is committed
// before the answer goes out.

import type { Handler } from './http.js';
import { obj, str, stringMap } from './http.js';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE, type Ipam } from '../ipam/ipam.js';
import type { JsonStore } from '../state/store.js';
import { InvalidArgumentError } from '../errors.js';

export function ipamRoutes(ipam: Ipam, store: JsonStore<unknown>): Record<string, Handler> {
  return {
    'IpamDriver.GetCapabilities': () => ({ RequiresMACAddress: false, RequiresRequestReplay: false }),
    'IpamDriver.GetDefaultAddressSpaces': () => ({
      LocalDefaultAddressSpace: LOCAL_ADDRESS_SPACE, GlobalDefaultAddressSpace: GLOBAL_ADDRESS_SPACE,
    }),
    'IpamDriver.RequestPool': async (body) => {
      const v6 = body.V6;
      if (v6 !== undefined && typeof v6 !== 'boolean') throw new InvalidArgumentError('V6 must be a boolean');
      const result = ipam.requestPool({
        addressSpace: str(body, 'AddressSpace', false), pool: str(body, 'Pool', false),
        subPool: str(body, 'SubPool', false), options: stringMap(body, 'Options'), v6: v6 === true,
      });
      await store.commit([]);
      return { PoolID: result.poolId, Pool: result.pool, Data: result.data };
    },
    'IpamDriver.ReleasePool': async (body) => {
      if (ipam.releasePool(str(body, 'PoolID'))) await store.commit([]);
      return {};
    },
    'IpamDriver.RequestAddress': async (body) => {
      obj(body, 'Options');
      const address = ipam.requestAddress(str(body, 'PoolID'), str(body, 'Address', false), stringMap(body, 'Options'));
      await store.commit([]);
      return { Address: address, Data: {} };
    },
    'IpamDriver.ReleaseAddress': async (body) => {
      if (ipam.releaseAddress(str(body, 'PoolID'), str(body, 'Address'))) await store.commit([]);
      return {};
    },
  };
}
