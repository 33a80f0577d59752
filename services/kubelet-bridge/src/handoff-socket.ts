import { lstatSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { listenUnix, type Logger } from '@iommufd-plugin/common';
import { closeFd, peerCredentials, type PeerCredentials, sendWithFd, setSelinuxLabel, socketFd } from '@iommufd-plugin/native';
import type { HandoffResult } from './metrics';
import type { PodRef } from './pod-resources';

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
  hooks: HandoffHooks;
}

/** What a handoff reports to, and asks of, the rest of the bridge. */
export interface HandoffHooks {
  /** Counts each outcome; `seconds` runs from the launcher's connect. */
  observe(result: HandoffResult, seconds: number): void;
  /** The pod holding these devices, for the log line, if the kubelet knows it. */
  podHolding(deviceIds: readonly string[]): Promise<PodRef | undefined>;
  /** The broker gave no context: the node's health may have changed. */
  brokerFailed(): void;
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
    if (this.retired || connection.destroyed) {
      connection.destroy();
      return;
    }
    const { hooks } = this.options;
    const peer = readPeer(connection);
    const pod = hooks.podHolding(this.allocation.deviceIds);
    const outcome = await this.sendContext(connection);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    hooks.observe(outcome.result, seconds);

    if (outcome.result === 'ok') {
      this.handoffs++;
      this.awaitOptionalAck(connection);
      if (this.options.mode === 'once') await this.retire();
    } else {
      connection.destroy();
      if (outcome.result === 'broker_failed') hooks.brokerFailed();
    }

    const fields = {
      event: 'handoff',
      result: outcome.result,
      allocationId: this.allocation.id,
      deviceIds: this.allocation.deviceIds,
      pod: await pod,
      peer,
      durationMs: seconds * 1000,
      reason: outcome.reason,
    };
    if (outcome.result === 'ok') this.log.info({ ...fields, handoffs: this.handoffs }, 'handed an IOMMUFD context to the launcher');
    else if (outcome.result === 'broker_failed') this.log.error(fields, 'no IOMMUFD context from the broker; closed the launcher connection without an fd');
    else this.log.warn(fields, 'the launcher went away before the fd could be sent; the allocation stays available');
  }

  /** Gets a fresh context from the broker and sends it with one byte; our copy is closed whatever happens. */
  private async sendContext(connection: Socket): Promise<{ result: HandoffResult; reason?: string }> {
    let fd: number;
    try {
      fd = await this.options.fetchContext(this.allocation);
    } catch (err) {
      return { result: 'broker_failed', reason: (err as Error).message };
    }
    try {
      if (connection.destroyed) return { result: 'launcher_gone', reason: 'the launcher closed the connection' };
      sendWithFd(socketFd(connection), handoffByte, fd);
      return { result: 'ok' };
    } catch (err) {
      return { result: 'launcher_gone', reason: (err as Error).message };
    } finally {
      closeFd(fd);
    }
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
