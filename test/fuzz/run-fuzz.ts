/**
 * `scripts/fuzz`: seeded fuzzing of the broker protocol and the handoff path
 * against real processes on the kernel stand-in. Prints one summary line per
 * target; on a failure, the seed and iteration that reproduce it. Exit code 0
 * when every check held, 1 when one failed, 2 on bad usage.
 */
import '../support/threadpool';
import { CliArgs } from '../support/cli-args';
import type { RunLimits, TargetResult } from './common';
import { fuzzBroker } from './fuzz-broker';
import { fuzzHandoff } from './fuzz-handoff';

const usage = `usage: scripts/fuzz [--target broker|handoff|all] [--seed N] [--seconds N | --iterations N] [--long]
                    [--from-iteration N] [--case NAME] [--handoff-mode once|per-connection] [--keep-going] [--verbose]
  --seconds N         run each target for about N seconds (default 10)
  --iterations N      run each target for N iterations (with --seconds: whichever ends first)
  --long              --seconds 600
  --seed N            the run's seed (default: from the clock; always printed)
  --from-iteration N  start at iteration N: with the same seed, iteration N gets the same input
  --case NAME         only this kind of input (names in the summary's "cases:")
  --skip A,B          leave these kinds of input out
  --handoff-mode M    the bridge's handoff mode for the handoff target (default once)
  --keep-going        do not stop at the first failing iteration`;

async function main(argv: readonly string[]): Promise<number> {
  let args: CliArgs;
  try {
    args = new CliArgs(argv, ['target', 'seed', 'seconds', 'iterations', 'from-iteration', 'case', 'skip', 'handoff-mode'], ['long', 'keep-going', 'verbose', 'help']);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    return 2;
  }
  if (args.flag('help')) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  const target = args.string('target') ?? 'all';
  if (!['broker', 'handoff', 'all'].includes(target)) {
    process.stderr.write(`--target must be broker, handoff or all\n${usage}\n`);
    return 2;
  }
  const handoffMode = args.string('handoff-mode') ?? 'once';
  if (handoffMode !== 'once' && handoffMode !== 'per-connection') {
    process.stderr.write(`--handoff-mode must be once or per-connection\n${usage}\n`);
    return 2;
  }
  let limits: RunLimits;
  try {
    const iterations = args.number('iterations', 1);
    const seconds = args.flag('long') ? 600 : args.number('seconds', 0) ?? (iterations === undefined ? 10 : undefined);
    limits = {
      seed: args.number('seed', 0) ?? Date.now() % 2 ** 31,
      iterations,
      seconds,
      firstIteration: args.number('from-iteration', 0) ?? 0,
      only: args.string('case'),
      skip: (args.string('skip') ?? '').split(',').filter(Boolean),
      keepGoing: args.flag('keep-going'),
      handoffMode,
      verbose: args.flag('verbose'),
      log: (line) => process.stdout.write(`${line}\n`),
    };
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    return 2;
  }
  const limitText = [limits.iterations !== undefined ? `${limits.iterations} iterations` : '', limits.seconds !== undefined ? `${limits.seconds} s` : '']
    .filter(Boolean)
    .join(' or ');
  process.stdout.write(`fuzz: seed=${limits.seed} target=${target} per target: ${limitText}\n`);

  const results: TargetResult[] = [];
  if (target === 'broker' || target === 'all') results.push(await fuzzBroker(limits));
  if (target === 'handoff' || target === 'all') results.push(await fuzzHandoff(limits));
  for (const result of results) process.stdout.write(`${result.summary}\n`);
  const ok = results.every((r) => r.ok);
  process.stdout.write(`fuzz: ${ok ? 'PASSED' : 'FAILED'} seed=${limits.seed}\n`);
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`fuzz: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
