/**
 * Runs the timed launcher (c-reference/ref-receiver.c) against our
 * kubelet-bridge's handoff sockets: the time is taken inside the receiver,
 * from just before connect() to the fd in hand, so process start-up is not
 * in the figure.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import type { Round } from './stats';

export interface ReceiverOptions {
  /** Run as this uid (and gid), as an unprivileged launcher; as ourselves if undefined. */
  uid?: number;
  /** The kernel stand-in's environment (GET needs the shim). */
  env: NodeJS.ProcessEnv;
}

interface HandoffLine {
  i: number;
  connectNs?: number;
  fdNs?: number;
  ns?: number;
  error?: string;
  errno?: number;
  message?: string;
}

export class HandoffFailed extends Error {
  override name = 'HandoffFailed';
}

/** One receiver process; its stdout and stderr are kept whole. */
class Receiver {
  private stdout = '';
  private stderr = '';
  private readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  private readyWaiters: Array<() => void> = [];

  constructor(binary: string, args: string[], options: ReceiverOptions) {
    this.child = spawn(binary, args, {
      env: options.env,
      uid: options.uid,
      gid: options.uid,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('utf8').on('data', (text: string) => {
      this.stdout += text;
      if (this.stdout.startsWith('ready\n')) for (const wake of this.readyWaiters.splice(0)) wake();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => (this.stderr += text));
    this.exited = new Promise((resolve, reject) => {
      this.child.once('error', reject);
      this.child.once('close', (code) => resolve(code));
    });
  }

  /** Resolves once it printed "ready" (with --wait-start) and waits for its start time. */
  ready(): Promise<void> {
    if (this.stdout.startsWith('ready\n')) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.readyWaiters.push(resolve);
      this.exited.then((code) => reject(new HandoffFailed(`receiver exited (${code}) before it was ready: ${this.stdout} ${this.stderr}`)), reject);
    });
  }

  release(startNs: bigint): void {
    this.child.stdin!.end(`${startNs}\n`);
  }

  /** The handoff lines, once it exited; throws if any handoff failed. */
  async handoffs(): Promise<Array<Required<Pick<HandoffLine, 'connectNs' | 'fdNs' | 'ns'>>>> {
    const code = await this.exited;
    const lines = this.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as HandoffLine & { done?: boolean });
    const failed = lines.filter((l) => l.error !== undefined);
    if (code !== 0 || failed.length > 0) {
      throw new HandoffFailed(`receiver exited ${code}; ${failed.length} handoffs failed: ${JSON.stringify(failed.slice(0, 3))} ${this.stderr}`);
    }
    return lines.filter((l) => l.fdNs !== undefined).map((l) => ({ connectNs: l.connectNs!, fdNs: l.fdNs!, ns: l.ns! }));
  }
}

/** Handoffs one after another from one receiver, `gapUs` apart; connect → fd in hand for each, in ns. */
export async function sequentialHandoffs(binary: string, sockets: readonly string[], gapUs: number, options: ReceiverOptions): Promise<number[]> {
  const args = ['--gap-us', String(gapUs), ...sockets.flatMap((s) => ['--socket', s])];
  const receiver = new Receiver(binary, args, options);
  return (await receiver.handoffs()).map((h) => h.ns);
}

/**
 * One receiver per socket, all started first, then released at one
 * CLOCK_MONOTONIC moment (process.hrtime uses the same clock) so that they
 * connect together.
 */
export async function concurrentHandoffs(binary: string, sockets: readonly string[], options: ReceiverOptions): Promise<Round> {
  const receivers = sockets.map((s) => new Receiver(binary, ['--wait-start', '--socket', s], options));
  try {
    await Promise.all(receivers.map((r) => r.ready()));
  } catch (err) {
    for (const r of receivers) r.release(0n);
    throw err;
  }
  // Room to write every start line before the moment comes (as ref-bench.c).
  const startNs = process.hrtime.bigint() + 5_000_000n + BigInt(sockets.length) * 20_000n;
  for (const r of receivers) r.release(startNs);
  const results = (await Promise.all(receivers.map((r) => r.handoffs()))).flat();
  return {
    launchers: sockets.length,
    startNs: Number(startNs),
    lastFdNs: Math.max(...results.map((h) => h.fdNs)),
    ns: results.map((h) => h.ns),
  };
}
