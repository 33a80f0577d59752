/**
 * What the broker must answer to a planned connection, worked out from the
 * bytes alone (docs/PROTOCOL.md §2), and the check of what came back.
 */
import { brokerProtocolVersion } from '@iommufd-plugin/common';
import { broker } from '@iommufd-plugin/proto';
import type { ReceivedChunk } from '../support/raw-connection';
import type { PlannedConnection } from './broker-cases';

export type ExpectedReply =
  | { kind: 'contextOpened'; requestId: string }
  | { kind: 'status'; requestId: string }
  | { kind: 'error'; code: broker.ErrorCode; requestId: string };

export interface Prediction {
  /** 'exact': the replies are known; 'shape': the client closed or never read, so only their form is checked. */
  mode: 'exact' | 'shape';
  /** One reply per complete request, in order. */
  replies: ExpectedReply[];
  /** The broker must end the connection with this error (then close): an oversized length prefix, or a request left incomplete. */
  fatal: 'REQUEST_TOO_LARGE' | 'TIMEOUT' | null;
}

/** The reply the broker owes one request payload: decoded with the same generated code the broker uses. */
export function expectedReplyTo(payload: Uint8Array): ExpectedReply {
  let request: broker.Request;
  try {
    request = broker.Request.decode(payload);
  } catch {
    return { kind: 'error', code: broker.ErrorCode.ERROR_CODE_BAD_REQUEST, requestId: '' };
  }
  if (request.protocolVersion !== brokerProtocolVersion) {
    return { kind: 'error', code: broker.ErrorCode.ERROR_CODE_UNSUPPORTED_VERSION, requestId: request.requestId };
  }
  switch (request.body?.$case) {
    case 'openContext':
      return { kind: 'contextOpened', requestId: request.requestId };
    case 'status':
      return { kind: 'status', requestId: request.requestId };
    default:
      return { kind: 'error', code: broker.ErrorCode.ERROR_CODE_BAD_REQUEST, requestId: request.requestId };
  }
}

export function predict(plan: PlannedConnection, maxRequestBytes: number): Prediction {
  const closes = plan.steps.some((s) => 'close' in s);
  const stream = Buffer.concat(plan.steps.flatMap((s) => ('send' in s ? [s.send] : [])));
  const replies: ExpectedReply[] = [];
  let fatal: Prediction['fatal'] = null;
  let at = 0;
  while (stream.length - at >= 4) {
    const length = stream.readUInt32BE(at);
    if (length > maxRequestBytes) {
      fatal = 'REQUEST_TOO_LARGE';
      break;
    }
    if (stream.length - at - 4 < length) break;
    replies.push(expectedReplyTo(stream.subarray(at + 4, at + 4 + length)));
    at += 4 + length;
  }
  if (fatal === null && at < stream.length) fatal = 'TIMEOUT';
  return { mode: closes || !plan.read ? 'shape' : 'exact', replies, fatal };
}

/** A reply frame as received, with the fd that came with it. */
export interface ReceivedReply {
  reply: broker.Reply;
  fd: number | null;
  bytes: number;
}

export interface ParsedReplies {
  replies: ReceivedReply[];
  /** Problems with the bytes themselves: undecodable replies, stray fds, a frame cut off. */
  problems: string[];
  /** Every fd received (each must be closed by the caller). */
  fds: number[];
  /** Bytes after the last whole frame. */
  trailingBytes: number;
}

const maxReplyBytes = 64 * 1024;

/**
 * Cuts what was read into reply frames and attaches each fd to its frame. The
 * broker sends an fd with the first byte of a reply, and a recvmsg stops after
 * the message that carries fds, so an fd belongs to the last frame that begins
 * in the chunk it came with.
 */
