import { chmodSync } from 'node:fs';
import type { Server } from 'node:net';

/**
 * Starts `server` listening on a unix socket at `path` with permission bits
 * `mode`. bind() creates the file synchronously inside listen(); a umask of
 * 0177 around it makes the file 0600 from birth, so no wider mode is ever
 * visible before chmod sets the configured one.
 */
export async function listenUnix(server: Server, path: string, mode: number): Promise<void> {
  const listening = new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
  });
  const previousUmask = process.umask(0o177);
  try {
    server.listen(path);
  } finally {
    process.umask(previousUmask);
  }
  await listening;
  chmodSync(path, mode);
}
