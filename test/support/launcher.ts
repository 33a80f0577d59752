import { execFile } from 'node:child_process';

export interface LauncherOptions {
  uid?: number;
  readDelayMs?: number;
  ack?: boolean;
  set?: 0 | 1;
  vanish?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** What the launcher stand-in printed: see test/launcher-stand-in/launcher.c. */
export interface LauncherReport {
  result: 'ok' | 'no-fd' | 'no-socket' | 'vanished' | 'error';
  dataBytes?: number;
  firstByte?: number;
  target?: string;
  getErrno?: string;
  rlimitMode?: number;
  set?: string;
  rlimitModeAfterSet?: number;
  /** With --ack: "ok", or the errno name when the bridge had already closed. */
  ack?: string;
  uid: number;
  step?: string;
  errno?: string;
}

/** Runs the virt-launcher stand-in as its own process (as `uid` when given) and returns its report. */
export function runLauncher(binary: string, socketPath: string, options: LauncherOptions = {}): Promise<LauncherReport> {
  const args = ['--socket', socketPath];
  if (options.readDelayMs) args.push('--read-delay-ms', String(options.readDelayMs));
  if (options.ack) args.push('--ack');
  if (options.set !== undefined) args.push('--set', String(options.set));
  if (options.vanish) args.push('--vanish');
  return new Promise((resolve, reject) => {
    execFile(
      binary,
      args,
      { env: options.env, uid: options.uid, gid: options.uid, timeout: 30_000 },
      (err, stdout, stderr) => {
        const line = stdout.trim().split('\n').pop() ?? '';
        try {
          resolve(JSON.parse(line) as LauncherReport);
        } catch {
          reject(new Error(`launcher printed no report (${err?.message ?? 'exit 0'}): ${stdout} ${stderr}`));
        }
      },
    );
  });
}
