/**
 * The fd-broker's operations face, against the real process on the kernel
 * stand-in: its HTTP endpoints (/healthz, /readyz, /metrics, /status) over
 * real HTTP, the self-test and how it follows the device, the status
 * request's lastSelfTest, and the admin commands `selftest` and `inspect`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { release } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokerReplyError, brokerStatus, encodeFrame, openContext } from '@iommufd-plugin/common';
import { closeFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { defaultStrategy, startBroker, type BrokerUnderTest } from './support/broker-process';
import { fakeKernel, type FakeKernel, runningAsRoot } from './support/fake-kernel';
import { serveFd } from './support/fd-server';
import { fdBrokerBin, repoRoot } from './support/paths';
import { metricValue } from './support/metrics-text';
import { runCommand } from './support/run-command';
import { scratchDir } from './support/scratch-dir';
import type { ServiceProcess } from './support/service-process';

const ownUid = process.geteuid?.() ?? 0;
// For the selftest command, which does not go through startBroker.
const strategyArgs = ['--open-strategy', defaultStrategy];
const httpArgs = ['--http-host', '127.0.0.1', '--http-port', '0'];
const brokerPackageVersion = (JSON.parse(readFileSync(join(repoRoot, 'services', 'fd-broker', 'package.json'), 'utf8')) as { version: string }).version;

interface OpsBroker extends BrokerUnderTest {
  url: string;
}

/** Starts a broker with its HTTP endpoint on a free port and returns where it listens. */
async function startOpsBroker(kernel: FakeKernel, dir: string, args: string[] = [], privilegedUids: number[] | null = [ownUid]): Promise<OpsBroker> {
  const b = await startBroker(kernel, dir, { args: [...httpArgs, ...args], privilegedUids });
  return { ...b, url: await httpUrl(b.process) };
}

async function httpUrl(service: ServiceProcess): Promise<string> {
  const line = await service.waitForEvent('http_listening');
  assert.equal(typeof line.port, 'number');
  assert.ok((line.port as number) > 0, 'port 0 must be logged as the port actually bound');
  return `http://127.0.0.1:${line.port as number}`;
}

async function getJson(url: string): Promise<{ status: number; contentType: string; body: Record<string, unknown> }> {
  const response = await fetch(url);
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', body: (await response.json()) as Record<string, unknown> };
}

/** The Prometheus exposition text of /metrics. */
async function scrape(base: string): Promise<string> {
  const response = await fetch(`${base}/metrics`);
  assert.equal(response.status, 200);
  return response.text();
}

/** A sample's value; 0 when the series does not exist (yet). */
function value(metrics: string, name: string, labels: Record<string, string> = {}): number {
  return metricValue(metrics, name, labels) ?? 0;
}

/** Polls `check` until it holds; returns how long that took. */
async function within(timeoutMs: number, what: string, check: () => Promise<boolean>): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(20);
  }
}

/** Sends bytes that are no protobuf Request and waits for the broker's answer. */
async function sendUndecodable(socketPath: string): Promise<void> {
  const socket = connect(socketPath);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const answered = new Promise<void>((resolve) => socket.once('data', () => resolve()));
  socket.write(encodeFrame(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])));
  await answered;
  socket.destroy();
}

interface StatusDocument {
  service: string;
  version: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  kernelRelease: string;
  live: { ok: boolean; reason?: string };
  ready: { ok: boolean; reason?: string };
  controlSocket: string;
  device: { path: string; present: boolean };
  openStrategy: string;
  nodeDir: string | null;
  selinuxLabel: string | null;
  selfTestIntervalMs: number;
  lastSelfTest: {
    result: string;
    finishedAt: string;
    durationSeconds: number;
    trigger: string;
    reason: string | null;
    code: string | null;
    errno: string | null;
  } | null;
  counters: { contextsOpened: number; openFailures: number; requests: Record<'open_context' | 'status' | 'invalid', number>; peersRefused: number };
  recentErrors: Array<{ time: string; type: string; requestId: string; code: string; errno: string | null; syscall: string | null; message: string; peer: { uid: number; pid: number } }>;
  peers: Array<{ uid: number; requests: number; lastPid: number; lastSeen: string }>;
}

