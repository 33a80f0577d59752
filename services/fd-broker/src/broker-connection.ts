import type { Socket } from 'node:net';
import { closeFd, peerCredentials, type PeerCredentials, sendWithFd, socketFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { encodeFrame, FrameDecoder, FrameTooLargeError, type Logger } from '@iommufd-plugin/common';
import type { BrokerActivity } from './broker-activity';
import { errorOf, errorReply, type HandledRequest, type RequestHandler } from './request-handler';

export interface ConnectionLimits {
  allowedUids: ReadonlySet<number>;
  maxRequestBytes: number;
  requestTimeoutMs: number;
}

/**
 * One client connection: checks who it is, reads framed requests, answers
 * them in order, and closes it on a bad peer, an oversized or late request,
 * or an error it cannot answer past.
 */
export class BrokerConnection {
  private readonly decoder: FrameDecoder;
  private readonly queue: Buffer[] = [];
  private busy = false;
  private closed = false;
  private deadline: NodeJS.Timeout | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly peer: PeerCredentials,
    private readonly handler: RequestHandler,
    private readonly limits: ConnectionLimits,
    private readonly activity: BrokerActivity,
    private readonly log: Logger,
  ) {
    this.decoder = new FrameDecoder(limits.maxRequestBytes);
    socket.on('error', (err) => this.log.debug({ event: 'connection_error', peer, reason: err.message }, 'connection error'));
    socket.on('close', () => this.onClose());
  }

  /** Reads the peer's credentials and, if it may talk to us, starts serving it. */
  static accept(socket: Socket, handler: RequestHandler, limits: ConnectionLimits, activity: BrokerActivity, log: Logger): void {
    let peer: PeerCredentials;
    try {
      peer = peerCredentials(socketFd(socket));
    } catch (err) {
      socket.on('error', () => undefined);
      log.warn({ event: 'peer_unknown', reason: (err as Error).message }, 'could not read peer credentials; closing');
      socket.destroy();
      return;
    }
    const connection = new BrokerConnection(socket, peer, handler, limits, activity, log);
    if (!limits.allowedUids.has(peer.uid)) {
      log.warn({ event: 'peer_refused', peer }, `peer uid ${peer.uid} is not in --allowed-uids; refusing`);
      const refusal = errorReply('', broker.ErrorCode.ERROR_CODE_PEER_NOT_ALLOWED, `uid ${peer.uid} may not use this broker`);
      activity.peerRefused(peer, errorOf(refusal));
      void connection.finish(refusal);
      return;
    }
    connection.start();
  }

  private start(): void {
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.armDeadline();
  }

  private onData(chunk: Buffer): void {
    let payloads: Buffer[];
    try {
      payloads = this.decoder.push(chunk);
    } catch (err) {
      if (!(err instanceof FrameTooLargeError)) throw err;
      this.log.warn({ event: 'bad_request', peer: this.peer, bytes: err.declaredBytes }, 'request too large');
      void this.finishInvalid(errorReply('', broker.ErrorCode.ERROR_CODE_REQUEST_TOO_LARGE, err.message));
      return;
    }
    this.queue.push(...payloads);
    void this.drain();
  }

  /** Answers queued requests one at a time, so replies keep request order. */
  private async drain(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (let payload = this.queue.shift(); payload !== undefined && !this.closed; payload = this.queue.shift()) {
        this.clearDeadline();
        const handled = await this.handler.handle(payload, this.peer);
        await this.send(handled);
        this.armDeadline();
      }
    } finally {
      this.busy = false;
    }
  }

  /**
   * Sends one reply and, with it, its fd; then closes our copy of the fd
   * whatever happened. A peer that has gone away just loses its reply.
   */
  private async send({ reply, fd }: HandledRequest): Promise<void> {
    try {
      if (this.closed) return;
      // Anything Node still queues must go first, or our sendmsg would overtake it.
      if (this.socket.writableLength > 0) await new Promise((resolve) => this.socket.once('drain', resolve));
      const frame = encodeFrame(broker.Reply.encode(reply).finish());
      const sent = sendWithFd(socketFd(this.socket), frame, fd);
      if (sent < frame.length) this.socket.write(frame.subarray(sent));
    } catch (err) {
      this.log.warn(
        { event: 'reply_failed', peer: this.peer, requestId: reply.requestId, reason: (err as Error).message },
        'could not send the reply; closing the connection',
      );
      this.socket.destroy();
    } finally {
      if (fd !== null) closeFd(fd);
    }
  }

  /** Sends a last reply and closes. */
  private async finish(last: HandledRequest): Promise<void> {
    this.clearDeadline();
    this.socket.pause();
    await this.send(last);
    this.closed = true;
    this.socket.end();
    // A peer that never reads must not keep the socket open.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** Ends a connection whose bytes never made a request, counting it as an invalid one. */
  private finishInvalid(last: HandledRequest): Promise<void> {
    this.activity.answered({ type: 'invalid', requestId: '', peer: this.peer, error: errorOf(last) });
    return this.finish(last);
  }

  private armDeadline(): void {
    this.clearDeadline();
    this.deadline = setTimeout(() => this.onDeadline(), this.limits.requestTimeoutMs);
  }

  private clearDeadline(): void {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = undefined;
  }

  private onDeadline(): void {
    if (this.decoder.pendingBytes === 0) {
      // An idle connection between requests: just close it.
      this.socket.destroy();
      return;
    }
    this.log.warn({ event: 'bad_request', peer: this.peer, pendingBytes: this.decoder.pendingBytes }, 'request incomplete at the deadline');
    void this.finishInvalid(
      errorReply('', broker.ErrorCode.ERROR_CODE_TIMEOUT, `request incomplete after ${this.limits.requestTimeoutMs} ms`),
    );
  }

  private onClose(): void {
    this.closed = true;
    this.clearDeadline();
    this.queue.length = 0;
  }
}
