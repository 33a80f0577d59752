/**
 * The resource figures of the soak: fds and RSS of the broker and bridge
 * processes, and sockets in the handoff socket directory. A baseline is taken
 * at a quiet moment after the warm-up, peaks are sampled while the soak runs
 * (from whichever processes are serving), and the end is taken at a quiet
 * moment after the same warm-up batch again.
 *
 * A restarted service is a new process. Every process runs the same code
 * with the same configuration, so a quiet process after the same warm-up
 * holds the same fds whichever generation it is: the end, from the processes
 * serving at the end, is compared with the baseline of the first ones. The
 * report names both pids and generations.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { directoryCensus, fdCountOf, fdKindsOf, rssKiBOf, settle, stableFdCount, unixSocketsOf } from '../support/process-figures';
import type { FiguresSummary, ServiceFigures, ServiceSeries } from './soak-report';
import { type Service, type SoakRig, reclaimIntervalMs } from './soak-rig';

const sampleEveryMs = 500;
/** The bridge's saved allocations (docs/OPERATIONS.md, "Bridge restart"): expected to stay. */
const stateFileName = '.kubelet-bridge-state.json';
/** RSS may grow by this much, or by half the baseline if that is more: garbage collection is lazy. */
const rssSlackKiB = 48 * 1024;
const services: readonly Service[] = ['broker', 'bridge'];

function figuresOf(rig: SoakRig, service: Service): ServiceFigures {
  const { pid } = rig.current(service);
  return { pid, generation: rig.generation(service), fds: fdCountOf(pid), rssKiB: rssKiBOf(pid) };
}

/** Baseline and peaks; `finish` adds the end and says what grew. */
export class SoakFigures {
  private readonly series: Record<Service, ServiceSeries>;
  private readonly sockets: FiguresSummary['sockets'];
  private sampler: NodeJS.Timeout | undefined;

  private constructor(
    private readonly rig: SoakRig,
    baseline: Record<Service, ServiceFigures>,
    baselineSockets: number,
  ) {
    const seriesOf = (figures: ServiceFigures): ServiceSeries => ({ baseline: figures, peakFds: figures.fds, peakRssKiB: figures.rssKiB, end: undefined });
    this.series = { broker: seriesOf(baseline.broker), bridge: seriesOf(baseline.bridge) };
    this.sockets = { baseline: baselineSockets, peak: baselineSockets, end: -1, strayEntries: [] };
  }

  /** Takes the baseline once the node is quiet: no handoff sockets left, fd counts steady. */
  static async baseline(rig: SoakRig): Promise<SoakFigures> {
    await waitForNoSockets(rig);
    const quietFigures = async (service: Service): Promise<ServiceFigures> => {
      const { pid } = rig.current(service);
      return { pid, generation: rig.generation(service), fds: await stableFdCount(pid), rssKiB: rssKiBOf(pid) };
    };
    const baseline = { broker: await quietFigures('broker'), bridge: await quietFigures('bridge') };
    return new SoakFigures(rig, baseline, directoryCensus(rig.node.socketDir).sockets);
  }

  /** Samples every half second until `stopSampling`. */
  startSampling(): void {
    this.sampler = setInterval(() => this.sample(), sampleEveryMs);
    this.sampler.unref();
  }

  stopSampling(): void {
    if (this.sampler) clearInterval(this.sampler);
  }

  /**
   * The end: waits for the node to settle (sockets of deleted pods reclaimed,
   * fds back to the baseline), takes the figures, and returns the problems:
   * any handoff socket left, any fd above the baseline, RSS past its bound.
   */
  async finish(): Promise<string[]> {
    this.stopSampling();
    const problems: string[] = [];
    if (!(await waitForNoSockets(this.rig))) {
      problems.push(`handoff sockets left after every pod was deleted and reclaimed: ${directoryCensus(this.rig.node.socketDir).names.join(', ')}`);
    }
    const settled = () => services.every((service) => fdCountOf(this.rig.current(service).pid) <= this.series[service].baseline.fds);
    await settle(settled, 5000);
    this.sockets.end = directoryCensus(this.rig.node.socketDir).sockets;
    // The bridge may be saving its state right now (a temporary file, renamed once synced).
    await settle(() => strayEntries(this.rig.node.socketDir).length === 0, 2000);
    this.sockets.strayEntries = strayEntries(this.rig.node.socketDir);
    if (this.sockets.strayEntries.length > 0) problems.push(`left in the socket directory: ${this.sockets.strayEntries.join(', ')}`);
    for (const service of services) {
      const end = figuresOf(this.rig, service);
      const series = this.series[service];
      series.end = end;
      this.note(series, end);
      problems.push(...growthProblems(service, series.baseline, end, this.rig));
    }
    return problems;
  }

  summary(): FiguresSummary {
    return { broker: this.series.broker, bridge: this.series.bridge, sockets: this.sockets };
  }

  private sample(): void {
    for (const service of services) {
      try {
        this.note(this.series[service], figuresOf(this.rig, service));
      } catch {
        // The process is being restarted: nothing to read this time.
      }
    }
    this.sockets.peak = Math.max(this.sockets.peak, directoryCensus(this.rig.node.socketDir).sockets);
  }

  private note(series: ServiceSeries, figures: ServiceFigures): void {
    series.peakFds = Math.max(series.peakFds, figures.fds);
    series.peakRssKiB = Math.max(series.peakRssKiB, figures.rssKiB);
  }
}

/**
 * Entries of the socket directory that are neither handoff sockets nor the
 * bridge's state file, e.g. a temporary device node a killed broker left.
 */
function strayEntries(dir: string): string[] {
  return readdirSync(dir).filter((name) => name !== stateFileName && !isSocket(join(dir, name)));
}

function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Sockets of deleted pods are gone within a few reclaim passes. */
function waitForNoSockets(rig: SoakRig): Promise<boolean> {
  return settle(() => directoryCensus(rig.node.socketDir).sockets === 0, reclaimIntervalMs * 6 + 3000);
}

function growthProblems(service: Service, baseline: ServiceFigures, end: ServiceFigures, rig: SoakRig): string[] {
  const problems: string[] = [];
  if (end.fds > baseline.fds) {
    const pid = rig.current(service).pid;
    problems.push(`the ${service} holds ${end.fds} fds, ${baseline.fds} at the baseline: ${JSON.stringify(fdKindsOf(pid))}; its sockets: ${unixSocketsOf(pid).join(', ')}`);
  }
  const rssLimit = baseline.rssKiB + Math.max(rssSlackKiB, baseline.rssKiB * 0.5);
  if (end.rssKiB > rssLimit) {
    problems.push(`the ${service}'s RSS is ${(end.rssKiB / 1024).toFixed(1)} MiB, over its bound of ${(rssLimit / 1024).toFixed(1)} MiB (baseline ${(baseline.rssKiB / 1024).toFixed(1)} MiB)`);
  }
  return problems;
}
