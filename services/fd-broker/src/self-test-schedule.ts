import type { Logger } from '@iommufd-plugin/common';
import { DeviceWatch } from './device-watch';
import type { SelfTest } from './self-test';

/**
 * When the self-test runs: once at start, on every interval, and as soon as
 * the device node appears or disappears (so readiness and the bridge's device
 * health follow a module load or unload within a fraction of a second, not
 * an interval later).
 */
export class SelfTestSchedule {
  private readonly watch: DeviceWatch;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly selfTest: SelfTest,
    devicePath: string,
    private readonly intervalMs: number,
    log: Logger,
  ) {
    this.watch = new DeviceWatch(devicePath, () => void selfTest.run('device-change'), log);
  }

  start(): void {
    this.watch.ensureWatching();
    void this.selfTest.run('start');
    this.timer = setInterval(() => {
      this.watch.ensureWatching();
      void this.selfTest.run('interval');
    }, this.intervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watch.close();
  }
}
