/**
 * The fd-broker as a real process on the kernel stand-in, with clients in
 * other processes: the test process speaks the broker protocol, and the
 * launcher stand-in (as an unprivileged uid) checks what an fd really is.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokerReplyError, brokerStatus, encodeFrame, FrameDecoder, openContext } from '@iommufd-plugin/common';
import { closeFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import { defaultStrategy, startBroker, type BrokerUnderTest } from './support/broker-process';
import { fakeKernel, type FakeKernel, runningAsRoot, unprivilegedUid } from './support/fake-kernel';
import { inspectFdInLauncher, launcherUid } from './support/fd-check';
import { scratchDir } from './support/scratch-dir';
import { ServiceProcess } from './support/service-process';
import { fdBrokerBin } from './support/paths';

/** Raw protocol access, for what the typed client never sends. */
async function rawExchange(socketPath: string, write: (socket: Socket) => void, timeoutMs = 8000): Promise<{ replies: broker.Reply[]; closed: boolean }> {
  const socket = connect(socketPath);
  const decoder = new FrameDecoder(1 << 20);
  const replies: broker.Reply[] = [];
  socket.on('data', (chunk) => replies.push(...decoder.push(chunk).map((p) => broker.Reply.decode(p))));
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  write(socket);
  const closed = await Promise.race([
    new Promise<boolean>((resolve) => socket.once('close', () => resolve(true))),
    sleep(timeoutMs).then(() => false),
  ]);
  socket.destroy();
  return { replies, closed };
}

function requestFrame(request: Partial<broker.Request>): Buffer {
  return encodeFrame(broker.Request.encode({ protocolVersion: 1, requestId: 'raw', body: undefined, ...request }).finish());
}

function errorOf(reply: broker.Reply | undefined): broker.Error {
  assert.equal(reply?.body?.$case, 'error', `expected an error reply, got ${JSON.stringify(reply)}`);
  return (reply!.body as { value: broker.Error }).value;
}

