import { lchownSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { dirname } from 'node:path';
import { listenUnix, type Logger, type ProbeResult } from '@iommufd-plugin/common';
import type { BrokerActivity } from './broker-activity';
import { BrokerConnection, type ConnectionLimits } from './broker-connection';
import type { SocketOwner } from './config';
import type { RequestHandler } from './request-handler';

export interface ControlSocketOptions extends ConnectionLimits {
  path: string;
  mode: number;
  owner: SocketOwner | null;
  maxConnections: number;
}

/**
 * The broker's listening unix socket. Created with the configured mode from
 * the first instant (umask), owned as configured; a stale socket left by a
 * previous broker is replaced, anything else in its place is refused.
 */
export class ControlSocket {
  private readonly server: Server;
  /** The socket file we created, to tell it from a replacement. */
  private created: { dev: number; ino: number } | undefined;

  constructor(
    private readonly options: ControlSocketOptions,
    handler: RequestHandler,
    activity: BrokerActivity,
    private readonly log: Logger,
  ) {
    this.server = createServer((socket) => BrokerConnection.accept(socket, handler, options, activity, log));
    this.server.maxConnections = options.maxConnections;
    this.server.on('drop', (info) =>
      log.warn({ event: 'connection_dropped', maxConnections: options.maxConnections, remote: info }, 'too many connections; closed a new one'),
    );
  }

  async listen(): Promise<void> {
    const { path, mode, owner } = this.options;
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    await removeStaleSocket(path);

    await listenUnix(this.server, path, mode);
    // lchown: never follow a symlink swapped in at our path.
    if (owner) lchownSync(path, owner.uid, owner.gid);
    const { dev, ino } = lstatSync(path);
    this.created = { dev, ino };
    this.log.info({ event: 'listening', socket: path, mode: mode.toString(8).padStart(4, '0'), owner }, 'control socket ready');
  }

  /**
   * Liveness: we listen, and the path still leads to our socket. If someone
   * removed or replaced the file, the bridge can no longer reach us and only a
   * restart (which recreates it) helps.
   */
  health(): ProbeResult {
    const { path } = this.options;
    if (!this.server.listening || !this.created) return { ok: false, reason: `the control socket ${path} is not listening` };
    let current: { dev: number; ino: number };
    try {
      current = lstatSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      return { ok: false, reason: `the control socket ${path} is gone (${code}); the kubelet-bridge cannot reach the broker until it restarts` };
    }
    if (current.dev !== this.created.dev || current.ino !== this.created.ino) {
      return { ok: false, reason: `the control socket ${path} was replaced by another file; the kubelet-bridge cannot reach the broker until it restarts` };
    }
    return { ok: true, socket: path };
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Removes a socket file no process listens on any more. Refuses when a
 * broker still answers there, or when the path is not a socket at all, since
 * then it is not ours to delete.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`another process is listening on ${path}; is a broker already running?`);
  unlinkSync(path);
}
