import { lstatSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { listenUnix, type Logger } from '@iommufd-plugin/common';
import { closeFd, peerCredentials, type PeerCredentials, sendWithFd, setSelinuxLabel, socketFd } from '@iommufd-plugin/native';

export type HandoffMode = 'once' | 'per-connection';

export interface Allocation {
  id: string;
  deviceIds: readonly string[];
  createdAt: Date;
}

export interface HandoffOptions {
  mode: HandoffMode;
  socketMode: number;
  selinuxLabel: string;
  ackTimeoutMs: number;
  /** Gets a fresh, configured IOMMUFD context for this allocation; the caller owns the fd. */
  fetchContext: (allocation: Allocation) => Promise<number>;
  /** Called once the socket is closed and removed for good. */
  onRetired: (socket: HandoffSocket) => void;
}

/** The one data byte sent with the fd; virt-launcher ignores its value. */
const handoffByte = Buffer.from([0]);

/**
 * The unix socket of one allocation, mounted into its container. Each
 * launcher that connects gets a fresh IOMMUFD context at once: one zero byte
 * with the fd attached, as virt-launcher expects. An ACK is accepted, never
 * required; the connection is closed when it comes or after ackTimeoutMs.
 */
export class HandoffSocket {
  readonly server: Server;
  private handoffs = 0;
  private retired = false;
  /** In `once` mode connections are served one after another, so exactly one gets an fd. */
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly allocation: Allocation,
    readonly path: string,
    private readonly options: HandoffOptions,
    private readonly log: Logger,
  ) {
    this.server = createServer({ pauseOnConnect: true }, (connection) => this.accept(connection));
  }

  get handoffCount(): number {
    return this.handoffs;
  }

  async listen(): Promise<void> {
    await listenUnix(this.server, this.path, this.options.socketMode);
    if (this.options.selinuxLabel !== '') setSelinuxLabel(this.path, this.options.selinuxLabel);
  }

  /** Stops listening and removes the socket file. Safe to call more than once. */
  async retire(): Promise<void> {
    if (this.retired) return;
    this.retired = true;
    // server.close() unlinks the path itself, but only after its callback; remove it first so no new launcher finds it.
    removeSocketFile(this.path);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.options.onRetired(this);
  }

  private accept(connection: Socket): void {
    connection.on('error', () => undefined);
    if (this.options.mode === 'per-connection') {
      void this.handOff(connection);
    } else {
      this.queue = this.queue.then(() => this.handOff(connection));
    }
  }

  private async handOff(connection: Socket): Promise<void> {
    const started = process.hrtime.bigint();
    const peer = readPeer(connection);
    const fields = { allocationId: this.allocation.id, deviceIds: this.allocation.deviceIds, peer };
    if (this.retired || connection.destroyed) {
      connection.destroy();
      return;
    }

    let fd: number;
    try {
      fd = await this.options.fetchContext(this.allocation);
    } catch (err) {
      this.log.error(
        { event: 'handoff', result: 'broker_failed', ...fields, reason: (err as Error).message, durationMs: elapsedMs(started) },
        'no IOMMUFD context from the broker; closing the launcher connection without an fd',
      );
      connection.destroy();
      return;
    }

    try {
      if (connection.destroyed) throw new Error('the launcher closed the connection');
      sendWithFd(socketFd(connection), handoffByte, fd);
    } catch (err) {
      this.log.warn(
        { event: 'handoff', result: 'launcher_gone', ...fields, reason: (err as Error).message, durationMs: elapsedMs(started) },
        'the launcher went away before the fd could be sent; the allocation stays available',
      );
      connection.destroy();
      return;
    } finally {
      closeFd(fd);
    }

    this.handoffs++;
    this.log.info({ event: 'handoff', result: 'ok', ...fields, handoffs: this.handoffs, durationMs: elapsedMs(started) }, 'handed an IOMMUFD context to the launcher');
    this.awaitOptionalAck(connection);
    if (this.options.mode === 'once') await this.retire();
  }

  private awaitOptionalAck(connection: Socket): void {
    const timer = setTimeout(() => connection.destroy(), this.options.ackTimeoutMs);
    timer.unref();
    const done = () => {
      clearTimeout(timer);
      connection.destroy();
    };
    connection.once('data', () => {
      this.log.debug({ event: 'handoff_ack', allocationId: this.allocation.id }, 'launcher acknowledged');
      done();
    });
    connection.once('end', done);
    connection.resume();
  }
}

function readPeer(connection: Socket): PeerCredentials | undefined {
  try {
    return peerCredentials(socketFd(connection));
  } catch {
    return undefined;
  }
}

/** Removes our socket file, and nothing else: a path that is not a socket is left alone. */
export function removeSocketFile(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6;
}
