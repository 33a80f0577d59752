import { existsSync } from 'node:fs';
import { createLogger, startOpsServer } from '@iommufd-plugin/common';
import { broker } from '@iommufd-plugin/proto';
import { BrokerActivity } from './broker-activity';
import { restrictCapabilities } from './capabilities';
import { type BrokerConfig, openStrategyOf } from './config';
import { ContextFactory } from './context-factory';
import { ControlSocket } from './control-socket';
import { BrokerMetrics } from './metrics';
import { readiness } from './readiness';
import { RequestHandler } from './request-handler';
import { SelfTest } from './self-test';
import { SelfTestSchedule } from './self-test-schedule';
import { statusReport } from './status-report';
import { brokerVersion } from './version';

/** Runs the broker: the control socket, the self-test, and the HTTP endpoint for probes and admins. */
export async function serve(config: BrokerConfig): Promise<void> {
  const log = createLogger('fd-broker', config.logLevel);
  restrictCapabilities(config, log);
  const startedAt = new Date();
  const strategy = openStrategyOf(config);
  const devicePresent = () => existsSync(config.devicePath);

  const factory = new ContextFactory({ devicePath: config.devicePath, strategy });
  const metrics = new BrokerMetrics(devicePresent);
  const activity = new BrokerActivity(metrics);
  const selfTest = new SelfTest(factory, metrics, log);
  const handler = new RequestHandler(
    {
      factory,
      describe: {
        devicePath: config.devicePath,
        strategy: strategy.kind === 'direct' ? broker.OpenStrategy.OPEN_STRATEGY_DIRECT : broker.OpenStrategy.OPEN_STRATEGY_TEMPORARY_NODE,
      },
      activity,
      selfTest,
    },
    log,
  );
  const controlSocket = new ControlSocket(
    {
      path: config.socketPath,
      mode: config.socketMode,
      owner: config.socketOwner,
      maxConnections: config.maxConnections,
      allowedUids: new Set(config.allowedUids),
      maxRequestBytes: config.maxRequestBytes,
      requestTimeoutMs: config.requestTimeoutMs,
    },
    handler,
    activity,
    log,
  );
  const schedule = new SelfTestSchedule(selfTest, config.devicePath, config.selfTestIntervalMs, log);
  const liveness = () => controlSocket.health();
  const ready = () => readiness(config.devicePath, devicePresent(), selfTest.last);

  log.info({ event: 'starting', version: brokerVersion, config }, 'fd-broker starting');
  try {
    await controlSocket.listen();
  } catch (err) {
    log.fatal({ event: 'start_failed', reason: (err as Error).message }, 'could not start');
    process.exitCode = 1;
    return;
  }

  let http: Awaited<ReturnType<typeof startOpsServer>>;
  try {
    http = await startOpsServer({
      host: config.httpHost,
      port: config.httpPort,
      log,
      liveness,
      readiness: ready,
      registry: metrics.registry,
      routes: (app) => {
        app.get('/status', async () =>
          statusReport({ config, startedAt, devicePresent, lastSelfTest: () => selfTest.last, activity, liveness, readiness: ready }),
        );
      },
    });
  } catch (err) {
    // Without its endpoint the broker would look dead to every probe; better to say why and stop.
    log.fatal({ event: 'start_failed', reason: `HTTP endpoint ${config.httpHost}:${config.httpPort}: ${(err as Error).message}` }, 'could not start');
    await controlSocket.close();
    process.exitCode = 1;
    return;
  }
  schedule.start();

  const stop = (signal: NodeJS.Signals) => {
    log.info({ event: 'stopping', signal }, 'fd-broker stopping');
    schedule.stop();
    void Promise.all([controlSocket.close(), http.close()]).then(() => process.exit(0));
    // Connections still open must not hold the exit back for long.
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
