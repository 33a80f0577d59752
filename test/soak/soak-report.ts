/**
 * What the soak counts while it runs (the ledger) and how the end report is
 * printed. The report's summary lines have a fixed shape ("soak: ...") so
 * that test/soak.test.ts can check them; change both together.
 */

import { Tally } from '../support/tally';

/** One thing that went wrong, with what is needed to find it again. */
export interface SoakFailure {
  /** Which scenario (its step number and kind) or which phase, e.g. "scenario 17 (late)", "restart 3 (bridge)", "end". */
  where: string;
  problem: string;
  /** Milliseconds since the soak started: when the scenario or phase began and ended. */
  fromMs: number;
  toMs: number;
}

/** A restart as it happened, for the timeline printed next to a failure. */
export interface RestartRecord {
  number: number;
  kind: string;
  signal: string;
  atMs: number;
  /** From the stop to serving again. */
  tookMs: number;
}

/** The well-behaved launchers: the ones that must all get a correct fd. */
export class WellBehavedCount {
  total = 0;
  ok = 0;
  /** Succeeded, but not at the first connect (a restart was in the way). */
  retried = 0;
  mostAttempts = 0;
  /** Of the ok ones: how many sent an ACK, and how many found the bridge gone when they did (a restart; harmless). */
  acked = 0;
  ackRefused = 0;

  succeeded(attempts: number, acked: boolean, ackRefused: boolean): void {
    this.total++;
    this.ok++;
    if (attempts > 1) this.retried++;
    if (acked) this.acked++;
    if (ackRefused) this.ackRefused++;
    this.mostAttempts = Math.max(this.mostAttempts, attempts);
  }

  failed(attempts: number): void {
    this.total++;
    this.mostAttempts = Math.max(this.mostAttempts, attempts);
  }
}

/** Everything the soak counts; the scenarios and the restart loop write here, the report reads it. */
export class SoakLedger {
  readonly startedAt = Date.now();
  /** Pods by scenario kind, restarts by kind and signal, admissions the kubelet refused and retried. */
  readonly actions = new Tally();
  readonly wellBehaved = new WellBehavedCount();
  /** What became of each silent launcher's connection and its allocation. */
  readonly silent = new Tally();
  /** What each vanishing launcher saw, and what became of its allocation. */
  readonly vanishing = new Tally();
  readonly restarts: RestartRecord[] = [];
  readonly failures: SoakFailure[] = [];

  constructor(private readonly verbose: (line: string) => void) {}

  /** Milliseconds since the start. */
  now(): number {
    return Date.now() - this.startedAt;
  }

  fail(where: string, problem: string, fromMs: number): void {
    const failure = { where, problem, fromMs, toMs: this.now() };
    this.failures.push(failure);
    this.verbose(`  FAIL ${where}: ${problem}`);
  }

  /** A line for --verbose only. */
  note(line: string): void {
    this.verbose(line);
  }

  restarted(record: RestartRecord): void {
    this.restarts.push(record);
    this.actions.add(`restart-${record.kind}`);
    if (record.signal === 'SIGKILL') this.actions.add(`restart-${record.kind}-sigkill`);
    this.verbose(`  ${seconds(record.atMs)} s restart ${record.number}: ${record.kind} (${record.signal}), serving again after ${record.tookMs} ms`);
  }

  /** The restarts that overlapped [fromMs, toMs], as "bridge(SIGKILL)@12.3s". */
  restartsDuring(fromMs: number, toMs: number): string {
    const overlapping = this.restarts.filter((r) => r.atMs <= toMs && r.atMs + r.tookMs >= fromMs);
    return overlapping.length === 0 ? 'none' : overlapping.map((r) => `${r.kind}(${r.signal})@${seconds(r.atMs)}s`).join(', ');
  }
}

/** Resource figures of one service process at one moment. */
export interface ServiceFigures {
  pid: number;
  /** 1 for the process the soak started with, +1 per restart. */
  generation: number;
  fds: number;
  rssKiB: number;
}

