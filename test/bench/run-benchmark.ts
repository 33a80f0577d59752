/**
 * `pnpm bench`: how fast and how lean the fd-broker + kubelet-bridge pair is,
 * measured side by side with a minimal C program doing the same handoff
 * (test/bench/c-reference), on this machine's kernel stand-in.
 *
 *   node test/dist/bench/run-benchmark.js [--quick] [--json FILE]
 *
 * The services are the real ones, as their own processes (support/local-node);
 * the kubelet simulator runs in this process. Launcher-side times are taken
 * inside the launcher (c-reference/ref-receiver.c), from just before
 * connect() to the fd in hand, for both sides. Targets are reported as met or
 * missed; a miss does not fail the run, a failed handoff does.
 */
import { chmodSync, copyFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { runningAsRoot, unprivilegedUid } from '../support/fake-kernel';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';
import { LocalNode, resourceName } from '../support/local-node';
import { buildCReference, CReference, cReferenceDir } from './c-reference';
import { cpuNsOf, describeMachine, type Machine, type Memory, memoryOf } from './machine';
import { formatReport, type Row, type ScalingRow, type Target } from './report';
import { concurrentHandoffs, sequentialHandoffs } from './receivers';
import { levelFigures, max, median, type Round, summarize } from './stats';

interface Settings {
  quick: boolean;
  jsonFile?: string;
  /** Handoffs one at a time (and as many Allocates before them). */
  sequential: number;
  /** Pause between sequential handoffs, so each meets a settled bridge. */
  gapUs: number;
  /** Rounds of 110 launchers at once on the default node. */
  rounds110: number;
  /** The growth series, on a node with enough devices for the largest. */
  levels: Array<{ launchers: number; rounds: number }>;
  /** Restarts of each service for the start-up figures. */
  restarts: number;
  /** Idle time before the idle memory reading. */
  idleMs: number;
}

/** The kubelet's default max pods per node, and the bridge's default device count. */
const podsPerNode = 110;
/** The broker's default --selinux-label (LocalNode keeps it); the C broker labels its temporary nodes the same way. */
const selinuxLabel = 'system_u:object_r:container_file_t:s0';
/** --max-connections for the growth-series broker: its default (256) is below 500 launchers at once. */
const scalingMaxConnections = 1024;

function parseArgs(argv: string[]): Settings {
  let quick = false;
  let jsonFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') quick = true;
    else if (a === '--json' && argv[i + 1] !== undefined) jsonFile = argv[++i];
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: run-benchmark [--quick] [--json FILE]\n  --quick      small counts (for CI; under a minute)\n  --json FILE  also write every raw figure to FILE\n');
      process.exit(0);
    } else {
      process.stderr.write(`run-benchmark: unknown argument ${a}; try --help\n`);
      process.exit(2);
    }
  }
  return quick
    ? {
        quick, jsonFile, sequential: 20, gapUs: 5000, rounds110: 1, restarts: 2, idleMs: 1000,
        levels: [{ launchers: 1, rounds: 5 }, { launchers: 10, rounds: 1 }, { launchers: 110, rounds: 1 }, { launchers: 500, rounds: 1 }],
      }
    : {
        quick, jsonFile, sequential: 300, gapUs: 5000, rounds110: 5, restarts: 5, idleMs: 3000,
        levels: [{ launchers: 1, rounds: 50 }, { launchers: 10, rounds: 20 }, { launchers: 110, rounds: 5 }, { launchers: 500, rounds: 3 }],
      };
}

const say = (text = ''): void => void process.stdout.write(`${text}\n`);
const ns = (ms: number): number => ms * 1e6;

/** A node as LocalNode makes it, plus the timed launcher copied where the launcher uid can run it. */
async function startNode(options: Parameters<typeof LocalNode.start>[0] = {}): Promise<{ node: LocalNode; receiver: string }> {
  const node = await LocalNode.start(options);
  const receiver = join(node.dir, 'ref-receiver');
  copyFileSync(join(cReferenceDir, 'build', 'ref-receiver'), receiver);
  chmodSync(receiver, 0o755);
  return { node, receiver };
}

