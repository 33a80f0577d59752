/**
 * The native layer through its TypeScript face: fds really cross processes,
 * malformed control messages are refused without leaking, errors carry
 * names, and waiting never blocks the event loop.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { execFile } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { connectUnix, closeFd, NativeError, peerCredentials, receiveWithFd, sendWithFd, socketFd } from '@iommufd-plugin/native';
import { scratchDir } from './support/scratch-dir';

/** A peer in another process (python3) that connects and sends one byte with `fdCount` fds of /dev/null. */
function sendFdsFromPython(path: string, fdCount: number): Promise<void> {
  const program = [
    'import os, socket, sys',
    's = socket.socket(socket.AF_UNIX)',
    's.connect(sys.argv[1])',
    'fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[2]))]',
    'socket.send_fds(s, [b"x"], fds) if fds else s.send(b"x")',
    's.recv(1)',
  ].join('\n');
  return new Promise((resolve, reject) => execFile('python3', ['-c', program, path, String(fdCount)], (err) => (err ? reject(err) : resolve())));
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

describe('native fd passing', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let server: Server;
  let path: string;
  const accepted: Socket[] = [];
  let nextConnection: ((socket: Socket) => void) | null = null;

  before(async () => {
    scratch = scratchDir('native-test');
    path = join(scratch.path, 'peer.sock');
    // pauseOnConnect: Node must not read, or it would consume (and drop) the fds.
    server = createServer({ pauseOnConnect: true }, (socket) => {
      accepted.push(socket);
      nextConnection?.(socket);
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
  });

  after(async () => {
    for (const socket of accepted) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    scratch.cleanup();
  });

  async function receiveFrom(fdCount: number) {
    const connected = new Promise<Socket>((resolve) => (nextConnection = resolve));
    const peer = sendFdsFromPython(path, fdCount);
    const socket = await connected;
    try {
      return await receiveWithFd(socketFd(socket), 64, 5000);
    } finally {
      socket.destroy();
      await peer.catch(() => undefined);
    }
  }

  it('receives one fd sent by another process, close-on-exec', async () => {
    const { data, fd } = await receiveFrom(1);
    assert.deepEqual([...data], [0x78]);
    assert.ok(fd !== null);
    assert.equal(readlinkSync(`/proc/self/fd/${fd}`), '/dev/null');
    const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    assert.ok(flags && (parseInt(flags, 8) & 0o2000000) !== 0, 'O_CLOEXEC must be set');
    closeFd(fd);
  });

  it('receives data without an fd as fd null', async () => {
    const { data, fd } = await receiveFrom(0);
    assert.equal(data.length, 1);
    assert.equal(fd, null);
  });

  it('refuses a message with two fds (EPROTO) and closes both', async () => {
    const before = openFds();
    await assert.rejects(receiveFrom(2), (err: unknown) => {
      assert.ok(err instanceof NativeError);
      assert.equal(err.code, 'EPROTO');
      assert.equal(err.syscall, 'recvmsg');
      return true;
    });
    assert.equal(openFds(), before);
  });

  it('refuses a message whose fds do not fit the control buffer (truncated) and closes those that arrived', async () => {
    const before = openFds();
    await assert.rejects(receiveFrom(12), (err: unknown) => err instanceof NativeError && err.code === 'EPROTO');
    assert.equal(openFds(), before);
  });

  it('sends an fd that the peer receives, and reads the peer credentials', async () => {
    const connected = new Promise<Socket>((resolve) => (nextConnection = resolve));
    const client = await connectUnix(path, 1000);
    const serverSide = await connected;
    try {
      const creds = peerCredentials(socketFd(serverSide));
      assert.equal(creds.pid, process.pid);
      assert.equal(creds.uid, process.geteuid!());
      const file = openSync('/dev/zero', 'r');
      assert.equal(sendWithFd(socketFd(serverSide), Buffer.from([0]), file), 1);
      closeSync(file);
      const { fd } = await receiveWithFd(client, 8, 1000);
      assert.ok(fd !== null);
      assert.equal(readlinkSync(`/proc/self/fd/${fd}`), '/dev/zero');
      closeFd(fd);
    } finally {
      closeFd(client);
      serverSide.destroy();
    }
  });

  it('waits on a worker thread: the event loop keeps running while a receive waits, and the wait ends at its deadline', async () => {
    const connected = new Promise<Socket>((resolve) => (nextConnection = resolve));
    const client = await connectUnix(path, 1000);
    const serverSide = await connected;
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 10);
    try {
      const started = Date.now();
      await assert.rejects(receiveWithFd(client, 8, 300), (err: unknown) => err instanceof NativeError && err.code === 'ETIMEDOUT');
      assert.ok(Date.now() - started >= 290);
      assert.ok(ticks >= 15, `only ${ticks} timer ticks while waiting`);
    } finally {
      clearInterval(ticker);
      closeFd(client);
      serverSide.destroy();
    }
  });

  it('names errors by errno, syscall and path', async () => {
    await assert.rejects(connectUnix(join(scratch.path, 'absent.sock'), 100), (err: unknown) => {
      assert.ok(err instanceof NativeError);
      assert.equal(err.code, 'ENOENT');
      assert.equal(err.syscall, 'connect');
      assert.equal(err.path, join(scratch.path, 'absent.sock'));
      assert.match(err.message, /^connect .*absent\.sock: ENOENT$/);
      return true;
    });
    assert.throws(() => sendWithFd(9999, Buffer.from([0]), null), (err: unknown) => err instanceof NativeError && err.code === 'EBADF' && err.syscall === 'sendmsg');
  });
});
