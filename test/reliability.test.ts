/**
 * Restarts, reclaim, shutdown, floods, planted files and privileges: under
 * each, every launcher that behaves gets a correct fd, nothing leaks, and
 * nothing that is not ours is touched.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openContext } from '@iommufd-plugin/common';
import { closeFd } from '@iommufd-plugin/native';
import type { AdmittedPod } from './kubelet-simulator/kubelet-simulator';
import { startBroker } from './support/broker-process';
import { fakeKernel, type FakeKernel, runningAsRoot } from './support/fake-kernel';
import { LocalNode } from './support/local-node';
import { settle } from './support/process-figures';
import { RawConnection } from './support/raw-connection';
import { scratchDir } from './support/scratch-dir';

const stateFile = (node: LocalNode) => join(node.socketDir, '.kubelet-bridge-state.json');
const handoffPath = (pod: AdmittedPod) => LocalNode.handoffPath(pod.containers[0]!.response);
const socketsIn = (dir: string) => readdirSync(dir).filter((name) => name.endsWith('.sock')).sort();
const savedIds = (node: LocalNode) =>
  (JSON.parse(readFileSync(stateFile(node), 'utf8')) as { allocations: Array<{ id: string }> }).allocations.map((a) => a.id).sort();

async function restartBridge(node: LocalNode, signal: NodeJS.Signals): Promise<void> {
  const exit = await node.bridge.stop(signal);
  if (signal === 'SIGTERM') assert.equal(exit.code, 0);
  const registrations = node.simulator.plugin('devices.kubevirt.io/iommufd')!.registrations;
  node.startBridge();
  await node.simulator.waitFor((sim) => sim.plugin('devices.kubevirt.io/iommufd')!.registrations > registrations, 5000);
}

async function openConnections(path: string, count: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<void>((resolve) => {
        const socket = connect(path);
        sockets.push(socket);
        socket.on('error', () => resolve());
        socket.on('connect', () => resolve());
      }),
    ),
  );
  return sockets;
}

describe('bridge restart', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 8 });
  });
  after(async () => node?.stop());

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`keeps allocations whose launcher has not connected yet across a ${signal}, with no duplicate or orphan socket`, async () => {
      const pods = [await node.admit(), await node.admit()];
      const expected = pods.map((p) => handoffPath(p).split('/').pop()!).sort();
      assert.deepEqual(socketsIn(node.socketDir), expected);
      assert.equal(savedIds(node).length, 2);

      await restartBridge(node, signal);
      await node.bridge.waitForEvent('allocations_restored');
      assert.deepEqual(socketsIn(node.socketDir), expected, 'the same sockets, no more');
      for (const pod of pods) assert.equal((await node.launch(pod)).rlimitMode, 1);
      await sleep(200);
      assert.deepEqual(socketsIn(node.socketDir), []);
      assert.deepEqual(savedIds(node), []);
      for (const pod of pods) node.simulator.deletePod(pod.namespace, pod.name);
    });
  }

  it('removes handoff sockets no saved allocation owns, and leaves other files alone', async () => {
    const orphan = join(node.socketDir, 'iommufd-mx0000aa-0123456789ab.sock');
    // A socket whose listener died without removing it, as after a crash.
    execFileSync('python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])', orphan]);
    const planted = join(node.socketDir, 'iommufd-mx0000bb-0123456789ab.sock');
    writeFileSync(planted, 'not a socket');
    await restartBridge(node, 'SIGTERM');
    await node.bridge.waitForEvent('orphan_removed');
    assert.equal(existsSync(orphan), false);
    assert.equal(readFileSync(planted, 'utf8'), 'not a socket');
  });
});

describe('broker restart', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 4, bridgeArgs: ['--broker-retry-ms', '8000'] });
  });
  after(async () => node?.stop());

  it('is invisible to a launcher that connects while the broker is down for a moment', async () => {
    const pod = await node.admit();
    await node.broker.stop();
    const launched = node.launch(pod);
    await sleep(1000);
    node.startBroker();
    const report = await launched;
    assert.equal(report.result, 'ok');
    assert.equal(report.rlimitMode, 1);
  });
});

describe('reclaim', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 4, bridgeArgs: ['--reclaim-interval-ms', '300'] });
  });
  after(async () => node?.stop());

  it('removes the socket of a pod that is gone, and never one of a live pod', async () => {
    const gone = await node.admit('vm-gone');
    const live = await node.admit('vm-live');
    node.simulator.deletePod('default', 'vm-gone');
    const line = await node.bridge.waitForLog((l) => l.event === 'reclaimed' && l.reason === 'pod_gone', 5000);
    assert.deepEqual(line.deviceIds, gone.containers[0]!.deviceIds);
    assert.equal(existsSync(handoffPath(gone)), false);
    await sleep(1000);
    assert.equal(existsSync(handoffPath(live)), true, 'a live pod keeps its socket');
    assert.equal((await node.launch(live)).rlimitMode, 1);
  });

  it('retires an older allocation when the kubelet gives its device to a new one', async () => {
    const slow = await LocalNode.start({ deviceCount: 1, bridgeArgs: ['--reclaim-interval-ms', '600000'] });
    try {
      const first = await slow.admit('vm-first');
      slow.simulator.deletePod('default', 'vm-first');
      const second = await slow.admit('vm-second');
      assert.deepEqual(second.containers[0]!.deviceIds, first.containers[0]!.deviceIds);
      await slow.bridge.waitForLog((l) => l.event === 'reclaimed' && l.reason === 'superseded');
      assert.equal(existsSync(handoffPath(first)), false);
      assert.equal((await slow.launch(second)).rlimitMode, 1);
    } finally {
      await slow.stop();
    }
  });

  it('applies the maximum age while the pod resources API does not answer', async () => {
    const blind = await LocalNode.start({
      deviceCount: 2,
      bridgeArgs: ['--reclaim-interval-ms', '300', '--reclaim-max-age-ms', '1500', '--pod-resources-socket', '/nonexistent/kubelet.sock'],
    });
    try {
      const pod = await blind.admit();
      await sleep(700);
      assert.equal(existsSync(handoffPath(pod)), true, 'younger than the maximum age');
      await blind.bridge.waitForLog((l) => l.event === 'reclaimed' && l.reason === 'max_age', 5000);
      assert.equal(existsSync(handoffPath(pod)), false);
      assert.ok(blind.bridge.logs.some((l) => l.event === 'reclaim_degraded'));
    } finally {
      await blind.stop();
    }
  });
});

describe('shutdown and floods', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 8, bridgeArgs: ['--max-handoff-connections', '64', '--broker-retry-ms', '3000'] });
  });
  after(async () => node?.stop());

  it('finishes a handoff in progress on SIGTERM, keeps the state, and exits within the bound', async () => {
    const waiting = await node.admit();
    const pending = await node.admit();
    await node.broker.stop();
    const launched = node.launch(waiting);
    await node.bridge.waitForLog((l) => l.event === 'node_health' && l.brokerReachable === false, 3000);
    const stopped = Date.now();
    const exit = node.bridge.stop('SIGTERM');
    node.startBroker();
    assert.equal((await launched).rlimitMode, 1, 'the handoff in progress finished');
    assert.equal((await exit).code, 0);
    assert.ok(Date.now() - stopped < 6000);
    assert.deepEqual(socketsIn(node.socketDir), [handoffPath(pending).split('/').pop()], 'the unused allocation keeps its socket');
    node.startBridge();
    await node.waitUntilServing(8, 5000);
  });

  it('survives a flood of 1,000 connections to a handoff socket and still serves a well-behaved launcher', async () => {
    await node.bridge.waitForEvent('registered');
    const flooded = await node.admit();
    const good = await node.admit();
    const fdsBefore = node.bridge.fdCount();
    const flood = await openConnections(handoffPath(flooded), 1000);
    await sleep(300);
    assert.ok(node.bridge.fdCount() < fdsBefore + 100, `bridge holds ${node.bridge.fdCount()} fds, ${fdsBefore} before the flood`);
    assert.equal((await node.launch(good)).rlimitMode, 1);
    for (const socket of flood) socket.destroy();
    await sleep(300);
    assert.ok(node.bridge.fdCount() <= fdsBefore + 2);
  });

  it('closes launchers queued behind the one that got the fd at once, and holds none of their connections', async () => {
    // Found by scripts/fuzz: the socket waited for its queued connections before moving on, and they waited for it.
    const pod = await node.admit();
    const fdsBefore = node.bridge.fdCount();
    const connections = await Promise.all(Array.from({ length: 4 }, () => RawConnection.open(handoffPath(pod), 3000)));
    try {
      const reads = await Promise.all(connections.map((c) => c.readOnce(3000)));
      const fds = reads.flatMap((r) => (typeof r === 'object' && 'fd' in r && r.fd !== null ? [r.fd] : []));
      fds.forEach((fd) => closeFd(fd));
      assert.equal(fds.length, 1, `one of four launchers gets the fd: ${JSON.stringify(reads.map((r) => (typeof r === 'string' ? r : 'fd' in r ? 'fd' : r.error)))}`);
      assert.ok(!reads.includes('timeout'), 'every other launcher is closed, none left waiting');
    } finally {
      await Promise.all(connections.map((c) => c.close()));
    }
    const { allocationId } = await node.bridge.waitForLog((l) => l.event === 'allocate' && l.hostPath === handoffPath(pod));
    await node.bridge.waitForLog((l) => l.event === 'handoff' && l.result === 'ok' && l.allocationId === allocationId, 3000);
    assert.equal(existsSync(handoffPath(pod)), false, 'the used socket is gone');
    assert.ok(await settle(() => node.bridge.fdCount() <= fdsBefore, 3000), `the bridge holds ${node.bridge.fdCount()} fds, ${fdsBefore} before`);
  });
});

describe('fd-broker under a flood and with planted files', () => {
  let scratch: ReturnType<typeof scratchDir>;
  let kernel: FakeKernel;
  before(() => {
    scratch = scratchDir('reliability-broker');
    kernel = fakeKernel(scratch.path);
  });
  after(() => scratch?.cleanup());

  it('bounds a flood of 1,000 connections and serves the next client once they are gone', async () => {
    const b = await startBroker(kernel, join(scratch.path, 'flood'), { args: ['--request-timeout-ms', '500'] });
    try {
      const flood = await openConnections(b.socketPath, 1000);
      await sleep(300);
      assert.ok(b.process.fdCount() < 300, `broker holds ${b.process.fdCount()} fds`);
      await sleep(600);
      const { fd } = await openContext(b.socketPath, { allocationId: 'after-flood', timeoutMs: 5000 });
      closeFd(fd);
      for (const socket of flood) socket.destroy();
    } finally {
      await b.process.stop();
    }
  });

  // The temporary-node strategy checks the device first, and only root can make the stand-in a character device.
  it('never opens, labels or creates through a node directory that is a symlink', { skip: !runningAsRoot && 'needs root (the stand-in device as a character device)' }, async () => {
    const victim = join(scratch.path, 'victim');
    mkdirSync(victim);
    const dir = join(scratch.path, 'planted');
    mkdirSync(dir);
    const linked = join(dir, 'nodes');
    symlinkSync(victim, linked);
    const b = await startBroker(kernel, dir, { args: ['--node-dir', linked, '--open-strategy', 'temporary-node'] });
    try {
      await assert.rejects(openContext(b.socketPath, { allocationId: 'x', timeoutMs: 5000 }), /is a symlink, which the broker refuses to follow \((ENOTDIR|ELOOP)\)/);
      assert.deepEqual(readdirSync(victim), []);
    } finally {
      await b.process.stop();
    }
  });
});

describe('bridge state file safety', () => {
  it('writes its state without following symlinks planted at the state paths', async () => {
    const node = await LocalNode.start({ deviceCount: 2 });
    try {
      const victim = join(node.dir, 'victim.txt');
      writeFileSync(victim, 'precious');
      symlinkSync(victim, `${stateFile(node)}.tmp`);
      await node.admit();
      assert.equal(readFileSync(victim, 'utf8'), 'precious');
      assert.equal(lstatSync(stateFile(node)).isFile(), true);
      assert.equal(savedIds(node).length, 1);
    } finally {
      await node.stop();
    }
  });

  it('refuses an Allocate it cannot persist, says why, and saves again once it can', async () => {
    const node = await LocalNode.start({ deviceCount: 3 });
    try {
      // A directory where the temporary file goes: the write fails (and the bridge must not remove it).
      const obstacle = `${stateFile(node)}.tmp`;
      mkdirSync(obstacle);
      await assert.rejects(node.admit(), /could not save the allocation state/);
      const failure = await node.bridge.waitForEvent('state_save_failed');
      assert.match(String(failure.reason), /EEXIST|EISDIR|EPERM/);
      assert.equal(existsSync(obstacle), true);
      assert.deepEqual(socketsIn(node.socketDir), [], 'the refused allocation left no socket');
      rmdirSync(obstacle);
      const pod = await node.admit();
      assert.deepEqual(savedIds(node), socketsIn(node.socketDir).map((name) => name.replace(/^iommufd-|\.sock$/g, '')));
      assert.equal((await node.launch(pod)).rlimitMode, 1);
    } finally {
      await node.stop();
    }
  });
});

describe('fd-broker privileges', { skip: !runningAsRoot && 'needs root to hold capabilities' }, () => {
  let scratch: ReturnType<typeof scratchDir>;
  before(() => {
    scratch = scratchDir('reliability-caps');
  });
  after(() => scratch?.cleanup());

  function capabilities(pid: number): { effective: bigint; bounding: bigint; noNewPrivs: boolean } {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const hex = (name: string) => BigInt(`0x${new RegExp(`^${name}:\\s+([0-9a-f]+)$`, 'm').exec(status)![1]}`);
    return { effective: hex('CapEff'), bounding: hex('CapBnd'), noNewPrivs: /^NoNewPrivs:\s+1$/m.test(status) };
  }
  const CAP_CHOWN = 1n << 0n;
  const CAP_DAC_OVERRIDE = 1n << 1n;
  const CAP_SYS_RESOURCE = 1n << 24n;
  const CAP_MKNOD = 1n << 27n;
  const ours = capabilities(process.pid);

  it('keeps only what the temporary-node strategy needs, sets no_new_privs, and still serves', async () => {
    const kernel = fakeKernel(scratch.path);
    const b = await startBroker(kernel, join(scratch.path, 'node'));
    try {
      const caps = capabilities(b.process.pid);
      assert.equal(caps.bounding, (CAP_SYS_RESOURCE | CAP_MKNOD | CAP_DAC_OVERRIDE) & ours.bounding);
      assert.equal(caps.effective, caps.bounding);
      assert.equal(caps.noNewPrivs, true);
      const line = await b.process.waitForEvent('capabilities');
      assert.ok((line.effective as string[]).includes('CAP_MKNOD'));
      assert.equal((line.effective as string[]).includes('CAP_SYS_ADMIN'), false);
      assert.equal(line.noNewPrivs, true);
      const { fd } = await openContext(b.socketPath, { allocationId: 'caps', timeoutMs: 5000 });
      closeFd(fd);
    } finally {
      await b.process.stop();
    }
  });

  it('keeps CAP_CHOWN only with --socket-owner, nothing for mknod with the direct strategy, and everything when told not to restrict', async () => {
    const kernelDir = join(scratch.path, 'second-kernel');
    mkdirSync(kernelDir);
    const kernel = fakeKernel(kernelDir);
    const direct = await startBroker(kernel, join(scratch.path, 'direct'), { args: ['--open-strategy', 'direct', '--socket-owner', '4242'] });
    try {
      assert.equal(capabilities(direct.process.pid).bounding, (CAP_SYS_RESOURCE | CAP_CHOWN) & ours.bounding);
      assert.equal(lstatSync(direct.socketPath).uid, 4242);
    } finally {
      await direct.process.stop();
    }
    const unrestricted = await startBroker(kernel, join(scratch.path, 'all'), { args: ['--restrict-capabilities', 'false'] });
    try {
      assert.equal(capabilities(unrestricted.process.pid).effective, ours.effective);
      assert.equal(capabilities(unrestricted.process.pid).noNewPrivs, false);
    } finally {
      await unrestricted.process.stop();
    }
  });
});
