/**
 * Hand-made protobuf wire bytes, for requests no well-behaved encoder would
 * produce: any field number with any wire type, overlong and oversized
 * varints, lengths that lie.
 */

export const wireType = { varint: 0, fixed64: 1, lengthDelimited: 2, startGroup: 3, endGroup: 4, fixed32: 5, invalid6: 6, invalid7: 7 } as const;

/** A varint of a non-negative number below 2^64 (given as bigint or number). */
export function varint(value: number | bigint): Buffer {
  let v = BigInt(value);
  if (v < 0n) v &= (1n << 64n) - 1n;
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}

/** A varint of `value` padded with redundant continuation bytes to `length` bytes (length > 10 is invalid protobuf). */
export function paddedVarint(value: number, length: number): Buffer {
  const plain = varint(value);
  if (length <= plain.length) return plain;
  const out = Buffer.alloc(length, 0x80);
  plain.copy(out);
  for (let i = 0; i < plain.length; i++) out[i] = (plain[i] as number) | 0x80;
  out[length - 1] = 0x00;
  return out;
}

export function tag(fieldNumber: number, type: number): Buffer {
  return varint(BigInt(fieldNumber) * 8n + BigInt(type & 7));
}

export function lengthDelimited(fieldNumber: number, content: Uint8Array): Buffer {
  return Buffer.concat([tag(fieldNumber, wireType.lengthDelimited), varint(content.length), content]);
}

export function varintField(fieldNumber: number, value: number | bigint): Buffer {
  return Buffer.concat([tag(fieldNumber, wireType.varint), varint(value)]);
}

/** The broker protocol's frame header: a 4-byte big-endian length. */
export function header(length: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(length >>> 0);
  return out;
}

export function frame(payload: Uint8Array): Buffer {
  return Buffer.concat([header(payload.length), payload]);
}

/**
 * Pads a payload with an unknown length-delimited field (number 15) so that
 * it is exactly `total` bytes; returns undefined when that cannot be done.
 */
export function padTo(payload: Uint8Array, total: number): Buffer | undefined {
  const room = total - payload.length;
  if (room === 0) return Buffer.from(payload);
  for (let len = Math.max(0, room - 6); len <= room; len++) {
    const field = lengthDelimited(15, Buffer.alloc(len, 0x61));
    if (field.length === room) return Buffer.concat([payload, field]);
  }
  return undefined;
}