describe('fd-broker', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  let brokerUnderTest: BrokerUnderTest;

  before(async () => {
    scratch = scratchDir('fd-broker-test');
    kernel = fakeKernel(scratch.path);
    brokerUnderTest = await startBroker(kernel, scratch.path, { args: ['--request-timeout-ms', '400'] });
  });

  after(async () => {
    await brokerUnderTest?.process.stop();
    scratch?.cleanup();
  });

  describe('handing out contexts', () => {
    it('sends a working context in RLIMIT mode that an unprivileged receiver reads but cannot change', async () => {
      const { fd, details } = await openContext(brokerUnderTest.socketPath, { allocationId: 'alloc-1', timeoutMs: 5000 });
      try {
        assert.equal(details.rlimitModeVerified, true);
        assert.equal(details.strategy, defaultStrategy === 'temporary-node' ? broker.OpenStrategy.OPEN_STRATEGY_TEMPORARY_NODE : broker.OpenStrategy.OPEN_STRATEGY_DIRECT);
        assert.equal(details.devicePath, kernel.devicePath);
        const seen = await inspectFdInLauncher(kernel, scratch.path, fd, { uid: launcherUid, set: 0 });
        assert.equal(seen.result, 'ok');
        assert.equal(seen.getErrno, '');
        assert.equal(seen.rlimitMode, 1, 'the receiver must find RLIMIT mode on');
        if (launcherUid !== undefined) {
          assert.equal(seen.uid, unprivilegedUid);
          assert.equal(seen.set, 'EPERM', 'an unprivileged receiver must not be able to SET');
          assert.equal(seen.rlimitModeAfterSet, 1);
        }
      } finally {
        closeFd(fd);
      }
    });

    it('gives every request its own context', async () => {
      const a = await openContext(brokerUnderTest.socketPath, { allocationId: 'a', timeoutMs: 5000 });
      const b = await openContext(brokerUnderTest.socketPath, { allocationId: 'b', timeoutMs: 5000 });
      try {
        // A privileged process turns RLIMIT mode off in context a only.
        const changed = await inspectFdInLauncher(kernel, scratch.path, a.fd, { set: 0, uid: runningAsRoot ? 0 : undefined });
        if (!runningAsRoot) return; // only root can play the privileged process here
        assert.equal(changed.set, 'ok');
        assert.equal(changed.rlimitModeAfterSet, 0);
        assert.equal((await inspectFdInLauncher(kernel, scratch.path, a.fd)).rlimitMode, 0, 'context a keeps its change');
        assert.equal((await inspectFdInLauncher(kernel, scratch.path, b.fd)).rlimitMode, 1, 'context b is untouched');
      } finally {
        closeFd(a.fd);
        closeFd(b.fd);
      }
    });

    it('serves concurrent requests', async () => {
      const opened = await Promise.all(
        Array.from({ length: 40 }, (_, i) => openContext(brokerUnderTest.socketPath, { allocationId: `c${i}`, timeoutMs: 10_000 })),
      );
      try {
        assert.equal(opened.length, 40);
        assert.equal(new Set(opened.map(({ fd }) => fd)).size, 40);
        assert.ok(opened.every(({ details }) => details.rlimitModeVerified));
      } finally {
        for (const { fd } of opened) closeFd(fd);
      }
    });

    it('leaves no temporary device node behind', () => {
      const leftovers = readdirSync(scratch.path).filter((name) => name.startsWith('.iommufd-node'));
      assert.deepEqual(leftovers, []);
    });

    it('answers status with its counters', async () => {
      const status = await brokerStatus(brokerUnderTest.socketPath, 5000);
      assert.equal(status.protocolVersion, 1);
      assert.equal(status.devicePath, kernel.devicePath);
      assert.equal(status.devicePresent, true);
      assert.ok(status.contextsOpened >= 43, `contextsOpened = ${status.contextsOpened}`);
      assert.equal(status.openFailures, 0);
    });

    it('logs one line per context with the request and the peer', async () => {
      await openContext(brokerUnderTest.socketPath, { allocationId: 'logged-alloc', requestId: 'req-42', timeoutMs: 5000 }).then(({ fd }) => closeFd(fd));
      const line = await brokerUnderTest.process.waitForLog((l) => l.event === 'context_opened' && l.requestId === 'req-42');
      assert.equal(line.allocationId, 'logged-alloc');
      assert.deepEqual((line.peer as { uid: number }).uid, process.geteuid!());
      assert.equal(line.level, 'info');
    });
  });

  describe('bad requests', () => {
    it('answers an undecodable request with BAD_REQUEST and keeps the connection', async () => {
      const { replies } = await rawExchange(brokerUnderTest.socketPath, (s) => {
        s.write(encodeFrame(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])));
        s.write(requestFrame({ requestId: 'after', body: { $case: 'status', value: {} } }));
      }, 300);
      assert.equal(errorOf(replies[0]).code, broker.ErrorCode.ERROR_CODE_BAD_REQUEST);
      assert.equal(replies[1]?.requestId, 'after');
      assert.equal(replies[1]?.body?.$case, 'status');
    });

    it('refuses an unknown protocol version and a request without a body', async () => {
      const { replies } = await rawExchange(brokerUnderTest.socketPath, (s) => {
        s.write(requestFrame({ protocolVersion: 2, requestId: 'v2', body: { $case: 'status', value: {} } }));
        s.write(requestFrame({ requestId: 'empty' }));
      }, 300);
      assert.equal(errorOf(replies[0]).code, broker.ErrorCode.ERROR_CODE_UNSUPPORTED_VERSION);
      assert.equal(replies[0]?.requestId, 'v2');
      assert.equal(errorOf(replies[1]).code, broker.ErrorCode.ERROR_CODE_BAD_REQUEST);
    });

    it('refuses an oversized request before reading it, and closes', async () => {
      const { replies, closed } = await rawExchange(brokerUnderTest.socketPath, (s) => {
        const header = Buffer.alloc(4);
        header.writeUInt32BE(1 << 30);
        s.write(header);
      });
      assert.equal(errorOf(replies[0]).code, broker.ErrorCode.ERROR_CODE_REQUEST_TOO_LARGE);
      assert.equal(closed, true);
    });

    it('answers a truncated or slow request with TIMEOUT at the deadline, and closes', async () => {
      const started = Date.now();
      const { replies, closed } = await rawExchange(brokerUnderTest.socketPath, (s) => {
        const frame = requestFrame({ body: { $case: 'status', value: {} } });
        s.write(frame.subarray(0, 3));
        // The rest trickles in after the deadline.
        setTimeout(() => s.writable && s.write(frame.subarray(3, 5)), 250);
      });
      assert.equal(errorOf(replies[0]).code, broker.ErrorCode.ERROR_CODE_TIMEOUT);
      assert.equal(closed, true);
      assert.ok(Date.now() - started < 3000);
    });

    it('closes an idle connection at the deadline', async () => {
      const { replies, closed } = await rawExchange(brokerUnderTest.socketPath, () => undefined);
      assert.deepEqual(replies, []);
      assert.equal(closed, true);
    });

    it('survives clients that vanish mid-request and still serves the next one', async () => {
      for (let i = 0; i < 20; i++) {
        const socket = connect(brokerUnderTest.socketPath);
        socket.on('error', () => undefined);
        await new Promise((resolve) => socket.once('connect', resolve));
        socket.write(requestFrame({ body: { $case: 'openContext', value: { allocationId: 'gone' } } }));
        socket.destroy();
      }
      const { fd } = await openContext(brokerUnderTest.socketPath, { allocationId: 'next', timeoutMs: 5000 });
      closeFd(fd);
    });

    it('holds no more fds after 1,000 requests than before', async () => {
      const before = brokerUnderTest.process.fdCount();
      const ownBefore = readdirSync('/proc/self/fd').length;
      for (let batch = 0; batch < 50; batch++) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            if (i === 0) {
              // Mix in failures and junk: they must not leak either.
              await rawExchange(brokerUnderTest.socketPath, (s) => s.end(encodeFrame(Buffer.from([0xff]))), 1000);
              return;
            }
            const { fd } = await openContext(brokerUnderTest.socketPath, { allocationId: `load-${batch}-${i}`, timeoutMs: 10_000 });
            closeFd(fd);
          }),
        );
      }
      await sleep(100);
      const afterCount = brokerUnderTest.process.fdCount();
      assert.ok(afterCount <= before, `broker fd count grew from ${before} to ${afterCount}`);
      assert.equal(readdirSync('/proc/self/fd').length, ownBefore, 'client fd count');
    });
  });
});

