/**
 * Fuzzes the handoff path: a whole pretend node (LocalNode: kernel stand-in,
 * real broker and bridge, kubelet simulator) whose allocation sockets get
 * hostile launchers: bytes before and after reading, early closes, clients
 * that never read, floods of data, many connections to one socket. Each
 * iteration checks that both services live, that a socket handed out fds as
 * its handoff mode says (`once`: at most one, and the socket goes with it;
 * `per-connection`: one per served connection, and the socket stays while
 * the pod lives), that a socket still there still gives an fd, and that a
 * well-behaved launcher on a fresh allocation gets a good context. The end
 * checks fds, sockets and memory against the start.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { closeFd } from '@iommufd-plugin/native';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';
import type { LauncherReport } from '../support/launcher';
import { LocalNode } from '../support/local-node';
import { directoryCensus, fdCountOf, fdKindsOf, isAlive, rssKiBOf, settle, stableFdCount } from '../support/process-figures';
import { Prng } from '../support/prng';
import { checkFdInLauncher, keepRunning, mib, modeArgument, reproduceHint, type RunLimits, type TargetResult } from './common';
import { Tally } from '../support/tally';
import { RawConnection } from '../support/raw-connection';

const ackTimeoutMs = 300;
/** Short, so that the sockets of deleted pods are gone by the end's census. */
const reclaimIntervalMs = 500;
const checkEvery = 10;

interface HostileOutcome {
  /** fds (or the byte that carries one, for plain readers) that reached a hostile client. */
  fds: number;
  problems: string[];
}

interface Context {
  node: LocalNode;
  mode: RunLimits['handoffMode'];
  tally: Tally;
  counters: { connections: number; fdsToHostile: number; fdsChecked: number };
}

type Action = (ctx: Context, path: string, prng: Prng) => Promise<HostileOutcome>;

/** Reads once and files what came: an fd with its byte, a close, an error, or nothing. */
async function readOne(ctx: Context, conn: RawConnection, timeoutMs: number): Promise<{ fd: boolean; what: string; problems: string[] }> {
  const got = await conn.readOnce(timeoutMs, 64);
  const problems: string[] = [];
  let what: string;
  let fd = false;
  if (got === 'closed' || got === 'timeout') what = got;
  else if ('error' in got) what = got.error;
  else {
    what = got.fd === null ? 'bytes-without-fd' : 'fd';
    if (got.fd !== null) {
      fd = true;
      ctx.counters.fdsToHostile++;
      if (got.data.length !== 1 || got.data[0] !== 0) problems.push(`the fd came with ${got.data.length} bytes (${got.data.subarray(0, 8).toString('hex')}), not one zero byte`);
      if (ctx.counters.fdsToHostile % checkEvery === 0) {
        const problem = await checkFdInLauncher(ctx.node.kernel, ctx.node.dir, got.fd);
        ctx.counters.fdsChecked++;
        if (problem) problems.push(problem);
      }
      closeFd(got.fd);
    } else {
      problems.push(`${got.data.length} bytes without an fd`);
    }
  }
  ctx.tally.add(what);
  return { fd, what, problems };
}

async function open(ctx: Context, path: string): Promise<RawConnection | string> {
  try {
    const conn = await RawConnection.open(path, 3000);
    ctx.counters.connections++;
    return conn;
  } catch (err) {
    const code = (err as { code?: string }).code ?? (err as Error).message;
    ctx.tally.add(`connect-${code}`);
    return code;
  }
}

async function sendFlood(conn: RawConnection, prng: Prng, totalBytes: number, forMs: number): Promise<void> {
  const chunk = prng.bytes(65536);
  const until = Date.now() + forMs;
  let sent = 0;
  while (sent < totalBytes && Date.now() < until && conn.sendError === undefined) {
    const n = conn.sendNow(chunk);
    sent += n;
    if (n === 0) await sleep(1);
  }
}

