/**
 * What the broker fuzzer sends: each case is a plan of sends, pauses and
 * closes on one or more connections, drawn from a seeded generator.
 * Nothing here talks to the broker; see fuzz-broker.ts for that and
 * broker-oracle.ts for what the broker must answer.
 */
import { broker } from '@iommufd-plugin/proto';
import type { Prng } from '../support/prng';
import { frame, header, lengthDelimited, padTo, paddedVarint, tag, varint, varintField, wireType } from './wire';

export type Step = { send: Buffer } | { pauseMs: number } | { close: true };

export interface PlannedConnection {
  steps: Step[];
  /** Read replies while sending (false: never read a byte). */
  read: boolean;
  /** After all replies, stay idle and expect the broker to close at its deadline without a reply. */
  idleCheck: boolean;
}

export interface Flood {
  count: number;
  holdMs: number;
  payload: 'none' | 'garbage' | 'partial' | 'oversized';
}

export interface BrokerCase {
  name: string;
  connections: PlannedConnection[];
  /** Many plain connections held open at once (no fds are read on them). */
  flood?: Flood;
}

export interface BrokerLimits {
  maxRequestBytes: number;
  requestTimeoutMs: number;
}

type Generator = (prng: Prng, limits: BrokerLimits) => BrokerCase;

// ------------------------------------------------------------- payloads

function requestId(prng: Prng, limits: BrokerLimits): string {
  return prng.weighted<() => string>([
    [4, () => `fuzz-${prng.uint32().toString(36)}`],
    [1, () => ''],
    [1, () => String.fromCodePoint(...Array.from({ length: prng.int(1, 12) }, () => prng.int(0x20, 0x2fff)))],
    [1, () => 'x'.repeat(prng.int(100, limits.maxRequestBytes - 64))],
  ])();
}

export function validPayload(prng: Prng, limits: BrokerLimits, kind: 'open' | 'status' = prng.chance(0.7) ? 'open' : 'status'): Buffer {
  const request: broker.Request = {
    protocolVersion: 1,
    requestId: requestId(prng, limits),
    body: kind === 'open' ? { $case: 'openContext', value: { allocationId: prng.chance(0.8) ? `alloc-${prng.int(0, 1e6)}` : '' } } : { $case: 'status', value: {} },
  };
  return Buffer.from(broker.Request.encode(request).finish());
}

/** Well-formed protobuf that is not a good request, or a good request spelled oddly. */
function oddPayload(prng: Prng, limits: BrokerLimits): Buffer {
  const id = lengthDelimited(2, Buffer.from(`odd-${prng.uint32().toString(36)}`));
  const open = lengthDelimited(3, lengthDelimited(1, Buffer.from('a')));
  const status = lengthDelimited(4, Buffer.alloc(0));
  const v1 = varintField(1, 1);
  const variants: Array<() => Buffer> = [
    () => Buffer.concat([id, open]), // no version
    () => Buffer.concat([varintField(1, prng.pick([0, 2, 3, 0xffffffff, prng.uint32()])), id, status]),
    () => Buffer.concat([v1, id]), // no body
    () => Buffer.concat([v1, id, open, status]), // both bodies: the last wins
    () => Buffer.concat([varintField(1, 7), v1, id, open]), // version twice: the last wins
    () => Buffer.concat([tag(1, wireType.varint), paddedVarint(1, prng.int(2, 10)), id, status]), // overlong but valid varint
    () => Buffer.concat([tag(1, wireType.lengthDelimited), varint(1), Buffer.from([1]), id, status]), // version with the wrong wire type
    () => Buffer.concat([v1, tag(2, prng.pick([wireType.varint, wireType.fixed32, wireType.fixed64])), Buffer.alloc(8, 0x41), open]),
    () => Buffer.concat([v1, lengthDelimited(2, prng.bytes(prng.int(1, 40))), open]), // request id not UTF-8
    () => Buffer.concat([v1, id, lengthDelimited(3, prng.bytes(prng.int(0, 60)))]), // garbage inside open_context
    () => Buffer.concat([v1, id, lengthDelimited(4, prng.bytes(prng.int(0, 60)))]), // garbage inside status
    () => Buffer.concat([v1, id, tag(3, wireType.lengthDelimited), varint(prng.int(100, 100000)), Buffer.from([0x0a, 0x01, 0x61])]), // length beyond the end
    () => Buffer.concat([v1, id, tag(prng.int(5, 1000), wireType.endGroup), open]), // stray end-group stops decoding
    () => Buffer.concat([v1, id, Buffer.from([0]), open]), // tag 0
    () => Buffer.concat([v1, id, lengthDelimited(prng.int(5, 536870911), prng.bytes(prng.int(0, 30))), status]), // unknown fields are skipped
    () => Buffer.concat([v1, id, tag(prng.int(5, 99), wireType.startGroup), Buffer.from([0x08, 0x01]), tag(prng.int(100, 200), wireType.endGroup), status]), // mismatched group
    () => Buffer.concat([v1, id, Buffer.alloc(prng.int(100, 3000), 0x0b)]), // deeply nested groups
    () => Buffer.concat([v1, id, tag(prng.int(1, 30), prng.pick([wireType.invalid6, wireType.invalid7])), open]),
    () => Buffer.concat([v1, lengthDelimited(2, Buffer.from('y'.repeat(prng.int(limits.maxRequestBytes - 40, limits.maxRequestBytes - 8)))), status]),
  ];
  return prng.pick(variants)();
}

