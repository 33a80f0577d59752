import type { PeerCredentials } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { brokerProtocolVersion, type Logger } from '@iommufd-plugin/common';
import { existsSync } from 'node:fs';
import type { BrokerActivity } from './broker-activity';
import { ContextError, type ContextFactory } from './context-factory';
import { selfTestResultMessage, type SelfTestOutcome } from './self-test';
import { brokerVersion } from './version';

export interface HandledRequest {
  reply: broker.Reply;
  /** The fd to send with the reply; the sender closes it once sent. */
  fd: number | null;
}

export interface RequestHandlerOptions {
  factory: ContextFactory;
  describe: { devicePath: string; strategy: broker.OpenStrategy };
  activity: BrokerActivity;
  /** The latest self-test, for the status reply. */
  selfTest: { readonly last: SelfTestOutcome | undefined };
}

/**
 * Turns one request's bytes into a reply. Never throws: whatever goes wrong
 * becomes a typed error reply and a log line.
 */
export class RequestHandler {
  constructor(
    private readonly options: RequestHandlerOptions,
    private readonly log: Logger,
  ) {}

  async handle(payload: Uint8Array, peer: PeerCredentials): Promise<HandledRequest> {
    let request: broker.Request;
    try {
      request = broker.Request.decode(payload);
    } catch (err) {
      this.log.warn({ event: 'bad_request', peer, reason: (err as Error).message }, 'undecodable request');
      return this.refuse('', peer, broker.ErrorCode.ERROR_CODE_BAD_REQUEST, `request is not a valid iommufd.broker.v1.Request: ${(err as Error).message}`);
    }
    const decoded = process.hrtime.bigint();
    const { requestId } = request;
    if (request.protocolVersion !== brokerProtocolVersion) {
      this.log.warn({ event: 'bad_request', peer, requestId, protocolVersion: request.protocolVersion }, 'unsupported protocol version');
      return this.refuse(
        requestId,
        peer,
        broker.ErrorCode.ERROR_CODE_UNSUPPORTED_VERSION,
        `protocol version ${request.protocolVersion} is not supported; this broker speaks ${brokerProtocolVersion}`,
      );
    }
    switch (request.body?.$case) {
      case 'openContext':
        return this.openContext(requestId, request.body.value.allocationId, peer, decoded);
      case 'status':
        this.options.activity.answered({ type: 'status', requestId, peer });
        return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'status', value: this.status() } }, fd: null };
      default:
        this.log.warn({ event: 'bad_request', peer, requestId }, 'request without a body');
        return this.refuse(requestId, peer, broker.ErrorCode.ERROR_CODE_BAD_REQUEST, 'request has no body (open_context or status)');
    }
  }

  private async openContext(requestId: string, allocationId: string, peer: PeerCredentials, decoded: bigint): Promise<HandledRequest> {
    const { factory, describe, activity } = this.options;
    const fields = { requestId, allocationId, peer };
    try {
      const fd = await factory.open();
      const seconds = elapsedSeconds(decoded);
      activity.answered({ type: 'open_context', requestId, peer, openSeconds: seconds });
      this.log.info({ event: 'context_opened', ...fields, durationMs: seconds * 1e3 }, 'opened IOMMUFD context in RLIMIT mode');
      const value: broker.ContextOpened = {
        rlimitModeVerified: true,
        strategy: describe.strategy,
        devicePath: describe.devicePath,
      };
      return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'contextOpened', value } }, fd };
    } catch (err) {
      const error = err instanceof ContextError ? err : new ContextError(broker.ErrorCode.ERROR_CODE_INTERNAL, String(err));
      activity.answered({ type: 'open_context', requestId, peer, error: error.toReply() });
      this.log.error(
        {
          event: 'context_failed',
          ...fields,
          code: broker.errorCodeToJSON(error.code),
          errno: error.errnoName || undefined,
          syscall: error.syscall || undefined,
          durationMs: elapsedSeconds(decoded) * 1e3,
        },
        error.message,
      );
      return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'error', value: error.toReply() } }, fd: null };
    }
  }

  /** An error reply to a request that is not one the broker can act on. */
  private refuse(requestId: string, peer: PeerCredentials, code: broker.ErrorCode, message: string): HandledRequest {
    const handled = errorReply(requestId, code, message);
    this.options.activity.answered({ type: 'invalid', requestId, peer, error: errorOf(handled) });
    return handled;
  }

  private status(): broker.BrokerStatus {
    const { describe, activity, selfTest } = this.options;
    const last = selfTest.last;
    return {
      version: brokerVersion,
      protocolVersion: brokerProtocolVersion,
      devicePath: describe.devicePath,
      devicePresent: existsSync(describe.devicePath),
      strategy: describe.strategy,
      contextsOpened: activity.counters.contextsOpened,
      openFailures: activity.counters.openFailures,
      lastSelfTest: last ? selfTestResultMessage(last) : undefined,
    };
  }
}

export function errorReply(requestId: string, code: broker.ErrorCode, message: string): HandledRequest {
  return {
    reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'error', value: { code, message, errnoName: '', syscall: '' } } },
    fd: null,
  };
}

/** The error an errorReply() carries. */
export function errorOf(handled: HandledRequest): broker.Error {
  const body = handled.reply.body;
  if (body?.$case !== 'error') throw new Error(`not an error reply: ${body?.$case ?? 'empty'}`);
  return body.value;
}

function elapsedSeconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
