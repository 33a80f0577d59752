import { deviceplugin } from '@iommufd-plugin/proto';

export type Health = 'Healthy' | 'Unhealthy';

/**
 * The devices we advertise. They are interchangeable slots, one per pod that
 * may hold an IOMMUFD context, so they share one health: the node's.
 * Subscribers (ListAndWatch streams) hear every change.
 */
export class DeviceList {
  readonly ids: readonly string[];
  private readonly index: ReadonlySet<string>;
  private currentHealth: Health = 'Healthy';
  private readonly listeners = new Set<(devices: deviceplugin.Device[]) => void>();

  constructor(count: number) {
    this.ids = Array.from({ length: count }, (_, i) => `iommufd-${i}`);
    this.index = new Set(this.ids);
  }

  get health(): Health {
    return this.currentHealth;
  }

  has(id: string): boolean {
    return this.index.has(id);
  }

  devices(): deviceplugin.Device[] {
    return this.ids.map((ID) => ({ ID, health: this.currentHealth, topology: undefined }));
  }

  setHealth(health: Health): void {
    if (health === this.currentHealth) return;
    this.currentHealth = health;
    const devices = this.devices();
    for (const listener of this.listeners) listener(devices);
  }

  /** Calls `listener` with the list now and on every change, until the returned function is called. */
  subscribe(listener: (devices: deviceplugin.Device[]) => void): () => void {
    this.listeners.add(listener);
    listener(this.devices());
    return () => this.listeners.delete(listener);
  }
}
