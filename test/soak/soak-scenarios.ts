/**
 * One pod's life in the soak: admitted, its container starts a moment later,
 * one kind of launcher (or several) connects to its handoff socket, and the
 * pod is deleted. What each kind must observe follows docs/PROTOCOL.md for
 * the bridge's default handoff mode, `once`:
 *
 * - prompt, late: a well-behaved launcher (reads at once, or 1–5 s after
 *   connecting, as some virt-launcher builds do; ACK or not) gets exactly one
 *   byte 0 with an IOMMUFD context in RLIMIT mode. Like virt-launcher, it
 *   tries again for up to 10 s when a restart is in its way (socket
 *   momentarily absent, connection refused, or closed without an fd).
 * - silent: connects, never reads, closes after a while. In `once` mode the
 *   fd is sent as soon as it connects, into its socket buffer, and that is
 *   the allocation's one fd ("an allocation's socket serves one fd and is
 *   then removed"). If the fd was not sent before it closed, the allocation
 *   must be left usable: a well-behaved launcher after it gets an fd.
 * - vanishing: one to three launchers connect and close at once, then a
 *   well-behaved one comes. "A connection that fails before the fd is sent
 *   (the launcher went away) does not use it up", so it must get an fd. The
 *   only exception the contract allows is the race where the bridge sent the
 *   fd before the close reached it; that is counted separately.
 */
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';
import { LocalNode } from '../support/local-node';
import type { Prng } from '../support/prng';
import { RawConnection } from '../support/raw-connection';
import { attemptHandoff, describeStyle, type LaunchStyle } from './soak-launchers';
import type { SoakLedger } from './soak-report';
import type { SoakRig } from './soak-rig';

export type ScenarioKind = 'prompt' | 'late' | 'silent' | 'vanishing';

/** How long a well-behaved launcher keeps trying after its first connect, as virt-launcher retries for a while. */
const retryWindowMs = 10_000;
const retryPauseMs = 250;
/** How long the bridge's log may lag the socket it removed (the handoff line waits for the pod's name). */
const handoffLogLagMs = 10_000;

interface Scenario {
  rig: SoakRig;
  ledger: SoakLedger;
  prng: Prng;
  pod: AdmittedPod;
  /** The handoff socket on the host, as the kubelet would mount it. */
  path: string;
  /** Date.now() when its launchers began. */
  startedAt: number;
}

/** Runs one pod's life; problems go to the ledger as failures of "scenario <step> (<kind>)". */
export async function runScenario(rig: SoakRig, ledger: SoakLedger, step: number, kind: ScenarioKind, prng: Prng): Promise<void> {
  const where = `scenario ${step} (${kind})`;
  const fromMs = ledger.now();
  ledger.actions.add(`pod-${kind}`);
  let pod: AdmittedPod | undefined;
  try {
    const admitted = await rig.admit(`${kind}-${step}`);
    pod = admitted.pod;
    ledger.actions.add('admission-refused', admitted.refusals);
    const response = pod.containers[0]?.response;
    if (!response) throw new Error('the admitted pod has no container');
    // The container starts a little after admission (image pull, sandbox).
    await sleep(prng.int(0, 1500));
    const scenario: Scenario = { rig, ledger, prng, pod, path: LocalNode.handoffPath(response), startedAt: Date.now() };
    const problem = await scenarioBody[kind](scenario);
    if (problem) ledger.fail(where, `${problem} [pod ${pod.name}, socket ${scenario.path}]`, fromMs);
  } catch (err) {
    ledger.fail(where, `the harness failed: ${(err as Error).stack ?? String(err)}`, fromMs);
  } finally {
    // The VM is done: the pod goes, and the bridge's reclaim removes any socket it left.
    if (pod) rig.deletePod(pod);
  }
}

const scenarioBody: Record<ScenarioKind, (s: Scenario) => Promise<string | undefined>> = {
  prompt: (s) => wellBehavedLauncher(s, { ack: s.prng.chance(0.5) }),
  late: (s) => wellBehavedLauncher(s, { ack: s.prng.chance(0.5), readDelayMs: s.prng.int(1000, 5000) }),
  silent: silentLauncher,
  vanishing: vanishingLaunchers,
};