/** Admits `count` pods one by one (the simulator admits serially, as the kubelet does); each admission's time goes to `allocateNs`. */
async function admit(node: LocalNode, count: number, allocateNs: number[]): Promise<{ sockets: string[]; release: () => Promise<void> }> {
  const pods: AdmittedPod[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    const pod = await node.admit();
    allocateNs.push(ns(performance.now() - started));
    pods.push(pod);
  }
  return {
    sockets: pods.map((p) => LocalNode.handoffPath(p.containers[0]!.response)),
    release: async () => {
      for (const p of pods) node.simulator.deletePod(p.namespace, p.name);
      // Let the bridge finish what follows a handoff (retiring sockets, logging) before the next measurement.
      await sleep(200);
    },
  };
}

function receiverOptions(node: LocalNode) {
  return { uid: node.launcherUid, env: node.kernel.env() };
}

/** CPU time (all threads) the services spent on some handoffs, and how many. */
interface CpuTally {
  brokerNs: number;
  bridgeNs: number;
  handoffs: number;
}

const newTally = (): CpuTally => ({ brokerNs: 0, bridgeNs: 0, handoffs: 0 });

/**
 * Runs `handoffs` and adds the services' CPU time to `tally`, including what
 * follows the last handoff (100 ms). The bridge's periodic broker check
 * (every 300 ms) falls in the window too; it is small beside the handoffs.
 */
async function withCpu<T extends { length: number } | Round>(node: LocalNode, tally: CpuTally, handoffs: () => Promise<T>): Promise<T> {
  const broker = cpuNsOf(node.broker.pid);
  const bridge = cpuNsOf(node.bridge.pid);
  const result = await handoffs();
  await sleep(100);
  tally.brokerNs += cpuNsOf(node.broker.pid) - broker;
  tally.bridgeNs += cpuNsOf(node.bridge.pid) - bridge;
  tally.handoffs += 'ns' in result ? result.ns.length : result.length;
  return result;
}

/** Admits `launchers` pods, then their launchers connect at one moment; the pods go afterwards. */
async function roundAtOnce(node: LocalNode, receiver: string, launchers: number, allocateNs: number[], cpu = newTally()): Promise<Round> {
  const batch = await admit(node, launchers, allocateNs);
  const round = await withCpu(node, cpu, () => concurrentHandoffs(receiver, batch.sockets, receiverOptions(node)));
  await batch.release();
  return round;
}

/** Stops the bridge, starts a new one, and times spawn → registered (as the simulator sees it) and → all devices Healthy. */
async function restartBridge(node: LocalNode, devices: number): Promise<{ registeredMs: number; servingMs: number }> {
  const before = node.simulator.plugin(resourceName)?.registrations ?? 0;
  await node.bridge.stop();
  let registeredAt: number | undefined;
  let servingAt: number | undefined;
  const started = performance.now();
  node.startBridge();
  // The simulator evaluates this on every event it records, so the times are taken as things happen.
  await node.simulator.waitFor((sim) => {
    const plugin = sim.plugin(resourceName);
    if (!plugin || plugin.registrations <= before) return false;
    registeredAt ??= performance.now();
    if (plugin.connected && sim.healthyDevices(resourceName).length === devices) servingAt ??= performance.now();
    return servingAt !== undefined;
  }, 20_000);
  return { registeredMs: registeredAt! - started, servingMs: servingAt! - started };
}

/** Stops the broker, starts a new one and times spawn → its control socket listening; then waits for the node to serve again. */
async function restartBroker(node: LocalNode, devices: number): Promise<number> {
  await node.broker.stop();
  const started = performance.now();
  node.startBroker();
  await node.broker.waitForEvent('listening', 20_000);
  const ms = performance.now() - started;
  await sleep(1000); // the bridge checks the broker every 300 ms
  await node.waitUntilServing(devices, 20_000);
  return ms;
}

const mb = (kb: number): number => kb / 1024;
const pair = (s: { p50Ns: number; p99Ns: number }): number[] => [s.p50Ns / 1e6, s.p99Ns / 1e6];
const ratios = (ours: number[], c: number[]): number[] => ours.map((v, i) => v / c[i]!);