async function statusOf(base: string): Promise<StatusDocument> {
  const { status, contentType, body } = await getJson(`${base}/status`);
  assert.equal(status, 200);
  assert.match(contentType, /application\/json/);
  return body as unknown as StatusDocument;
}

function fdBroker(args: string[], env: NodeJS.ProcessEnv) {
  return runCommand(fdBrokerBin, args, env);
}

describe('fd-broker operations: endpoints on a working node', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  let b: OpsBroker;
  let startedAt: number;

  before(async () => {
    scratch = scratchDir('fd-broker-ops');
    kernel = fakeKernel(scratch.path);
    startedAt = Date.now();
    // A long interval: whatever follows the device within a second must come from the watch.
    b = await startOpsBroker(kernel, scratch.path, ['--selftest-interval-ms', '60000']);
    await b.process.waitForEvent('selftest');
  });

  after(async () => {
    await b?.process.stop();
    scratch?.cleanup();
  });

  it('answers /healthz and /readyz with 200 and JSON, and unknown paths with 404', async () => {
    const health = await getJson(`${b.url}/healthz`);
    assert.equal(health.status, 200);
    assert.match(health.contentType, /application\/json/);
    assert.deepEqual(health.body, { ok: true, socket: b.socketPath });

    const ready = await getJson(`${b.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(ready.body.ok, true);
    assert.equal(ready.body.devicePresent, true);
    assert.equal((ready.body.lastSelfTest as { passed: boolean }).passed, true);

    assert.equal((await fetch(`${b.url}/no-such-page`)).status, 404);
  });

  it('exposes process metrics and every broker metric, each series there from the start', async () => {
    const response = await fetch(`${b.url}/metrics`);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    assert.ok(metricValue(text, 'process_cpu_user_seconds_total') !== undefined, 'process metrics');
    assert.ok(metricValue(text, 'process_resident_memory_bytes')! > 0);
    for (const [name, type] of [
      ['iommufd_broker_context_opens_total', 'counter'],
      ['iommufd_broker_context_open_duration_seconds', 'histogram'],
      ['iommufd_broker_requests_total', 'counter'],
      ['iommufd_broker_peers_refused_total', 'counter'],
      ['iommufd_broker_selftest_runs_total', 'counter'],
      ['iommufd_broker_selftest_passed', 'gauge'],
      ['iommufd_broker_selftest_last_run_timestamp_seconds', 'gauge'],
      ['iommufd_broker_device_present', 'gauge'],
    ]) {
      assert.ok(text.includes(`# TYPE ${name} ${type}\n`), `${name} as a ${type}`);
    }
    assert.equal(metricValue(text, 'iommufd_broker_context_opens_total', { result: 'ok', errno: 'none' }), 0);
    assert.equal(metricValue(text, 'iommufd_broker_requests_total', { type: 'open_context', result: 'ok' }), 0);
    assert.equal(metricValue(text, 'iommufd_broker_requests_total', { type: 'invalid', result: 'error' }), 0);
    assert.equal(metricValue(text, 'iommufd_broker_peers_refused_total'), 0);
    assert.equal(metricValue(text, 'iommufd_broker_context_open_duration_seconds_count'), 0);
    assert.equal(metricValue(text, 'iommufd_broker_selftest_runs_total', { result: 'passed' }), 1);
    assert.equal(metricValue(text, 'iommufd_broker_selftest_runs_total', { result: 'failed' }), 0);
    assert.equal(metricValue(text, 'iommufd_broker_selftest_passed'), 1);
    assert.equal(metricValue(text, 'iommufd_broker_device_present'), 1);
    const lastRun = metricValue(text, 'iommufd_broker_selftest_last_run_timestamp_seconds')!;
    assert.ok(lastRun * 1000 >= startedAt - 1000 && lastRun * 1000 <= Date.now(), `last run ${lastRun}`);
  });

  it('counts opened contexts, status requests and invalid requests in /metrics and /status', async () => {
    const before = await scrape(b.url);
    const statusBefore = await statusOf(b.url);

    for (let i = 0; i < 3; i++) {
      const { fd } = await openContext(b.socketPath, { allocationId: `ops-${i}`, timeoutMs: 5000 });
      closeFd(fd);
    }
    await brokerStatus(b.socketPath, 5000);
    await sendUndecodable(b.socketPath);

    const afterOpens = await scrape(b.url);
    const delta = (name: string, labels: Record<string, string> = {}) => value(afterOpens, name, labels) - value(before, name, labels);
    assert.equal(delta('iommufd_broker_context_opens_total', { result: 'ok', errno: 'none' }), 3);
    assert.equal(delta('iommufd_broker_requests_total', { type: 'open_context', result: 'ok' }), 3);
    assert.equal(delta('iommufd_broker_requests_total', { type: 'open_context', result: 'error' }), 0);
    assert.equal(delta('iommufd_broker_requests_total', { type: 'status', result: 'ok' }), 1);
    assert.equal(delta('iommufd_broker_requests_total', { type: 'invalid', result: 'error' }), 1);
    assert.equal(delta('iommufd_broker_context_open_duration_seconds_count'), 3);
    assert.equal(delta('iommufd_broker_context_open_duration_seconds_bucket', { le: '+Inf' }), 3);
    assert.equal(delta('iommufd_broker_context_open_duration_seconds_bucket', { le: '1' }), 3, 'a stand-in open takes far less than a second');
    const sum = delta('iommufd_broker_context_open_duration_seconds_sum');
    assert.ok(sum > 0 && sum < 3, `duration sum ${sum}`);
    assert.equal(delta('iommufd_broker_selftest_runs_total', { result: 'passed' }), 0, 'requests are not self-tests');

    const status = await statusOf(b.url);
    assert.equal(status.counters.contextsOpened - statusBefore.counters.contextsOpened, 3);
    assert.equal(status.counters.requests.open_context - statusBefore.counters.requests.open_context, 3);
    assert.equal(status.counters.requests.status - statusBefore.counters.requests.status, 1);
    assert.equal(status.counters.requests.invalid - statusBefore.counters.requests.invalid, 1);
    assert.equal(status.counters.openFailures, statusBefore.counters.openFailures);
    const newest = status.recentErrors[0];
    assert.equal(newest?.type, 'invalid');
    assert.equal(newest?.code, 'BAD_REQUEST');
    assert.match(newest!.message, /not a valid iommufd\.broker\.v1\.Request/);
    assert.ok(!Number.isNaN(Date.parse(newest!.time)));
    const me = status.peers.find((p) => p.uid === ownUid);
    assert.ok(me, `peers: ${JSON.stringify(status.peers)}`);
    assert.equal(me.lastPid, process.pid);
    assert.ok(me.requests >= 5, `requests from us: ${me.requests}`);
    assert.ok(Date.now() - Date.parse(me.lastSeen) < 10_000);
  });

  it('describes itself in /status: version, kernel, device, strategy, label, last self-test', async () => {
    const status = await statusOf(b.url);
    assert.equal(status.service, 'fd-broker');
    assert.equal(status.version, brokerPackageVersion);
    assert.equal(status.pid, b.process.pid);
    assert.equal(status.kernelRelease, release());
    assert.ok(Date.parse(status.startedAt) >= startedAt - 1000 && Date.parse(status.startedAt) <= Date.now());
    assert.ok(status.uptimeSeconds >= 0 && status.uptimeSeconds < 600);
    assert.equal(status.controlSocket, b.socketPath);
    assert.deepEqual(status.device, { path: kernel.devicePath, present: true });
    assert.equal(status.live.ok, true);
    assert.equal(status.ready.ok, true);
    assert.equal(status.selfTestIntervalMs, 60_000);
    if (runningAsRoot) {
      assert.equal(status.openStrategy, 'temporary-node');
      assert.equal(status.nodeDir, scratch.path);
      assert.equal(status.selinuxLabel, 'system_u:object_r:container_file_t:s0');
    } else {
      assert.equal(status.openStrategy, 'direct');
      assert.equal(status.selinuxLabel, null);
    }
    const last = status.lastSelfTest!;
    assert.equal(last.result, 'passed');
    assert.equal(last.trigger, 'start');
    assert.equal(last.reason, null);
    assert.equal(last.code, null);
    assert.equal(last.errno, null);
    assert.match(last.finishedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Date.parse(last.finishedAt) >= startedAt - 1000 && Date.parse(last.finishedAt) <= Date.now());
    assert.ok(last.durationSeconds > 0 && last.durationSeconds < 5);
  });

  it('returns the last self-test in the status request of the broker protocol', async () => {
    const status = await brokerStatus(b.socketPath, 5000);
    const last = status.lastSelfTest;
    assert.ok(last, 'lastSelfTest is set');
    assert.equal(last.passed, true);
    assert.equal(last.code, broker.ErrorCode.ERROR_CODE_UNSPECIFIED);
    assert.equal(last.reason, '');
    assert.equal(last.errnoName, '');
    assert.ok(last.finishedAtUnixMs >= startedAt - 1000 && last.finishedAtUnixMs <= Date.now(), `finished ${last.finishedAtUnixMs}`);
    assert.ok(last.durationSeconds > 0 && last.durationSeconds < 5);
  });

  it('turns not ready within a second when the device disappears, and ready again when it returns (interval 60 s)', async () => {
    const before = await scrape(b.url);

    kernel.removeDevice();
    // Only a self-test puts its reason in /readyz; the interval is a minute away, so the watch must have run it.
    let notReady: Record<string, unknown> = {};
    const tookToFail = await within(1000, '/readyz reports the failed self-test', async () => {
      const { status, body } = await getJson(`${b.url}/readyz`);
      notReady = body;
      return status === 503 && /self-test failed/.test(String(body.reason));
    });
    assert.ok(tookToFail < 1000);
    assert.equal(notReady.ok, false);
    assert.match(String(notReady.reason), /^self-test failed: DEVICE_MISSING \(ENOENT\): .*does not exist/);
    assert.equal(notReady.devicePresent, false);

    const missing = await scrape(b.url);
    assert.equal(value(missing, 'iommufd_broker_device_present'), 0);
    assert.equal(value(missing, 'iommufd_broker_selftest_passed'), 0);
    assert.equal(value(missing, 'iommufd_broker_selftest_runs_total', { result: 'failed' }) - value(before, 'iommufd_broker_selftest_runs_total', { result: 'failed' }), 1);
    assert.ok(value(missing, 'iommufd_broker_selftest_last_run_timestamp_seconds') > value(before, 'iommufd_broker_selftest_last_run_timestamp_seconds'));
    const failedLine = await b.process.waitForLog((l) => l.event === 'selftest' && l.passed === false);
    assert.equal(failedLine.level, 'error');
    assert.equal(failedLine.trigger, 'device-change');
    assert.equal(failedLine.code, 'DEVICE_MISSING');
    assert.equal(failedLine.errno, 'ENOENT');

    // A request meanwhile fails, and is counted by errno and remembered with its id.
    await assert.rejects(openContext(b.socketPath, { allocationId: 'while-missing', requestId: 'req-missing', timeoutMs: 5000 }), (err: unknown) => {
      assert.ok(err instanceof BrokerReplyError);
      assert.equal(err.codeName, 'DEVICE_MISSING');
      return true;
    });
    const afterFailure = await scrape(b.url);
    assert.equal(value(afterFailure, 'iommufd_broker_context_opens_total', { result: 'error', errno: 'ENOENT' }) - value(before, 'iommufd_broker_context_opens_total', { result: 'error', errno: 'ENOENT' }), 1);
    assert.equal(value(afterFailure, 'iommufd_broker_requests_total', { type: 'open_context', result: 'error' }) - value(before, 'iommufd_broker_requests_total', { type: 'open_context', result: 'error' }), 1);
    assert.equal(value(afterFailure, 'iommufd_broker_context_opens_total', { result: 'ok', errno: 'none' }), value(before, 'iommufd_broker_context_opens_total', { result: 'ok', errno: 'none' }));

    const status = await statusOf(b.url);
    assert.deepEqual(status.device, { path: kernel.devicePath, present: false });
    assert.equal(status.ready.ok, false);
    assert.equal(status.lastSelfTest?.result, 'failed');
    assert.equal(status.lastSelfTest?.code, 'DEVICE_MISSING');
    assert.equal(status.lastSelfTest?.errno, 'ENOENT');
    assert.equal(status.lastSelfTest?.trigger, 'device-change');
    assert.match(status.lastSelfTest?.reason ?? '', /kernel has no IOMMUFD/);
    const newest = status.recentErrors[0]!;
    assert.equal(newest.requestId, 'req-missing');
    assert.equal(newest.type, 'open_context');
    assert.equal(newest.code, 'DEVICE_MISSING');
    assert.equal(newest.errno, 'ENOENT');
    assert.match(newest.message, /does not exist/);
    assert.equal(newest.peer.pid, process.pid);

    const protocolStatus = await brokerStatus(b.socketPath, 5000);
    assert.equal(protocolStatus.devicePresent, false);
    assert.equal(protocolStatus.lastSelfTest?.passed, false);
    assert.equal(protocolStatus.lastSelfTest?.code, broker.ErrorCode.ERROR_CODE_DEVICE_MISSING);
    assert.equal(protocolStatus.lastSelfTest?.errnoName, 'ENOENT');
    assert.match(protocolStatus.lastSelfTest?.reason ?? '', /does not exist/);

    // Liveness is about the broker, not the device: it stays up and keeps answering.
    assert.equal((await getJson(`${b.url}/healthz`)).status, 200);

    kernel.restoreDevice();
    const tookToRecover = await within(1000, '/readyz is 200 again', async () => (await fetch(`${b.url}/readyz`)).status === 200);
    assert.ok(tookToRecover < 1000);
    const back = await scrape(b.url);
    assert.equal(value(back, 'iommufd_broker_device_present'), 1);
    assert.equal(value(back, 'iommufd_broker_selftest_passed'), 1);
    const recovered = await b.process.waitForLog((l) => l.event === 'selftest' && l.passed === true && l.trigger === 'device-change');
    assert.equal(recovered.level, 'info');
    const { fd } = await openContext(b.socketPath, { allocationId: 'after-return', timeoutMs: 5000 });
    closeFd(fd);
  });

  it('fails /healthz with the reason when its control socket file is removed or replaced', async () => {
    unlinkSync(b.socketPath);
    const gone = await getJson(`${b.url}/healthz`);
    assert.equal(gone.status, 503);
    assert.equal(gone.body.ok, false);
    assert.match(String(gone.body.reason), new RegExp(`control socket ${b.socketPath} is gone \\(ENOENT\\)`));
    assert.equal((await statusOf(b.url)).live.ok, false);

    writeFileSync(b.socketPath, 'an impostor');
    const replaced = await getJson(`${b.url}/healthz`);
    assert.equal(replaced.status, 503);
    assert.match(String(replaced.body.reason), /was replaced by another file/);
  });
});

