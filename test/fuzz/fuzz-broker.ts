/**
 * Fuzzes the fd-broker's control socket: a real broker process on the
 * kernel stand-in gets random, truncated, oversized, oddly encoded and
 * pipelined requests, slow drips, floods and abrupt closes. Each iteration
 * checks that the broker lives and answers exactly as docs/PROTOCOL.md says;
 * the end checks that it holds no more fds than at the start, that its
 * memory did not run away, and that a well-formed request still yields a
 * context in RLIMIT mode.
 */
import { readdirSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { brokerStatus, openContext } from '@iommufd-plugin/common';
import { closeFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { defaultStrategy, startBroker, type BrokerUnderTest } from '../support/broker-process';
import { fakeKernel } from '../support/fake-kernel';
import { fdBrokerBin } from '../support/paths';
import { fdCountOf, fdKindsOf, isAlive, rssKiBOf, settle, stableFdCount } from '../support/process-figures';
import { Prng } from '../support/prng';
import { runCommand } from '../support/run-command';
import { scratchDir } from '../support/scratch-dir';
import { type BrokerCase, type BrokerLimits, drawBrokerCase, type Flood, type PlannedConnection } from './broker-cases';
import { codeName, mismatch, parseReplies, predict, type ReplyContext, shapeProblems } from './broker-oracle';
import { checkFdInLauncher, keepRunning, mib, reproduceHint, type RunLimits, type TargetResult } from './common';
import { Tally } from '../support/tally';
import { RawConnection } from '../support/raw-connection';
import { frame, header } from './wire';

const limits: BrokerLimits = { maxRequestBytes: 4096, requestTimeoutMs: 400 };
const maxConnections = 256;
/** Every this many contexts received, one is checked by the launcher stand-in. */
const launcherCheckEvery = 25;

interface Counters {
  connections: number;
  replies: number;
  contexts: number;
  contextsCheckedByLauncher: number;
  repliesLostBeforeFatal: number;
  floodConnections: number;
  codes: Tally;
  cases: Tally;
}

export async function fuzzBroker(run: RunLimits): Promise<TargetResult> {
  const scratch = scratchDir('fuzz-broker');
  const kernel = fakeKernel(scratch.path);
  const failures: string[] = [];
  let brokerUnderTest: BrokerUnderTest | undefined;
  let exited: string | undefined;
  const counters: Counters = {
    connections: 0,
    replies: 0,
    contexts: 0,
    contextsCheckedByLauncher: 0,
    repliesLostBeforeFatal: 0,
    floodConnections: 0,
    codes: new Tally(),
    cases: new Tally(),
  };
  let iterations = 0;
  try {
    brokerUnderTest = await startBroker(kernel, scratch.path, {
      args: [
        '--request-timeout-ms', String(limits.requestTimeoutMs),
        '--max-request-bytes', String(limits.maxRequestBytes),
        '--max-connections', String(maxConnections),
      ],
    });
    const b = brokerUnderTest;
    void b.process.exit().then(({ code, signal }) => (exited = `the broker exited (code ${code}, signal ${signal}); stderr: ${b.process.stderr.slice(-2000)}`));
    const context: ReplyContext = {
      devicePath: kernel.devicePath,
      strategy: defaultStrategy === 'temporary-node' ? broker.OpenStrategy.OPEN_STRATEGY_TEMPORARY_NODE : broker.OpenStrategy.OPEN_STRATEGY_DIRECT,
    };
    const pid = b.process.pid;
    const state: RunState = { kernel, dir: scratch.path, socketPath: b.socketPath, context, counters, pid };

    await warmUp(state);
    const ownFdsBefore = readdirSync('/proc/self/fd').length;
    const fdsBefore = await stableFdCount(pid);
    const rssBefore = rssKiBOf(pid);
    let fdsPeak = fdsBefore;
    let rssPeak = rssBefore;

    const startedAt = Date.now();
    for (let i = run.firstIteration; keepRunning(run, startedAt, i - run.firstIteration); i++) {
      const prng = Prng.forStep(run.seed, i);
      const fuzzCase = drawBrokerCase(prng, limits, run.only, run.skip);
      counters.cases.add(fuzzCase.name);
      let problems: string[];
      try {
        problems = await runCase(state, fuzzCase, prng);
      } catch (err) {
        problems = [`the harness failed: ${(err as Error).stack ?? String(err)}`];
      }
      if (exited || !isAlive(pid)) problems.push(exited ?? 'the broker is gone');
      else problems.push(...(await canary(state, i)));
      iterations++;
      if (isAlive(pid)) {
        fdsPeak = Math.max(fdsPeak, fdCountOf(pid));
        rssPeak = Math.max(rssPeak, rssKiBOf(pid));
      }
      if (run.verbose) run.log(`  broker #${i} ${fuzzCase.name} (${fuzzCase.connections.length} conn${fuzzCase.flood ? `, flood ${fuzzCase.flood.count}` : ''}): ${problems.length === 0 ? 'ok' : 'FAIL'}`);
      if (problems.length > 0) {
        const text = `FAIL fuzz broker seed=${run.seed} iteration=${i} case=${fuzzCase.name}:\n    ${problems.join('\n    ')}\n  ${reproduceHint('broker', run, i)}`;
        run.log(text);
        failures.push(text);
        if (!run.keepGoing || exited) break;
      }
    }

    // ---- the end: nothing held, memory bounded, still serving properly
    const end: string[] = [];
    let fdsAfter = -1;
    let rssAfter = -1;
    if (!exited && isAlive(pid)) {
      await settle(() => fdCountOf(pid) <= fdsBefore, 5000);
      fdsAfter = fdCountOf(pid);
      rssAfter = rssKiBOf(pid);
      if (fdsAfter > fdsBefore) end.push(`the broker holds ${fdsAfter} fds, ${fdsBefore} at the start: ${JSON.stringify(fdKindsOf(pid))}`);
      const rssLimit = rssBefore + Math.max(48 * 1024, rssBefore * 0.5);
      if (rssAfter > rssLimit) end.push(`the broker's RSS grew from ${mib(rssBefore)} to ${mib(rssAfter)} MiB (limit ${mib(rssLimit)})`);
      const inspect = await inspectBroker(state);
      if (inspect.problem) end.push(inspect.problem);
      const leftovers = readdirSync(scratch.path).filter((n) => n.startsWith('.iommufd-node'));
      if (leftovers.length > 0) end.push(`temporary device nodes left behind: ${leftovers.join(', ')}`);
    } else {
      end.push(exited ?? 'the broker is gone');
    }
    const ownFdsAfter = readdirSync('/proc/self/fd').length;
    if (ownFdsAfter > ownFdsBefore) end.push(`the fuzzer itself leaked fds (${ownFdsBefore} → ${ownFdsAfter}): a harness bug`);
    if (end.length > 0) {
      const text = `FAIL fuzz broker seed=${run.seed} at the end (after ${iterations} iterations):\n    ${end.join('\n    ')}\n  reproduce: scripts/fuzz --target broker --seed ${run.seed} --iterations ${iterations}`;
      run.log(text);
      failures.push(text);
    }

    const summary =
      `fuzz broker: ${failures.length === 0 ? 'ok' : 'FAILED'} seed=${run.seed} iterations=${iterations} connections=${counters.connections} ` +
      `flood-connections=${counters.floodConnections} replies=${counters.replies} contexts=${counters.contexts} ` +
      `(launcher-checked ${counters.contextsCheckedByLauncher}) errors: ${counters.codes} | replies lost before a fatal error: ${counters.repliesLostBeforeFatal} | ` +
      `broker fds start=${fdsBefore} end=${fdsAfter} peak=${fdsPeak} | broker RSS MiB start=${mib(rssBefore)} end=${mib(rssAfter)} peak=${mib(rssPeak)} | ` +
      `cases: ${counters.cases}`;
    return { target: 'broker', ok: failures.length === 0, iterations, summary, failures };
  } finally {
    await brokerUnderTest?.process.stop();
    scratch.cleanup();
  }
}

interface RunState {
  kernel: ReturnType<typeof fakeKernel>;
  dir: string;
  socketPath: string;
  context: ReplyContext;
  counters: Counters;
  pid: number;
}

/** Exercises every path once, so that lazily loaded code and buffers count in the baseline. */
async function warmUp(state: RunState): Promise<void> {
  for (let i = 0; i < 5; i++) {
    const { fd } = await openContext(state.socketPath, { allocationId: `warm-${i}`, timeoutMs: 5000 });
    closeFd(fd);
  }
  await brokerStatus(state.socketPath, 5000);
  const warm: PlannedConnection[] = [
    { steps: [{ send: frame(Buffer.from([0xff, 0xff])) }], read: true, idleCheck: false },
    { steps: [{ send: header(limits.maxRequestBytes + 1) }], read: true, idleCheck: false },
    { steps: [{ send: header(10) }], read: true, idleCheck: false },
  ];
  const prng = new Prng(1);
  await runCase(state, { name: 'warm-up', connections: warm }, prng);
}


/** Runs one case: its connections at once (and its flood around them); returns what went wrong. */
async function runCase(state: RunState, fuzzCase: BrokerCase, prng: Prng): Promise<string[]> {
  const problems: string[] = [];
  const conversations = () => Promise.all(fuzzCase.connections.map((plan) => converse(state, plan, prng.int(0, 1e9))));
  let results: string[][];
  if (fuzzCase.flood) {
    const { flood } = fuzzCase;
    if (flood.count + fuzzCase.connections.length < maxConnections - 16) {
      // Well under the limit: the good client is served while the flood holds its connections.
      const held = await startFlood(state, flood);
      results = await conversations();
      await sleep(flood.holdMs);
      releaseFlood(held);
    } else {
      // At or past the limit new connections are refused; afterwards the broker must serve again.
      const held = await startFlood(state, flood);
      await sleep(flood.holdMs);
      releaseFlood(held);
      await settle(() => fdCountOf(state.pid) < maxConnections / 2, 3000, 20);
      results = await conversations();
    }
  } else {
    results = await conversations();
  }
  results.forEach((found, n) => problems.push(...found.map((p) => `connection ${n}: ${p}`)));
  return problems;
}

async function startFlood(state: RunState, flood: Flood): Promise<Socket[]> {
  const sockets: Socket[] = [];
  const payload =
    flood.payload === 'garbage' ? Buffer.from('GET / HTTP/1.1\r\n\r\n') : flood.payload === 'partial' ? header(100) : flood.payload === 'oversized' ? header(1 << 30) : null;
  await Promise.all(
    Array.from({ length: flood.count }, () => {
      const socket = connect(state.socketPath);
      socket.on('error', () => undefined);
      socket.on('data', () => undefined);
      sockets.push(socket);
      return new Promise<void>((resolve) => {
        socket.once('connect', () => {
          if (payload) socket.write(payload);
          resolve();
        });
        socket.once('close', () => resolve());
      });
    }),
  );
  state.counters.floodConnections += flood.count;
  return sockets;
}

function releaseFlood(sockets: Socket[]): void {
  for (const socket of sockets) socket.destroy();
}

/** One planned connection: send, pause and close as planned, read replies, and check them. */
async function converse(state: RunState, plan: PlannedConnection, salt: number): Promise<string[]> {
  const problems: string[] = [];
  const prediction = predict(plan, limits.maxRequestBytes);
  let conn: RawConnection;
  try {
    conn = await RawConnection.open(state.socketPath, 5000);
  } catch (err) {
    return [`connect failed: ${(err as Error).message}`];
  }
  state.counters.connections++;
  if (plan.read) conn.startReading();
  let closedEarly = false;
  try {
    for (const step of plan.steps) {
      if ('send' in step) await conn.send(step.send, 3000);
      else if ('pauseMs' in step) await sleep(step.pauseMs);
      else {
        closedEarly = true;
        break;
      }
    }
    if (prediction.mode === 'exact' && !closedEarly) {
      const frames = () => countFrames(conn);
      if (prediction.fatal === 'REQUEST_TOO_LARGE') {
        if (!(await conn.waitForPeerClose(3000))) problems.push('still open 3 s after an oversized length prefix');
      } else if (prediction.fatal === 'TIMEOUT') {
        if (!(await conn.waitForPeerClose(limits.requestTimeoutMs + 3000))) problems.push(`still open ${limits.requestTimeoutMs + 3000} ms after an incomplete request`);
      } else {
        await conn.waitFor(() => frames() >= prediction.replies.length, 5000);
        if (plan.idleCheck) {
          const closed = await conn.waitForPeerClose(limits.requestTimeoutMs + 3000);
          if (!closed) problems.push('an idle connection was not closed at the request deadline');
        }
      }
    }
  } finally {
    await conn.close();
  }

  const parsed = parseReplies(conn.chunks);
  problems.push(...parsed.problems);
  if (conn.readError && conn.readError !== 'ECONNRESET' && conn.readError !== 'EPROTO') problems.push(`read failed: ${conn.readError}`);
  if (conn.readError === 'EPROTO') problems.push('a reply came with more than one fd or truncated control data');
  state.counters.replies += parsed.replies.length;
  for (const { reply } of parsed.replies) {
    if (reply.body?.$case === 'error') state.counters.codes.add(codeName(reply.body.value.code));
    problems.push(...shapeProblems({ reply, fd: null, bytes: 0 }, state.context));
  }

  if (prediction.mode === 'exact' && !closedEarly) {
    const got = parsed.replies;
    const want = prediction.replies;
    if (parsed.trailingBytes > 0) problems.push(`${parsed.trailingBytes} bytes of an unfinished reply`);
    if (prediction.fatal === 'REQUEST_TOO_LARGE') {
      // The broker stops reading at an oversized prefix; requests before it in the same read may go unanswered.
      const last = got[got.length - 1];
      if (!last || last.reply.body?.$case !== 'error' || last.reply.body.value.code !== broker.ErrorCode.ERROR_CODE_REQUEST_TOO_LARGE) {
        problems.push(`expected REQUEST_TOO_LARGE last, got ${describeAll(got.map((r) => r.reply))}`);
      }
      const before = got.slice(0, -1);
      if (before.length > want.length) problems.push(`${before.length} replies before REQUEST_TOO_LARGE for ${want.length} requests`);
      before.forEach((r, i) => {
        const expected = want[i];
        const wrong = expected ? mismatch(expected, r) : 'an extra reply';
        if (wrong) problems.push(`reply ${i}: ${wrong}`);
      });
      state.counters.repliesLostBeforeFatal += Math.max(0, want.length - before.length);
    } else {
      const expectedAll = prediction.fatal === 'TIMEOUT' ? [...want, { kind: 'error' as const, code: broker.ErrorCode.ERROR_CODE_TIMEOUT, requestId: '' }] : want;
      if (got.length !== expectedAll.length) {
        problems.push(`expected ${expectedAll.length} replies (${describeExpected(expectedAll)}), got ${got.length} (${describeAll(got.map((r) => r.reply))})`);
      }
      for (let i = 0; i < Math.min(got.length, expectedAll.length); i++) {
        const wrong = mismatch(expectedAll[i]!, got[i]!);
        if (wrong) problems.push(`reply ${i}: ${wrong}`);
      }
    }
  }

  // Every fd that arrived: a context is checked now and then by the launcher stand-in; all are closed.
  for (const { fd, reply } of parsed.replies) {
    if (fd === null || reply.body?.$case !== 'contextOpened') continue;
    state.counters.contexts++;
    if ((state.counters.contexts + salt) % launcherCheckEvery === 0) {
      const problem = await checkFdInLauncher(state.kernel, state.dir, fd);
      state.counters.contextsCheckedByLauncher++;
      if (problem) problems.push(problem);
    }
  }
  for (const fd of parsed.fds) closeFd(fd);
  return problems;
}

function countFrames(conn: RawConnection): number {
  const data = conn.allData();
  let at = 0;
  let count = 0;
  while (data.length - at >= 4) {
    const length = data.readUInt32BE(at);
    if (data.length - at - 4 < length) break;
    at += 4 + length;
    count++;
  }
  return count;
}

function describeAll(replies: broker.Reply[]): string {
  return replies.map((r) => (r.body?.$case === 'error' ? codeName(r.body.value.code) : r.body?.$case ?? 'empty')).join(',') || 'nothing';
}

function describeExpected(replies: ReturnType<typeof predict>['replies']): string {
  return replies.map((r) => (r.kind === 'error' ? codeName(r.code) : r.kind)).join(',') || 'nothing';
}

/** A status request after every case; every tenth, a whole open_context as well. */
async function canary(state: RunState, iteration: number): Promise<string[]> {
  try {
    const status = await brokerStatus(state.socketPath, 5000);
    if (!status.devicePresent) return ['status: device not present'];
    if (iteration % 10 === 0) {
      const { fd, details } = await openContext(state.socketPath, { allocationId: `canary-${iteration}`, timeoutMs: 5000 });
      closeFd(fd);
      if (!details.rlimitModeVerified) return ['canary open_context without rlimit_mode_verified'];
    }
    return [];
  } catch (err) {
    return [`a well-formed request failed after the case: ${(err as Error).message}`];
  }
}

/** `fd-broker inspect --broker` on the kernel stand-in: an admin's check that a real context comes out. */
async function inspectBroker(state: RunState): Promise<{ problem?: string; rlimitMode?: number }> {
  const result = await runCommand(fdBrokerBin, ['inspect', '--broker', state.socketPath], state.kernel.env(), 15_000);
  let report: { ok?: boolean; fd?: { rlimitMode?: number }; reply?: { rlimitModeVerified?: boolean } };
  try {
    report = JSON.parse(result.stdout) as typeof report;
  } catch {
    return { problem: `fd-broker inspect printed no report (exit ${result.code}): ${result.stdout} ${result.stderr}` };
  }
  if (result.code !== 0 || report.ok !== true || report.fd?.rlimitMode !== 1 || report.reply?.rlimitModeVerified !== true) {
    return { problem: `fd-broker inspect --broker did not get a context in RLIMIT mode (exit ${result.code}): ${result.stdout}` };
  }
  return { rlimitMode: 1 };
}
