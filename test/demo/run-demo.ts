/**
 * `pnpm demo`: the whole flow on one machine, in a temporary directory.
 * The real fd-broker and kubelet-bridge run as their own processes on the
 * kernel stand-in; the kubelet simulator admits a few pods; the
 * virt-launcher stand-in receives each pod's fd. Everything is removed at the end.
 */
import { lstatSync } from 'node:fs';
import { LocalNode, resourceName } from '../support/local-node';
import type { LauncherReport } from '../support/launcher';
import type { AdmittedPod } from '../kubelet-simulator/kubelet-simulator';

const say = (text: string) => process.stdout.write(`${text}\n`);

function describeReport(report: LauncherReport): string {
  if (report.result !== 'ok') return `FAILED: ${JSON.stringify(report)}`;
  const setOutcome = report.set === 'EPERM' ? 'its own SET is refused (EPERM)' : `its own SET: ${report.set}`;
  return `got 1 byte + fd, GET says RLIMIT mode = ${report.rlimitMode}; ${setOutcome}`;
}

async function demo(): Promise<boolean> {
  say('Starting a pretend node (kernel stand-in, fd-broker, kubelet-bridge, kubelet simulator)...');
  const node = await LocalNode.start({ deviceCount: 8 });
  let ok = true;
  try {
    const device = lstatSync(node.kernel.devicePath);
    say(`  fake /dev/iommu:  ${node.kernel.devicePath} (${device.isCharacterDevice() ? 'character device 10:242' : 'regular file; not root, so no mknod'})`);
    say(`  fd-broker:        pid ${node.broker.pid}, listening on ${node.brokerSocket}`);
    say(`  kubelet-bridge:   pid ${node.bridge.pid}`);
    const plugin = node.simulator.plugin(resourceName)!;
    say(`  kubelet:          ${resourceName} registered at ${plugin.endpoint}, ${node.simulator.healthyDevices(resourceName).length} devices Healthy`);
    say('');

    say('Admitting three VM pods (the kubelet calls Allocate before the image pull)...');
    const pods: AdmittedPod[] = [];
    for (const name of ['vm-alpha', 'vm-bravo', 'vm-charlie']) {
      const pod = await node.admit(name);
      pods.push(pod);
      const container = pod.containers[0]!;
      say(`  ${name}: devices ${container.deviceIds.join(',')} -> mount ${LocalNode.handoffPath(container.response)} at /var/run/kubevirt/iommufd.sock`);
    }
    say('');

    const who = node.launcherUid === undefined ? `uid ${process.geteuid?.()}` : `uid ${node.launcherUid} (unprivileged)`;
    say(`Launchers connect, as ${who}; vm-bravo's reads 3 s late like some virt-launcher builds...`);
    const reports = await Promise.all([
      node.launch(pods[0]!, { set: 1 }),
      node.launch(pods[1]!, { set: 1, readDelayMs: 3000 }),
      node.launch(pods[2]!, { set: 1, ack: true }),
    ]);
    reports.forEach((report, i) => {
      ok &&= report.result === 'ok' && report.rlimitMode === 1;
      say(`  ${pods[i]!.name}: ${describeReport(report)}`);
    });
    say('');

    say('Restarting the kubelet (it deletes every socket in its directory)...');
    const restartedAt = Date.now();
    const registrations = plugin.registrations;
    await node.simulator.restart();
    await node.simulator.waitFor(
      (sim) => (sim.plugin(resourceName)?.registrations ?? 0) > registrations && sim.healthyDevices(resourceName).length === 8,
      5000,
    );
    say(`  the bridge registered again after ${Date.now() - restartedAt} ms`);
    const pod = await node.admit('vm-delta');
    const report = await node.launch(pod, { set: 1 });
    ok &&= report.result === 'ok' && report.rlimitMode === 1;
    say(`  vm-delta: ${describeReport(report)}`);
    say('');

    const handoffs = (await node.bridge.waitForCount((l) => l.event === 'handoff' && l.result === 'ok', 4)).length;
    const contexts = (await node.broker.waitForCount((l) => l.event === 'context_opened', 4)).length;
    say(`Done: ${handoffs} handoffs by the bridge, ${contexts} contexts opened by the broker. Stopping and cleaning up.`);
  } finally {
    await node.stop();
  }
  return ok;
}

demo().then(
  (ok) => {
    if (!ok) say('Some launcher did not receive a working context; see above.');
    process.exit(ok ? 0 : 1);
  },
  (err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