/** A well-behaved launcher, trying again as virt-launcher would while a restart is in its way. */
async function wellBehavedLauncher(s: Scenario, style: LaunchStyle): Promise<string | undefined> {
  const firstConnect = Date.now();
  const seen: string[] = [];
  for (let attempt = 1; ; attempt++) {
    const outcome = await attemptHandoff(s.rig, s.pod, s.path, style);
    if (outcome.verdict === 'correct-fd') {
      s.ledger.wellBehaved.succeeded(attempt, style.ack, outcome.ackRefused);
      return undefined;
    }
    seen.push(outcome.seen);
    if (outcome.verdict === 'broken' || Date.now() - firstConnect >= retryWindowMs) {
      s.ledger.wellBehaved.failed(attempt);
      return `a well-behaved launcher (${describeStyle(style)}) got no correct fd in ${attempt} attempts over ${Date.now() - firstConnect} ms: ${seen.join(' → ')}`;
    }
    await sleep(retryPauseMs);
  }
}

/** True if the socket is gone and stays gone for a moment: a bridge restart re-creates it within milliseconds. */
async function socketGone(path: string): Promise<boolean> {
  if (existsSync(path)) return false;
  await sleep(300);
  return !existsSync(path);
}

/**
 * Whether the allocation was used up by someone other than the well-behaved
 * launcher to come. In `once` mode the socket is removed in the same turn
 * as the fd is sent, so a socket that is gone while its pod lives means an
 * fd went out, and the bridge's log must say so ('unknown' when no line
 * came and a bridge was SIGKILLed meanwhile: it may have died between the
 * send and the log line).
 */
async function usedUp(s: Scenario, allocationId: string | undefined): Promise<'no' | 'yes' | 'unknown' | string> {
  if (!(await socketGone(s.path))) return 'no';
  if (allocationId === undefined) return 'the socket is gone, and no bridge logged its allocation';
  if (await s.rig.handedOff(allocationId, handoffLogLagMs)) return 'yes';
  if (s.rig.bridgeKilledSince(s.startedAt)) return 'unknown';
  return `the socket of allocation ${allocationId} is gone while its pod lives, and no bridge logged a successful handoff for it`;
}

async function silentLauncher(s: Scenario): Promise<string | undefined> {
  const allocationId = await s.rig.allocationIdOf(s.path);
  let connection: RawConnection | undefined;
  try {
    connection = await RawConnection.open(s.path, 3000);
  } catch (err) {
    s.ledger.silent.add(`connect-${(err as { code?: string }).code ?? 'failed'}`);
  }
  if (connection) {
    await sleep(s.prng.int(300, 3000));
    // Closing with the byte and fd unread in its buffer: the kernel drops that fd.
    await connection.close();
  }
  const verdict = await usedUp(s, allocationId);
  if (verdict === 'yes' || verdict === 'unknown') {
    s.ledger.silent.add(verdict === 'yes' ? 'fd-sent-unread' : 'unknown-bridge-killed');
    return undefined;
  }
  if (verdict !== 'no') return `after a silent launcher: ${verdict}`;
  s.ledger.silent.add('left-allocation-unused');
  const problem = await wellBehavedLauncher(s, { ack: s.prng.chance(0.5) });
  return problem && `the silent launcher left the socket in place, yet ${problem}`;
}

async function vanishingLaunchers(s: Scenario): Promise<string | undefined> {
  const allocationId = await s.rig.allocationIdOf(s.path);
  const count = s.prng.int(1, 3);
  const seen: string[] = [];
  for (let i = 0; i < count; i++) {
    const report = await s.rig.node.launch(s.pod, { vanish: true }).catch((err: Error) => err.message);
    const what = typeof report === 'string' ? 'no-report' : report.result === 'error' ? `error-${report.step}-${report.errno}` : report.result;
    s.ledger.vanishing.add(what);
    seen.push(what);
  }
  const verdict = await usedUp(s, allocationId);
  if (verdict === 'unknown') {
    s.ledger.vanishing.add('unknown-bridge-killed');
    return undefined;
  }
  if (verdict === 'yes') {
    // The documented race: the bridge sent the fd before the launcher's close reached it.
    s.ledger.vanishing.add('fd-sent-before-close');
    s.ledger.note(`  pod ${s.pod.name}: a vanishing launcher got the fd before it closed (${seen.join(', ')}); the bridge logged ${JSON.stringify(s.rig.handoffLine(allocationId ?? ''))}`);
    return undefined;
  }
  if (verdict !== 'no') return `after ${count} vanishing launchers: ${verdict}`;
  s.ledger.vanishing.add('later-launcher');
  const late = s.prng.chance(0.3);
  const problem = await wellBehavedLauncher(s, { ack: s.prng.chance(0.5), readDelayMs: late ? s.prng.int(1000, 5000) : undefined });
  return problem && `after ${count} vanishing launchers, ${problem}`;
}
