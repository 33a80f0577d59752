/**
 * The kubelet simulator as a process of its own (for docker-compose and the
 * local demo). Prints one JSON line per event on stdout.
 *
 *   node test/dist/kubelet-simulator/main.js \
 *     [--device-plugins-dir /var/lib/kubelet/device-plugins] \
 *     [--pod-resources-socket /var/lib/kubelet/pod-resources/kubelet.sock]
 *
 * SIGTERM or SIGINT: stop and exit. SIGHUP: restart as a kubelet does
 * (delete every socket in the directory, serve a new kubelet.sock).
 */
import { parseArgs } from 'node:util';
import { KubeletSimulator } from './kubelet-simulator';

function line(event: string, fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'device-plugins-dir': { type: 'string', default: '/var/lib/kubelet/device-plugins' },
      'pod-resources-socket': { type: 'string', default: '/var/lib/kubelet/pod-resources/kubelet.sock' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write('usage: main.js [--device-plugins-dir DIR] [--pod-resources-socket PATH]\n');
    return;
  }
  const sim = new KubeletSimulator({
    devicePluginsDir: values['device-plugins-dir']!,
    podResourcesSocket: values['pod-resources-socket']!,
    log: line,
  });
  await sim.start();

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    line('signal', { signal });
    process.off('SIGHUP', onHangup);
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

main().catch((err: Error) => {
  line('error', { message: err.message });
  process.exit(1);
});
