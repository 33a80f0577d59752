import type { PeerCredentials } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { brokerProtocolVersion, type Logger } from '@iommufd-plugin/common';
import { existsSync } from 'node:fs';
import { ContextError, type ContextFactory } from './context-factory';
import { brokerVersion } from './version';

export interface HandledRequest {
  reply: broker.Reply;
  /** The fd to send with the reply; the sender closes it once sent. */
  fd: number | null;
}

/** Counters shown by the status request. */
export interface BrokerCounters {
  contextsOpened: number;
  openFailures: number;
}

/**
 * Turns one request's bytes into a reply. Never throws: whatever goes wrong
 * becomes a typed error reply and a log line.
 */
export class RequestHandler {
  readonly counters: BrokerCounters = { contextsOpened: 0, openFailures: 0 };

  constructor(
    private readonly factory: ContextFactory,
    private readonly describe: { devicePath: string; strategy: broker.OpenStrategy },
    private readonly log: Logger,
  ) {}

  async handle(payload: Uint8Array, peer: PeerCredentials): Promise<HandledRequest> {
    let request: broker.Request;
    try {
      request = broker.Request.decode(payload);
    } catch (err) {
      this.log.warn({ event: 'bad_request', peer, reason: (err as Error).message }, 'undecodable request');
      return errorReply('', broker.ErrorCode.ERROR_CODE_BAD_REQUEST, `request is not a valid iommufd.broker.v1.Request: ${(err as Error).message}`);
    }
    const { requestId } = request;
    if (request.protocolVersion !== brokerProtocolVersion) {
      this.log.warn({ event: 'bad_request', peer, requestId, protocolVersion: request.protocolVersion }, 'unsupported protocol version');
      return errorReply(
        requestId,
        broker.ErrorCode.ERROR_CODE_UNSUPPORTED_VERSION,
        `protocol version ${request.protocolVersion} is not supported; this broker speaks ${brokerProtocolVersion}`,
      );
    }
    switch (request.body?.$case) {
      case 'openContext':
        return this.openContext(requestId, request.body.value.allocationId, peer);
      case 'status':
        return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'status', value: this.status() } }, fd: null };
      default:
        this.log.warn({ event: 'bad_request', peer, requestId }, 'request without a body');
        return errorReply(requestId, broker.ErrorCode.ERROR_CODE_BAD_REQUEST, 'request has no body (open_context or status)');
    }
  }

  private async openContext(requestId: string, allocationId: string, peer: PeerCredentials): Promise<HandledRequest> {
    const started = process.hrtime.bigint();
    const fields = { requestId, allocationId, peer };
    try {
      const fd = await this.factory.open();
      this.counters.contextsOpened++;
      this.log.info({ event: 'context_opened', ...fields, durationMs: elapsedMs(started) }, 'opened IOMMUFD context in RLIMIT mode');
      const value: broker.ContextOpened = {
        rlimitModeVerified: true,
        strategy: this.describe.strategy,
        devicePath: this.describe.devicePath,
      };
      return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'contextOpened', value } }, fd };
    } catch (err) {
      this.counters.openFailures++;
      const error = err instanceof ContextError ? err : new ContextError(broker.ErrorCode.ERROR_CODE_INTERNAL, String(err));
      this.log.error(
        {
          event: 'context_failed',
          ...fields,
          code: broker.errorCodeToJSON(error.code),
          errno: error.errnoName || undefined,
          syscall: error.syscall || undefined,
          durationMs: elapsedMs(started),
        },
        error.message,
      );
      return { reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'error', value: error.toReply() } }, fd: null };
    }
  }

  private status(): broker.BrokerStatus {
    return {
      version: brokerVersion,
      protocolVersion: brokerProtocolVersion,
      devicePath: this.describe.devicePath,
      devicePresent: existsSync(this.describe.devicePath),
      strategy: this.describe.strategy,
      contextsOpened: this.counters.contextsOpened,
      openFailures: this.counters.openFailures,
    };
  }
}

export function errorReply(requestId: string, code: broker.ErrorCode, message: string): HandledRequest {
  return {
    reply: { protocolVersion: brokerProtocolVersion, requestId, body: { $case: 'error', value: { code, message, errnoName: '', syscall: '' } } },
    fd: null,
  };
}

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}
