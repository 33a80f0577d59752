import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { deviceplugin } from '@iommufd-plugin/proto';
import { type AdmittedPod, KubeletSimulator } from '../kubelet-simulator/kubelet-simulator';
import { fakeKernel, type FakeKernel } from './fake-kernel';
import { launcherUid } from './fd-check';
import { runLauncher, type LauncherOptions, type LauncherReport } from './launcher';
import { defaultStrategy } from './broker-process';
import { fdBrokerBin, kubeletBridgeBin } from './paths';
import { scratchDir } from './scratch-dir';
import { ServiceProcess } from './service-process';

export const resourceName = 'devices.kubevirt.io/iommufd';

export interface LocalNodeOptions {
  deviceCount?: number;
  brokerArgs?: string[];
  bridgeArgs?: string[];
  /** Log lines of the simulator, for the demo. */
  onSimulatorEvent?: (event: string, fields: Record<string, unknown>) => void;
}

/**
 * One pretend node in a temporary directory: the kernel stand-in, the real
 * fd-broker and kubelet-bridge as their own processes, and the kubelet
 * simulator in this process, wired through the same paths the chart uses.
 * As root the launcher runs as an unprivileged uid, the broker uses the
 * temporary-node strategy; as a normal user everything runs as that user
 * and the broker opens the device directly (mknod needs CAP_MKNOD).
 */
export class LocalNode {
  readonly kubeletDir: string;
  readonly podResourcesSocket: string;
  readonly brokerSocket: string;
  readonly socketDir: string;
  readonly launcherUid = launcherUid;
  broker!: ServiceProcess;
  bridge!: ServiceProcess;
  readonly simulator: KubeletSimulator;
  readonly kernel: FakeKernel;
  private readonly scratch = scratchDir('iommufd-node');
  private podCounter = 0;

  private constructor(private readonly options: LocalNodeOptions) {
    this.kernel = fakeKernel(this.scratch.path);
    this.kubeletDir = join(this.scratch.path, 'device-plugins');
    this.podResourcesSocket = join(this.scratch.path, 'pod-resources', 'kubelet.sock');
    this.brokerSocket = join(this.scratch.path, 'broker', 'broker.sock');
    this.socketDir = join(this.scratch.path, 'fd-sockets');
    for (const dir of [this.kubeletDir, join(this.scratch.path, 'pod-resources'), this.socketDir]) mkdirSync(dir, { recursive: true });
    this.simulator = new KubeletSimulator({
      devicePluginsDir: this.kubeletDir,
      podResourcesSocket: this.podResourcesSocket,
      log: options.onSimulatorEvent,
    });
  }

  get dir(): string {
    return this.scratch.path;
  }

  static async start(options: LocalNodeOptions = {}): Promise<LocalNode> {
    const node = new LocalNode(options);
    await node.simulator.start();
    node.startBroker();
    await node.broker.waitForEvent('listening');
    node.startBridge();
    await node.waitUntilServing(options.deviceCount ?? 110);
    return node;
  }

  startBroker(): ServiceProcess {
    const ownUid = process.geteuid?.() ?? 0;
    this.broker = new ServiceProcess(
      fdBrokerBin,
      [
        '--socket', this.brokerSocket,
        '--device', this.kernel.devicePath,
        '--node-dir', this.socketDir,
        '--open-strategy', defaultStrategy,
        '--allowed-uids', String(ownUid),
        '--http-port', '0',
        ...(this.options.brokerArgs ?? []),
      ],
      this.kernel.env({ privilegedUids: [ownUid] }),
    );
    return this.broker;
  }

  startBridge(): ServiceProcess {
    this.bridge = new ServiceProcess(
      kubeletBridgeBin,
      [
        '--kubelet-dir', this.kubeletDir,
        '--broker-socket', this.brokerSocket,
        '--socket-dir', this.socketDir,
        '--device-path', this.kernel.devicePath,
        '--device-count', String(this.options.deviceCount ?? 110),
        '--pod-resources-socket', this.podResourcesSocket,
        '--http-port', '0',
        '--broker-check-ms', '300',
        '--broker-retry-ms', '1000',
        ...(this.options.bridgeArgs ?? []),
      ],
      // The bridge never touches the device; it runs without the stand-in, as in production.
      process.env,
    );
    return this.bridge;
  }

  /** Resolves when the simulator is connected to the bridge and sees `count` healthy devices. */
  async waitUntilServing(count: number, timeoutMs = 10_000): Promise<void> {
    await this.simulator.waitFor(
      (sim) => sim.plugin(resourceName)?.connected === true && sim.healthyDevices(resourceName).length === count,
      timeoutMs,
    );
  }

  /** Admits a pod with one container asking for one device, as the kubelet would. */
  admit(name = `pod-${++this.podCounter}`): Promise<AdmittedPod> {
    return this.simulator.admitPod({ name, namespace: 'default', resourceName, containers: [{ name: 'compute', request: 1 }] });
  }

  /** The host path of the handoff socket the kubelet would mount into the container. */
  static handoffPath(response: deviceplugin.ContainerAllocateResponse): string {
    const mount = response.mounts.find((m) => m.containerPath === '/var/run/kubevirt/iommufd.sock');
    if (!mount) throw new Error(`no handoff socket mount in ${JSON.stringify(response)}`);
    return mount.hostPath;
  }

  /** Runs the virt-launcher stand-in against a pod's handoff socket, unprivileged where possible, on the kernel stand-in. */
  launch(pod: AdmittedPod, options: LauncherOptions = {}): Promise<LauncherReport> {
    const response = pod.containers[0]?.response;
    if (!response) throw new Error(`pod ${pod.name} has no container`);
    return runLauncher(this.kernel.launcher, LocalNode.handoffPath(response), {
      uid: this.launcherUid,
      env: this.kernel.env(),
      ...options,
    });
  }

  async stop(): Promise<void> {
    await Promise.all([this.bridge?.stop(), this.broker?.stop()]);
    await this.simulator.stop();
    this.scratch.cleanup();
  }
}
