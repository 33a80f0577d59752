import { closeFd, connectUnix, receiveWithFd, sendWithFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { encodeFrame, FrameDecoder } from './broker-framing';

export const brokerProtocolVersion = 1;

/** The broker answered with a typed error (see ErrorCode in proto/schema/broker/v1/broker.proto). */
export class BrokerReplyError extends Error {
  override name = 'BrokerReplyError';
  readonly code: broker.ErrorCode;
  readonly errnoName: string;
  readonly syscall: string;

  constructor(error: broker.Error) {
    super(error.message);
    this.code = error.code;
    this.errnoName = error.errnoName;
    this.syscall = error.syscall;
  }

  /** The code's name without its prefix, e.g. "PERMISSION_DENIED", for logs and metrics. */
  get codeName(): string {
    return broker.errorCodeToJSON(this.code).replace(/^ERROR_CODE_/, '');
  }
}

/** The reply broke the protocol (no fd with a context, an fd with anything else, bad bytes). */
export class BrokerProtocolError extends Error {
  override name = 'BrokerProtocolError';
}

export interface OpenedContext {
  /** The IOMMUFD context, close-on-exec; the caller owns it and must close it. */
  fd: number;
  details: broker.ContextOpened;
}

const maxReplyBytes = 64 * 1024;

/**
 * Sends one request on a fresh connection and returns the reply with the fd
 * it carried, if any. The whole exchange is bounded by `timeoutMs`.
 */
async function exchange(socketPath: string, request: broker.Request, timeoutMs: number): Promise<{ reply: broker.Reply; fd: number | null }> {
  const deadline = Date.now() + timeoutMs;
  const sock = await connectUnix(socketPath, timeoutMs);
  let fd: number | null = null;
  try {
    const frame = encodeFrame(broker.Request.encode(request).finish());
    for (let sent = 0; sent < frame.length; ) sent += sendWithFd(sock, frame.subarray(sent), null);

    const decoder = new FrameDecoder(maxReplyBytes);
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new BrokerProtocolError(`no reply from the broker within ${timeoutMs} ms`);
      const { data, fd: carried } = await receiveWithFd(sock, 4096, remaining);
      if (carried !== null) {
        if (fd !== null) {
          closeFd(carried);
          throw new BrokerProtocolError('the broker sent more than one fd');
        }
        fd = carried;
      }
      if (data.length === 0) throw new BrokerProtocolError('the broker closed the connection without a reply');
      const [payload] = decoder.push(data);
      if (payload !== undefined) {
        const result = { reply: broker.Reply.decode(payload), fd };
        fd = null;
        return result;
      }
    }
  } finally {
    if (fd !== null) closeFd(fd);
    closeFd(sock);
  }
}

let requestCounter = 0;
function nextRequestId(): string {
  requestCounter = (requestCounter + 1) % Number.MAX_SAFE_INTEGER;
  return `${process.pid}-${requestCounter}`;
}

/** Asks the broker for a fresh IOMMUFD context in RLIMIT mode. */
export async function openContext(
  socketPath: string,
  options: { allocationId: string; timeoutMs: number; requestId?: string },
): Promise<OpenedContext> {
  const request: broker.Request = {
    protocolVersion: brokerProtocolVersion,
    requestId: options.requestId ?? nextRequestId(),
    body: { $case: 'openContext', value: { allocationId: options.allocationId } },
  };
  const { reply, fd } = await exchange(socketPath, request, options.timeoutMs);
  const body = reply.body;
  if (body?.$case === 'contextOpened') {
    if (fd === null) throw new BrokerProtocolError('the broker reported a context but sent no fd');
    return { fd, details: body.value };
  }
  if (fd !== null) closeFd(fd);
  if (body?.$case === 'error') throw new BrokerReplyError(body.value);
  throw new BrokerProtocolError(`unexpected reply to open_context: ${body?.$case ?? 'empty'}`);
}

/** Asks the broker for its status. */
export async function brokerStatus(socketPath: string, timeoutMs: number): Promise<broker.BrokerStatus> {
  const request: broker.Request = {
    protocolVersion: brokerProtocolVersion,
    requestId: nextRequestId(),
    body: { $case: 'status', value: {} },
  };
  const { reply, fd } = await exchange(socketPath, request, timeoutMs);
  if (fd !== null) {
    closeFd(fd);
    throw new BrokerProtocolError('the broker sent an fd with a status reply');
  }
  if (reply.body?.$case === 'status') return reply.body.value;
  if (reply.body?.$case === 'error') throw new BrokerReplyError(reply.body.value);
  throw new BrokerProtocolError(`unexpected reply to status: ${reply.body?.$case ?? 'empty'}`);
}
