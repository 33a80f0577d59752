/**
 * The kubelet simulator as a process of its own (for docker-compose and the
 * local demo). Prints one JSON line per event on stdout.
 *
 *   node test/dist/kubelet-simulator/main.js \
 *     [--device-plugins-dir /var/lib/kubelet/device-plugins] \
 *     [--pod-resources-socket /var/lib/kubelet/pod-resources/kubelet.sock] \
 *     [--admit-pods N [--admit-interval-ms 10000] [--resource-name devices.kubevirt.io/iommufd]]
 *
 * With --admit-pods it also plays the scheduler: every interval, while the
 * resource has a healthy device, it admits the next of N pods (vm-1, vm-2,
 * ...), each with one container asking for one device; a refused admission
 * is logged and tried again at the next interval.
 *
 * SIGTERM or SIGINT: stop and exit. SIGHUP: restart as a kubelet does
 * (delete every socket in the directory, serve a new kubelet.sock).
 */
import { parseArgs } from 'node:util';
import { KubeletSimulator } from './kubelet-simulator';

const usage =
  'usage: main.js [--device-plugins-dir DIR] [--pod-resources-socket PATH]\n' +
  '               [--admit-pods N [--admit-interval-ms MS] [--resource-name NAME]]\n';

function line(event: string, fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'device-plugins-dir': { type: 'string', default: '/var/lib/kubelet/device-plugins' },
      'pod-resources-socket': { type: 'string', default: '/var/lib/kubelet/pod-resources/kubelet.sock' },
      'admit-pods': { type: 'string', default: '0' },
      'admit-interval-ms': { type: 'string', default: '10000' },
      'resource-name': { type: 'string', default: 'devices.kubevirt.io/iommufd' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(usage);
    return;
  }
  const podCount = Number(values['admit-pods']);
  const intervalMs = Number(values['admit-interval-ms']);
  if (!Number.isInteger(podCount) || podCount < 0 || !Number.isInteger(intervalMs) || intervalMs < 1) {
    process.stderr.write(`--admit-pods must be a whole number ≥ 0 and --admit-interval-ms one ≥ 1\n${usage}`);
    process.exitCode = 2;
    return;
  }
  const sim = new KubeletSimulator({
    devicePluginsDir: values['device-plugins-dir']!,
    podResourcesSocket: values['pod-resources-socket']!,
    log: line,
  });
  await sim.start();
  const admitting = podCount > 0 ? admitPods(sim, values['resource-name']!, podCount, intervalMs) : undefined;

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    line('signal', { signal });
    process.off('SIGHUP', onHangup);
    if (admitting) clearInterval(admitting);
    sim.stop().then(
      () => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        // Leave by draining the event loop: if a handle were left open, the timer says so.
        setTimeout(() => {
          line('exit_forced', { reason: 'handles still open 5 s after stop' });
          process.exit(1);
        }, 5000).unref();
      },
      (err: Error) => {
        line('error', { message: err.message });
        process.exit(1);
      },
    );
  };
  const onHangup = (): void => {
    line('signal', { signal: 'SIGHUP' });
    sim.restart().catch((err: Error) => line('error', { message: err.message }));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', onHangup);
}

/** The pretend scheduler: one pod per interval, while the resource has a healthy device, until `count` are admitted. */
function admitPods(sim: KubeletSimulator, resourceName: string, count: number, intervalMs: number): NodeJS.Timeout {
  let admitted = 0;
  let busy = false;
  const timer = setInterval(() => {
    if (busy || admitted >= count || sim.healthyDevices(resourceName).length === 0) return;
    busy = true;
    const name = `vm-${admitted + 1}`;
    sim
      .admitPod({ name, namespace: 'default', resourceName, containers: [{ name: 'compute', request: 1 }] })
      .then(
        () => {
          admitted++;
          if (admitted >= count) clearInterval(timer);
        },
        (err: Error) => line('admission_failed', { pod: name, message: err.message }),
      )
      .finally(() => (busy = false));
  }, intervalMs);
  return timer;
}

main().catch((err: Error) => {
  line('error', { message: err.message });
  process.exit(1);
});
