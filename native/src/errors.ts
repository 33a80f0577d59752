import { constants } from 'node:os';

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  // Several names share a number (EAGAIN/EWOULDBLOCK, ENOTSUP/EOPNOTSUPP); keep the first, the common one.
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** The symbolic name of an errno value, e.g. 1 → "EPERM". */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/**
 * A failed system call in the native layer, shaped like Node's own
 * system errors: `code` is the errno name, `syscall` what was attempted.
 */
export class NativeError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string | undefined;

  constructor(errno: number, syscall: string, path?: string) {
    const code = errnoName(errno);
    super(`${syscall}${path ? ` ${path}` : ''}: ${code}`);
    this.name = 'NativeError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
  }
}

/** Native functions return a result ≥ 0 or -errno; this turns the latter into a NativeError. */
export function check(result: number, syscall: string, path?: string): number {
  if (result < 0) throw new NativeError(-result, syscall, path);
  return result;
}
