import type { Logger } from '@iommufd-plugin/common';
import type { Allocations } from './allocations';
import type { PodResources } from './pod-resources';

export interface ReclaimerOptions {
  intervalMs: number;
  /** Used only while the pod resources API does not answer: older allocations are removed. */
  maxAgeMs: number;
}

/**
 * Removes handoff sockets whose pod is gone: on every interval, an
 * allocation none of whose devices the kubelet still assigns (pod resources
 * List) is retired. An allocation younger than one interval is left alone,
 * since the kubelet records the assignment only after Allocate returns.
 * While the API does not answer, the maximum age applies instead.
 */
export class Reclaimer {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly allocations: Allocations,
    private readonly podResources: PodResources,
    private readonly options: ReclaimerOptions,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.runOnce(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** One pass; concurrent callers share it. */
  runOnce(): Promise<void> {
    this.running ??= this.pass().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async pass(): Promise<void> {
    const now = Date.now();
    const candidates = this.allocations.list().filter((s) => now - s.allocation.createdAt.getTime() >= this.options.intervalMs);
    if (candidates.length === 0) return;
    const assigned = await this.podResources.assignedDeviceIds();
    if (assigned === undefined) {
      this.log.warn({ event: 'reclaim_degraded', maxAgeMs: this.options.maxAgeMs }, 'the pod resources API did not answer; only the maximum age applies');
    }
    for (const socket of candidates) {
      const { deviceIds, createdAt } = socket.allocation;
      if (assigned === undefined) {
        if (now - createdAt.getTime() >= this.options.maxAgeMs) await this.allocations.retire(socket, 'max_age');
      } else if (!deviceIds.some((id) => assigned.has(id))) {
        await this.allocations.retire(socket, 'pod_gone');
      }
    }
  }
}
