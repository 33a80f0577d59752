import { closeFd, getRlimitMode, NativeError, openIommuDevice, type OpenStrategy, setRlimitMode } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';

/**
 * Why a context could not be made, already in the protocol's terms: the code
 * the bridge acts on, and a message that tells an admin what to check.
 */
export class ContextError extends Error {
  override name = 'ContextError';
  constructor(
    readonly code: broker.ErrorCode,
    message: string,
    readonly errnoName = '',
    readonly syscall = '',
  ) {
    super(message);
  }

  toReply(): broker.Error {
    return { code: this.code, message: this.message, errnoName: this.errnoName, syscall: this.syscall };
  }
}

export interface ContextFactoryOptions {
  devicePath: string;
  strategy: OpenStrategy;
}

/**
 * Makes IOMMUFD contexts: a fresh open, RLIMIT mode SET to 1, then GET to
 * prove the kernel took it. Returns the fd, which the caller must close;
 * on any failure nothing stays open.
 */
export class ContextFactory {
  constructor(private readonly options: ContextFactoryOptions) {}

  async open(): Promise<number> {
    const { devicePath, strategy } = this.options;
    let fd: number;
    try {
      fd = await openIommuDevice(devicePath, strategy);
    } catch (err) {
      throw explainOpenError(err, devicePath);
    }
    try {
      setRlimitMode(fd, true);
      if (!getRlimitMode(fd)) {
        throw new ContextError(
          broker.ErrorCode.ERROR_CODE_VERIFY_FAILED,
          `RLIMIT mode was set on ${devicePath} but reads back as off; refusing to hand out a context that would not account pinned memory per process`,
        );
      }
      return fd;
    } catch (err) {
      closeFd(fd);
      throw err instanceof ContextError ? err : explainIoctlError(err, devicePath);
    }
  }
}

function explainOpenError(err: unknown, devicePath: string): ContextError {
  if (!(err instanceof NativeError)) return internalError(err);
  const { code, syscall } = err;
  const where = `${syscall} ${err.path ?? devicePath}`;
  const C = broker.ErrorCode;
  switch (code) {
    case 'ENOENT':
      if (syscall.startsWith('stat') || syscall === 'open') {
        return new ContextError(
          C.ERROR_CODE_DEVICE_MISSING,
          `${devicePath} does not exist: the kernel has no IOMMUFD (needs Linux 6.2+ with CONFIG_IOMMUFD and the iommufd module loaded), or the host's /dev is not mounted into the broker`,
          code,
          syscall,
        );
      }
      break;
    case 'ENOTDIR':
    case 'ELOOP':
      if (syscall === 'open(node dir)') {
        return new ContextError(
          C.ERROR_CODE_KERNEL,
          `the node directory ${err.path} is not a directory, or is a symlink, which the broker refuses to follow (${code})`,
          code,
          syscall,
        );
      }
      break;
    case 'ENODEV':
      return new ContextError(C.ERROR_CODE_NOT_IOMMUFD, `${devicePath} is not a character device, so it cannot be IOMMUFD`, code, syscall);
    case 'ENXIO':
      return new ContextError(C.ERROR_CODE_NOT_IOMMUFD, `${devicePath} has no driver behind it (${where}: ENXIO); is the iommufd module loaded?`, code, syscall);
    case 'EPERM':
    case 'EACCES':
      return new ContextError(
        C.ERROR_CODE_PERMISSION_DENIED,
        syscall === 'mknod'
          ? `the broker may not create a device node in ${err.path} (${code}): the temporary-node strategy needs CAP_MKNOD; run the broker privileged or use --open-strategy direct`
          : `the broker may not open the device (${where}: ${code}); run it privileged with the host's /dev`,
        code,
        syscall,
      );
  }
  return new ContextError(C.ERROR_CODE_KERNEL, `${where} failed: ${code}`, code, syscall);
}

function explainIoctlError(err: unknown, devicePath: string): ContextError {
  if (!(err instanceof NativeError)) return internalError(err);
  const { code, syscall } = err;
  const C = broker.ErrorCode;
  switch (code) {
    case 'EPERM':
      return new ContextError(
        C.ERROR_CODE_PERMISSION_DENIED,
        'setting RLIMIT mode needs CAP_SYS_RESOURCE, which the broker lacks; run it privileged (or grant that capability)',
        code,
        syscall,
      );
    case 'ENOTTY':
      return new ContextError(
        C.ERROR_CODE_NOT_IOMMUFD,
        `${devicePath} does not answer IOMMUFD ioctls (ENOTTY): it is not an IOMMUFD device, or the kernel predates IOMMU_OPTION (6.2)`,
        code,
        syscall,
      );
    case 'EBUSY':
      return new ContextError(C.ERROR_CODE_CONTEXT_BUSY, 'the new context already holds objects, so RLIMIT mode cannot be set (EBUSY)', code, syscall);
  }
  return new ContextError(C.ERROR_CODE_KERNEL, `${syscall} on ${devicePath} failed: ${code}`, code, syscall);
}

function internalError(err: unknown): ContextError {
  return new ContextError(broker.ErrorCode.ERROR_CODE_INTERNAL, `unexpected failure: ${(err as Error).message ?? String(err)}`);
}
