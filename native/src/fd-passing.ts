import type { Socket } from 'node:net';
import { check, NativeError } from './errors';
import { native } from './native-library';

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

export interface ReceivedMessage {
  /** The bytes read; may be fewer than a whole protocol message on a stream socket. */
  data: Buffer;
  /** The fd that came with the data (already close-on-exec), or null. */
  fd: number | null;
}

/**
 * The kernel fd under a connected or accepted `net.Socket`. Node does not
 * expose it publicly; libuv keeps it in the handle. Throws if the socket is
 * closed or is not a unix-domain pipe.
 */
export function socketFd(socket: Socket): number {
  // Node's typings omit `_handle`; it is stable across Node 12–22 for pipes.
  const handle = (socket as unknown as { _handle?: { fd?: number } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new NativeError(9 /* EBADF */, 'socket fd');
  return fd;
}

/**
 * Sends `data` with `fd` attached (SCM_RIGHTS) in one sendmsg. Never blocks:
 * the socket's buffer is asked with MSG_DONTWAIT, and a full buffer is an
 * EAGAIN error. Returns the number of bytes sent; a short send means the
 * caller must send the rest (without the fd, which went with the first byte).
 */
export function sendWithFd(sock: number, data: Uint8Array, fd: number | null): number {
  return check(native.ifn_send_with_fd([sock, Buffer.from(data), data.length, fd ?? -1]), 'sendmsg');
}

/**
 * Waits (on a worker thread, up to `timeoutMs`) for the next bytes on `sock`
 * and any fd carried with them. A message with more than one fd, or whose
 * control data was truncated, is refused with EPROTO and its fds closed.
 * Zero bytes and no fd means the peer closed the connection.
 */
export async function receiveWithFd(sock: number, maxBytes: number, timeoutMs: number): Promise<ReceivedMessage> {
  const buf = Buffer.alloc(maxBytes);
  const fdOut = Buffer.alloc(4);
  const got = check(await native.ifn_recv_with_fd([sock, buf, maxBytes, timeoutMs, fdOut]), 'recvmsg');
  const fd = fdOut.readInt32LE(0);
  return { data: buf.subarray(0, got), fd: fd >= 0 ? fd : null };
}

/** The pid, uid and gid of the process at the other end of a unix socket (SO_PEERCRED). */
export function peerCredentials(sock: number): PeerCredentials {
  const out = Buffer.alloc(12);
  check(native.ifn_peer_credentials([sock, out]), 'getsockopt(SO_PEERCRED)');
  return { pid: out.readInt32LE(0), uid: out.readInt32LE(4), gid: out.readInt32LE(8) };
}

/**
 * Connects a unix stream socket that we own outright (no Node stream reads
 * it, so fds sent to it are not lost). Waits on a worker thread, at most
 * `timeoutMs` while the listener's backlog is full. Close it with closeFd.
 */
export async function connectUnix(path: string, timeoutMs: number): Promise<number> {
  return check(await native.ifn_connect_unix([path, timeoutMs]), 'connect', path);
}

/** Closes an fd we received or opened natively. */
export function closeFd(fd: number): void {
  check(native.ifn_close([fd]), 'close');
}
