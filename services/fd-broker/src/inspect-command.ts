import { type BigIntStats, fstatSync, readlinkSync } from 'node:fs';
import { BrokerReplyError, openContext } from '@iommufd-plugin/common';
import { closeFd, connectUnix, getRlimitMode, NativeError, receiveWithFd, sendWithFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import type { InspectArguments } from './inspect-arguments';

/** What `fd-broker inspect` found, printed as JSON. */
export interface InspectReport {
  source: 'handoff' | 'broker';
  socket: string;
  /** An fd arrived and GET read RLIMIT mode as on. */
  ok: boolean;
  summary: string;
  fdReceived: boolean;
  /** Handoff only: the data that came with (or without) the fd. */
  data?: { bytes: number; firstByte: number | null };
  /** Broker only: what the broker's reply claimed. */
  reply?: { devicePath: string; strategy: string; rlimitModeVerified: boolean };
  fd?: FdReport;
  error?: { message: string; code?: string; errno?: string; syscall?: string };
}

export interface FdReport {
  /** The fd number in this process (closed again before exit). */
  number: number;
  /** readlink of /proc/self/fd/N: the device node (or "(deleted)" for a temporary node). */
  target: string | null;
  type: string;
  /** major:minor, for a device. */
  rdev: string | null;
  mode: string;
  /** IOMMU_OPTION GET of RLIMIT mode: 1 on, 0 off, null when GET failed (see rlimitModeErrno). */
  rlimitMode: 0 | 1 | null;
  rlimitModeErrno: string | null;
}

/** `fd-broker inspect`: prints the report and returns the exit code. */
export async function inspectCommand(args: InspectArguments): Promise<number> {
  const report = args.source.kind === 'handoff' ? await fromHandoff(args) : await fromBroker(args);
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  return report.ok ? 0 : 1;
}

/** Reads the way virt-launcher does: connect, send nothing, one recvmsg with a 32-byte buffer. */
async function fromHandoff({ source, timeoutMs, ack }: InspectArguments): Promise<InspectReport> {
  const base = { source: 'handoff' as const, socket: source.path };
  let sock: number;
  try {
    sock = await connectUnix(source.path, timeoutMs);
  } catch (err) {
    return failed(base, `cannot connect to ${source.path}`, err);
  }
  try {
    const { data, fd } = await receiveWithFd(sock, 32, timeoutMs);
    const received = { bytes: data.length, firstByte: data[0] ?? null };
    if (fd === null) {
      const why = data.length === 0 ? 'the socket closed without sending anything (the bridge could not get a context; see its log)' : `${data.length} byte(s) came without an fd`;
      return { ...base, ok: false, summary: `no fd: ${why}`, fdReceived: false, data: received };
    }
    if (ack) sendWithFd(sock, Buffer.from([0]), null);
    return withFd({ ...base, data: received }, fd);
  } catch (err) {
    return failed(base, 'receiving failed', err);
  } finally {
    closeFd(sock);
  }
}

async function fromBroker({ source, timeoutMs }: InspectArguments): Promise<InspectReport> {
  const base = { source: 'broker' as const, socket: source.path };
  try {
    const { fd, details } = await openContext(source.path, { allocationId: 'fd-broker-inspect', timeoutMs });
    const reply = {
      devicePath: details.devicePath,
      // As the --open-strategy flag spells it.
      strategy: broker.openStrategyToJSON(details.strategy).replace(/^OPEN_STRATEGY_/, '').toLowerCase().replace('_', '-'),
      rlimitModeVerified: details.rlimitModeVerified,
    };
    return withFd({ ...base, reply }, fd);
  } catch (err) {
    return failed(base, 'the broker gave no context', err);
  }
}

/** Describes the fd, closes it, and judges the whole. */
function withFd(partial: Omit<InspectReport, 'ok' | 'summary' | 'fdReceived' | 'fd'>, fd: number): InspectReport {
  let described: FdReport;
  try {
    described = describeFd(fd);
  } finally {
    closeFd(fd);
  }
  const ok = described.rlimitMode === 1;
  const mode =
    described.rlimitMode === null ? `RLIMIT mode unreadable (${described.rlimitModeErrno})` : `RLIMIT mode ${described.rlimitMode === 1 ? 'on' : 'OFF'}`;
  return { ...partial, ok, summary: `fd received (${described.target ?? described.type}), ${mode}`, fdReceived: true, fd: described };
}

function describeFd(fd: number): FdReport {
  let target: string | null = null;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // No /proc (unusual in a container): the rest of the report still stands.
  }
  // Under the kernel stand-in (test/kernel-stand-in) a context is a memfd, and
  // Node's fstat issues the statx syscall itself rather than through libc, so
  // the shim cannot dress it up: it shows as a regular file there. On a real
  // kernel this is the character device of /dev/iommu.
  const st = fstatSync(fd, { bigint: true });
  let rlimitMode: 0 | 1 | null = null;
  let rlimitModeErrno: string | null = null;
  try {
    rlimitMode = getRlimitMode(fd) ? 1 : 0;
  } catch (err) {
    rlimitModeErrno = err instanceof NativeError ? err.code : (err as Error).message;
  }
  const device = st.isCharacterDevice() || st.isBlockDevice();
  return {
    number: fd,
    target,
    type: fileType(st),
    rdev: device ? `${deviceMajor(st.rdev)}:${deviceMinor(st.rdev)}` : null,
    mode: (Number(st.mode) & 0o7777).toString(8).padStart(4, '0'),
    rlimitMode,
    rlimitModeErrno,
  };
}

function fileType(st: BigIntStats): string {
  if (st.isCharacterDevice()) return 'character device';
  if (st.isBlockDevice()) return 'block device';
  if (st.isFile()) return 'regular file';
  if (st.isDirectory()) return 'directory';
  if (st.isSocket()) return 'socket';
  if (st.isFIFO()) return 'fifo';
  if (st.isSymbolicLink()) return 'symbolic link';
  return 'unknown';
}

// glibc's dev_t encoding (major/minor in <sys/sysmacros.h>).
function deviceMajor(rdev: bigint): bigint {
  return ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
}
function deviceMinor(rdev: bigint): bigint {
  return (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
}

function failed(base: { source: 'handoff' | 'broker'; socket: string }, what: string, err: unknown): InspectReport {
  const error: NonNullable<InspectReport['error']> = { message: (err as Error).message ?? String(err) };
  if (err instanceof BrokerReplyError) {
    error.code = err.codeName;
    if (err.errnoName) error.errno = err.errnoName;
    if (err.syscall) error.syscall = err.syscall;
  } else if (err instanceof NativeError) {
    error.errno = err.code;
    error.syscall = err.syscall;
  }
  const cause = error.code ? `${error.code}${error.errno ? ` (${error.errno})` : ''}: ${error.message}` : error.message;
  return { ...base, ok: false, summary: `no fd: ${what}: ${cause}`, fdReceived: false, error };
}
