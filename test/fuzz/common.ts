import { checkFdInLauncher as check } from '../support/fd-check';
import type { FakeKernel } from '../support/fake-kernel';

export interface RunLimits {
  seed: number;
  /** Stop after this many iterations (counted from firstIteration). */
  iterations?: number;
  /** Stop starting iterations after this long. */
  seconds?: number;
  /** Start at this iteration number (each iteration's input depends only on the seed and its number). */
  firstIteration: number;
  /** Restrict the draw to one case. */
  only?: string;
  /** Leave these cases out of the draw. */
  skip: readonly string[];
  keepGoing: boolean;
  /** The bridge's --handoff-mode for the handoff target. */
  handoffMode: 'once' | 'per-connection';
  verbose: boolean;
  log: (line: string) => void;
}

export interface TargetResult {
  target: string;
  ok: boolean;
  iterations: number;
  summary: string;
  failures: string[];
}


export const mib = (kib: number): string => (kib / 1024).toFixed(1);

/** The iteration loop's stop rule: a count, a time, or both (whichever comes first); 200 iterations when neither is given. */
export function keepRunning(limits: RunLimits, startedAt: number, done: number): boolean {
  if (limits.iterations !== undefined && done >= limits.iterations) return false;
  if (limits.seconds !== undefined && Date.now() - startedAt >= limits.seconds * 1000) return false;
  if (limits.iterations === undefined && limits.seconds === undefined && done >= 200) return false;
  return true;
}

export function reproduceHint(target: string, run: RunLimits, iteration: number): string {
  const draw = run.only ? ` --case ${run.only}` : run.skip.length > 0 ? ` --skip ${run.skip.join(',')}` : '';
  const mode = target === 'handoff' ? modeArgument(run) : '';
  return `reproduce: scripts/fuzz --target ${target} --seed ${run.seed} --from-iteration ${iteration} --iterations 1${draw}${mode}`;
}

/** The --handoff-mode argument that reproduces a run, when it is not the default. */
export function modeArgument(run: RunLimits): string {
  return run.handoffMode === 'once' ? '' : ` --handoff-mode ${run.handoffMode}`;
}

/** The launcher stand-in's verdict on an fd: undefined when it is a good context. Does not close `fd`. */
export async function checkFdInLauncher(kernel: FakeKernel, dir: string, fd: number): Promise<string | undefined> {
  return (await check(kernel, dir, fd)).problem;
}
