/**
 * `scripts/soak`: a random mix, for a chosen time, of pods and their
 * launchers (prompt, late, silent, vanishing) with restarts of the kubelet,
 * the broker and the bridge in between, on a whole pretend node (kernel
 * stand-in, the real services, the kubelet simulator). At the end it checks
 * that every well-behaved launcher got a correct fd and that neither service
 * grew in fds, handoff sockets or memory, and prints the figures.
 *
 * Exit code 0 when every check held, 1 when one failed, 2 on bad usage.
 */
import '../support/threadpool';
import { CliArgs } from '../support/cli-args';
import { SoakFigures } from './soak-figures';
import { renderReport, SoakLedger } from './soak-report';
import { deviceCount, SoakRig } from './soak-rig';
import { runRestarts, runScenarios } from './soak-schedule';

const usage = `usage: scripts/soak [--seconds N | --long] [--seed N] [--verbose]
  --seconds N  how long to keep starting pods (default 60); restarts stop after the first three
               quarters; letting the last pods finish and the end checks add ~10 s
  --long       --seconds 1800
  --seed N     the run's seed (default: from the clock; always printed)
  --verbose    print each restart and failure as it happens
  --help       print this text`;

/** The last quarter of the run has pods and launchers but no restarts. */
const calmTailShare = 0.25;

interface SoakOptions {
  seconds: number;
  seed: number;
  verbose: boolean;
}

/** The options, or the exit code when there is nothing to run (help, bad usage). */
function parseOptions(argv: readonly string[]): SoakOptions | number {
  try {
    const args = new CliArgs(argv, ['seconds', 'seed'], ['long', 'verbose', 'help']);
    if (args.flag('help')) {
      process.stdout.write(`${usage}\n`);
      return 0;
    }
    return {
      seconds: args.flag('long') ? 1800 : (args.number('seconds', 1) ?? 60),
      seed: args.number('seed', 0) ?? Date.now() % 2 ** 31,
      verbose: args.flag('verbose'),
    };
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    return 2;
  }
}

/**
 * A few pods with prompt launchers, one after another, deleted at once: the
 * services load their code paths and pools before the baseline, and again
 * before the end so that both are taken in the same state.
 */
async function warmUp(rig: SoakRig, label: string): Promise<void> {
  for (let i = 0; i < 6; i++) {
    const { pod } = await rig.admit(`${label}-${i}`);
    try {
      const report = await rig.node.launch(pod, { ack: i % 2 === 0 });
      if (report.result !== 'ok' || report.rlimitMode !== 1) throw new Error(`${label}: a launcher got ${JSON.stringify(report)}`);
    } finally {
      rig.deletePod(pod);
    }
  }
}

async function soak(options: SoakOptions): Promise<boolean> {
  const log = (line: string): void => void process.stdout.write(`${line}\n`);
  log(
    `soak: seed=${options.seed} seconds=${options.seconds}, restarts in the first ${(options.seconds * (1 - calmTailShare)).toFixed(0)} s ` +
      `(reproduce: scripts/soak --seed ${options.seed} --seconds ${options.seconds})`,
  );
  const rig = await SoakRig.start();
  // Ctrl-C on a long run: stop the services and remove the scratch directory all the same.
  process.once('SIGINT', () => void rig.stop().finally(() => process.exit(130)));
  try {
    await warmUp(rig, 'warm-up');
    const figures = await SoakFigures.baseline(rig);
    const ledger = new SoakLedger(options.verbose ? log : () => undefined);
    figures.startSampling();

    const untilMs = ledger.startedAt + options.seconds * 1000;
    // A calm tail without restarts: the processes serving at the end carry load for a while before their figures are taken.
    const restartsUntilMs = ledger.startedAt + options.seconds * 1000 * (1 - calmTailShare);
    await Promise.all([runScenarios(rig, ledger, options.seed, untilMs), runRestarts(rig, ledger, options.seed, restartsUntilMs)]);
    const ranSeconds = ledger.now() / 1000;

    const endProblems: string[] = [];
    if (rig.unexpectedExits.length === 0) {
      // The end figures come after the same batch as the baseline, once the node serves every device again.
      await rig.node.waitUntilServing(deviceCount, 15_000).catch((err: Error) => endProblems.push(`the node does not serve every device: ${err.message}`));
      await warmUp(rig, 'cool-down').catch((err: Error) => endProblems.push(`after the soak: ${err.message}`));
      endProblems.push(...(await figures.finish()));
    }
    endProblems.push(...rig.unexpectedExits);
    if (ledger.wellBehaved.total === 0) endProblems.push('no well-behaved launcher ran: the run was too short to check anything');
    const launcherUid = rig.node.launcherUid === undefined ? String(process.geteuid?.() ?? '?') : String(rig.node.launcherUid);
    const report = renderReport(
      { seed: options.seed, plannedSeconds: options.seconds, ranSeconds, launcherUid },
      ledger,
      figures.summary(),
      endProblems,
    );
    for (const line of report) log(line);
    return ledger.failures.length === 0 && endProblems.length === 0;
  } finally {
    await rig.stop();
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const options = parseOptions(argv);
  if (typeof options === 'number') return options;
  return (await soak(options)) ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
