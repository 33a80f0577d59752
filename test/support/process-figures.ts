import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

/** Resource figures of one process, read from /proc. */
export interface ProcessFigures {
  pid: number;
  fds: number;
  /** Resident set size in KiB (VmRSS). */
  rssKiB: number;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still answers kill(0); look at its state too.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function fdCountOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** What each fd of a process points to, e.g. "socket:[123]", "/dev/null", "anon_inode:[eventfd]". */
export function fdTargetsOf(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  const targets: string[] = [];
  for (const name of readdirSync(dir)) {
    try {
      targets.push(readlinkSync(join(dir, name)));
    } catch {
      // closed while we looked
    }
  }
  return targets;
}

/** A coarse summary of fd targets by kind, for failure messages: {"socket": 12, "pipe": 4, ...}. */
export function fdKindsOf(pid: number): Record<string, number> {
  const kinds: Record<string, number> = {};
  for (const target of fdTargetsOf(pid)) {
    const kind = /^([a-z_]+):/.exec(target)?.[1] ?? (target.startsWith('/memfd:') ? 'memfd' : 'file');
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return kinds;
}

/**
 * The unix sockets a process holds, each as "inode path/state" from
 * /proc/net/unix: for a failure message that must say which socket leaked.
 */
export function unixSocketsOf(pid: number): string[] {
  const table = new Map<string, string>();
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode [Path]
    if (fields.length >= 7) table.set(fields[6]!, `${fields[7] ?? '(unnamed)'} st=${fields[5]}`);
  }
  return fdTargetsOf(pid)
    .map((target) => /^socket:\[(\d+)\]$/.exec(target)?.[1])
    .filter((inode): inode is string => inode !== undefined)
    .map((inode) => `${inode} ${table.get(inode) ?? '(not unix)'}`);
}

export function rssKiBOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return match ? Number(match[1]) : 0;
}

export function figuresOf(pid: number): ProcessFigures {
  return { pid, fds: fdCountOf(pid), rssKiB: rssKiBOf(pid) };
}

/** Entries of a directory by kind: sockets, other files (e.g. a state file), and temporary device nodes. */
export function directoryCensus(dir: string): { total: number; sockets: number; names: string[] } {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return { total: 0, sockets: 0, names: [] };
  }
  let sockets = 0;
  for (const name of names) {
    try {
      if (lstatSync(join(dir, name)).isSocket()) sockets++;
    } catch {
      // removed while we looked
    }
  }
  return { total: names.length, sockets, names: names.sort() };
}

/** Waits until `check` returns true or `timeoutMs` passes; returns whether it held. */
export async function settle(check: () => boolean, timeoutMs: number, intervalMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (check()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** The fd count once two readings 150 ms apart agree (at most 3 s): a baseline not caught mid-close. */
export async function stableFdCount(pid: number): Promise<number> {
  let last = fdCountOf(pid);
  for (let i = 0; i < 20; i++) {
    await new Promise((resolve) => setTimeout(resolve, 150));
    const now = fdCountOf(pid);
    if (now === last) return now;
    last = now;
  }
  return last;
}