/** A sequence of random tags and values: any field number, any wire type, plausible or not. */
function randomFieldsPayload(prng: Prng, limits: BrokerLimits): Buffer {
  const parts: Buffer[] = [];
  const count = prng.int(1, 30);
  for (let i = 0; i < count; i++) {
    const field = prng.weighted<number>([
      [4, prng.int(1, 4)],
      [2, prng.int(5, 30)],
      [1, prng.int(31, 536870911)],
      [1, 0],
    ]);
    const type = prng.int(0, 7);
    parts.push(tag(field, type));
    switch (type) {
      case wireType.varint:
        parts.push(prng.chance(0.1) ? paddedVarint(prng.int(0, 5), prng.int(10, 14)) : varint(prng.uint32() * (prng.chance(0.3) ? 4096 : 1)));
        break;
      case wireType.fixed64:
        parts.push(prng.bytes(prng.chance(0.9) ? 8 : prng.int(0, 7)));
        break;
      case wireType.fixed32:
        parts.push(prng.bytes(prng.chance(0.9) ? 4 : prng.int(0, 3)));
        break;
      case wireType.lengthDelimited: {
        const content = prng.bytes(prng.size(200));
        const lie = prng.chance(0.15) ? prng.int(0, 100000) : content.length;
        parts.push(varint(lie), content);
        break;
      }
      default:
        break; // groups and invalid wire types carry nothing
    }
  }
  const payload = Buffer.concat(parts);
  return payload.length <= limits.maxRequestBytes ? payload : payload.subarray(0, limits.maxRequestBytes);
}

/** Varints longer than protobuf allows, in each place a varint goes. */
function oversizedVarintPayload(prng: Prng): Buffer {
  const long = () => paddedVarint(prng.int(0, 127), prng.int(11, 40));
  const endless = () => Buffer.alloc(prng.int(11, 60), 0xff);
  return prng.pick<() => Buffer>([
    () => Buffer.concat([long(), validTail()]), // as the tag
    () => Buffer.concat([tag(1, wireType.varint), long()]),
    () => Buffer.concat([tag(1, wireType.varint), endless()]),
    () => Buffer.concat([tag(2, wireType.lengthDelimited), endless()]),
    () => Buffer.concat([tag(2, wireType.lengthDelimited), varint(2 ** 31 + prng.int(0, 1000)), Buffer.from('abc')]),
    () => Buffer.concat([tag(3, wireType.lengthDelimited), varint(BigInt(2) ** BigInt(63)), Buffer.from([0x0a])]),
    () => Buffer.concat([varintField(1, 1), tag(3, wireType.lengthDelimited), varint(3), tag(1, wireType.lengthDelimited), endless()]),
  ])();

  function validTail(): Buffer {
    return Buffer.concat([varintField(1, 1), lengthDelimited(4, Buffer.alloc(0))]);
  }
}

