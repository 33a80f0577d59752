import { ConfigError, createLogger, helpText, parseCommandLine } from '@iommufd-plugin/common';
import { broker } from '@iommufd-plugin/proto';
import { brokerOptions, type BrokerConfig } from './config';
import { ContextFactory } from './context-factory';
import { ControlSocket } from './control-socket';
import { RequestHandler } from './request-handler';
import { brokerVersion } from './version';

const usage = 'fd-broker [options]';
const summary =
  'The privileged half of the IOMMUFD device plugin: opens a fresh IOMMUFD context per request, sets RLIMIT mode, ' +
  'verifies it, and passes the fd to the kubelet-bridge over a unix socket (SCM_RIGHTS).';

export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  let config: BrokerConfig;
  try {
    const outcome = parseCommandLine(brokerOptions, argv, process.env);
    if (outcome.kind === 'help') {
      process.stdout.write(`${helpText(usage, summary, brokerOptions)}\n`);
      return;
    }
    if (outcome.kind === 'version') {
      process.stdout.write(`${brokerVersion}\n`);
      return;
    }
    if (outcome.positionals.length > 0) throw new ConfigError(`unexpected argument: ${outcome.positionals[0]}`);
    config = outcome.options;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`fd-broker: ${err.message}\n`);
    process.exitCode = 2;
    return;
  }
  await run(config);
}

async function run(config: BrokerConfig): Promise<void> {
  const log = createLogger('fd-broker', config.logLevel);
  const strategy =
    config.openStrategy === 'direct'
      ? ({ kind: 'direct' } as const)
      : ({ kind: 'temporary-node', nodeDir: config.nodeDir, selinuxLabel: config.selinuxLabel } as const);
  const factory = new ContextFactory({ devicePath: config.devicePath, strategy });
  const handler = new RequestHandler(
    factory,
    {
      devicePath: config.devicePath,
      strategy: strategy.kind === 'direct' ? broker.OpenStrategy.OPEN_STRATEGY_DIRECT : broker.OpenStrategy.OPEN_STRATEGY_TEMPORARY_NODE,
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
    log,
  );

  log.info({ event: 'starting', version: brokerVersion, config }, 'fd-broker starting');
  try {
    await controlSocket.listen();
  } catch (err) {
    log.fatal({ event: 'start_failed', reason: (err as Error).message }, 'could not start');
    process.exitCode = 1;
    return;
  }

  const stop = (signal: NodeJS.Signals) => {
    log.info({ event: 'stopping', signal }, 'fd-broker stopping');
    void controlSocket.close().then(() => process.exit(0));
    // Connections still open must not hold the exit back for long.
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
