import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fdCountOf } from './process-figures';

export type LogLine = Record<string, unknown> & { event?: string; msg?: string; level?: string };

/**
 * A service started as its own process, its JSON log lines collected so that
 * tests can wait for and assert on them.
 */
export class ServiceProcess {
  readonly logs: LogLine[] = [];
  stderr = '';
  private readonly child: ChildProcess;
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: Array<() => void> = [];

  constructor(command: string, args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        this.logs.push({ msg: line, event: 'unparsed' });
      }
      for (const wake of this.waiters) wake();
    });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('close', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Resolves with the first log line (past or future) that matches. */
  async waitForLog(match: (line: LogLine) => boolean, timeoutMs = 5000, what = 'log line'): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.logs.find(match);
      if (found) return found;
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new Error(`timed out waiting for ${what}; logs:\n${this.logs.map((l) => JSON.stringify(l)).join('\n')}\nstderr: ${this.stderr}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      this.waiters = [];
    }
  }

  /** Resolves once `count` log lines (past or future) match. Logs arrive over a pipe, so they can lag what peers see. */
  async waitForCount(match: (line: LogLine) => boolean, count: number, timeoutMs = 5000): Promise<LogLine[]> {
    let seen: LogLine[] = [];
    await this.waitForLog(
      () => (seen = this.logs.filter(match)).length >= count,
      timeoutMs,
      `${count} matching log lines`,
    ).catch((err: Error) => {
      throw new Error(`saw ${seen.length} of ${count}: ${err.message}`);
    });
    return seen;
  }

  waitForEvent(event: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitForLog((l) => l.event === event, timeoutMs, `event ${event}`);
  }

  /** The port of the service's HTTP endpoints, from its http_listening log line. */
  async httpPort(): Promise<number> {
    const line = await this.waitForEvent('http_listening');
    return line.port as number;
  }

  /** The number of fds the process holds right now. */
  fdCount(): number {
    return fdCountOf(this.pid);
  }

  exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exited;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}
