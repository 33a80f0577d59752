import type { Server } from 'node:net';

/**
 * Starts `server` listening on a unix socket at `path` with permission bits
 * `mode`. bind() creates the file synchronously inside listen(), with the
 * mode that the umask leaves; setting the umask to the complement of `mode`
 * around it gives the file its final mode at birth. No chmod follows, so
 * nothing ever acts on the path after bind (a file swapped in meanwhile
 * cannot be changed through us), and no wider mode is ever visible.
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
  const previousUmask = process.umask(~mode & 0o777);
  try {
    server.listen(path);
  } finally {
    process.umask(previousUmask);
  }
  await listening;
}
