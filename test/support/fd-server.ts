import { chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { sendWithFd, socketFd } from '@iommufd-plugin/native';

/**
 * A minimal handoff socket for tests of the broker alone: every client that
 * connects gets one zero byte with `fd` attached, as virt-launcher expects.
 */
export async function serveFd(path: string, fd: number): Promise<{ close: () => Promise<void> }> {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    sendWithFd(socketFd(socket), Buffer.from([0]), fd);
    socket.end();
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  chmodSync(path, 0o666);
  return { close: () => new Promise((resolve) => server.close(() => resolve())) };
}
