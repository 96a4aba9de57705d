// Byte layouts of the structs Membrane's BPF object shares with the daemon, declared once in
// TypeScript with the C field names (bpf/lib/*.h), laid out by C's rules (natural alignment, the
// struct padded to its widest member), and encoded and decoded from that declaration. A test
// compares every declared struct with the compiled object's BTF member by member: name, offset
// and size. So a layout exists in C and here, and nowhere else, and the two cannot drift apart
// unnoticed.
//
// Field kinds say what the bytes mean, so the codec also converts: addresses and MACs to and from
// text, network-order ports, enums by name. Byte order is maps.h's: addresses and ports network
// order, every other integer host (little-endian) order.

import { formatAddress, parseAddress } from '../ipam/prefix.js';

/** One field's byte-level kind. */
export type FieldKind =
  | { kind: 'u8' | 'u16' | 'u32' | 'be16' | 'be32' }
  | { kind: 'u64' }
  /** union addr (16 bytes): IPv4 in the first four bytes; `family` names the field that says which. */
  | { kind: 'addr'; family?: string; fixedFamily?: 4 | 6 }
  | { kind: 'mac' }
  | { kind: 'bytes'; size: number }
  /** A u8 whose values have names (index = value). */
  | { kind: 'enum8'; names: readonly string[] }
  /** Reserved bytes: always written as zero, never decoded. */
  | { kind: 'pad'; size: number };

export const u8 = { kind: 'u8' } as const;
export const u16 = { kind: 'u16' } as const;
export const u32 = { kind: 'u32' } as const;
export const u64 = { kind: 'u64' } as const;
export const be16 = { kind: 'be16' } as const;
export const be32 = { kind: 'be32' } as const;
export const mac = { kind: 'mac' } as const;
/** An address whose family is the value of field `family` of the same struct (4 or 6). */
export const addrOf = (family: string) => ({ kind: 'addr', family }) as const;
/** An address slot that always holds one family (endpoint_info.ip4 holds IPv4 only). */
export const ipv4Slot = { kind: 'addr', fixedFamily: 4 } as const;
export const ipv6Slot = { kind: 'addr', fixedFamily: 6 } as const;
export const pad = (size: number) => ({ kind: 'pad', size }) as const;
export const bytes = (size: number) => ({ kind: 'bytes', size }) as const;
export const enum8 = (names: readonly string[]) => ({ kind: 'enum8', names }) as const;

function sizeAndAlign(f: FieldKind): { size: number; align: number } {
  switch (f.kind) {
    case 'u8': case 'enum8': return { size: 1, align: 1 };
    case 'u16': case 'be16': return { size: 2, align: 2 };
    case 'u32': case 'be32': return { size: 4, align: 4 };
    case 'u64': return { size: 8, align: 8 };
    case 'addr': return { size: 16, align: 4 }; // union { __be32 ip4; __u8 ip6[16]; }
    case 'mac': return { size: 6, align: 1 };
    case 'bytes': case 'pad': return { size: f.size, align: 1 };
  }
}

export interface LaidOutField {
  /** The C member name (snake_case). */
  name: string;
  /** The TypeScript property (camelCase of the C name). */
  property: string;
  offset: number;
  size: number;
  type: FieldKind;
}

export const camelCase = (name: string): string => name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** What a field decodes to. */
type ValueOf<F> = F extends { kind: 'u64' } ? bigint
  : F extends { kind: 'addr' } ? string
  : F extends { kind: 'mac' } ? string
  : F extends { kind: 'bytes' } ? Buffer
  : F extends { kind: 'enum8' } ? string
  : number;