const actions: Array<readonly [number, string, Action]> = [
  [3, 'bytes-before-read', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    try {
      await conn.send(prng.bytes(prng.int(1, prng.pick([16, 4096, 65536]))), 300);
      const read = await readOne(ctx, conn, 5000);
      const problems = [...read.problems];
      if (!read.fd) problems.push(`a launcher that wrote before reading got no fd (${read.what})`);
      return { fds: read.fd ? 1 : 0, problems };
    } finally {
      await conn.close();
    }
  }],

  [3, 'bytes-after-read', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    try {
      const read = await readOne(ctx, conn, 5000);
      const problems = [...read.problems];
      if (!read.fd) problems.push(`a launcher got no fd (${read.what})`);
      await conn.send(prng.bytes(prng.int(2, prng.pick([16, 4096, 65536]))), 300);
      // Anything after the fd counts as the ACK: the bridge closes.
      const after = await conn.readOnce(ackTimeoutMs + 2000, 64);
      if (after === 'timeout') problems.push('the bridge kept the connection open after the launcher answered');
      else if (typeof after === 'object' && 'data' in after) problems.push(`more came after the fd: ${after.data.length} bytes${after.fd !== null ? ' and another fd' : ''}`);
      return { fds: read.fd ? 1 : 0, problems };
    } finally {
      await conn.close();
    }
  }],

  [3, 'early-close', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    await sleep(prng.int(0, 20));
    await conn.close();
    ctx.tally.add('closed-unread');
    return { fds: 0, problems: [] };
  }],

  [2, 'never-read', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    await sleep(prng.int(0, ackTimeoutMs * 3));
    await conn.close();
    ctx.tally.add('closed-unread');
    return { fds: 0, problems: [] };
  }],

  [3, 'late-read', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    try {
      await sleep(prng.int(0, ackTimeoutMs * 3));
      const read = await readOne(ctx, conn, 5000);
      const problems = [...read.problems];
      if (!read.fd) problems.push(`a late reader got no fd (${read.what})`);
      const after = await conn.readOnce(ackTimeoutMs + 2000, 64);
      if (after === 'timeout') problems.push(`the bridge kept a silent connection open past --ack-timeout-ms ${ackTimeoutMs}`);
      return { fds: read.fd ? 1 : 0, problems };
    } finally {
      await conn.close();
    }
  }],

  [2, 'huge-data', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    try {
      await sendFlood(conn, prng, prng.int(1, 8) << 20, 300);
      const read = await readOne(ctx, conn, 5000);
      const problems = [...read.problems];
      if (!read.fd) problems.push(`a launcher that sent megabytes first got no fd (${read.what})`);
      return { fds: read.fd ? 1 : 0, problems };
    } finally {
      await conn.close();
    }
  }],

  [3, 'many-connections', async (ctx, path, prng) => {
    const count = prng.int(2, 40);
    const opened = await Promise.all(Array.from({ length: count }, () => open(ctx, path)));
    const conns = opened.filter((c): c is RawConnection => typeof c !== 'string');
    try {
      if (conns.length === 0) return { fds: 0, problems: ['no connection to a fresh allocation succeeded'] };
      const reads = await Promise.all(conns.map((c) => readOne(ctx, c, 5000)));
      const fds = reads.filter((r) => r.fd).length;
      const problems = reads.flatMap((r) => r.problems);
      const outcomes = reads.map((r) => r.what).join(',');
      // Past the per-socket cap (4 at once) connections are refused, so per-connection serves at least one, at most all.
      if (ctx.mode === 'once' ? fds !== 1 : fds < 1) problems.push(`${count} readers on a ${ctx.mode} socket received ${fds} fds (${outcomes})`);
      if (reads.some((r) => r.what === 'timeout')) problems.push(`a reader was left waiting: neither an fd nor a close within 5 s (${outcomes})`);
      return { fds, problems };
    } finally {
      await Promise.all(conns.map((c) => c.close()));
    }
  }],

  [2, 'connect-close-storm', async (ctx, path, prng) => {
    const count = prng.int(5, 60);
    const opened = await Promise.all(Array.from({ length: count }, () => open(ctx, path)));
    await Promise.all(opened.map((c) => (typeof c === 'string' ? undefined : c.close())));
    ctx.tally.add('closed-unread', opened.filter((c) => typeof c !== 'string').length);
    return { fds: 0, problems: [] };
  }],

  [2, 'bytes-then-close', async (ctx, path, prng) => {
    const conn = await open(ctx, path);
    if (typeof conn === 'string') return { fds: 0, problems: [`connect to a fresh allocation failed: ${conn}`] };
    await conn.send(prng.bytes(prng.int(1, 8192)), 100);
    await conn.close();
    ctx.tally.add('closed-unread');
    return { fds: 0, problems: [] };
  }],

  [2, 'half-close-plain-read', async (ctx, path) => {
    // A client that shuts down its sending side at once and reads with plain read(): it gets the byte, the fd is dropped by the kernel.
    const socket = connect(path);
    ctx.counters.connections++;
    const received: Buffer[] = [];
    const outcome = await new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), 5000);
      socket.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve(err.code ?? 'error');
      });
      socket.on('connect', () => socket.end());
      socket.on('data', (chunk: Buffer) => received.push(chunk));
      socket.on('close', () => {
        clearTimeout(timer);
        resolve('closed');
      });
    });
    socket.destroy();
    const data = Buffer.concat(received);
    ctx.tally.add(`plain-read-${data.length}-bytes`);
    const problems: string[] = [];
    if (!(data.length === 1 && data[0] === 0)) problems.push(`a half-closed plain reader got ${data.length} bytes (${outcome})`);
    return { fds: data.length > 0 ? 1 : 0, problems };
  }],
];

