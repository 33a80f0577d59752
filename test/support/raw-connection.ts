import { closeFd, connectUnix, NativeError, receiveWithFd, sendWithFd } from '@iommufd-plugin/native';

/** One read: the bytes, the fd that came with them (if any), and where they sit in the stream. */
export interface ReceivedChunk {
  data: Buffer;
  fd: number | null;
  /** Offset of the first byte in everything read on this connection. */
  offset: number;
}

const pollMs = 50;

/**
 * A unix stream connection owned outright by this process (no Node stream
 * reads it, so fds sent to it arrive and can be counted). Reading, when
 * started, runs in the background on a worker thread and keeps every chunk
 * with its fd. The fd of the socket is closed only after the reader has
 * stopped, so that its number cannot be reused under a pending recvmsg.
 */
export class RawConnection {
  readonly chunks: ReceivedChunk[] = [];
  /** The peer closed its end (recvmsg read 0 bytes without an fd). */
  peerClosed = false;
  /** A receive error that ended reading, e.g. ECONNRESET. */
  readError: string | undefined;
  /** The first send error, e.g. EPIPE once the peer is gone. */
  sendError: string | undefined;
  bytesSent = 0;
  private received = 0;
  private reader: Promise<void> | undefined;
  private stopping = false;
  private closed = false;
  private listeners: Array<() => void> = [];

  private constructor(readonly sock: number) {}

  static async open(path: string, timeoutMs = 5000): Promise<RawConnection> {
    return new RawConnection(await connectUnix(path, timeoutMs));
  }

  get receivedBytes(): number {
    return this.received;
  }

  /** Starts reading in the background until the peer closes, an error, or close(). */
  startReading(maxBytes = 65536): void {
    if (this.reader) return;
    this.reader = (async () => {
      while (!this.stopping) {
        try {
          const { data, fd } = await receiveWithFd(this.sock, maxBytes, pollMs);
          if (data.length === 0 && fd === null) {
            this.peerClosed = true;
            break;
          }
          this.chunks.push({ data, fd, offset: this.received });
          this.received += data.length;
        } catch (err) {
          if (err instanceof NativeError && err.code === 'ETIMEDOUT') continue;
          this.readError = err instanceof NativeError ? err.code : String(err);
          break;
        } finally {
          this.wake();
        }
      }
      this.wake();
    })();
  }

  /** One read now (without the background reader), waiting up to timeoutMs. */
  async readOnce(timeoutMs: number, maxBytes = 65536): Promise<ReceivedChunk | 'closed' | 'timeout' | { error: string }> {
    if (this.reader) throw new Error('readOnce while the background reader runs');
    try {
      const { data, fd } = await receiveWithFd(this.sock, maxBytes, timeoutMs);
      if (data.length === 0 && fd === null) {
        this.peerClosed = true;
        return 'closed';
      }
      const chunk = { data, fd, offset: this.received };
      this.chunks.push(chunk);
      this.received += data.length;
      return chunk;
    } catch (err) {
      if (err instanceof NativeError && err.code === 'ETIMEDOUT') return 'timeout';
      return { error: err instanceof NativeError ? err.code : String(err) };
    }
  }

  /** True once reading has ended: the peer closed or a receive failed. */
  get readingEnded(): boolean {
    return this.peerClosed || this.readError !== undefined;
  }

  /**
   * Sends all of `data`, waiting while the socket buffer is full (the peer
   * may be slow to read), for at most `timeoutMs`. Stops at the first error
   * (the peer went away); returns the bytes sent.
   */
  async send(data: Uint8Array, timeoutMs = 3000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let sent = 0;
    while (sent < data.length && !this.closed) {
      try {
        sent += sendWithFd(this.sock, data.subarray(sent), null);
      } catch (err) {
        const code = err instanceof NativeError ? err.code : String(err);
        if (code === 'EAGAIN' && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 2));
          continue;
        }
        this.sendError ??= code;
        break;
      }
    }
    this.bytesSent += sent;
    return sent;
  }

  /** Sends what fits right now without waiting; returns the bytes sent (0 when the buffer is full). */
  sendNow(data: Uint8Array): number {
    try {
      const sent = sendWithFd(this.sock, data, null);
      this.bytesSent += sent;
      return sent;
    } catch (err) {
      const code = err instanceof NativeError ? err.code : String(err);
      if (code !== 'EAGAIN') this.sendError ??= code;
      return 0;
    }
  }

  /** Resolves when `predicate` holds or reading has ended, or after timeoutMs; returns whether it held. */
  async waitFor(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (this.readingEnded || Date.now() >= deadline) return predicate();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(pollMs, Math.max(1, deadline - Date.now())));
        this.listeners.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return true;
  }

  /** Waits until the peer has closed (or reading failed), at most timeoutMs; returns whether it did. */
  waitForPeerClose(timeoutMs: number): Promise<boolean> {
    return this.waitFor(() => this.readingEnded, timeoutMs);
  }

  /** Stops the reader and closes the socket. Unread data in our buffer makes this an abrupt close for the peer. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.stopping = true;
    await this.reader;
    this.closed = true;
    closeFd(this.sock);
  }

  /** Every fd received on this connection. */
  receivedFds(): number[] {
    return this.chunks.flatMap((c) => (c.fd === null ? [] : [c.fd]));
  }

  /** All bytes read so far. */
  allData(): Buffer {
    return Buffer.concat(this.chunks.map((c) => c.data));
  }

  private wake(): void {
    const listeners = this.listeners;
    this.listeners = [];
    for (const wake of listeners) wake();
  }
}