describe('fd-broker operations: failing nodes', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  before(() => {
    scratch = scratchDir('fd-broker-ops-fail');
    kernel = fakeKernel(scratch.path);
  });
  after(() => scratch?.cleanup());

  it('logs an unchanged self-test failure at error once, not on every interval, and stays alive but not ready', async () => {
    const dir = join(scratch.path, 'no-device');
    const b = await startOpsBroker(kernel, dir, ['--device', join(dir, 'no-iommu'), '--selftest-interval-ms', '100']);
    try {
      await within(5000, 'four failed self-tests', async () => value(await scrape(b.url), 'iommufd_broker_selftest_runs_total', { result: 'failed' }) >= 4);
      const errors = b.process.logs.filter((l) => l.event === 'selftest' && l.level === 'error');
      assert.equal(errors.length, 1, JSON.stringify(errors));
      assert.equal(errors[0]?.trigger, 'start');

      const ready = await getJson(`${b.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.match(String(ready.body.reason), /DEVICE_MISSING \(ENOENT\)/);
      assert.equal((await getJson(`${b.url}/healthz`)).status, 200);
      const metrics = await scrape(b.url);
      assert.equal(value(metrics, 'iommufd_broker_device_present'), 0);
      assert.equal(value(metrics, 'iommufd_broker_selftest_passed'), 0);
      assert.equal(value(metrics, 'iommufd_broker_selftest_runs_total', { result: 'passed' }), 0);
      assert.equal((await statusOf(b.url)).lastSelfTest?.trigger, 'interval');
    } finally {
      await b.process.stop();
    }
  });

  it('is not ready without CAP_SYS_RESOURCE, and counts the failed opens as EPERM', async () => {
    const b = await startOpsBroker(kernel, join(scratch.path, 'unprivileged'), [], null);
    try {
      await b.process.waitForEvent('selftest');
      const ready = await getJson(`${b.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.match(String(ready.body.reason), /^self-test failed: PERMISSION_DENIED \(EPERM\): .*CAP_SYS_RESOURCE/);
      assert.equal(ready.body.devicePresent, true);

      for (let i = 0; i < 2; i++) {
        await assert.rejects(openContext(b.socketPath, { allocationId: `eperm-${i}`, requestId: `eperm-${i}`, timeoutMs: 5000 }), BrokerReplyError);
      }
      const metrics = await scrape(b.url);
      assert.equal(value(metrics, 'iommufd_broker_context_opens_total', { result: 'error', errno: 'EPERM' }), 2);
      assert.equal(value(metrics, 'iommufd_broker_context_opens_total', { result: 'ok', errno: 'none' }), 0);
      assert.equal(value(metrics, 'iommufd_broker_requests_total', { type: 'open_context', result: 'error' }), 2);
      assert.equal(value(metrics, 'iommufd_broker_context_open_duration_seconds_count'), 0);
      assert.equal(value(metrics, 'iommufd_broker_device_present'), 1);

      const status = await statusOf(b.url);
      assert.equal(status.counters.openFailures, 2);
      assert.equal(status.counters.contextsOpened, 0);
      assert.deepEqual(status.recentErrors.map((e) => e.requestId), ['eperm-1', 'eperm-0']);
      assert.equal(status.recentErrors[0]?.code, 'PERMISSION_DENIED');
      assert.equal(status.recentErrors[0]?.errno, 'EPERM');
      assert.match(status.recentErrors[0]?.syscall ?? '', /IOMMU_OPTION SET/);
      assert.equal(status.lastSelfTest?.code, 'PERMISSION_DENIED');
    } finally {
      await b.process.stop();
    }
  });

  it('counts and shows refused peers', async () => {
    const b = await startOpsBroker(kernel, join(scratch.path, 'refusing'), ['--allowed-uids', '4242']);
    try {
      await assert.rejects(openContext(b.socketPath, { allocationId: 'x', timeoutMs: 5000 }), BrokerReplyError);
      await b.process.waitForEvent('peer_refused');
      const metrics = await scrape(b.url);
      assert.equal(value(metrics, 'iommufd_broker_peers_refused_total'), 1);
      assert.equal(value(metrics, 'iommufd_broker_requests_total', { type: 'open_context', result: 'ok' }), 0);
      const status = await statusOf(b.url);
      assert.equal(status.counters.peersRefused, 1);
      assert.equal(status.recentErrors[0]?.type, 'peer_refused');
      assert.equal(status.recentErrors[0]?.code, 'PEER_NOT_ALLOWED');
      assert.equal(status.recentErrors[0]?.peer.uid, ownUid);
      assert.deepEqual(status.peers, [], 'a refused peer was not served');
    } finally {
      await b.process.stop();
    }
  });

  it('stops with exit 1 and the reason when its HTTP port is taken', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const dir = join(scratch.path, 'port-taken');
      const b = await startBroker(kernel, dir, { args: ['--http-host', '127.0.0.1', '--http-port', String(port)], waitForListening: false });
      assert.equal((await b.process.exit()).code, 1);
      const line = b.process.logs.find((l) => l.event === 'start_failed');
      assert.match(String(line?.reason), new RegExp(`HTTP endpoint 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
    } finally {
      blocker.close();
    }
  });
});

describe('fd-broker admin commands', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  let working: OpsBroker;
  let deviceless: OpsBroker;

  before(async () => {
    scratch = scratchDir('fd-broker-cmd');
    kernel = fakeKernel(scratch.path);
    working = await startOpsBroker(kernel, join(scratch.path, 'working'));
    const dir = join(scratch.path, 'deviceless');
    deviceless = await startOpsBroker(kernel, dir, ['--device', join(dir, 'no-iommu')]);
  });

  after(async () => {
    await Promise.all([working?.process.stop(), deviceless?.process.stop()]);
    scratch?.cleanup();
  });

  it('selftest exits 0 with "passed" on the stand-in, as a privileged process', async () => {
    const { code, stdout } = await fdBroker(['selftest', '--device', kernel.devicePath, '--node-dir', scratch.path, ...strategyArgs], kernel.env({ privilegedUids: [ownUid] }));
    assert.equal(code, 0, stdout);
    assert.match(stdout, new RegExp(`^selftest passed: opened ${kernel.devicePath} .*RLIMIT mode set and verified \\(\\d+\\.\\d\\d ms\\)\\n$`));
  });

  it('selftest exits 1 with DEVICE_MISSING on a node without the device, and reads its settings from the environment', async () => {
    const missing = join(scratch.path, 'absent', 'iommu');
    const { code, stdout } = await fdBroker(['selftest'], { ...kernel.env({ privilegedUids: [ownUid] }), FD_BROKER_DEVICE: missing, FD_BROKER_NODE_DIR: scratch.path });
    assert.equal(code, 1);
    assert.equal(stdout.split('\n').length, 2, 'one line');
    assert.match(stdout, new RegExp(`^selftest FAILED: DEVICE_MISSING \\(ENOENT\\): ${missing} does not exist: the kernel has no IOMMUFD`));
  });

  it('selftest exits 1 with PERMISSION_DENIED (EPERM) without CAP_SYS_RESOURCE', async () => {
    const { code, stdout } = await fdBroker(['selftest', '--device', kernel.devicePath, '--node-dir', scratch.path, ...strategyArgs], kernel.env());
    assert.equal(code, 1);
    assert.match(stdout, /^selftest FAILED: PERMISSION_DENIED \(EPERM\): setting RLIMIT mode needs CAP_SYS_RESOURCE/);
  });

  it('inspect --broker reports a context fd in RLIMIT mode, and exits 0', async () => {
    const { code, stdout } = await fdBroker(['inspect', '--broker', working.socketPath], kernel.env());
    assert.equal(code, 0, stdout);
    const report = JSON.parse(stdout) as Record<string, unknown> & { fd: Record<string, unknown>; reply: Record<string, unknown> };
    assert.equal(report.source, 'broker');
    assert.equal(report.ok, true);
    assert.equal(report.fdReceived, true);
    assert.equal(report.fd.rlimitMode, 1);
    assert.equal(report.fd.rlimitModeErrno, null);
    // Under the stand-in a context is a memfd; on a real kernel this would name /dev/iommu.
    assert.match(String(report.fd.target), /fake-iommufd/);
    assert.equal(report.fd.type, 'regular file');
    assert.deepEqual(report.reply, { devicePath: kernel.devicePath, strategy: defaultStrategy, rlimitModeVerified: true });
    assert.match(String(report.summary), /RLIMIT mode on/);
    // The broker saw the command as a peer that got a context.
    const opened = await working.process.waitForLog((l) => l.event === 'context_opened' && l.allocationId === 'fd-broker-inspect');
    assert.equal((opened.peer as { uid: number }).uid, ownUid);
  });

  it('inspect --broker reports no fd and the broker error when the device is missing, and exits 1', async () => {
    const { code, stdout } = await fdBroker(['inspect', '--broker', deviceless.socketPath], kernel.env());
    assert.equal(code, 1);
    const report = JSON.parse(stdout) as Record<string, unknown> & { error: Record<string, unknown> };
    assert.equal(report.ok, false);
    assert.equal(report.fdReceived, false);
    assert.equal(report.fd, undefined);
    assert.equal(report.error.code, 'DEVICE_MISSING');
    assert.equal(report.error.errno, 'ENOENT');
    assert.match(String(report.error.message), /does not exist/);
    assert.match(String(report.summary), /^no fd: .*DEVICE_MISSING \(ENOENT\)/);
  });

  it('inspect --handoff reads one byte and the fd as virt-launcher does', async () => {
    const { fd } = await openContext(working.socketPath, { allocationId: 'handoff', timeoutMs: 5000 });
    const path = join(scratch.path, 'handoff.sock');
    const server = await serveFd(path, fd);
    try {
      const onStandIn = await fdBroker(['inspect', '--handoff', path], kernel.env());
      assert.equal(onStandIn.code, 0, onStandIn.stdout);
      const report = JSON.parse(onStandIn.stdout) as Record<string, unknown> & { fd: Record<string, unknown> };
      assert.equal(report.source, 'handoff');
      assert.deepEqual(report.data, { bytes: 1, firstByte: 0 });
      assert.equal(report.fd.rlimitMode, 1);

      // Without the stand-in the same fd is just a memfd: GET fails with ENOTTY, so no verdict of RLIMIT mode.
      const offStandIn = await fdBroker(['inspect', '--handoff', path], process.env);
      assert.equal(offStandIn.code, 1);
      const plain = JSON.parse(offStandIn.stdout) as { fdReceived: boolean; fd: Record<string, unknown>; summary: string };
      assert.equal(plain.fdReceived, true);
      assert.equal(plain.fd.rlimitMode, null);
      assert.equal(plain.fd.rlimitModeErrno, 'ENOTTY');
      assert.match(plain.summary, /RLIMIT mode unreadable \(ENOTTY\)/);
    } finally {
      await server.close();
      closeFd(fd);
    }
  });

  it('inspect --handoff reports a socket that closes without an fd, and exits 1', async () => {
    const path = join(scratch.path, 'empty-handoff.sock');
    const server = createServer((socket) => socket.end());
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      const { code, stdout } = await fdBroker(['inspect', '--handoff', path], kernel.env());
      assert.equal(code, 1);
      const report = JSON.parse(stdout) as { fdReceived: boolean; data: unknown; summary: string };
      assert.equal(report.fdReceived, false);
      assert.deepEqual(report.data, { bytes: 0, firstByte: null });
      assert.match(report.summary, /closed without sending anything/);
    } finally {
      server.close();
    }
  });

  it('inspect reports a socket it cannot reach, and exits 1', async () => {
    const { code, stdout } = await fdBroker(['inspect', '--handoff', join(scratch.path, 'nothing-here.sock')], kernel.env());
    assert.equal(code, 1);
    const report = JSON.parse(stdout) as { fdReceived: boolean; error: { errno: string } };
    assert.equal(report.fdReceived, false);
    assert.equal(report.error.errno, 'ENOENT');
  });
});

describe('fd-broker operations: command line', () => {
  it('--help names the commands and the HTTP and self-test settings', async () => {
    const { code, stdout } = await fdBroker(['--help'], process.env);
    assert.equal(code, 0);
    for (const text of ['selftest', 'inspect', '--http-host ADDRESS', '--http-port PORT', '--selftest-interval-ms MS', 'FD_BROKER_HTTP_PORT', 'default: 9540', 'default: 60000']) {
      assert.ok(stdout.includes(text), text);
    }
    const inspectHelp = await fdBroker(['inspect', '--help'], process.env);
    assert.equal(inspectHelp.code, 0);
    assert.match(inspectHelp.stdout, /^Usage: fd-broker inspect \(--handoff PATH \| --broker PATH\)/);
  });

  it('rejects bad operations settings and arguments with exit code 2', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--selftest-interval-ms', '50'], /--selftest-interval-ms="50": expected a number from 100/],
      [['--http-port', '70000'], /--http-port="70000": expected a number from 0 to 65535/],
      [['frobnicate'], /unexpected argument: frobnicate/],
      [['inspect'], /inspect needs --handoff PATH or --broker PATH/],
      [['inspect', '--handoff', '/a', '--broker', '/b'], /not both/],
      [['inspect', '--broker', '/a', '--timeout-ms', 'soon'], /--timeout-ms="soon": expected a whole number/],
      [['--device', '/x', 'inspect'], /inspect takes its own flags and must come first/],
    ];
    for (const [args, message] of cases) {
      const { code, stderr } = await fdBroker(args, process.env);
      assert.equal(code, 2, args.join(' '));
      assert.match(stderr, message);
    }
    const { code, stderr } = await fdBroker([], { ...process.env, FD_BROKER_HTTP_PORT: 'http' });
    assert.equal(code, 2);
    assert.match(stderr, /FD_BROKER_HTTP_PORT="http"/);
  });
});