async function main(): Promise<number> {
  const settings = parseArgs(process.argv.slice(2));
  const machine: Machine = describeMachine();
  const strategy = runningAsRoot ? 'temporary-node' : 'direct';
  const began = performance.now();
  say(`IOMMUFD device plugin benchmark${settings.quick ? ' (--quick: small counts, for CI)' : ''}`);
  say(`machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel} ${machine.arch}, Node ${machine.node}; load average ${machine.loadAverage.join(' ')}`);
  say(`as uid ${machine.uid}: broker open strategy ${strategy}, launchers as ${runningAsRoot ? `uid ${unprivilegedUid}` : 'this uid'}; the kernel stand-in (LD_PRELOAD) plays /dev/iommu for both sides`);
  say('ours and the C reference (test/bench/c-reference) take turns, batch by batch and round by round');
  say();

  buildCReference();
  const c = new CReference({ strategy, selinuxLabel });
  const allocateNs: number[] = [];
  const sequentialNs: number[] = [];
  const rounds110: Round[] = [];
  const cpuOne = newTally();
  const cpu110 = newTally();
  const scaling = new Map<number, Round[]>();
  const startup = { bridgeRegisteredMs: [] as number[], bridgeServingMs: [] as number[], brokerListeningMs: [] as number[] };
  let idle: { broker: Memory; bridge: Memory };
  let afterLoad: { broker: Memory; bridge: Memory };
  let scalingMemory: { broker: Memory; bridge: Memory };
  const largest = Math.max(...settings.levels.map((l) => l.launchers));
  const scalingDevices = Math.max(podsPerNode, largest);
  try {
    // --- A default node: 110 devices.
    say(`fd-broker + kubelet-bridge, ${podsPerNode} devices: idle memory, Allocate, handoffs one at a time and ${podsPerNode} at once...`);
    {
      const { node, receiver } = await startNode();
      try {
        await sleep(settings.idleMs);
        idle = { broker: memoryOf(node.broker.pid), bridge: memoryOf(node.bridge.pid) };
        for (let done = 0; done < settings.sequential; ) {
          const batch = await admit(node, Math.min(100, settings.sequential - done), allocateNs);
          sequentialNs.push(...(await withCpu(node, cpuOne, () => sequentialHandoffs(receiver, batch.sockets, settings.gapUs, receiverOptions(node)))));
          await batch.release();
          await c.sequential(batch.sockets.length, settings.gapUs);
          done += batch.sockets.length;
        }
        for (let r = 0; r < settings.rounds110; r++) {
          rounds110.push(await roundAtOnce(node, receiver, podsPerNode, allocateNs, cpu110));
          await c.round(podsPerNode);
        }
        afterLoad = { broker: memoryOf(node.broker.pid), bridge: memoryOf(node.bridge.pid) };

        say(`start-up: ${settings.restarts} restarts of each service...`);
        for (let i = 0; i < settings.restarts; i++) {
          const { registeredMs, servingMs } = await restartBridge(node, podsPerNode);
          startup.bridgeRegisteredMs.push(registeredMs);
          startup.bridgeServingMs.push(servingMs);
        }
        for (let i = 0; i < settings.restarts; i++) startup.brokerListeningMs.push(await restartBroker(node, podsPerNode));
      } finally {
        await node.stop();
      }
    }

    // --- The growth series, on a node with enough devices for the largest level.
    say(`growth: ${settings.levels.map((l) => l.launchers).join(', ')} launchers at once, on a node with ${scalingDevices} devices and broker --max-connections ${scalingMaxConnections}...`);
    {
      const { node, receiver } = await startNode({ deviceCount: scalingDevices, brokerArgs: ['--max-connections', String(scalingMaxConnections)] });
      try {
        const ignored: number[] = []; // the Allocate figure comes from the default node
        for (const level of settings.levels) {
          const rounds: Round[] = [];
          for (let r = 0; r < level.rounds; r++) {
            rounds.push(await roundAtOnce(node, receiver, level.launchers, ignored));
            await c.round(level.launchers);
          }
          scaling.set(level.launchers, rounds);
        }
        scalingMemory = { broker: memoryOf(node.broker.pid), bridge: memoryOf(node.bridge.pid) };
      } finally {
        await node.stop();
      }
    }
  } finally {
    c.cleanup();
  }
  say();

  // --- Figures.
  const cLevel = (launchers: number) => levelFigures(launchers, c.rounds.get(launchers) ?? []);
  const allocate = summarize(allocateNs);
  const sequential = summarize(sequentialNs);
  const cSequential = summarize(c.sequentialNs);
  const main110 = levelFigures(podsPerNode, rounds110);
  const c110 = cLevel(podsPerNode);
  const served = (f: ReturnType<typeof levelFigures>) => [f.allServedNs.median / 1e6, f.allServedNs.max / 1e6];
  const msPair = (values: number[]) => [median(values), max(values)];
  const cBrokerStartMs = msPair(c.brokerStartNs.map((v) => v / 1e6));
  // The C processes' memory in the runs of 110 at once: at their start, and after their round.
  const cMemory110 = c.memoryKb.filter((m) => m.launchers === podsPerNode);
  const perHandoff = (t: { brokerNs: number; handoffs: number } & ({ bridgeNs: number } | { middleNs: number })) =>
    [t.brokerNs, 'bridgeNs' in t ? t.bridgeNs : t.middleNs].map((v) => v / t.handoffs / 1e6);
  const cCpuOne = c.cpu.sequential;
  const cCpu110 = c.cpu.rounds.get(podsPerNode) ?? { brokerNs: 0, middleNs: 0, handoffs: 0 };
  const cRss = (pick: (m: (typeof cMemory110)[number]) => number) => mb(max(cMemory110.map(pick)));

  const rows: Row[] = [
    { key: 'allocate', label: 'Allocate, simulator → bridge → answer (p50 / p99)', unit: 'ms', ours: pair(allocate), n: allocate.n },
    { key: 'handoff_one', label: 'Handoff, one launcher at a time (p50 / p99)', unit: 'ms', ours: pair(sequential), c: pair(cSequential), n: sequential.n },
    { key: 'handoff_110', label: `Handoff, ${podsPerNode} launchers at once (p50 / p99)`, unit: 'ms', ours: pair(main110.latency), c: pair(c110.latency), n: main110.latency.n },
    { key: 'served_110', label: `${podsPerNode} at once: all served (median / worst round)`, unit: 'ms', ours: served(main110), c: served(c110), n: main110.rounds },
    { key: 'rate_110', label: `${podsPerNode} at once: handoffs per second (median round)`, unit: '/s', ours: [main110.handoffsPerSecond], c: [c110.handoffsPerSecond], n: main110.rounds },
    { key: 'start_registered', label: 'Bridge start → registered with the kubelet (median / max)', unit: 'ms', ours: msPair(startup.bridgeRegisteredMs), n: settings.restarts },
    { key: 'start_serving', label: 'Bridge start → all devices Healthy (median / max)', unit: 'ms', ours: msPair(startup.bridgeServingMs), n: settings.restarts },
    { key: 'start_broker', label: 'Broker start → listening (median / max)', unit: 'ms', ours: msPair(startup.brokerListeningMs), c: cBrokerStartMs, n: settings.restarts },
    { key: 'cpu_one', label: 'CPU time per handoff, one at a time: broker / bridge (C: broker / middle)', unit: 'ms', ours: perHandoff(cpuOne), c: perHandoff(cCpuOne), n: cpuOne.handoffs },
    { key: 'cpu_110', label: `CPU time per handoff, ${podsPerNode} at once: broker / bridge (C: broker / middle)`, unit: 'ms', ours: perHandoff(cpu110), c: perHandoff(cCpu110), n: cpu110.handoffs },
    { key: 'rss_idle_broker', label: 'Resident memory at idle: fd-broker (RSS / of it anonymous)', unit: 'MB', ours: [mb(idle.broker.rssKb), mb(idle.broker.anonKb)], c: [cRss((m) => m.idle.broker)] },
    { key: 'rss_idle_bridge', label: 'Resident memory at idle: kubelet-bridge, C: the middle (RSS / of it anonymous)', unit: 'MB', ours: [mb(idle.bridge.rssKb), mb(idle.bridge.anonKb)], c: [cRss((m) => m.idle.middle)] },
    { key: 'rss_load_broker', label: 'Resident memory after the load: fd-broker (RSS / anonymous / peak RSS)', unit: 'MB', ours: [mb(afterLoad.broker.rssKb), mb(afterLoad.broker.anonKb), mb(afterLoad.broker.peakKb)], c: [cRss((m) => m.afterLoad.broker)] },
    { key: 'rss_load_bridge', label: 'Resident memory after the load: kubelet-bridge (RSS / anonymous / peak RSS)', unit: 'MB', ours: [mb(afterLoad.bridge.rssKb), mb(afterLoad.bridge.anonKb), mb(afterLoad.bridge.peakKb)], c: [cRss((m) => m.afterLoad.middle)] },
  ];
  for (const row of rows) if (row.c) row.ratio = ratios(row.ours.slice(0, row.c.length), row.c);

  const scalingRows: ScalingRow[] = settings.levels.map(({ launchers }) => {
    const ours = levelFigures(launchers, scaling.get(launchers) ?? []);
    const ref = cLevel(launchers);
    return {
      key: `growth_${launchers}`,
      launchers,
      rounds: ours.rounds,
      ours: { p50: ours.latency.p50Ns / 1e6, p99: ours.latency.p99Ns / 1e6, allServed: ours.allServedNs.max / 1e6, perSecond: ours.handoffsPerSecond },
      c: { p50: ref.latency.p50Ns / 1e6, p99: ref.latency.p99Ns / 1e6, allServed: ref.allServedNs.max / 1e6, perSecond: ref.handoffsPerSecond },
      ratio: {
        p50: ours.latency.p50Ns / ref.latency.p50Ns,
        p99: ours.latency.p99Ns / ref.latency.p99Ns,
        allServed: ours.allServedNs.max / ref.allServedNs.max,
      },
    };
  });

  const worstRegistered = max(startup.bridgeRegisteredMs);
  const targets: Target[] = [
    { key: 'handoff_p99', text: 'Handoff p99 within 5 ms, one launcher at a time', figure: `${(sequential.p99Ns / 1e6).toFixed(2)} ms`, met: sequential.p99Ns <= ns(5) },
    { key: 'served_110', text: `${podsPerNode} launchers at once all served within 1 s (worst round)`, figure: `${(main110.allServedNs.max / 1e6).toFixed(0)} ms`, met: main110.allServedNs.max <= ns(1000) },
    {
      key: 'rss_idle',
      text: 'Idle resident memory at most 60 MB per service',
      figure: `fd-broker ${mb(idle.broker.rssKb).toFixed(1)} MB, kubelet-bridge ${mb(idle.bridge.rssKb).toFixed(1)} MB`,
      met: Math.max(idle.broker.rssKb, idle.bridge.rssKb) <= 60 * 1024,
    },
    { key: 'start_registered', text: 'Start to registered with the kubelet under 1 s (worst restart)', figure: `${worstRegistered.toFixed(0)} ms`, met: worstRegistered < 1000 },
  ];

  const growthNote = `on a node with ${scalingDevices} devices (bridge --device-count ${scalingDevices}) and broker --max-connections ${scalingMaxConnections}; after it the fd-broker held ${mb(scalingMemory.broker.rssKb).toFixed(1)} MB (peak ${mb(scalingMemory.broker.peakKb).toFixed(1)}), the kubelet-bridge ${mb(scalingMemory.bridge.rssKb).toFixed(1)} MB (peak ${mb(scalingMemory.bridge.peakKb).toFixed(1)})`;
  say(formatReport(rows, scalingRows, targets, growthNote));
  const elapsedS = (performance.now() - began) / 1000;
  say();
  say(`(${elapsedS.toFixed(1)} s; load average at the end ${loadavg().map((l) => l.toFixed(2)).join(' ')}. Latencies are taken inside the launcher, just before connect() to the fd in hand.)`);

  if (settings.jsonFile) {
    const raw = {
      machine,
      settings: { ...settings, strategy, podsPerNode, scalingDevices, scalingMaxConnections, selinuxLabel },
      elapsedSeconds: elapsedS,
      rows,
      growth: scalingRows,
      targets,
      samples: {
        ours: {
          allocateNs,
          sequentialNs,
          rounds110,
          growth: Object.fromEntries(scaling),
          startup,
          cpuNs: { one: cpuOne, at110: cpu110 },
          memoryKb: { idle, afterLoad, afterGrowth: scalingMemory },
        },
        c: {
          sequentialNs: c.sequentialNs,
          rounds: Object.fromEntries(c.rounds),
          brokerStartNs: c.brokerStartNs,
          cpuNs: { one: c.cpu.sequential, rounds: Object.fromEntries(c.cpu.rounds) },
          memoryKb: c.memoryKb,
        },
      },
    };
    writeFileSync(settings.jsonFile, `${JSON.stringify(raw)}\n`);
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`benchmark failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