type CamelCase<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<CamelCase<T>>}` : S;

/** The decoded object of a struct declaration: pads left out, names in camelCase. */
export type Decoded<D extends Record<string, FieldKind>> = {
  [K in keyof D as D[K] extends { kind: 'pad' } ? never : CamelCase<K & string>]: ValueOf<D[K]>;
};

/** The object to encode: every field optional (absent = zero). */
export type Encodable<D extends Record<string, FieldKind>> = Partial<Decoded<D>>;

export class StructLayout<D extends Record<string, FieldKind> = Record<string, FieldKind>> {
  readonly fields: LaidOutField[];
  readonly size: number;
  readonly align: number;

  constructor(readonly name: string, declaration: D) {
    let offset = 0;
    let align = 1;
    this.fields = Object.entries(declaration).map(([fieldName, type]) => {
      const { size, align: a } = sizeAndAlign(type);
      offset = Math.ceil(offset / a) * a;
      align = Math.max(align, a);
      const field = { name: fieldName, property: camelCase(fieldName), offset, size, type };
      offset += size;
      return field;
    });
    this.align = align;
    this.size = Math.ceil(offset / align) * align;
    for (const f of this.fields) {
      const family = f.type.kind === 'addr' ? f.type.family : undefined;
      if (family !== undefined && !this.fields.some((g) => g.name === family)) {
        throw new Error(`struct ${name}: field ${f.name} takes its family from "${family}", which is not a field`);
      }
    }
  }

  field(name: string): LaidOutField {
    const found = this.fields.find((f) => f.name === name || f.property === name);
    if (!found) throw new Error(`struct ${this.name} has no field ${name}`);
    return found;
  }

  /** Encodes `value` (absent fields are zero). Addresses whose family comes from a field need that field set. */
  encode(value: Encodable<D>, out: Buffer = Buffer.alloc(this.size), at = 0): Buffer {
    out.fill(0, at, at + this.size);
    const v = value as Record<string, unknown>;
    for (const f of this.fields) {
      const x = v[f.property];
      if (x === undefined || x === null || f.type.kind === 'pad') continue;
      const o = at + f.offset;
      switch (f.type.kind) {
        case 'u8': out.writeUInt8(x as number, o); break;
        case 'u16': out.writeUInt16LE(x as number, o); break;
        case 'u32': out.writeUInt32LE((x as number) >>> 0, o); break;
        case 'be16': out.writeUInt16BE(x as number, o); break;
        case 'be32': out.writeUInt32BE((x as number) >>> 0, o); break;
        case 'u64': out.writeBigUInt64LE(x as bigint, o); break;
        case 'mac': writeMac(x as string, out, o); break;
        case 'bytes': (x as Buffer).copy(out, o, 0, f.size); break;
        case 'enum8': {
          const index = f.type.names.indexOf(x as string);
          if (index < 0) throw new TypeError(`struct ${this.name}.${f.name}: "${String(x)}" is not one of ${f.type.names.join(', ')}`);
          out[o] = index;
          break;
        }
        case 'addr': {
          const family = writeAddr(x as string, out, o);
          if (f.type.fixedFamily && family !== f.type.fixedFamily) {
            throw new TypeError(`struct ${this.name}.${f.name} holds IPv${f.type.fixedFamily} addresses, got ${String(x)}`);
          }
          // The family field follows from the address unless the caller set it.
          if (f.type.family && v[camelCase(f.type.family)] === undefined) out[at + this.field(f.type.family).offset] = family;
          break;
        }
      }
    }
    return out;
  }

  /** Decodes a struct at `at` (a shorter buffer, an older layout, decodes the fields it holds; the rest are zero). */
  decode(b: Buffer, at = 0): Decoded<D> {
    const out: Record<string, unknown> = {};
    const view = b.length - at >= this.size ? b : Buffer.concat([b.subarray(at), Buffer.alloc(this.size)]).subarray(0, this.size);
    const base = view === b ? at : 0;
    for (const f of this.fields) {
      const o = base + f.offset;
      switch (f.type.kind) {
        case 'pad': continue;
        case 'u8': out[f.property] = view.readUInt8(o); break;
        case 'u16': out[f.property] = view.readUInt16LE(o); break;
        case 'u32': out[f.property] = view.readUInt32LE(o); break;
        case 'be16': out[f.property] = view.readUInt16BE(o); break;
        case 'be32': out[f.property] = view.readUInt32BE(o); break;
        case 'u64': out[f.property] = view.readBigUInt64LE(o); break;
        case 'mac': out[f.property] = readMac(view, o); break;
        case 'bytes': out[f.property] = Buffer.from(view.subarray(o, o + f.size)); break;
        case 'enum8': out[f.property] = f.type.names[view[o]!] ?? `${f.name}_${view[o]}`; break;
        case 'addr': break; // after the family fields are known
      }
    }
    for (const f of this.fields) {
      if (f.type.kind !== 'addr') continue;
      const family = f.type.fixedFamily ?? (out[camelCase(f.type.family!)] as number);
      out[f.property] = readAddr(view, base + f.offset, family);
    }
    return out as Decoded<D>;
  }
}

export function struct<D extends Record<string, FieldKind>>(name: string, declaration: D): StructLayout<D> {
  return new StructLayout(name, declaration);
}

/** Writes an address into a 16-byte union addr slot; returns its family (4 or 6). */
export function writeAddr(address: string, out: Buffer, offset: number): 4 | 6 {
  const { family, value } = parseAddress(address);
  out.fill(0, offset, offset + 16);
  if (family === 4) {
    out.writeUInt32BE(Number(value), offset);
  } else {
    out.writeBigUInt64BE(value >> 64n, offset);
    out.writeBigUInt64BE(value & 0xffff_ffff_ffff_ffffn, offset + 8);
  }
  return family;
}

/** Reads a union addr slot as text; '' when the family is neither 4 nor 6 (an empty slot). */
export function readAddr(buf: Buffer, offset: number, family: number): string {
  if (family === 4) return formatAddress(4, BigInt(buf.readUInt32BE(offset)));
  if (family === 6) return formatAddress(6, (buf.readBigUInt64BE(offset) << 64n) | buf.readBigUInt64BE(offset + 8));
  return '';
}

function writeMac(text: string, out: Buffer, offset: number): void {
  const parts = text.split(':').map((h) => (/^[0-9a-fA-F]{2}$/.test(h) ? parseInt(h, 16) : NaN));
  if (parts.length !== 6 || parts.some((b) => Number.isNaN(b))) throw new TypeError(`not a MAC address: ${text}`);
  Buffer.from(parts).copy(out, offset);
}

function readMac(buf: Buffer, offset: number): string {
  return [...buf.subarray(offset, offset + 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A u32 key (array indices, ifindexes, endpoint and frontend ids), host order. */
export const U32_KEY = struct('u32_key', { value: u32 });