export function parseReplies(chunks: readonly ReceivedChunk[]): ParsedReplies {
  const data = Buffer.concat(chunks.map((c) => c.data));
  const problems: string[] = [];
  const starts: Array<{ start: number; payload: Buffer }> = [];
  let at = 0;
  while (data.length - at >= 4) {
    const length = data.readUInt32BE(at);
    if (length > maxReplyBytes) {
      problems.push(`a reply frame declares ${length} bytes`);
      break;
    }
    if (data.length - at - 4 < length) break;
    starts.push({ start: at, payload: data.subarray(at + 4, at + 4 + length) });
    at += 4 + length;
  }
  const trailingBytes = data.length - at;
  const fdsByFrame = new Map<number, number[]>();
  const fds: number[] = [];
  for (const chunk of chunks) {
    if (chunk.fd === null) continue;
    fds.push(chunk.fd);
    const end = chunk.offset + chunk.data.length;
    let owner = -1;
    for (let i = 0; i < starts.length; i++) {
      const s = starts[i]!.start;
      if (s >= chunk.offset && s < end) owner = i;
    }
    if (owner < 0) {
      // The frame it starts may be the unfinished one at the end.
      if (at >= chunk.offset && at < end && trailingBytes > 0) continue;
      problems.push(`an fd arrived with bytes ${chunk.offset}..${end} where no reply begins`);
      continue;
    }
    fdsByFrame.set(owner, [...(fdsByFrame.get(owner) ?? []), chunk.fd]);
  }
  const replies: ReceivedReply[] = [];
  starts.forEach(({ payload }, i) => {
    const frameFds = fdsByFrame.get(i) ?? [];
    let reply: broker.Reply;
    try {
      reply = broker.Reply.decode(payload);
    } catch (err) {
      problems.push(`reply ${i} is not a decodable Reply (${(err as Error).message}): ${payload.subarray(0, 32).toString('hex')}`);
      return;
    }
    if (frameFds.length > 1) problems.push(`reply ${i} (${reply.body?.$case}) came with ${frameFds.length} fds`);
    const fd = frameFds[0] ?? null;
    if (reply.body?.$case === 'contextOpened' && fd === null) problems.push(`reply ${i} reports a context but carries no fd`);
    if (reply.body?.$case !== 'contextOpened' && fd !== null) problems.push(`reply ${i} (${reply.body?.$case ?? 'empty'}) carries an fd`);
    replies.push({ reply, fd, bytes: payload.length });
  });
  return { replies, problems, fds, trailingBytes };
}

export const codeName = (code: broker.ErrorCode): string => broker.errorCodeToJSON(code).replace(/^ERROR_CODE_/, '');

/** Codes a fuzzed request may legitimately get. Anything else (INTERNAL, UNSPECIFIED, a device error) is a finding. */
const acceptableCodes = new Set<broker.ErrorCode>([
  broker.ErrorCode.ERROR_CODE_BAD_REQUEST,
  broker.ErrorCode.ERROR_CODE_UNSUPPORTED_VERSION,
  broker.ErrorCode.ERROR_CODE_REQUEST_TOO_LARGE,
  broker.ErrorCode.ERROR_CODE_TIMEOUT,
  broker.ErrorCode.ERROR_CODE_OVERLOADED,
]);

export interface ReplyContext {
  devicePath: string;
  strategy: broker.OpenStrategy;
}

/** Checks the form every reply must have, whatever was asked. */
export function shapeProblems(received: ReceivedReply, context: ReplyContext): string[] {
  const problems: string[] = [];
  const { reply } = received;
  if (reply.protocolVersion !== brokerProtocolVersion) problems.push(`reply protocol_version ${reply.protocolVersion}`);
  const body = reply.body;
  if (!body) return [...problems, 'reply without a body'];
  if (body.$case === 'error') {
    if (!acceptableCodes.has(body.value.code)) problems.push(`error code ${codeName(body.value.code)}: ${body.value.message}`);
    if (body.value.message.trim() === '') problems.push(`error ${codeName(body.value.code)} without a message`);
  } else if (body.$case === 'contextOpened') {
    if (!body.value.rlimitModeVerified) problems.push('context_opened without rlimit_mode_verified');
    if (body.value.devicePath !== context.devicePath) problems.push(`context_opened for device ${body.value.devicePath}`);
    if (body.value.strategy !== context.strategy) problems.push(`context_opened with strategy ${body.value.strategy}`);
  } else if (body.$case === 'status') {
    if (body.value.protocolVersion !== brokerProtocolVersion || !body.value.devicePresent) problems.push(`odd status ${JSON.stringify(body.value)}`);
  }
  return problems;
}

/** Whether a received reply is the expected one; a reason when not. */
export function mismatch(expected: ExpectedReply, received: ReceivedReply): string | undefined {
  const { reply } = received;
  const got = reply.body?.$case ?? 'empty';
  const describe = () =>
    reply.body?.$case === 'error' ? `error ${codeName(reply.body.value.code)} (${reply.body.value.message})` : got;
  if (got !== expected.kind) return `expected ${expected.kind === 'error' ? `error ${codeName(expected.code)}` : expected.kind}, got ${describe()}`;
  if (expected.kind === 'error' && reply.body?.$case === 'error' && reply.body.value.code !== expected.code) {
    return `expected error ${codeName(expected.code)}, got ${describe()}`;
  }
  if (reply.requestId !== expected.requestId) {
    return `request id ${JSON.stringify(reply.requestId.slice(0, 60))} echoed for ${JSON.stringify(expected.requestId.slice(0, 60))}`;
  }
  return undefined;
}
