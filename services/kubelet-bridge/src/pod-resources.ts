import { credentials, Metadata } from '@grpc/grpc-js';
import { podresources } from '@iommufd-plugin/proto';

export interface PodRef {
  namespace: string;
  name: string;
  container: string;
}

/**
 * Reads the kubelet's pod resources API (v1 List): which pod holds which of
 * our devices. The kubelet knows only after Allocate, so callers treat
 * "unknown" as a normal answer.
 */
export class PodResources {
  private readonly client: podresources.PodResourcesListerClient;
  /** One List serves every lookup within this window: 110 launchers at once must not mean 110 calls to the kubelet. */
  private recent: { at: number; response: Promise<podresources.ListPodResourcesResponse | undefined> } | null = null;
  private static readonly reuseMs = 250;

  constructor(
    socketPath: string,
    private readonly resourceName: string,
    private readonly timeoutMs = 1000,
  ) {
    this.client = new podresources.PodResourcesListerClient(`unix:${socketPath}`, credentials.createInsecure());
  }

  /** The pod and container holding any of `deviceIds`, or undefined if none (or the API does not answer in time). */
  async podHolding(deviceIds: readonly string[]): Promise<PodRef | undefined> {
    const wanted = new Set(deviceIds);
    const response = await this.listShared();
    for (const pod of response?.podResources ?? []) {
      for (const container of pod.containers) {
        const holds = container.devices.some((d) => d.resourceName === this.resourceName && d.deviceIds.some((id) => wanted.has(id)));
        if (holds) return { namespace: pod.namespace, name: pod.name, container: container.name };
      }
    }
    return undefined;
  }

  /** Every device id of our resource that some pod holds, or undefined if the API did not answer. */
  async assignedDeviceIds(): Promise<Set<string> | undefined> {
    const response = await this.list().catch(() => undefined);
    if (!response) return undefined;
    const assigned = new Set<string>();
    for (const pod of response.podResources) {
      for (const container of pod.containers) {
        for (const devices of container.devices) if (devices.resourceName === this.resourceName) for (const id of devices.deviceIds) assigned.add(id);
      }
    }
    return assigned;
  }

  close(): void {
    this.client.close();
  }

  private listShared(): Promise<podresources.ListPodResourcesResponse | undefined> {
    if (!this.recent || Date.now() - this.recent.at > PodResources.reuseMs) {
      this.recent = { at: Date.now(), response: this.list().catch(() => undefined) };
    }
    return this.recent.response;
  }

  private list(): Promise<podresources.ListPodResourcesResponse> {
    return new Promise((resolve, reject) =>
      this.client.list({}, new Metadata(), { deadline: Date.now() + this.timeoutMs }, (err, response) => (err ? reject(err) : resolve(response))),
    );
  }
}
