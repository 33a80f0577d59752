import { join } from 'node:path';
import { type FakeKernel, runningAsRoot, unprivilegedUid } from './fake-kernel';
import { serveFd } from './fd-server';
import { runLauncher, type LauncherReport } from './launcher';

/**
 * Checks an fd this process received the way a launcher would: serves it on
 * a socket to the launcher stand-in (unprivileged where possible), which
 * reads RLIMIT mode and tries to turn it off. Does not close `fd`. Returns
 * the stand-in's report and, if the fd is not a good context, why.
 */
export async function checkFdInLauncher(kernel: FakeKernel, dir: string, fd: number): Promise<{ report: LauncherReport; problem?: string }> {
  const path = join(dir, `check-${process.pid}-${fd}-${Date.now()}.sock`);
  const server = await serveFd(path, fd);
  let report: LauncherReport;
  try {
    report = await runLauncher(kernel.launcher, path, {
      uid: runningAsRoot ? unprivilegedUid : undefined,
      set: 0,
      env: kernel.env(),
    });
  } finally {
    await server.close();
  }
  if (report.result !== 'ok' || report.rlimitMode !== 1 || report.getErrno !== '') return { report, problem: `launcher stand-in saw ${JSON.stringify(report)}` };
  if (runningAsRoot && (report.set !== 'EPERM' || report.rlimitModeAfterSet !== 1)) {
    return { report, problem: `an unprivileged receiver could change RLIMIT mode: ${JSON.stringify(report)}` };
  }
  return { report };
}
