import { setTimeout as sleep } from 'node:timers/promises';
import { BrokerReplyError, type Logger, openContext } from '@iommufd-plugin/common';

export interface BrokerGatewayOptions {
  socketPath: string;
  /** One request, connect to reply. */
  requestTimeoutMs: number;
  /** How long to keep trying while the broker does not answer (it may be restarting). */
  retryMs: number;
  /** Requests in flight at once; more wait their turn. */
  maxConcurrent: number;
  /** Told when the broker does not answer, so health can be re-checked at once. */
  onUnreachable: () => void;
}

/**
 * The bridge's way to the fd-broker: bounded concurrency, and retries while
 * the broker cannot be reached, so a short broker restart is invisible to
 * launchers. A typed reply from the broker (e.g. no device) is final and is
 * not retried.
 */
export class BrokerGateway {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    private readonly options: BrokerGatewayOptions,
    private readonly log: Logger,
  ) {}

  async openContext(allocationId: string): Promise<number> {
    const deadline = Date.now() + this.options.retryMs;
    let pauseMs = 100;
    for (let attempt = 1; ; attempt++) {
      try {
        const { fd } = await this.limited(() => openContext(this.options.socketPath, { allocationId, timeoutMs: this.options.requestTimeoutMs }));
        return fd;
      } catch (err) {
        if (err instanceof BrokerReplyError) throw err;
        if (attempt === 1) this.options.onUnreachable();
        if (Date.now() + pauseMs > deadline) throw err;
        this.log.debug({ event: 'broker_retry', allocationId, attempt, reason: (err as Error).message, retryInMs: pauseMs }, 'broker unreachable; retrying');
        await sleep(pauseMs);
        pauseMs = Math.min(pauseMs * 2, 1000);
      }
    }
  }

  private async limited<T>(task: () => Promise<T>): Promise<T> {
    while (this.active >= this.options.maxConcurrent) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}