describe('fd-broker access control and the control socket', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  before(() => {
    scratch = scratchDir('fd-broker-access');
    kernel = fakeKernel(scratch.path);
  });
  after(() => scratch?.cleanup());

  it('creates its socket 0600 by default and refuses a uid that is not allowed', async () => {
    const dir = join(scratch.path, 'refuse');
    const b = await startBroker(kernel, dir, { args: ['--allowed-uids', '4242'] });
    try {
      assert.equal(lstatSync(b.socketPath).mode & 0o777, 0o600);
      await assert.rejects(openContext(b.socketPath, { allocationId: 'x', timeoutMs: 5000 }), (err: unknown) => {
        assert.ok(err instanceof BrokerReplyError);
        assert.equal(err.codeName, 'PEER_NOT_ALLOWED');
        return true;
      });
      const line = await b.process.waitForEvent('peer_refused');
      assert.equal((line.peer as { uid: number }).uid, process.geteuid!());
      assert.equal(b.process.logs.some((l) => l.event === 'context_opened'), false);
    } finally {
      await b.process.stop();
    }
  });

  it('applies the configured mode and owner', { skip: !runningAsRoot && 'chown needs root' }, async () => {
    const dir = join(scratch.path, 'mode');
    const b = await startBroker(kernel, dir, { args: ['--socket-mode', '0660', '--socket-owner', '4242:4343'] });
    try {
      const st = lstatSync(b.socketPath);
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.uid, 4242);
      assert.equal(st.gid, 4343);
    } finally {
      await b.process.stop();
    }
  });

  it('replaces a stale socket, but not a live broker or a file that is not a socket', async () => {
    const dir = join(scratch.path, 'stale');
    const first = await startBroker(kernel, dir);
    await first.process.stop('SIGKILL');
    assert.ok(lstatSync(first.socketPath).isSocket(), 'SIGKILL leaves the socket file behind');

    const second = await startBroker(kernel, dir);
    try {
      const { fd } = await openContext(second.socketPath, { allocationId: 'x', timeoutMs: 5000 });
      closeFd(fd);
      const third = await startBroker(kernel, dir, { waitForListening: false });
      assert.equal((await third.process.exit()).code, 1);
      assert.match(JSON.stringify(third.process.logs), /another process is listening/);
    } finally {
      await second.process.stop();
    }

    const fileDir = join(scratch.path, 'file');
    mkdirSync(fileDir);
    const planted = join(fileDir, 'broker.sock');
    writeFileSync(planted, 'not a socket');
    const refused = await startBroker(kernel, fileDir, { waitForListening: false });
    assert.equal((await refused.process.exit()).code, 1);
    assert.match(JSON.stringify(refused.process.logs), /is not a socket; refusing/);
    assert.equal(statSync(planted).isFile(), true);
  });

  it('rejects bad configuration with a clear message and exit code 2', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--socket-mode', '999'], /--socket-mode="999": expected an octal file mode/],
      [['--open-strategy', 'magic'], /expected one of: direct, temporary-node/],
      [['--allowed-uids', 'root'], /expected a whole number/],
      [['--no-such-flag', '1'], /unknown flag --no-such-flag/],
      [['--device', 'relative/path'], /expected an absolute path/],
    ];
    for (const [args, message] of cases) {
      const p = new ServiceProcess(fdBrokerBin, args, process.env);
      assert.equal((await p.exit()).code, 2, args.join(' '));
      assert.match(p.stderr, message);
    }
    const env = { ...process.env, FD_BROKER_REQUEST_TIMEOUT_MS: 'soon' };
    const p = new ServiceProcess(fdBrokerBin, [], env);
    assert.equal((await p.exit()).code, 2);
    assert.match(p.stderr, /FD_BROKER_REQUEST_TIMEOUT_MS="soon"/);
  });
});

