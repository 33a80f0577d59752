/**
 * The random mix over time: a stream of pods, each with one kind of
 * launcher, kept at most `maxPodsAtOnce` in flight; and, beside it, a
 * restart of the kubelet, the broker or the bridge every few seconds.
 *
 * Kinds are drawn from shuffled bags rather than independently, so every
 * kind of pod and every kind of restart comes early in any run, whatever
 * the seed: a 20 s run in CI already has them all.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Prng } from '../support/prng';
import type { SoakLedger } from './soak-report';
import type { RestartKind, SoakRig, StopSignal } from './soak-rig';
import { runScenario, type ScenarioKind } from './soak-scenarios';

const maxPodsAtOnce = 16;
/** How often each kind of pod comes, relative to the others. */
const scenarioBagContents: readonly ScenarioKind[] = ['prompt', 'prompt', 'prompt', 'late', 'late', 'silent', 'silent', 'vanishing', 'vanishing'];
const restartBagContents: readonly RestartKind[] = ['kubelet', 'broker', 'bridge'];
/** Restart steps draw from their own numbered stream, far from the scenarios' step numbers. */
const restartStepBase = 1 << 24;

/** Hands out the contents in a shuffled order, shuffling again each time it runs empty. */
export class ShuffleBag<T> {
  private pending: T[] = [];

  constructor(
    private readonly contents: readonly T[],
    private readonly prng: Prng,
  ) {}

  next(): T {
    if (this.pending.length === 0) this.pending = this.shuffled();
    return this.pending.pop() as T;
  }

  private shuffled(): T[] {
    const items = [...this.contents];
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.prng.int(0, i);
      [items[i], items[j]] = [items[j] as T, items[i] as T];
    }
    return items;
  }
}

/** Starts pods until `untilMs` (a Date.now() time), then waits for those in flight. */
export async function runScenarios(rig: SoakRig, ledger: SoakLedger, seed: number, untilMs: number): Promise<void> {
  const bag = new ShuffleBag(scenarioBagContents, new Prng(seed));
  const inFlight = new Set<Promise<void>>();
  for (let step = 0; Date.now() < untilMs; step++) {
    while (inFlight.size >= maxPodsAtOnce) await Promise.race(inFlight);
    if (Date.now() >= untilMs) break;
    const prng = Prng.forStep(seed, step);
    const scenario: Promise<void> = runScenario(rig, ledger, step, bag.next(), prng).finally(() => inFlight.delete(scenario));
    inFlight.add(scenario);
    await sleep(prng.int(50, 400));
  }
  await Promise.all(inFlight);
}

/**
 * Restarts one of the three every 1.5–3.5 s until `untilMs`, one at a time,
 * each waiting until the node serves every device again. A restart that
 * does not recover is a failure, and ends the restarts (the node is broken).
 */
export async function runRestarts(rig: SoakRig, ledger: SoakLedger, seed: number, untilMs: number): Promise<void> {
  const bag = new ShuffleBag(restartBagContents, new Prng(seed ^ 0x5eed));
  for (let number = 1; ; number++) {
    const prng = Prng.forStep(seed, restartStepBase + number);
    await sleep(Math.min(prng.int(1500, 3500), Math.max(0, untilMs - Date.now())));
    if (Date.now() >= untilMs) return;
    const kind = bag.next();
    // Mostly the orderly stop a rollout does; sometimes a crash (OOM kill, node pressure).
    const signal: StopSignal = kind !== 'kubelet' && prng.chance(0.3) ? 'SIGKILL' : 'SIGTERM';
    const atMs = ledger.now();
    try {
      await rig.restart(kind, signal, prng.int(0, 1500));
    } catch (err) {
      ledger.fail(`restart ${number} (${kind}, ${signal})`, `the node did not serve again: ${(err as Error).message}`, atMs);
      return;
    }
    ledger.restarted({ number, kind, signal: kind === 'kubelet' ? 'restart' : signal, atMs, tookMs: ledger.now() - atMs });
  }
}
