import { join } from 'node:path';
import { ConfigError, createLogger, helpText, type Logger, openContext, parseCommandLine, startOpsServer } from '@iommufd-plugin/common';
import { Allocations } from './allocations';
import { type BridgeConfig, bridgeOptions } from './config';
import { DeviceList } from './device-list';
import { devicePluginService, pluginOptions } from './device-plugin-service';
import { KubeletSession } from './kubelet-session';
import { BridgeMetrics } from './metrics';
import { NodeHealth } from './node-health';
import { PluginServer } from './plugin-server';
import { PodResources } from './pod-resources';
import { bridgeVersion } from './version';

const usage = 'kubelet-bridge [options]';
const summary =
  'The unprivileged half of the IOMMUFD device plugin: advertises the IOMMUFD resource to the kubelet, gives each ' +
  'allocation a handoff socket, and passes each launcher that connects a fresh RLIMIT-mode IOMMUFD fd from the fd-broker.';

export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  let config: BridgeConfig;
  try {
    const outcome = parseCommandLine(bridgeOptions, argv, process.env);
    if (outcome.kind === 'help') {
      process.stdout.write(`${helpText(usage, summary, bridgeOptions)}\n`);
      return;
    }
    if (outcome.kind === 'version') {
      process.stdout.write(`${bridgeVersion}\n`);
      return;
    }
    if (outcome.positionals.length > 0) throw new ConfigError(`unexpected argument: ${outcome.positionals[0]}`);
    config = outcome.options;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`kubelet-bridge: ${err.message}\n`);
    process.exitCode = 2;
    return;
  }
  await run(config, createLogger('kubelet-bridge', config.logLevel));
}

async function run(config: BridgeConfig, log: Logger): Promise<void> {
  log.info({ event: 'starting', version: bridgeVersion, config }, 'kubelet-bridge starting');
  const metrics = new BridgeMetrics();
  const devices = new DeviceList(config.deviceCount);
  const podResources = new PodResources(config.podResourcesSocket, config.resourceName);
  const health = new NodeHealth(
    { brokerSocket: config.brokerSocket, policy: config.healthPolicy, checkIntervalMs: config.brokerCheckMs, brokerTimeoutMs: config.brokerTimeoutMs },
    devices,
    metrics,
    log,
  );

  let allocations: Allocations;
  try {
    allocations = new Allocations(
      {
        socketDir: config.socketDir,
        mode: config.handoffMode,
        socketMode: config.socketMode,
        selinuxLabel: config.selinuxLabel,
        ackTimeoutMs: config.ackTimeoutMs,
        fetchContext: async (allocation) => {
          const { fd } = await openContext(config.brokerSocket, { allocationId: allocation.id, timeoutMs: config.brokerTimeoutMs });
          return fd;
        },
        hooks: {
          observe: (result, seconds) => metrics.handoff(result, seconds),
          podHolding: (deviceIds) => podResources.podHolding(deviceIds),
          brokerFailed: () => void health.checkNow(),
        },
        onPendingChange: (pending) => metrics.pendingSockets.set(pending),
      },
      log,
    );
  } catch (err) {
    log.fatal({ event: 'start_failed', reason: (err as Error).message }, 'could not prepare the socket directory');
    process.exitCode = 1;
    return;
  }

  const service = devicePluginService(
    devices,
    allocations,
    {
      hostSocketDir: config.hostSocketDir || config.socketDir,
      containerSocketPath: config.containerSocketPath,
      exposeDevice: config.exposeDevice,
      devicePath: config.devicePath,
    },
    { withoutHandoff: () => health.allocateWithoutHandoff, count: (result) => metrics.allocation(result) },
    log,
  );
  const server = new PluginServer(join(config.kubeletDir, config.endpoint), service);
  const session = new KubeletSession(
    server,
    {
      kubeletDir: config.kubeletDir,
      registerRequest: { version: 'v1beta1', endpoint: config.endpoint, resourceName: config.resourceName, options: pluginOptions },
      registerRetryMaxMs: config.registerRetryMaxMs,
      checkIntervalMs: config.kubeletCheckMs,
    },
    {
      registered: (registered) => {
        metrics.setRegistered(registered);
        if (registered) metrics.registration();
      },
      kubeletRestarted: () => metrics.kubeletRestart(),
    },
    log,
  );

  let http: Awaited<ReturnType<typeof startOpsServer>>;
  try {
    http = await startOpsServer({
      host: config.httpHost,
      port: config.httpPort,
      log,
      registry: metrics.registry,
      liveness: () => ({ ok: true }),
      readiness: () => {
        const { brokerReachable, reason } = health.state;
        if (!session.isRegistered) return { ok: false, reason: 'not registered with the kubelet' };
        if (!brokerReachable) return { ok: false, reason };
        return { ok: true, health: devices.health, reason: reason || undefined };
      },
    });
  } catch (err) {
    log.fatal({ event: 'start_failed', reason: (err as Error).message }, 'could not start the HTTP endpoints');
    process.exitCode = 1;
    return;
  }

  const stop = (signal: NodeJS.Signals) => {
    log.info({ event: 'stopping', signal }, 'kubelet-bridge stopping');
    setTimeout(() => process.exit(0), 5000).unref();
    health.stop();
    podResources.close();
    void Promise.all([session.stop(), allocations.closeAll(), http.close()]).then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  // Know the node's health before the kubelet first lists our devices.
  await health.start();
  await session.start();
}