/** Baseline, peak and end of one service: fds and RSS. */
export interface ServiceSeries {
  baseline: ServiceFigures;
  peakFds: number;
  peakRssKiB: number;
  end: ServiceFigures | undefined;
}

export interface FiguresSummary {
  broker: ServiceSeries;
  bridge: ServiceSeries;
  sockets: { baseline: number; peak: number; end: number; strayEntries: string[] };
}

export interface RunDescription {
  seed: number;
  plannedSeconds: number;
  ranSeconds: number;
  launcherUid: string;
}

const seconds = (ms: number): string => (ms / 1000).toFixed(1);
const mib = (kib: number): string => (kib / 1024).toFixed(1);

function serviceLine(name: string, series: ServiceSeries): string {
  const { baseline, end } = series;
  const endText = end ? `${end.fds}` : '-';
  const endRss = end ? mib(end.rssKiB) : '-';
  const generations = end ? ` (end: pid ${end.pid}, generation ${end.generation}; baseline: pid ${baseline.pid}, generation ${baseline.generation})` : '';
  return (
    `soak: ${name}: fds baseline=${baseline.fds} peak=${series.peakFds} end=${endText} | ` +
    `RSS MiB baseline=${mib(baseline.rssKiB)} peak=${mib(series.peakRssKiB)} end=${endRss}${generations}`
  );
}

/** The report, one line per fact; the last line says PASSED or FAILED. */
export function renderReport(run: RunDescription, ledger: SoakLedger, figures: FiguresSummary | undefined, endProblems: readonly string[]): string[] {
  const { wellBehaved: wb, actions } = ledger;
  const lines = [
    `soak: seed=${run.seed} planned=${run.plannedSeconds} s ran=${run.ranSeconds.toFixed(1)} s launchers as uid ${run.launcherUid}`,
    `soak: pods: prompt=${actions.get('pod-prompt')} late=${actions.get('pod-late')} silent=${actions.get('pod-silent')} vanishing=${actions.get('pod-vanishing')} ` +
      `(admissions refused by the kubelet and retried: ${actions.get('admission-refused')})`,
    `soak: restarts: kubelet=${actions.get('restart-kubelet')} broker=${actions.get('restart-broker')} (SIGKILL ${actions.get('restart-broker-sigkill')}) ` +
      `bridge=${actions.get('restart-bridge')} (SIGKILL ${actions.get('restart-bridge-sigkill')})`,
    `soak: well-behaved launchers: ok=${wb.ok}/${wb.total} retried=${wb.retried} most-attempts=${wb.mostAttempts} ` +
      `(ACKed: ${wb.acked}, of which the bridge had gone by the ACK: ${wb.ackRefused})`,
    `soak: silent launchers: ${ledger.silent}`,
    `soak: vanishing launchers: ${ledger.vanishing}`,
  ];
  if (figures) {
    lines.push(serviceLine('broker', figures.broker));
    lines.push(serviceLine('bridge', figures.bridge));
    const { sockets } = figures;
    const stray = sockets.strayEntries.length === 0 ? 'none' : sockets.strayEntries.join(',');
    lines.push(`soak: handoff sockets: baseline=${sockets.baseline} peak=${sockets.peak} end=${sockets.end} | other files left: ${stray}`);
  }
  for (const failure of ledger.failures) {
    lines.push(
      `soak: FAIL ${failure.where} (${seconds(failure.fromMs)}–${seconds(failure.toMs)} s; restarts meanwhile: ${ledger.restartsDuring(failure.fromMs, failure.toMs)}): ${failure.problem}`,
    );
  }
  for (const problem of endProblems) lines.push(`soak: FAIL at the end: ${problem}`);
  const passed = ledger.failures.length === 0 && endProblems.length === 0;
  if (!passed) {
    lines.push(
      `soak: reproduce: scripts/soak --seed ${run.seed} --seconds ${run.plannedSeconds} --verbose ` +
        '(the seed fixes every choice; the timing is the machine\'s, so a race may need a few runs)',
    );
  }
  lines.push(`soak: ${passed ? 'PASSED' : 'FAILED'} seed=${run.seed}`);
  return lines;
}
