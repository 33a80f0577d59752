import { copyFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fakeIommuLibrary, launcherStandIn } from './paths';

/** An unprivileged uid for launchers and other tenants (nobody). */
export const unprivilegedUid = 65534;
export const runningAsRoot = process.geteuid?.() === 0;

export interface FakeKernel {
  /** The stand-in /dev/iommu. */
  devicePath: string;
  /** The shim, copied where every uid can load it. */
  library: string;
  /** The launcher stand-in, copied where every uid can run it. */
  launcher: string;
  /** Environment that puts a process on the stand-in kernel. */
  env(extra?: { privilegedUids?: number[] }): NodeJS.ProcessEnv;
  /** Makes the device disappear, as when the iommufd module is unloaded. */
  removeDevice(): void;
  /** Brings it back, with the same major:minor. */
  restoreDevice(): void;
}

/**
 * Sets up the kernel stand-in (test/kernel-stand-in) in `dir`: as root a
 * character device node with a misc major:minor, as a normal user a plain
 * file (mknod needs CAP_MKNOD). Each process that should see /dev/iommu gets
 * `env()`; `privilegedUids` stand in for holding CAP_SYS_RESOURCE, which
 * even root lacks on these machines.
 */
export function fakeKernel(dir: string): FakeKernel {
  const devicePath = join(dir, 'iommu');
  const makeDevice = () => {
    if (runningAsRoot) {
      // 10 is the misc major, as for the real /dev/iommu; 242 is unused by this machine's misc drivers.
      execFileSync('mknod', ['-m', '0666', devicePath, 'c', '10', '242']);
    } else {
      writeFileSync(devicePath, '', { mode: 0o666 });
    }
  };
  makeDevice();
  const library = join(dir, 'libfake-iommu.so');
  const launcher = join(dir, 'launcher-stand-in');
  copyFileSync(fakeIommuLibrary, library);
  copyFileSync(launcherStandIn, launcher);
  return {
    devicePath,
    library,
    launcher,
    env: (extra = {}) => {
      const env: NodeJS.ProcessEnv = { ...process.env, LD_PRELOAD: library, FAKE_IOMMU_DEVICE: devicePath };
      if (extra.privilegedUids) env.FAKE_IOMMU_PRIVILEGED_UIDS = extra.privilegedUids.join(',');
      else delete env.FAKE_IOMMU_PRIVILEGED_UIDS;
      return env;
    },
    removeDevice: () => unlinkSync(devicePath),
    restoreDevice: makeDevice,
  };
}
