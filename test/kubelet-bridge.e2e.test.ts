/**
 * The whole flow with real processes: the fd-broker and the kubelet-bridge
 * as their own processes on the kernel stand-in, the kubelet simulator as
 * the kubelet, and the virt-launcher stand-in (an unprivileged uid where the
 * test runs as root) receiving fds.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { existsSync, lstatSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { credentials, Metadata, status } from '@grpc/grpc-js';
import { deviceplugin } from '@iommufd-plugin/proto';
import type { AdmittedPod } from './kubelet-simulator/kubelet-simulator';
import { unprivilegedUid } from './support/fake-kernel';
import type { LauncherReport } from './support/launcher';
import { LocalNode, resourceName } from './support/local-node';
import { ServiceProcess } from './support/service-process';
import { kubeletBridgeBin } from './support/paths';

/** What every launcher that behaves must see: one zero byte, an fd, RLIMIT mode on, and no way to change it. */
function assertGoodContext(node: LocalNode, report: LauncherReport): void {
  assert.equal(report.result, 'ok', JSON.stringify(report));
  assert.equal(report.dataBytes, 1);
  assert.equal(report.firstByte, 0);
  assert.equal(report.getErrno, '');
  assert.equal(report.rlimitMode, 1, 'the context must be in RLIMIT mode');
  if (node.launcherUid !== undefined) {
    assert.equal(report.uid, unprivilegedUid);
    assert.equal(report.set, 'EPERM');
  }
}

function handoffLogs(node: LocalNode, allocationId?: string) {
  return node.bridge.logs.filter((l) => l.event === 'handoff' && (allocationId === undefined || l.allocationId === allocationId));
}

async function allocationIdOf(node: LocalNode, pod: AdmittedPod): Promise<string> {
  const hostPath = LocalNode.handoffPath(pod.containers[0]!.response);
  const line = await node.bridge.waitForLog((l) => l.event === 'allocate' && l.hostPath === hostPath);
  return line.allocationId as string;
}

async function waitForFdCount(service: ServiceProcess, atMost: number, timeoutMs = 5000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let count = service.fdCount();
  while (count > atMost && Date.now() < deadline) {
    await sleep(100);
    count = service.fdCount();
  }
  return count;
}

/** True once `path` no longer exists; the bridge removes a served socket just after the handoff. */
async function gone(path: string, timeoutMs = 2000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (existsSync(path) && Date.now() < deadline) await sleep(20);
  return !existsSync(path);
}

function pluginClient(node: LocalNode): deviceplugin.DevicePluginClient {
  return new deviceplugin.DevicePluginClient(`unix:${join(node.kubeletDir, 'kubevirt-iommufd.sock')}`, credentials.createInsecure());
}

function call<Req, Res>(
  method: (req: Req, md: Metadata, opts: { deadline: number }, cb: (err: Error | null, res: Res) => void) => unknown,
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => method(request, new Metadata(), { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res))));
}

