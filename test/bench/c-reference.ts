/**
 * The C reference (test/bench/c-reference): built, installed in a scratch
 * directory with its own stand-in device, and run a piece at a time by its
 * driver, ref-bench, so that its rounds can alternate with ours and both
 * meet the same state of a shared, noisy machine.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fakeKernel, runningAsRoot, unprivilegedUid } from '../support/fake-kernel';
import { repoRoot } from '../support/paths';
import { scratchDir } from '../support/scratch-dir';
import type { Round } from './stats';

export const cReferenceDir = join(repoRoot, 'test', 'bench', 'c-reference');
const programs = ['ref-broker', 'ref-middle', 'ref-receiver', 'ref-bench'] as const;

/** `make` in c-reference (quick when up to date). */
export function buildCReference(): void {
  execFileSync('make', ['-s', '-C', cReferenceDir], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** What one ref-bench run prints (its own summary is left out: both sides are summarised here, the same way). */
interface RefBenchOutput {
  strategy: string;
  startup: { brokerReadyNs: number; middleReadyNs: number };
  sequential: number[];
  concurrent: Array<{ launchers: number; rounds: Array<{ startNs: number; firstConnectNs: number; lastFdNs: number; ns: number[] }> }>;
  /** CPU time of ref-broker and ref-middle over the run's handoffs. */
  cpuNs: { broker: number; middle: number };
  rssKb: { idle: { broker: number; middle: number }; afterLoad: { broker: number; middle: number } };
  failures: number;
}

export interface CReferenceOptions {
  strategy: 'direct' | 'temporary-node';
  /** As the fd-broker labels its temporary nodes. */
  selinuxLabel: string;
}

export class CReference {
  /** Every sample, as they accumulate over the runs. */
  readonly sequentialNs: number[] = [];
  readonly rounds = new Map<number, Round[]>();
  /** CPU time of ref-broker and ref-middle over the handoffs, by kind of run, with the handoffs it covered. */
  readonly cpu = {
    sequential: { brokerNs: 0, middleNs: 0, handoffs: 0 },
    rounds: new Map<number, { brokerNs: number; middleNs: number; handoffs: number }>(),
  };
  /** ref-broker start → listening, one per run. */
  readonly brokerStartNs: number[] = [];
  /** Resident memory of ref-broker and ref-middle at the start and the end of each run with a round in it. */
  readonly memoryKb: Array<RefBenchOutput['rssKb'] & { launchers: number }> = [];

  private readonly scratch = scratchDir('iommufd-bench-c');
  private readonly kernel = fakeKernel(this.scratch.path);
  private readonly bin = join(this.scratch.path, 'bin');

  constructor(private readonly options: CReferenceOptions) {
    // Copied where an unprivileged receiver may run them.
    mkdirSync(this.bin, { mode: 0o755 });
    chmodSync(this.bin, 0o755);
    for (const p of programs) {
      copyFileSync(join(cReferenceDir, 'build', p), join(this.bin, p));
      chmodSync(join(this.bin, p), 0o755);
    }
  }

  /** `count` handoffs one after another from one receiver, `gapUs` apart. */
  async sequential(count: number, gapUs: number): Promise<void> {
    const out = await this.run(['--sequential', String(count), '--gap-us', String(gapUs)]);
    this.sequentialNs.push(...out.sequential);
    this.addCpu(this.cpu.sequential, out, out.sequential.length);
  }

  /** One round of `launchers` receivers released at once. */
  async round(launchers: number): Promise<void> {
    const out = await this.run(['--concurrent', `${launchers}:1`]);
    for (const level of out.concurrent) {
      const list = this.rounds.get(level.launchers) ?? [];
      list.push(...level.rounds.map((r) => ({ launchers: level.launchers, startNs: r.startNs, lastFdNs: r.lastFdNs, ns: r.ns })));
      this.rounds.set(level.launchers, list);
    }
    this.memoryKb.push({ ...out.rssKb, launchers });
    const cpu = this.cpu.rounds.get(launchers) ?? { brokerNs: 0, middleNs: 0, handoffs: 0 };
    this.addCpu(cpu, out, launchers);
    this.cpu.rounds.set(launchers, cpu);
  }

  private addCpu(into: { brokerNs: number; middleNs: number; handoffs: number }, out: RefBenchOutput, handoffs: number): void {
    into.brokerNs += out.cpuNs.broker;
    into.middleNs += out.cpuNs.middle;
    into.handoffs += handoffs;
  }

  cleanup(): void {
    this.scratch.cleanup();
  }

  private run(phase: string[]): Promise<RefBenchOutput> {
    const args = [
      '--shim', this.kernel.library,
      '--device', this.kernel.devicePath,
      '--dir', this.scratch.path,
      '--strategy', this.options.strategy,
      '--label', this.options.selinuxLabel,
      // The stand-in's list of uids holding CAP_SYS_RESOURCE, as LocalNode gives the fd-broker.
      '--privileged-uid', String(process.geteuid?.() ?? 0),
      ...(runningAsRoot ? ['--receiver-uid', String(unprivilegedUid)] : []),
      ...phase,
    ];
    const env = { ...process.env };
    delete env.LD_PRELOAD;
    return new Promise((resolve, reject) => {
      execFile(join(this.bin, 'ref-bench'), args, { env, maxBuffer: 64 * 1024 * 1024, timeout: 120_000 }, (err, stdout, stderr) => {
        if (err) return reject(new Error(`the C reference failed (${err.message}): ${stderr}`));
        const out = JSON.parse(stdout) as RefBenchOutput;
        this.brokerStartNs.push(out.startup.brokerReadyNs);
        resolve(out);
      });
    });
  }
}
