/** Summaries of latency samples, in nanoseconds, computed the same way for both sides. */

export interface Summary {
  n: number;
  p50Ns: number;
  p99Ns: number;
  maxNs: number;
}

/** Nearest-rank percentile (as ref-bench.c computes it): the smallest sample with at least q of them at or below it. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

export function summarize(samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  return { n: sorted.length, p50Ns: percentile(sorted, 0.5), p99Ns: percentile(sorted, 0.99), maxNs: sorted[sorted.length - 1] ?? Number.NaN };
}

export function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

/** One round of launchers released at the same moment (CLOCK_MONOTONIC ns). */
export interface Round {
  launchers: number;
  startNs: number;
  lastFdNs: number;
  /** connect → fd in hand, one per launcher. */
  ns: number[];
}

/** What a level of concurrency comes to over its rounds. */
export interface LevelFigures {
  launchers: number;
  rounds: number;
  latency: Summary;
  /** Release → the last launcher's fd in hand, per round. */
  allServedNs: { median: number; max: number };
  /** launchers / all-served time, median over rounds. */
  handoffsPerSecond: number;
}

export function levelFigures(launchers: number, rounds: readonly Round[]): LevelFigures {
  const served = rounds.map((r) => r.lastFdNs - r.startNs);
  return {
    launchers,
    rounds: rounds.length,
    latency: summarize(rounds.flatMap((r) => r.ns)),
    allServedNs: { median: median(served), max: max(served) },
    handoffsPerSecond: median(rounds.map((r) => r.ns.length / ((r.lastFdNs - r.startNs) / 1e9))),
  };
}
