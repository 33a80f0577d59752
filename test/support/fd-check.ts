import { join } from 'node:path';
import { type FakeKernel, runningAsRoot, unprivilegedUid } from './fake-kernel';
import { serveFd } from './fd-server';
import { runLauncher, type LauncherReport } from './launcher';

/** The uid launchers run as: an unprivileged one as root, else ourselves. */
export const launcherUid = runningAsRoot ? unprivilegedUid : undefined;

/**
 * Hands `fd` (which this process holds) to the launcher stand-in over a real
 * socket and returns what it saw: RLIMIT mode read back and, with `set`, the
 * result of trying to change it. Runs as `uid` (uid 0 counts as privileged).
 * Does not close `fd`.
 */
export async function inspectFdInLauncher(
  kernel: FakeKernel,
  dir: string,
  fd: number,
  options: { set?: 0 | 1; uid?: number } = { uid: launcherUid },
): Promise<LauncherReport> {
  const path = join(dir, `inspect-${process.pid}-${fd}-${Date.now()}.sock`);
  const server = await serveFd(path, fd);
  try {
    return await runLauncher(kernel.launcher, path, {
      uid: options.uid,
      set: options.set,
      env: kernel.env(options.uid === 0 ? { privilegedUids: [0] } : {}),
    });
  } finally {
    await server.close();
  }
}

/**
 * Checks an fd this process received the way a launcher would: the stand-in
 * (unprivileged where possible) reads RLIMIT mode and tries to turn it off.
 * Does not close `fd`. Returns its report and, if the fd is not a good
 * context, why.
 */
export async function checkFdInLauncher(kernel: FakeKernel, dir: string, fd: number): Promise<{ report: LauncherReport; problem?: string }> {
  const report = await inspectFdInLauncher(kernel, dir, fd, { uid: launcherUid, set: 0 });
  if (report.result !== 'ok' || report.rlimitMode !== 1 || report.getErrno !== '') return { report, problem: `launcher stand-in saw ${JSON.stringify(report)}` };
  if (runningAsRoot && (report.set !== 'EPERM' || report.rlimitModeAfterSet !== 1)) {
    return { report, problem: `an unprivileged receiver could change RLIMIT mode: ${JSON.stringify(report)}` };
  }
  return { report };
}
