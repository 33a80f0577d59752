import { check } from './errors';
import { native } from './native-library';

/** Capability numbers from linux/capability.h, for the ones we name. */
export const capability = {
  CHOWN: 0,
  DAC_OVERRIDE: 1,
  FOWNER: 3,
  SETPCAP: 8,
  SYS_ADMIN: 21,
  SYS_RESOURCE: 24,
  MKNOD: 27,
} as const;

/**
 * Re-executes this process with only the `keep` capabilities in its bounding
 * set and no_new_privs set; never returns on success. The new image starts
 * single-threaded, so the restriction holds for every thread it will have.
 * Needs CAP_SETPCAP; throws a NativeError (e.g. EPERM) otherwise.
 */
export function restrictCapabilitiesAndReexec(executable: string, argv: readonly string[], keep: readonly number[]): never {
  const mask = keep.reduce((m, cap) => m + 2 ** cap, 0);
  check(native.ifn_restrict_and_reexec([executable, [...argv], argv.length, mask]), 'execve(restricted capabilities)', executable);
  throw new Error('execve returned without an error');
}