function anyPayload(prng: Prng, limits: BrokerLimits): Buffer {
  return prng.weighted<() => Buffer>([
    [4, () => validPayload(prng, limits)],
    [2, () => oddPayload(prng, limits)],
    [2, () => randomFieldsPayload(prng, limits)],
    [1, () => oversizedVarintPayload(prng)],
    [1, () => prng.bytes(prng.size(limits.maxRequestBytes))],
    [1, () => Buffer.alloc(0)],
  ])();
}

// ------------------------------------------------------------- plans

function oneShot(data: Buffer, options: Partial<PlannedConnection> = {}): PlannedConnection {
  return { steps: data.length > 0 ? [{ send: data }] : [], read: true, idleCheck: false, ...options };
}

/** Splits `data` into sends at random points, with short pauses that keep each request well inside the deadline. */
function dripped(prng: Prng, data: Buffer, limits: BrokerLimits, maxPieces: number): Step[] {
  const steps: Step[] = [];
  const budget = Math.floor(limits.requestTimeoutMs / 4);
  const pieces = Math.min(maxPieces, Math.max(1, data.length));
  const pause = Math.max(0, Math.floor(budget / pieces) - 1);
  let at = 0;
  while (at < data.length) {
    const size = Math.max(1, Math.min(data.length - at, prng.int(1, Math.ceil((2 * data.length) / pieces))));
    steps.push({ send: data.subarray(at, at + size) });
    at += size;
    if (at < data.length && pause > 0) steps.push({ pauseMs: prng.int(0, pause) });
  }
  return steps;
}

