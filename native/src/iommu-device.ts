import { check, NativeError } from './errors';
import { native } from './native-library';

/** How the device is opened; see ifn_open_device_via_node in c/iommu_device.c for why. */
export type OpenStrategy =
  | { kind: 'direct' }
  | { kind: 'temporary-node'; nodeDir: string; selinuxLabel: string };

const nodeSteps: Record<number, string> = {
  1: 'stat',
  2: 'open(node dir)',
  3: 'mknod',
  4: 'lsetxattr(security.selinux)',
  5: 'open(node)',
  6: 'fstat(node)',
  7: 'unlink(node)',
};

/**
 * Opens a fresh IOMMUFD context from `devicePath` (each open is a new,
 * independent context). The blocking part runs on a worker thread.
 * Returns the fd, close-on-exec; the caller owns it.
 */
export async function openIommuDevice(devicePath: string, strategy: OpenStrategy): Promise<number> {
  if (strategy.kind === 'direct') {
    return check(await native.ifn_open_device([devicePath]), 'open', devicePath);
  }
  const stepOut = Buffer.alloc(4);
  const result = await native.ifn_open_device_via_node([devicePath, strategy.nodeDir, strategy.selinuxLabel, stepOut]);
  if (result < 0) {
    const step = stepOut.readInt32LE(0);
    const path = step === 1 ? devicePath : strategy.nodeDir;
    throw new NativeError(-result, nodeSteps[step] ?? 'open(via node)', path);
  }
  return result;
}

/** IOMMU_OPTION SET of RLIMIT mode. Needs CAP_SYS_RESOURCE and a context without objects. */
export function setRlimitMode(fd: number, enabled: boolean): void {
  check(native.ifn_set_rlimit_mode([fd, enabled ? 1 : 0]), 'ioctl(IOMMU_OPTION SET RLIMIT_MODE)');
}

/** IOMMU_OPTION GET of RLIMIT mode: true when pinned memory is charged to the process's RLIMIT_MEMLOCK. */
export function getRlimitMode(fd: number): boolean {
  return check(native.ifn_get_rlimit_mode([fd]), 'ioctl(IOMMU_OPTION GET RLIMIT_MODE)') === 1;
}

/**
 * Labels a file for SELinux without following a final symlink. Returns false
 * when the filesystem or kernel has no SELinux (ENOTSUP), which is not an error.
 */
export function setSelinuxLabel(path: string, label: string): boolean {
  try {
    check(native.ifn_set_selinux_label([path, label]), 'lsetxattr(security.selinux)', path);
    return true;
  } catch (err) {
    if (err instanceof NativeError && err.code === 'ENOTSUP') return false;
    throw err;
  }
}
