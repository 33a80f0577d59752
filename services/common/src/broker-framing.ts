/**
 * The broker protocol's framing: a 4-byte big-endian length, then that many
 * bytes of protobuf. Both ends use this file.
 */

export const frameHeaderBytes = 4;

export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(frameHeaderBytes + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, frameHeaderBytes);
  return frame;
}

export class FrameTooLargeError extends Error {
  override name = 'FrameTooLargeError';
  constructor(
    readonly declaredBytes: number,
    readonly maxBytes: number,
  ) {
    super(`message of ${declaredBytes} bytes exceeds the limit of ${maxBytes}`);
  }
}

/** Collects stream chunks and yields whole payloads; refuses a length over the limit before buffering it. */
export class FrameDecoder {
  private buffered: Buffer = Buffer.alloc(0);

  constructor(private readonly maxPayloadBytes: number) {}

  /** Bytes received that do not yet make a whole frame. */
  get pendingBytes(): number {
    return this.buffered.length;
  }

  push(chunk: Uint8Array): Buffer[] {
    this.buffered = this.buffered.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buffered, chunk]);
    const payloads: Buffer[] = [];
    while (this.buffered.length >= frameHeaderBytes) {
      const length = this.buffered.readUInt32BE(0);
      if (length > this.maxPayloadBytes) throw new FrameTooLargeError(length, this.maxPayloadBytes);
      if (this.buffered.length < frameHeaderBytes + length) break;
      payloads.push(this.buffered.subarray(frameHeaderBytes, frameHeaderBytes + length));
      this.buffered = this.buffered.subarray(frameHeaderBytes + length);
    }
    return payloads;
  }
}
