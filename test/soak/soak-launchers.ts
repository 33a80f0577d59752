/**
 * One connect of a well-behaved launcher to a handoff socket, and its
 * verdict: a correct fd, something a restart can cause (try again), or a
 * broken contract.
 *
 * Launchers that do not ACK are the C stand-in (test/launcher-stand-in), run
 * as an unprivileged uid, as virt-launcher is. Launchers that ACK run in this
 * process: the stand-in reports an error without checking the fd when its
 * ACK cannot be sent, and a bridge restart closes the connection under a
 * late reader's feet, so the stand-in cannot tell "fd received, ACK refused"
 * from a failure. Here the fd is checked by the stand-in all the same
 * (checkFdInLauncher: unprivileged, RLIMIT mode read back, SET refused).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { closeFd } from '@iommufd-plugin/native';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';
import { checkFdInLauncher } from '../support/fd-check';
import type { LauncherReport } from '../support/launcher';
import { RawConnection } from '../support/raw-connection';
import type { SoakRig } from './soak-rig';

export interface LaunchStyle {
  /** Wait this long after connecting before reading (virt-launcher builds wait ~5 s). */
  readDelayMs?: number;
  /** Send one byte back after the fd came, as older launchers do. */
  ack: boolean;
}

export type Attempt =
  | { verdict: 'correct-fd'; ackRefused: boolean }
  /** What a restart can cause: the socket absent for a moment, nobody listening yet, a close before the fd. */
  | { verdict: 'retry'; seen: string }
  | { verdict: 'broken'; seen: string };

/** The byte virt-launcher's older builds send back. */
const ackByte = Buffer.from([1]);
/** virt-launcher's data buffer: more than one byte must show up if the bridge sent more. */
const launcherDataBuffer = 32;
/** Long past any handoff; a launcher still waiting then has been forgotten. */
const readTimeoutMs = 20_000;

export function describeStyle(style: LaunchStyle): string {
  return `${style.readDelayMs ? `reads ${style.readDelayMs} ms late` : 'reads at once'}, ${style.ack ? 'ACKs' : 'no ACK'}`;
}

export function attemptHandoff(rig: SoakRig, pod: AdmittedPod, path: string, style: LaunchStyle): Promise<Attempt> {
  return style.ack ? ackingLauncher(rig, path, style.readDelayMs ?? 0) : standInLauncher(rig, pod, style.readDelayMs ?? 0);
}

/** The launcher got what the contract promises: one byte 0 and an IOMMUFD context already in RLIMIT mode. */
function gotCorrectFd(report: LauncherReport): boolean {
  return report.result === 'ok' && report.dataBytes === 1 && report.firstByte === 0 && report.getErrno === '' && report.rlimitMode === 1;
}

function describeReport(report: LauncherReport): string {
  if (report.result === 'ok') return `ok(bytes=${report.dataBytes},first=${report.firstByte},rlimit=${report.rlimitMode},get=${report.getErrno || 'ok'})`;
  if (report.result === 'error') return `error(${report.step}:${report.errno})`;
  if (report.result === 'no-fd') return `no-fd(bytes=${report.dataBytes})`;
  return report.result;
}

/**
 * What a restart can do to a stand-in: the socket is absent for a moment,
 * nobody listens on it yet, or the connection closed before an fd came (0
 * bytes). Bytes without an fd, or a wrong fd, are never retried.
 */
function restartMayCause(report: LauncherReport): boolean {
  if (report.result === 'no-socket') return true;
  if (report.result === 'no-fd') return report.dataBytes === 0;
  return report.result === 'error' && (report.step === 'connect' || report.step === 'recvmsg');
}

async function standInLauncher(rig: SoakRig, pod: AdmittedPod, readDelayMs: number): Promise<Attempt> {
  let report: LauncherReport;
  try {
    report = await rig.node.launch(pod, { readDelayMs });
  } catch (err) {
    return { verdict: 'broken', seen: `the stand-in printed no report: ${(err as Error).message}` };
  }
  if (gotCorrectFd(report)) return { verdict: 'correct-fd', ackRefused: false };
  return { verdict: restartMayCause(report) ? 'retry' : 'broken', seen: describeReport(report) };
}

async function ackingLauncher(rig: SoakRig, path: string, readDelayMs: number): Promise<Attempt> {
  let connection: RawConnection;
  try {
    connection = await RawConnection.open(path, 3000);
  } catch (err) {
    return { verdict: 'retry', seen: `connect:${(err as { code?: string }).code ?? (err as Error).message}` };
  }
  try {
    if (readDelayMs > 0) await sleep(readDelayMs);
    const got = await connection.readOnce(readTimeoutMs, launcherDataBuffer);
    if (got === 'closed') return { verdict: 'retry', seen: 'closed-without-fd' };
    if (got === 'timeout') return { verdict: 'broken', seen: `nothing came within ${readTimeoutMs} ms` };
    if ('error' in got) return { verdict: 'retry', seen: `recv:${got.error}` };
    if (got.fd === null) return { verdict: 'broken', seen: `${got.data.length} bytes without an fd` };
    try {
      // The ACK is optional for the bridge; refused only if the bridge has gone (a restart), which does not matter.
      const ackRefused = (await connection.send(ackByte, 1000)) !== 1;
      if (got.data.length !== 1 || got.data[0] !== 0) return { verdict: 'broken', seen: `the fd came with ${got.data.length} bytes (${got.data.toString('hex')})` };
      const check = await checkFdInLauncher(rig.node.kernel, rig.node.dir, got.fd);
      if (check.problem) return { verdict: 'broken', seen: check.problem };
      return { verdict: 'correct-fd', ackRefused };
    } finally {
      closeFd(got.fd);
    }
  } finally {
    await connection.close();
  }
}