describe('kubelet-bridge end to end', () => {
  let node: LocalNode;
  const admitted: AdmittedPod[] = [];

  before(async () => {
    node = await LocalNode.start();
  });

  after(async () => {
    await node?.stop();
  });

  async function admit(): Promise<AdmittedPod> {
    const pod = await node.admit();
    admitted.push(pod);
    return pod;
  }

  it('registers with the kubelet as devices.kubevirt.io/iommufd, with the same options both ways', async () => {
    const plugin = node.simulator.plugin(resourceName);
    assert.ok(plugin, 'the simulator has no registration for the resource');
    assert.equal(plugin.endpoint, 'kubevirt-iommufd.sock');
    assert.equal(plugin.registrations, 1);
    assert.deepEqual(plugin.registerOptions, plugin.options);
    assert.deepEqual(plugin.options, { preStartRequired: false, getPreferredAllocationAvailable: false });
    await node.bridge.waitForEvent('registered');
  });

  it('advertises 110 healthy devices', () => {
    const devices = node.simulator.plugin(resourceName)!.devices;
    assert.equal(devices.size, 110);
    assert.deepEqual([...devices.values()].filter((h) => h !== 'Healthy'), []);
    assert.ok(devices.has('iommufd-0') && devices.has('iommufd-109'));
  });

  it('answers Allocate with a fresh handoff socket and the device, without opening anything', async () => {
    const pod = await admit();
    const response = pod.containers[0]!.response;
    assert.equal(response.mounts.length, 1);
    const mount = response.mounts[0]!;
    assert.equal(mount.containerPath, '/var/run/kubevirt/iommufd.sock');
    assert.equal(mount.readOnly, false);
    assert.ok(mount.hostPath.startsWith(`${node.socketDir}/iommufd-`), mount.hostPath);
    assert.deepEqual(response.devices, [{ containerPath: node.kernel.devicePath, hostPath: node.kernel.devicePath, permissions: 'mrw' }]);
    const st = lstatSync(mount.hostPath);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o666);

    const allocationId = await allocationIdOf(node, pod);
    const line = node.bridge.logs.find((l) => l.event === 'allocate' && l.allocationId === allocationId)!;
    assert.deepEqual(line.deviceIds, pod.containers[0]!.deviceIds);
    assert.equal(node.broker.logs.some((l) => l.allocationId === allocationId), false, 'Allocate must not ask the broker for anything');

    const other = await admit();
    assert.notEqual(LocalNode.handoffPath(other.containers[0]!.response), mount.hostPath, 'each allocation has its own socket');
  });

  it('hands a working RLIMIT-mode context to a launcher that connects 10 s after Allocate, one that reads 5 s late, one that never ACKs and one that does', async () => {
    const [late, slowReader, silent, acking] = await Promise.all([admit(), admit(), admit(), admit()]);
    const reports = await Promise.all([
      sleep(10_000).then(() => node.launch(late!, { set: 1 })),
      node.launch(slowReader!, { readDelayMs: 5000, set: 1 }),
      node.launch(silent!, { set: 1 }),
      node.launch(acking!, { ack: true, set: 1 }),
    ]);
    for (const report of reports) assertGoodContext(node, report);
    for (const pod of [late!, slowReader!, silent!, acking!]) {
      const id = await allocationIdOf(node, pod);
      const line = await node.bridge.waitForLog((l) => l.event === 'handoff' && l.allocationId === id);
      assert.equal(await gone(LocalNode.handoffPath(pod.containers[0]!.response)), true, 'a served allocation removes its socket (handoff mode once)');
      assert.equal(line.result, 'ok');
      assert.equal((line.peer as { uid: number }).uid, node.launcherUid ?? process.geteuid!());
      assert.equal(handoffLogs(node, id).length, 1);
    }
  });

  it('keeps an allocation for the next launcher when one vanishes before reading', async () => {
    const pod = await admit();
    const vanished = await node.launch(pod, { vanish: true });
    assert.equal(vanished.result, 'vanished');
    const id = await allocationIdOf(node, pod);
    await node.bridge.waitForLog((l) => l.event === 'handoff' && l.allocationId === id);
    const report = await node.launch(pod, { set: 1 });
    assertGoodContext(node, report);
    await node.bridge.waitForLog((l) => l.event === 'handoff' && l.allocationId === id && l.result === 'ok');
    assert.deepEqual(handoffLogs(node, id).map((l) => l.result), ['launcher_gone', 'ok']);
  });

  it('closes the launcher connection without an fd when the broker is down, says why, and serves once it is back', async () => {
    const pod = await admit();
    await node.broker.stop();
    const refused = await node.launch(pod);
    assert.equal(refused.result, 'no-fd');
    assert.equal(refused.dataBytes, 0);
    const line = await node.bridge.waitForLog((l) => l.event === 'handoff' && l.result === 'broker_failed');
    assert.equal(line.allocationId, await allocationIdOf(node, pod));
    assert.match(String(line.reason), /ENOENT|ECONNREFUSED/);
    assert.equal(line.level, 'error');

    node.startBroker();
    await node.broker.waitForEvent('listening');
    assertGoodContext(node, await node.launch(pod, { set: 1 }));
    await node.waitUntilServing(110, 5000);
  });

  it('serves 110 pods at once, each with its own context, and leaves no fd behind', async () => {
    for (const pod of admitted.splice(0)) node.simulator.deletePod(pod.namespace, pod.name);
    const bridgeFdsBefore = node.bridge.fdCount();
    const brokerFdsBefore = node.broker.fdCount();
    const pods = await Promise.all(Array.from({ length: 110 }, () => admit()));
    assert.equal(new Set(pods.map((p) => LocalNode.handoffPath(p.containers[0]!.response))).size, 110);
    const reports = await Promise.all(pods.map((pod) => node.launch(pod, { set: 1 })));
    for (const report of reports) assertGoodContext(node, report);
    const ids = new Set(await Promise.all(pods.map((pod) => allocationIdOf(node, pod))));
    const opened = await node.broker.waitForCount((l) => l.event === 'context_opened' && ids.has(l.allocationId as string), 110);
    assert.equal(new Set(opened.map((l) => l.allocationId)).size, 110, 'one broker context per pod');
    for (const pod of pods) assert.equal(await gone(LocalNode.handoffPath(pod.containers[0]!.response)), true, 'no handoff socket left');

    const bridgeFds = await waitForFdCount(node.bridge, bridgeFdsBefore);
    assert.ok(bridgeFds <= bridgeFdsBefore, `bridge holds ${bridgeFds} fds, ${bridgeFdsBefore} before`);
    const brokerFds = await waitForFdCount(node.broker, brokerFdsBefore);
    assert.ok(brokerFds <= brokerFdsBefore, `broker holds ${brokerFds} fds, ${brokerFdsBefore} before`);
  });

  it('answers GetPreferredAllocation, PreStartContainer and a bad Allocate correctly', async () => {
    const client = pluginClient(node);
    try {
      const preferred = await call(client.getPreferredAllocation.bind(client), {
        containerRequests: [{ availableDeviceIDs: ['iommufd-1', 'iommufd-2', 'iommufd-3', 'iommufd-4'], mustIncludeDeviceIDs: ['iommufd-3'], allocationSize: 2 }],
      });
      assert.deepEqual(preferred.containerResponses, [{ deviceIDs: ['iommufd-3', 'iommufd-1'] }]);
      assert.deepEqual(await call(client.preStartContainer.bind(client), { devicesIds: ['iommufd-1'] }), {});
      await assert.rejects(call(client.allocate.bind(client), { containerRequests: [{ devicesIds: ['gpu-7'] }] }), (err: { code: number; details: string }) => {
        assert.equal(err.code, status.INVALID_ARGUMENT);
        assert.match(err.details, /unknown device ids: gpu-7/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  it('registers again within 2 s of a kubelet restart, and both old and new allocations are served', async () => {
    for (const pod of admitted.splice(0)) node.simulator.deletePod(pod.namespace, pod.name);
    const before = await admit();
    const registrations = node.simulator.plugin(resourceName)!.registrations;
    const restartedAt = Date.now();
    await node.simulator.restart();
    await node.simulator.waitFor((sim) => (sim.plugin(resourceName)?.registrations ?? 0) > registrations && sim.plugin(resourceName)?.connected === true, 2000);
    assert.ok(Date.now() - restartedAt < 2000);
    await node.waitUntilServing(110, 2000);
    await node.bridge.waitForEvent('kubelet_restart_detected');

    assertGoodContext(node, await node.launch(before, { set: 1 }));
    const afterRestart = await admit();
    assertGoodContext(node, await node.launch(afterRestart, { set: 1 }));
  });

  it('retries while the kubelet is away and registers within 2 s of its return', async () => {
    const registrations = node.simulator.plugin(resourceName)!.registrations;
    await node.simulator.stop();
    // What a starting kubelet does first: delete every socket in its directory.
    rmSync(join(node.kubeletDir, 'kubevirt-iommufd.sock'));
    await node.bridge.waitForLog((l) => l.event === 'register_failed' && Date.parse(l.time as string) > Date.now() - 2000, 3000);
    await sleep(1500);
    const back = Date.now();
    await node.simulator.start();
    await node.simulator.waitFor((sim) => (sim.plugin(resourceName)?.registrations ?? 0) > registrations && sim.healthyDevices(resourceName).length === 110, 2000);
    assert.ok(Date.now() - back < 2000);
  });
});

describe('kubelet-bridge handoff mode per-connection', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 4, bridgeArgs: ['--handoff-mode', 'per-connection', '--expose-device', 'false'] });
  });
  after(async () => node?.stop());

  it('gives every connection of one allocation a fresh context and keeps the socket', async () => {
    const pod = await node.admit();
    assert.deepEqual(pod.containers[0]!.response.devices, [], '--expose-device false: no device node in the answer');
    const first = await node.launch(pod, { set: 1 });
    const second = await node.launch(pod, { set: 1 });
    assertGoodContext(node, first);
    assertGoodContext(node, second);
    assert.ok(existsSync(LocalNode.handoffPath(pod.containers[0]!.response)));
    const id = await allocationIdOf(node, pod);
    await node.broker.waitForCount((l) => l.event === 'context_opened' && l.allocationId === id, 2);
    await sleep(200);
    assert.equal(node.broker.logs.filter((l) => l.event === 'context_opened' && l.allocationId === id).length, 2);
  });
});

describe('kubelet-bridge command line', () => {
  it('documents its flags and rejects bad values with exit code 2', async () => {
    const help = new ServiceProcess(kubeletBridgeBin, ['--help'], process.env);
    assert.equal((await help.exit()).code, 0);
    const text = help.logs.map((l) => l.msg).join('\n');
    for (const flag of ['--kubelet-dir', '--resource-name', '--device-count', '--handoff-mode', 'KUBELET_BRIDGE_SOCKET_DIR']) assert.ok(text.includes(flag), flag);

    const cases: Array<[string[], RegExp]> = [
      [['--resource-name', 'iommufd'], /expected <domain>\/<name>/],
      [['--resource-name', 'kubernetes.io/iommufd'], /reserved/],
      [['--endpoint', 'a/b.sock'], /plain file name/],
      [['--device-count', '0'], /from 1 to 10000/],
      [['--expose-device', 'yes'], /true or false/],
    ];
    for (const [args, message] of cases) {
      const p = new ServiceProcess(kubeletBridgeBin, args, process.env);
      assert.equal((await p.exit()).code, 2, args.join(' '));
      assert.match(p.stderr, message);
    }
  });
});
