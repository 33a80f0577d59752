import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Health } from './device-list';

export type HandoffResult = 'ok' | 'broker_failed' | 'launcher_gone';
/** Also counted: connections refused outright (too many at once, or shutting down). */
type ConnectionResult = HandoffResult | 'refused';

/** The bridge's Prometheus metrics; label values are fixed sets. */
export class BridgeMetrics {
  readonly registry = new Registry();

  private readonly handoffs = new Counter({
    name: 'iommufd_bridge_handoffs_total',
    help: 'Launcher connections to handoff sockets, by outcome: ok (fd sent), broker_failed (no context from the broker), launcher_gone (it left first), refused (too many at once, or shutting down).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  private readonly handoffSeconds = new Histogram({
    name: 'iommufd_bridge_handoff_duration_seconds',
    help: 'From a launcher connecting to its fd being sent, for successful handoffs.',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  private readonly allocations = new Counter({
    name: 'iommufd_bridge_allocations_total',
    help: 'Container allocations answered: handoff (a socket was made), passthrough (no IOMMUFD on the node, empty answer), error.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly pendingSockets = new Gauge({
    name: 'iommufd_bridge_pending_handoff_sockets',
    help: 'Handoff sockets given out and not yet retired.',
    registers: [this.registry],
  });

  private readonly registrations = new Counter({
    name: 'iommufd_bridge_registrations_total',
    help: 'Successful registrations with the kubelet.',
    registers: [this.registry],
  });

  private readonly kubeletRestarts = new Counter({
    name: 'iommufd_bridge_kubelet_restarts_total',
    help: 'Kubelet restarts noticed (our socket deleted or kubelet.sock replaced).',
    registers: [this.registry],
  });

  private readonly registered = new Gauge({
    name: 'iommufd_bridge_registered',
    help: '1 while registered with the kubelet.',
    registers: [this.registry],
  });

  private readonly brokerReachable = new Gauge({
    name: 'iommufd_bridge_broker_reachable',
    help: '1 when the last status request to the fd-broker was answered.',
    registers: [this.registry],
  });

  private readonly devices = new Gauge({
    name: 'iommufd_bridge_devices',
    help: 'Devices advertised to the kubelet, by health.',
    labelNames: ['health'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    for (const result of ['ok', 'broker_failed', 'launcher_gone', 'refused'] satisfies ConnectionResult[]) this.handoffs.inc({ result }, 0);
    for (const result of ['handoff', 'passthrough', 'error']) this.allocations.inc({ result }, 0);
  }

  handoff(result: ConnectionResult, seconds: number): void {
    this.handoffs.inc({ result });
    if (result === 'ok') this.handoffSeconds.observe(seconds);
  }

  allocation(result: 'handoff' | 'passthrough' | 'error'): void {
    this.allocations.inc({ result });
  }

  registration(): void {
    this.registrations.inc();
  }

  kubeletRestart(): void {
    this.kubeletRestarts.inc();
  }

  setRegistered(registered: boolean): void {
    this.registered.set(registered ? 1 : 0);
  }

  setBrokerReachable(reachable: boolean): void {
    this.brokerReachable.set(reachable ? 1 : 0);
  }

  setDeviceHealth(health: Health, count: number): void {
    this.devices.set({ health: 'Healthy' }, health === 'Healthy' ? count : 0);
    this.devices.set({ health: 'Unhealthy' }, health === 'Unhealthy' ? count : 0);
  }
}
