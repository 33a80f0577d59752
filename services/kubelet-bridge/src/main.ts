import { join } from 'node:path';
import { ConfigError, createLogger, helpText, type Logger, parseCommandLine, startOpsServer } from '@iommufd-plugin/common';
import { Allocations } from './allocations';
import { BrokerGateway } from './broker-gateway';
import { type BridgeConfig, bridgeOptions } from './config';
import { DeviceList } from './device-list';
import { devicePluginService, pluginOptions } from './device-plugin-service';
import { KubeletSession } from './kubelet-session';
import { BridgeMetrics } from './metrics';
import { NodeHealth } from './node-health';
import { PluginServer } from './plugin-server';
import { PodResources } from './pod-resources';
import { Reclaimer } from './reclaimer';
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
  const gateway = new BrokerGateway(
    {
      socketPath: config.brokerSocket,
      requestTimeoutMs: config.brokerTimeoutMs,
      retryMs: config.brokerRetryMs,
      maxConcurrent: config.maxConcurrentBrokerRequests,
      onUnreachable: () => void health.checkNow(),
    },
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
        maxPending: config.maxPendingAllocations,
        maxConnections: config.maxHandoffConnections,
        fetchContext: (allocation) => gateway.openContext(allocation.id),
        hooks: {
          observe: (result, seconds) => metrics.handoff(result, seconds),
          podHolding: (deviceIds) => podResources.podHolding(deviceIds),
          brokerFailed: () => void health.checkNow(),
        },
        onPendingChange: (pending) => metrics.pendingSockets.set(pending),
      },
      log,
    );
    await allocations.restore();
  } catch (err) {
    log.fatal({ event: 'start_failed', reason: (err as Error).message }, 'could not prepare the socket directory');
    process.exitCode = 1;
    return;
  }
  const reclaimer = new Reclaimer(allocations, podResources, { intervalMs: config.reclaimIntervalMs, maxAgeMs: config.reclaimMaxAgeMs }, log);

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

  process.once('SIGTERM', (signal) => void shutdown(signal));
  process.once('SIGINT', (signal) => void shutdown(signal));
  async function shutdown(signal: NodeJS.Signals): Promise<void> {
    log.info({ event: 'stopping', signal }, 'kubelet-bridge stopping: refusing new launchers, finishing handoffs in progress');
    // The state is saved on every change, so even this forced exit loses nothing.
    setTimeout(() => process.exit(0), config.shutdownTimeoutMs + 2000).unref();
    health.stop();
    reclaimer.stop();
    await allocations.shutdown(config.shutdownTimeoutMs);
    await Promise.all([session.stop(), http.close()]);
    podResources.close();
    log.info({ event: 'stopped', pending: allocations.pending }, 'kubelet-bridge stopped; pending handoff sockets are kept for the next start');
    process.exit(0);
  }

  // Know the node's health before the kubelet first lists our devices.
  await health.start();
  await session.start();
  reclaimer.start();
}
