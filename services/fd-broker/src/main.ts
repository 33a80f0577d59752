import { ConfigError, helpText, parseCommandLine } from '@iommufd-plugin/common';
import { brokerOptions } from './config';
import { inspectCommand } from './inspect-command';
import { inspectUsage, parseInspectArguments } from './inspect-arguments';
import { selfTestCommand } from './selftest-command';
import { serve } from './serve';
import { brokerVersion } from './version';

const usage = 'fd-broker [selftest] [options]  |  fd-broker inspect (--handoff PATH | --broker PATH)';
const summary = [
  'The privileged half of the IOMMUFD device plugin: opens a fresh IOMMUFD context per request, sets RLIMIT mode, ' +
    'verifies it, and passes the fd to the kubelet-bridge over a unix socket (SCM_RIGHTS). HTTP on --http-host:--http-port: ' +
    '/healthz, /readyz, /metrics, /status.',
  '',
  'Commands:',
  '  (none)     run the broker',
  '  selftest   run the self-test once with the options below (open a context, SET and GET RLIMIT mode, close it);',
  '             print the verdict and its reason; exit 0 when it passed, 1 when not',
  '  inspect    connect to a handoff socket or the broker, report the fd received (see fd-broker inspect --help)',
].join('\n');

export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  try {
    // inspect has flags of its own that the server's table does not know, so it must come first.
    if (argv[0] === 'inspect') {
      const args = parseInspectArguments(argv.slice(1));
      if (args === 'help') process.stdout.write(`${inspectUsage}\n`);
      else process.exitCode = await inspectCommand(args);
      return;
    }
    const outcome = parseCommandLine(brokerOptions, argv, process.env);
    if (outcome.kind === 'help') {
      process.stdout.write(`${helpText(usage, summary, brokerOptions)}\n`);
      return;
    }
    if (outcome.kind === 'version') {
      process.stdout.write(`${brokerVersion}\n`);
      return;
    }
    const [command, extra] = outcome.positionals;
    if (extra !== undefined) throw new ConfigError(`unexpected argument: ${extra}`);
    switch (command) {
      case undefined:
        return await serve(outcome.options);
      case 'selftest':
        process.exitCode = await selfTestCommand(outcome.options);
        return;
      case 'inspect':
        throw new ConfigError('inspect takes its own flags and must come first: fd-broker inspect --broker PATH');
      default:
        throw new ConfigError(`unexpected argument: ${command} (commands: selftest, inspect)`);
    }
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`fd-broker: ${err.message}\n`);
    process.exitCode = 2;
  }
}
