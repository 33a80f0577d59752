import { brokerStatus, type Logger } from '@iommufd-plugin/common';
import { broker } from '@iommufd-plugin/proto';
import type { DeviceList, Health } from './device-list';
import type { BridgeMetrics } from './metrics';

export type HealthPolicy = 'unhealthy' | 'passthrough';

export interface NodeHealthOptions {
  brokerSocket: string;
  policy: HealthPolicy;
  checkIntervalMs: number;
  brokerTimeoutMs: number;
}

/** What the last look at the broker found. */
export interface NodeState {
  brokerReachable: boolean;
  /** True or false once the broker has said so; null while unknown. */
  iommufdAvailable: boolean | null;
  /** Why the node cannot serve, for logs and probes; empty when it can. */
  reason: string;
  checkedAt: Date | null;
}

/** Self-test codes that mean "this node has no IOMMUFD", as opposed to a passing fault. */
const noIommufdCodes = new Set([broker.ErrorCode.ERROR_CODE_DEVICE_MISSING, broker.ErrorCode.ERROR_CODE_NOT_IOMMUFD]);

/**
 * Decides the devices' health from the fd-broker's status (reachable? device
 * present? last self-test passed?), on an interval and whenever a handoff
 * suggests something changed, and applies the health policy.
 */
export class NodeHealth {
  private current: NodeState = { brokerReachable: false, iommufdAvailable: null, reason: 'not checked yet', checkedAt: null };
  private noIommufd = false;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private inFlight: Promise<void> | null = null;

  constructor(
    private readonly options: NodeHealthOptions,
    private readonly devices: DeviceList,
    private readonly metrics: BridgeMetrics,
    private readonly log: Logger,
  ) {}

  get state(): NodeState {
    return this.current;
  }

  /** Under `passthrough`, Allocate gives no socket and no device while the node is known to lack IOMMUFD. */
  get allocateWithoutHandoff(): boolean {
    return this.options.policy === 'passthrough' && this.noIommufd;
  }

  /**
   * Checks once (so the first device list is already right), then on the
   * interval; every second at most while the broker does not answer, since
   * both containers of the pod start together.
   */
  async start(): Promise<void> {
    await this.checkNow();
    this.scheduleNext();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private scheduleNext(): void {
    if (this.stopped) return;
    const delay = this.current.brokerReachable ? this.options.checkIntervalMs : Math.min(this.options.checkIntervalMs, 1000);
    this.timer = setTimeout(() => void this.checkNow().then(() => this.scheduleNext()), delay);
  }

  /** Asks the broker now; concurrent callers share one request. */
  checkNow(): Promise<void> {
    this.inFlight ??= this.check().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  private async check(): Promise<void> {
    let next: NodeState;
    let noIommufd = false;
    try {
      const status = await brokerStatus(this.options.brokerSocket, this.options.brokerTimeoutMs);
      const selfTest = status.lastSelfTest;
      if (selfTest && !selfTest.passed) {
        next = { brokerReachable: true, iommufdAvailable: false, reason: `broker self-test failed: ${selfTest.reason}`, checkedAt: new Date() };
        noIommufd = noIommufdCodes.has(selfTest.code);
      } else if (!status.devicePresent) {
        next = { brokerReachable: true, iommufdAvailable: false, reason: `no IOMMUFD device at ${status.devicePath}`, checkedAt: new Date() };
        noIommufd = true;
      } else {
        next = { brokerReachable: true, iommufdAvailable: true, reason: '', checkedAt: new Date() };
      }
    } catch (err) {
      next = { brokerReachable: false, iommufdAvailable: null, reason: `fd-broker unreachable: ${(err as Error).message}`, checkedAt: new Date() };
    }
    this.apply(next, noIommufd);
  }

  private apply(next: NodeState, noIommufd: boolean): void {
    const changed = next.brokerReachable !== this.current.brokerReachable || next.iommufdAvailable !== this.current.iommufdAvailable || next.reason !== this.current.reason;
    this.current = next;
    this.noIommufd = noIommufd;
    this.metrics.setBrokerReachable(next.brokerReachable);

    const servable = next.brokerReachable && next.iommufdAvailable === true;
    const health: Health = this.options.policy === 'passthrough' || servable ? 'Healthy' : 'Unhealthy';
    const healthChanged = health !== this.devices.health;
    this.devices.setHealth(health);
    this.metrics.setDeviceHealth(health, this.devices.ids.length);

    if (changed || healthChanged) {
      const fields = { event: 'node_health', health, policy: this.options.policy, brokerReachable: next.brokerReachable, iommufdAvailable: next.iommufdAvailable, reason: next.reason || undefined };
      if (servable) this.log.info(fields, 'the node can serve IOMMUFD');
      else this.log.warn(fields, `the node cannot serve IOMMUFD: ${next.reason}`);
    }
  }
}
