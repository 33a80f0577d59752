/** What the figures were measured on, and what the services weigh in memory. */
import { readdirSync, readFileSync } from 'node:fs';
import { arch, cpus, loadavg, release, totalmem } from 'node:os';

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  node: string;
  kernel: string;
  arch: string;
  uid: number;
  /** 1, 5 and 15 minutes, when the run began: the machine is shared. */
  loadAverage: number[];
}

export function describeMachine(): Machine {
  const cpu = cpus();
  return {
    cpuModel: cpu[0]?.model.trim() ?? 'unknown',
    cores: cpu.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    kernel: release(),
    arch: arch(),
    uid: process.geteuid?.() ?? -1,
    loadAverage: loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

export interface Memory {
  /** VmRSS: resident now. */
  rssKb: number;
  /** RssAnon: the process's own pages (heap, stacks); the rest of VmRSS is mostly file pages such as the node binary, which processes share. */
  anonKb: number;
  /** VmHWM: the most it was ever resident. */
  peakKb: number;
}

/** Resident memory of a process, from /proc/<pid>/status. */
export function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]);
  };
  return { rssKb: field('VmRSS'), anonKb: field('RssAnon'), peakKb: field('VmHWM') };
}

/**
 * CPU time all threads of a process have run so far, in ns: the first field
 * of each /proc/<pid>/task/<tid>/schedstat (threads that already exited are
 * not counted; libuv's pool threads live as long as the process).
 */
export function cpuNsOf(pid: number): number {
  let total = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended meanwhile
    }
  }
  return total;
}