describe('fd-broker kernel errors', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  before(() => {
    scratch = scratchDir('fd-broker-errors');
    kernel = fakeKernel(scratch.path);
  });
  after(() => scratch?.cleanup());

  async function failureOf(args: string[], privilegedUids: number[] | null = [0]): Promise<{ err: BrokerReplyError; log: Record<string, unknown> }> {
    const dir = join(scratch.path, `case-${Math.random().toString(36).slice(2)}`);
    const b = await startBroker(kernel, dir, { args, privilegedUids });
    try {
      let caught: unknown;
      await openContext(b.socketPath, { allocationId: 'e', timeoutMs: 5000 }).then(({ fd }) => closeFd(fd), (err) => (caught = err));
      assert.ok(caught instanceof BrokerReplyError, `expected a typed error, got ${String(caught)}`);
      const log = await b.process.waitForEvent('context_failed');
      // The broker keeps serving after a failure.
      assert.equal((await brokerStatus(b.socketPath, 5000)).openFailures, 1);
      return { err: caught, log };
    } finally {
      await b.process.stop();
    }
  }

  it('reports a missing device as DEVICE_MISSING (ENOENT)', async () => {
    for (const strategy of ['direct', 'temporary-node']) {
      const { err, log } = await failureOf(['--device', join(scratch.path, 'no-such-iommu'), '--open-strategy', strategy]);
      assert.equal(err.codeName, 'DEVICE_MISSING');
      assert.equal(err.errnoName, 'ENOENT');
      assert.match(err.message, /kernel has no IOMMUFD/);
      assert.equal(log.errno, 'ENOENT');
      assert.equal(log.level, 'error');
    }
  });

  it('reports a broker without CAP_SYS_RESOURCE as PERMISSION_DENIED (EPERM on SET)', async () => {
    const { err } = await failureOf([], null);
    assert.equal(err.codeName, 'PERMISSION_DENIED');
    assert.equal(err.errnoName, 'EPERM');
    assert.match(err.syscall, /IOMMU_OPTION SET/);
    assert.match(err.message, /CAP_SYS_RESOURCE/);
  });

  it('reports a device that is not IOMMUFD as NOT_IOMMUFD (ENOTTY)', async () => {
    const { err } = await failureOf(['--device', '/dev/null', '--open-strategy', 'direct']);
    assert.equal(err.codeName, 'NOT_IOMMUFD');
    assert.equal(err.errnoName, 'ENOTTY');
  });

  it('reports a regular file given as the device as NOT_IOMMUFD with the temporary-node strategy', async () => {
    const notDevice = join(scratch.path, 'plain-file');
    writeFileSync(notDevice, '');
    chmodSync(notDevice, 0o644);
    const { err } = await failureOf(['--device', notDevice, '--open-strategy', 'temporary-node']);
    assert.equal(err.codeName, 'NOT_IOMMUFD');
    assert.equal(existsSync(notDevice), true);
  });
});
