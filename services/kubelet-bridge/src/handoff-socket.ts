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
  /** Fds handed out so far (more than one only in per-connection mode). */
  handoffs: number;
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
  /** Called after each successful handoff (the allocation's count changed). */
  onHandedOff: (socket: HandoffSocket) => void;
  /** Bounds the connections open at once across all handoff sockets. */
  admission: { tryAcquire(): boolean; release(): void };
  hooks: HandoffHooks;
}

/** What a handoff reports to, and asks of, the rest of the bridge. */
export interface HandoffHooks {
  /** Counts each outcome; `seconds` runs from the launcher's connect. */
  observe(result: HandoffResult | 'refused', seconds: number): void;
  /** The pod holding these devices, for the log line, if the kubelet knows it. */
  podHolding(deviceIds: readonly string[]): Promise<PodRef | undefined>;
  /** The broker gave no context: the node's health may have changed. */
  brokerFailed(): void;
}

/** The one data byte sent with the fd; virt-launcher ignores its value. */
const handoffByte = Buffer.from([0]);

/**
 * Connections one socket serves or queues at once. A launcher needs one; the
 * cap keeps a pod that floods its own socket from taking the shared slots.
 */
const maxConnectionsPerSocket = 4;

/**
 * The unix socket of one allocation, mounted into its container. Each
 * launcher that connects gets a fresh IOMMUFD context at once: one zero byte
 * with the fd attached, as virt-launcher expects. An ACK is accepted, never
 * required; the connection is closed when it comes or after ackTimeoutMs.
 */
export class HandoffSocket {
  readonly server: Server;
  private retired = false;
  private accepting = true;
  private inFlight = 0;
  private refusedSinceLog = 0;
  private lastRefusalLogAt = 0;
  private idleWaiters: Array<() => void> = [];
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

  /** Listens at `path`, replacing a socket file a previous bridge left there (never anything else). */
  async listen(): Promise<void> {
    removeSocketFile(this.path);
    await listenUnix(this.server, this.path, this.options.socketMode);
    if (this.options.selinuxLabel !== '') setSelinuxLabel(this.path, this.options.selinuxLabel);
  }

  /**
   * Stops listening and removes the socket file. Safe to call more than once.
   * Connections still queued behind the one that got the fd are closed
   * without one as their turn comes.
   */
  async retire(): Promise<void> {
    if (this.retired) return;
    this.retired = true;
    this.accepting = false;
    // Remove the path first so no new launcher finds it. Not waiting for
    // close()'s callback: it waits for every open connection, and in `once`
    // mode the queued ones wait for us, so that would hang until they gave up.
    removeSocketFile(this.path);
    this.server.close();
    this.options.onRetired(this);
  }

  /**
   * For shutdown: refuse new connections, and resolve once the handoffs in
   * progress are done or `timeoutMs` has passed. The socket file stays for
   * the next bridge to listen on.
   */
  async quiesce(timeoutMs: number): Promise<void> {
    this.accepting = false;
    if (this.inFlight === 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private accept(connection: Socket): void {
    connection.on('error', () => undefined);
    const refusal = !this.accepting
      ? 'shutting down'
      : this.inFlight >= maxConnectionsPerSocket
        ? `more than ${maxConnectionsPerSocket} connections to this socket at once`
        : !this.options.admission.tryAcquire()
          ? 'too many launcher connections at once (--max-handoff-connections)'
          : null;
    if (refusal !== null) {
      this.options.hooks.observe('refused', 0);
      this.logRefusal(refusal);
      connection.destroy();
      return;
    }
    this.inFlight++;
    const serve = () => this.handOff(connection).finally(() => this.finished());
    if (this.options.mode === 'per-connection') void serve();
    else this.queue = this.queue.then(serve);
  }

  /** One line per second at most: a flood must not flood the log too. */
  private logRefusal(reason: string): void {
    this.refusedSinceLog++;
    const now = Date.now();
    if (now - this.lastRefusalLogAt < 1000) return;
    this.log.warn(
      { event: 'handoff', result: 'refused', allocationId: this.allocation.id, reason, refused: this.refusedSinceLog },
      'refused launcher connections',
    );
    this.lastRefusalLogAt = now;
    this.refusedSinceLog = 0;
  }

  private finished(): void {
    this.options.admission.release();
    this.inFlight--;
    if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private async handOff(connection: Socket): Promise<void> {
    const started = process.hrtime.bigint();
    if (this.retired || connection.destroyed) {
      connection.destroy();
      return;
    }
    const { hooks } = this.options;
    const peer = readPeer(connection);
    const outcome = await this.sendContext(connection);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    hooks.observe(outcome.result, seconds);

    if (outcome.result === 'ok') {
      this.allocation.handoffs++;
      this.awaitOptionalAck(connection);
      if (this.options.mode === 'once') await this.retire();
      else this.options.onHandedOff(this);
    } else {
      connection.destroy();
      if (outcome.result === 'broker_failed') hooks.brokerFailed();
    }

    // The log line waits for the pod's name; the handoff itself does not, so
    // the lookup (a List call to the kubelet) starts only after the fd is sent.
    const pod = hooks.podHolding(this.allocation.deviceIds);
    const fields = {
      event: 'handoff',
      result: outcome.result,
      allocationId: this.allocation.id,
      deviceIds: this.allocation.deviceIds,
      peer,
      durationMs: seconds * 1000,
      reason: outcome.reason,
      handoffs: this.allocation.handoffs,
    };
    void pod.then((podRef) => this.logHandoff({ ...fields, pod: podRef }, outcome.result));
  }

  private logHandoff(fields: Record<string, unknown>, result: HandoffResult): void {
    if (result === 'ok') this.log.info(fields, 'handed an IOMMUFD context to the launcher');
    else if (result === 'broker_failed') this.log.error(fields, 'no IOMMUFD context from the broker; closed the launcher connection without an fd');
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

/** Removes our socket file, and nothing else: a path that is not a socket (a planted file or symlink) is left alone. */
export function removeSocketFile(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