const generators: Array<readonly [number, string, Generator]> = [
  [3, 'random-bytes', (prng, limits) => ({
    name: 'random-bytes',
    connections: [oneShot(prng.chance(0.5) ? prng.bytes(prng.int(1, 3000)) : frame(prng.bytes(prng.size(limits.maxRequestBytes))))],
  })],

  [4, 'length-prefix', (prng, limits) => {
    const max = limits.maxRequestBytes;
    const length = prng.pick([0, prng.int(1, 16), max - 1, max, max, max + 1, max + 1, max + 2, 0x7fffffff, 0x80000000, 0xffffffff, prng.uint32()]);
    let data: Buffer;
    if (length > max) {
      data = Buffer.concat([header(length), prng.bytes(prng.int(0, 100))]);
    } else {
      const body = prng.chance(0.5) ? padTo(validPayload(prng, limits, prng.chance(0.5) ? 'open' : 'status'), length) : undefined;
      const payload = body ?? prng.bytes(length);
      data = prng.chance(0.75) ? frame(payload) : Buffer.concat([header(length), payload.subarray(0, prng.int(0, Math.max(0, length - 1)))]);
    }
    return { name: `length-prefix`, connections: [oneShot(data)] };
  }],

  [2, 'truncated-frame', (prng, limits) => {
    const before = Array.from({ length: prng.int(0, 3) }, () => frame(validPayload(prng, limits)));
    const last = frame(anyPayload(prng, limits));
    const cut = prng.int(1, Math.max(1, last.length - 1));
    return { name: 'truncated-frame', connections: [oneShot(Buffer.concat([...before, last.subarray(0, cut)]))] };
  }],

  [4, 'wrong-fields', (prng, limits) => ({ name: 'wrong-fields', connections: [oneShot(frame(oddPayload(prng, limits)))] })],

  [3, 'random-fields', (prng, limits) => ({
    name: 'random-fields',
    connections: [oneShot(Buffer.concat(Array.from({ length: prng.int(1, 4) }, () => frame(randomFieldsPayload(prng, limits)))))],
  })],

  [2, 'oversized-varint', (prng) => ({ name: 'oversized-varint', connections: [oneShot(frame(oversizedVarintPayload(prng)))] })],

  [4, 'pipelined', (prng, limits) => {
    const frames = Array.from({ length: prng.int(2, 60) }, () => frame(prng.chance(0.6) ? validPayload(prng, limits) : anyPayload(prng, limits)));
    // Sometimes the stream ends in an oversized length prefix, which ends the connection.
    const oversized = prng.chance(0.15);
    if (oversized) frames.push(header(limits.maxRequestBytes + prng.int(1, 1 << 20)));
    const data = Buffer.concat(frames);
    const steps = prng.chance(0.5) ? [{ send: data }] : dripped(prng, data, limits, 12);
    return { name: oversized ? 'pipelined-then-oversized' : 'pipelined', connections: [{ steps, read: true, idleCheck: !oversized && prng.chance(0.1) }] };
  }],

  [3, 'abrupt-close', (prng, limits) => {
    const data = Buffer.concat(Array.from({ length: prng.int(1, 20) }, () => frame(prng.chance(0.7) ? validPayload(prng, limits, 'open') : anyPayload(prng, limits))));
    const cut = prng.int(0, data.length);
    const steps: Step[] = [];
    if (cut > 0) steps.push({ send: data.subarray(0, cut) });
    if (prng.chance(0.6)) steps.push({ pauseMs: prng.int(0, 30) });
    steps.push({ close: true });
    return { name: 'abrupt-close', connections: [{ steps, read: prng.chance(0.5), idleCheck: false }] };
  }],

  [3, 'slow-drip', (prng, limits) => {
    const frames = Array.from({ length: prng.int(1, 3) }, () => frame(validPayload(prng, limits, prng.chance(0.7) ? 'open' : 'status')));
    const data = Buffer.concat(frames);
    // Either well inside the deadline, or stalled mid-request until the broker gives up.
    const stall = prng.chance(0.3);
    const sent = stall ? data.subarray(0, prng.int(1, data.length - 1)) : data;
    return { name: stall ? 'slow-drip-stalled' : 'slow-drip', connections: [{ steps: dripped(prng, sent, limits, 40), read: true, idleCheck: false }] };
  }],

  [2, 'never-read', (prng, limits) => {
    const count = prng.int(10, 300);
    const data = Buffer.concat(Array.from({ length: count }, () => frame(validPayload(prng, limits, 'open'))));
    return {
      name: 'never-read',
      connections: [{ steps: [{ send: data }, { pauseMs: prng.int(0, limits.requestTimeoutMs * 2) }, { close: true }], read: false, idleCheck: false }],
    };
  }],

  [2, 'many-connections', (prng, limits) => {
    const connections = Array.from({ length: prng.int(5, 60) }, (): PlannedConnection => {
      const kind = prng.int(0, 3);
      if (kind === 0) return oneShot(frame(validPayload(prng, limits)));
      if (kind === 1) return oneShot(frame(anyPayload(prng, limits)));
      if (kind === 2) return { steps: [{ send: frame(validPayload(prng, limits, 'open')) }, { close: true }], read: false, idleCheck: false };
      return { steps: [{ pauseMs: prng.int(0, 50) }, { close: true }], read: prng.chance(0.5), idleCheck: false };
    });
    return { name: 'many-connections', connections };
  }],

  [1, 'flood', (prng, limits) => ({
    name: 'flood',
    connections: [oneShot(frame(validPayload(prng, limits, 'open')))],
    flood: { count: prng.int(50, 320), holdMs: prng.int(0, 300), payload: prng.pick(['none', 'garbage', 'partial', 'oversized'] as const) },
  })],
];

export const brokerCaseNames: readonly string[] = generators.map(([, name]) => name);

/** Draws one case; `only` restricts the draw to one generator by name. */
export function drawBrokerCase(prng: Prng, limits: BrokerLimits, only?: string, skip: readonly string[] = []): BrokerCase {
  const pool = generators.filter(([, name]) => (only ? name === only : !skip.includes(name)));
  if (pool.length === 0) throw new Error(`no broker case named ${only}; known: ${brokerCaseNames.join(', ')}`);
  const generate = prng.weighted(pool.map(([weight, , g]) => [weight, g] as const));
  return generate(prng, limits);
}