export const handoffActionNames: readonly string[] = actions.map(([, name]) => name);

export async function fuzzHandoff(run: RunLimits): Promise<TargetResult> {
  const mode = run.handoffMode;
  const node = await LocalNode.start({ deviceCount: 32, bridgeArgs: ['--ack-timeout-ms', String(ackTimeoutMs), '--handoff-mode', mode, '--reclaim-interval-ms', String(reclaimIntervalMs)] });
  const ctx: Context = { node, mode, tally: new Tally(), counters: { connections: 0, fdsToHostile: 0, fdsChecked: 0 } };
  const failures: string[] = [];
  const actionsRun = new Tally();
  let launchersOk = 0;
  let leftoverServed = 0;
  let iterations = 0;
  let exited: string | undefined;
  const bridge = node.bridge;
  const broker = node.broker;
  void bridge.exit().then(({ code, signal }) => (exited ??= `the bridge exited (code ${code}, signal ${signal}); stderr: ${bridge.stderr.slice(-2000)}`));
  void broker.exit().then(({ code, signal }) => (exited ??= `the broker exited (code ${code}, signal ${signal}); stderr: ${broker.stderr.slice(-2000)}`));
  const pool = actions.filter(([, name]) => (run.only ? name === run.only : !run.skip.includes(name)));
  if (pool.length === 0) {
    await node.stop();
    throw new Error(`no handoff case named ${run.only}; known: ${handoffActionNames.join(', ')}`);
  }
  let podNumber = 0;
  const admit = (label: string): Promise<AdmittedPod> => node.admit(`${label}-${++podNumber}`);
  const launchWell = async (pod: AdmittedPod, prng: Prng): Promise<string | undefined> => {
    const style = prng.int(0, 2);
    const report: LauncherReport = await node.launch(pod, { ack: style === 1, readDelayMs: style === 2 ? prng.int(1, 300) : undefined });
    if (report.result !== 'ok' || report.rlimitMode !== 1 || report.dataBytes !== 1 || report.firstByte !== 0) {
      return `a well-behaved launcher got ${JSON.stringify(report)}`;
    }
    launchersOk++;
    return undefined;
  };

  try {
    // Warm up, then take the baseline.
    const warmPrng = new Prng(run.seed);
    for (let i = 0; i < 3; i++) {
      const pod = await admit('warm');
      const problem = await launchWell(pod, warmPrng);
      if (problem) throw new Error(`warm-up: ${problem}`);
      node.simulator.deletePod('default', pod.name);
    }
    await sleep(ackTimeoutMs + 200);
    const start = { bridgeFds: await stableFdCount(bridge.pid), brokerFds: await stableFdCount(broker.pid), bridgeRss: rssKiBOf(bridge.pid), brokerRss: rssKiBOf(broker.pid) };
    const startedAt = Date.now();

    for (let i = run.firstIteration; keepRunning(run, startedAt, i - run.firstIteration); i++) {
      const prng = Prng.forStep(run.seed, i);
      const [name, action] = prng.weighted(pool.map(([w, n, a]) => [w, [n, a] as const] as const));
      actionsRun.add(name);
      const problems: string[] = [];
      try {
        const victim = await admit('victim');
        const path = LocalNode.handoffPath(victim.containers[0]!.response);
        const allocationId = (await bridge.waitForLog((l) => l.event === 'allocate' && l.hostPath === path, 5000)).allocationId as string;
        const outcome = await action(ctx, path, prng);
        problems.push(...outcome.problems);
        if (mode === 'once' && outcome.fds > 1) problems.push(`a once-mode socket gave ${outcome.fds} fds`);
        // What is left of the allocation: a socket that must still serve, or (once mode) a logged handoff.
        await sleep(30);
        if (existsSync(path)) {
          if (mode === 'once' && outcome.fds > 0) problems.push('the socket is still there after it gave its fd');
          const problem = await launchWell(victim, prng);
          if (problem) problems.push(`the allocation was not used up by the hostile client, yet: ${problem}`);
          else leftoverServed++;
        } else if (mode === 'per-connection') {
          problems.push(`the per-connection socket of allocation ${allocationId} is gone while its pod lives`);
        } else {
          const handed = await bridge
            .waitForLog((l) => l.event === 'handoff' && l.result === 'ok' && l.allocationId === allocationId, 3000)
            .then(() => true, () => false);
          if (!handed) problems.push(`the socket of allocation ${allocationId} is gone without a successful handoff`);
        }
        node.simulator.deletePod('default', victim.name);
        // A well-behaved launcher on a fresh allocation.
        const fresh = await admit('fresh');
        const problem = await launchWell(fresh, prng);
        if (problem) problems.push(`after the hostile client: ${problem}`);
        node.simulator.deletePod('default', fresh.name);
      } catch (err) {
        problems.push(`the harness failed: ${(err as Error).stack ?? String(err)}`);
      }
      if (exited) problems.push(exited);
      else if (!isAlive(bridge.pid) || !isAlive(broker.pid)) problems.push('a service is gone');
      iterations++;
      if (run.verbose) run.log(`  handoff #${i} ${name}: ${problems.length === 0 ? 'ok' : 'FAIL'}`);
      if (problems.length > 0) {
        const text = `FAIL fuzz handoff seed=${run.seed} iteration=${i} case=${name}:\n    ${problems.join('\n    ')}\n  ${reproduceHint('handoff', run, i)}`;
        run.log(text);
        failures.push(text);
        if (!run.keepGoing || exited) break;
      }
    }

    // ---- the end
    const end: string[] = [];
    const figures = { bridgeFds: -1, brokerFds: -1, bridgeRss: -1, brokerRss: -1, sockets: -1 };
    if (!exited) {
      await settle(() => fdCountOf(bridge.pid) <= start.bridgeFds && fdCountOf(broker.pid) <= start.brokerFds, ackTimeoutMs + 5000);
      figures.bridgeFds = fdCountOf(bridge.pid);
      figures.brokerFds = fdCountOf(broker.pid);
      figures.bridgeRss = rssKiBOf(bridge.pid);
      figures.brokerRss = rssKiBOf(broker.pid);
      // Sockets a launcher did not use up go when the bridge sees their pod gone.
      await settle(() => directoryCensus(node.socketDir).sockets === 0, reclaimIntervalMs * 4);
      const census = directoryCensus(node.socketDir);
      figures.sockets = census.sockets;
      if (figures.bridgeFds > start.bridgeFds) end.push(`the bridge holds ${figures.bridgeFds} fds, ${start.bridgeFds} at the start: ${JSON.stringify(fdKindsOf(bridge.pid))}`);
      if (figures.brokerFds > start.brokerFds) end.push(`the broker holds ${figures.brokerFds} fds, ${start.brokerFds} at the start: ${JSON.stringify(fdKindsOf(broker.pid))}`);
      if (census.sockets > 0) end.push(`handoff sockets left in the socket directory: ${census.names.join(', ')}`);
      for (const [who, before, after] of [['bridge', start.bridgeRss, figures.bridgeRss], ['broker', start.brokerRss, figures.brokerRss]] as const) {
        const limit = before + Math.max(48 * 1024, before * 0.5);
        if (after > limit) end.push(`the ${who}'s RSS grew from ${mib(before)} to ${mib(after)} MiB`);
      }
      const pod = await admit('final');
      const problem = await launchWell(pod, new Prng(run.seed));
      if (problem) end.push(`at the end: ${problem}`);
      node.simulator.deletePod('default', pod.name);
    } else {
      end.push(exited);
    }
    if (end.length > 0) {
      const text = `FAIL fuzz handoff seed=${run.seed} at the end (after ${iterations} iterations):\n    ${end.join('\n    ')}\n  reproduce: scripts/fuzz --target handoff --seed ${run.seed} --iterations ${iterations}${modeArgument(run)}`;
      run.log(text);
      failures.push(text);
    }
    const summary =
      `fuzz handoff: ${failures.length === 0 ? 'ok' : 'FAILED'} mode=${mode} seed=${run.seed} iterations=${iterations} connections=${ctx.counters.connections} ` +
      `fds-to-hostile-clients=${ctx.counters.fdsToHostile} (launcher-checked ${ctx.counters.fdsChecked}) well-behaved-launchers-ok=${launchersOk} ` +
      `(of which on sockets a hostile client left unused: ${leftoverServed}) | hostile outcomes: ${ctx.tally} | ` +
      `bridge fds start=${start.bridgeFds} end=${figures.bridgeFds} | broker fds start=${start.brokerFds} end=${figures.brokerFds} | ` +
      `bridge RSS MiB start=${mib(start.bridgeRss)} end=${mib(figures.bridgeRss)} | broker RSS MiB start=${mib(start.brokerRss)} end=${mib(figures.brokerRss)} | ` +
      `handoff sockets left=${figures.sockets} | cases: ${actionsRun}`;
    return { target: 'handoff', ok: failures.length === 0, iterations, summary, failures };
  } finally {
    await node.stop();
  }
}
