/**
 * The node the soak runs on: a LocalNode (kernel stand-in, the real broker
 * and bridge as processes, the kubelet simulator in this process) and what a
 * soak needs on top of it: restarts of each of the three, every broker and
 * bridge process it started (their logs say whether an allocation was handed
 * off), and the news when one of them exits without being asked to.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';
import { LocalNode, resourceName } from '../support/local-node';
import type { LogLine, ServiceProcess } from '../support/service-process';

export type Service = 'broker' | 'bridge';
export type RestartKind = 'kubelet' | 'broker' | 'bridge';
export type StopSignal = 'SIGTERM' | 'SIGKILL';

/** Enough devices that the pods in flight never run out of them. */
export const deviceCount = 48;
/** Short, so that the sockets of deleted pods are gone soon after the run. */
export const reclaimIntervalMs = 500;
/** The production default (LocalNode uses 1 s): a broker restart must stay invisible to launchers. */
const brokerRetryMs = 10_000;
/** How long a service has to serve again after a restart before the soak calls it a failure. */
const recoveryTimeoutMs = 15_000;
const admissionRetryPauseMs = 200;

export class SoakRig {
  /** One line per broker or bridge process that exited without being stopped. */
  readonly unexpectedExits: string[] = [];
  private readonly generations: Record<Service, ServiceProcess[]> = { broker: [], bridge: [] };
  private readonly stopped = new Set<ServiceProcess>();
  /** When a bridge was killed with SIGKILL (Date.now()). */
  private readonly bridgeKills: number[] = [];

  private constructor(readonly node: LocalNode) {
    this.adopt('broker', node.broker);
    this.adopt('bridge', node.bridge);
  }

  static async start(): Promise<SoakRig> {
    const node = await LocalNode.start({
      deviceCount,
      bridgeArgs: ['--broker-retry-ms', String(brokerRetryMs), '--reclaim-interval-ms', String(reclaimIntervalMs)],
    });
    return new SoakRig(node);
  }

  /** The process serving now. */
  current(service: Service): ServiceProcess {
    return service === 'broker' ? this.node.broker : this.node.bridge;
  }

  /** 1 for the first process of a service, +1 per restart. */
  generation(service: Service): number {
    return this.generations[service].length;
  }

  /** Stops one of the three and starts it again; resolves once the node serves every device again. */
  async restart(kind: RestartKind, signal: StopSignal, downtimeMs: number): Promise<void> {
    const registrations = this.registrations();
    if (kind === 'kubelet') {
      // A starting kubelet wipes the plugin sockets and serves a new kubelet.sock; the bridge must register again.
      await this.node.simulator.restart();
    } else {
      await this.stopService(kind, signal);
      await sleep(downtimeMs);
      if (kind === 'broker') {
        this.adopt('broker', this.node.startBroker());
        await this.node.broker.waitForEvent('listening', recoveryTimeoutMs);
      } else {
        this.adopt('bridge', this.node.startBridge());
      }
    }
    if (kind !== 'broker') {
      await this.node.simulator.waitFor((sim) => (sim.plugin(resourceName)?.registrations ?? 0) > registrations, recoveryTimeoutMs);
    }
    await this.node.waitUntilServing(deviceCount, recoveryTimeoutMs);
  }

  /**
   * Admits a pod, retrying while the kubelet refuses it: during a restart the
   * plugin is unregistered or its devices unhealthy for a moment, and a real
   * controller would create the pod again. Returns the pod and the refusals.
   */
  async admit(name: string, timeoutMs = 20_000): Promise<{ pod: AdmittedPod; refusals: number }> {
    const deadline = Date.now() + timeoutMs;
    let refusals = 0;
    for (;;) {
      try {
        return { pod: await this.node.admit(name), refusals };
      } catch (err) {
        refusals++;
        if (Date.now() >= deadline) throw new Error(`the kubelet refused pod ${name} for ${timeoutMs} ms (${refusals} times); last: ${(err as Error).message}`);
        await sleep(admissionRetryPauseMs);
      }
    }
  }

  deletePod(pod: AdmittedPod): void {
    this.node.simulator.deletePod(pod.namespace, pod.name);
  }

  /** The allocation id the bridge logged for this handoff socket, from any bridge process; undefined if none did within timeoutMs. */
  async allocationIdOf(hostPath: string, timeoutMs = 5000): Promise<string | undefined> {
    let id: string | undefined;
    await this.pollBridgeLogs(() => {
      id = this.findBridgeLog((l) => l.event === 'allocate' && l.hostPath === hostPath)?.allocationId as string | undefined;
      return id !== undefined;
    }, timeoutMs);
    return id;
  }

  /** Whether some bridge process logged a successful handoff for this allocation within timeoutMs. */
  async handedOff(allocationId: string, timeoutMs: number): Promise<boolean> {
    return this.pollBridgeLogs(() => this.handoffLine(allocationId) !== undefined, timeoutMs);
  }

  /** The bridge's log line of the successful handoff of this allocation, if one was logged. */
  handoffLine(allocationId: string): LogLine | undefined {
    return this.findBridgeLog((l) => l.event === 'handoff' && l.result === 'ok' && l.allocationId === allocationId);
  }

  async stop(): Promise<void> {
    this.stopped.add(this.node.broker);
    this.stopped.add(this.node.bridge);
    await this.node.stop();
  }

  /**
   * Whether a bridge was SIGKILLed since `sinceMs` (Date.now()). A bridge
   * killed between sending an fd and writing its log line leaves no record
   * of that handoff: nothing about it can be checked.
   */
  bridgeKilledSince(sinceMs: number): boolean {
    return this.bridgeKills.some((at) => at >= sinceMs);
  }

  private async stopService(service: Service, signal: StopSignal): Promise<void> {
    const process = this.current(service);
    this.stopped.add(process);
    if (service === 'bridge' && signal === 'SIGKILL') this.bridgeKills.push(Date.now());
    const exit = await process.stop(signal);
    // SIGTERM is the orderly stop: both services promise to exit 0 (docs/OPERATIONS.md, "Shutdown").
    if (signal === 'SIGTERM' && exit.code !== 0) {
      throw new Error(`the ${service} exited with code ${exit.code} (signal ${exit.signal}) on SIGTERM; stderr: ${process.stderr.slice(-1000)}`);
    }
  }

  private adopt(service: Service, process: ServiceProcess): void {
    this.generations[service].push(process);
    const generation = this.generations[service].length;
    void process.exit().then(({ code, signal }) => {
      if (this.stopped.has(process)) return;
      this.unexpectedExits.push(
        `the ${service} (pid ${process.pid}, generation ${generation}) exited by itself: code ${code}, signal ${signal}; stderr: ${process.stderr.slice(-1000)}`,
      );
    });
  }

  private registrations(): number {
    return this.node.simulator.plugin(resourceName)?.registrations ?? 0;
  }

  private findBridgeLog(match: (line: LogLine) => boolean): LogLine | undefined {
    for (const bridge of this.generations.bridge) {
      const found = bridge.logs.find(match);
      if (found) return found;
    }
    return undefined;
  }

  /** Logs come over pipes and lag what peers see: look again every 50 ms. */
  private async pollBridgeLogs(found: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (found()) return true;
      if (Date.now() >= deadline) return false;
      await sleep(50);
    }
  }
}
