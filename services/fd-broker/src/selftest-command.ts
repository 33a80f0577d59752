import { type BrokerConfig, openStrategyOf } from './config';
import { ContextFactory } from './context-factory';
import { failureSummary, performSelfTest } from './self-test';

/**
 * `fd-broker selftest`: the broker's self-test, once, with the server's
 * settings (flags or FD_BROKER_* variables, so inside the broker's container
 * it tests exactly what the broker uses). Prints one line; exit 0 or 1.
 */
export async function selfTestCommand(config: BrokerConfig): Promise<number> {
  const strategy = openStrategyOf(config);
  const outcome = await performSelfTest(new ContextFactory({ devicePath: config.devicePath, strategy }), 'command');
  const how = strategy.kind === 'direct' ? 'directly' : `through a temporary node in ${strategy.nodeDir}`;
  const ms = (outcome.durationSeconds * 1e3).toFixed(2);
  process.stdout.write(
    outcome.passed
      ? `selftest passed: opened ${config.devicePath} ${how}, RLIMIT mode set and verified (${ms} ms)\n`
      : `selftest FAILED: ${failureSummary(outcome)}\n`,
  );
  return outcome.passed ? 0 : 1;
}
