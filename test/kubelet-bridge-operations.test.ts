/**
 * What an admin and the scheduler see of the bridge: its HTTP endpoints,
 * its metrics, its logs, and device health following the node's ability to
 * serve IOMMUFD under each health policy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LocalNode, resourceName } from './support/local-node';
import { metricValue } from './support/metrics-text';

async function get(node: LocalNode, path: string): Promise<{ status: number; body: string }> {
  const port = await node.bridge.httpPort();
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text() };
}

async function metric(node: LocalNode, name: string, labels?: Record<string, string>): Promise<number | undefined> {
  return metricValue((await get(node, '/metrics')).body, name, labels);
}

const healthyCount = (node: LocalNode) => node.simulator.healthyDevices(resourceName).length;

describe('kubelet-bridge operations, health policy unhealthy', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 6 });
  });
  after(async () => node?.stop());

  it('answers /healthz and /readyz once registered with the broker reachable', async () => {
    const health = await get(node, '/healthz');
    assert.equal(health.status, 200);
    const ready = await get(node, '/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(JSON.parse(ready.body), { ok: true, health: 'Healthy' });
  });

  it('exposes Prometheus metrics with process metrics and its own', async () => {
    const text = (await get(node, '/metrics')).body;
    assert.match(text, /^process_resident_memory_bytes \d+/m);
    assert.equal(metricValue(text, 'iommufd_bridge_registered'), 1);
    assert.equal(metricValue(text, 'iommufd_bridge_registrations_total'), 1);
    assert.equal(metricValue(text, 'iommufd_bridge_broker_reachable'), 1);
    assert.equal(metricValue(text, 'iommufd_bridge_devices', { health: 'Healthy' }), 6);
    assert.equal(metricValue(text, 'iommufd_bridge_devices', { health: 'Unhealthy' }), 0);
    assert.equal(metricValue(text, 'iommufd_bridge_handoffs_total', { result: 'ok' }), 0);
  });

  it('counts allocations, pending sockets and handoffs, and logs the pod with each handoff', async () => {
    const pod = await node.admit('vm-metrics');
    assert.equal(await metric(node, 'iommufd_bridge_allocations_total', { result: 'handoff' }), 1);
    assert.equal(await metric(node, 'iommufd_bridge_pending_handoff_sockets'), 1);
    const report = await node.launch(pod);
    assert.equal(report.rlimitMode, 1);
    const line = await node.bridge.waitForLog((l) => l.event === 'handoff' && l.result === 'ok');
    assert.deepEqual(line.pod, { namespace: 'default', name: 'vm-metrics', container: 'compute' });
    assert.deepEqual(line.deviceIds, pod.containers[0]!.deviceIds);
    assert.equal(typeof line.durationMs, 'number');
    assert.equal((line.peer as { pid: number }).pid > 0, true);
    assert.equal(await metric(node, 'iommufd_bridge_handoffs_total', { result: 'ok' }), 1);
    assert.equal(await metric(node, 'iommufd_bridge_handoff_duration_seconds_count'), 1);
    assert.equal(await metric(node, 'iommufd_bridge_pending_handoff_sockets'), 0);
    node.simulator.deletePod('default', 'vm-metrics');
  });

  it('turns the devices Unhealthy while the broker is down and Healthy when it is back', async () => {
    const pod = await node.admit('vm-broker-down');
    await node.broker.stop();
    // A launcher finding no broker triggers a check at once.
    const report = await node.launch(pod);
    assert.equal(report.result, 'no-fd');
    await node.simulator.waitFor(() => healthyCount(node) === 0, 3000);
    assert.equal(node.simulator.plugin(resourceName)!.devices.get('iommufd-0'), 'Unhealthy');

    const ready = await get(node, '/readyz');
    assert.equal(ready.status, 503);
    assert.match(JSON.parse(ready.body).reason, /fd-broker unreachable/);
    assert.equal(await metric(node, 'iommufd_bridge_broker_reachable'), 0);
    assert.equal(await metric(node, 'iommufd_bridge_devices', { health: 'Unhealthy' }), 6);
    assert.equal(await metric(node, 'iommufd_bridge_handoffs_total', { result: 'broker_failed' }), 1);
    const warning = await node.bridge.waitForLog((l) => l.event === 'node_health' && l.health === 'Unhealthy');
    assert.match(String(warning.reason), /unreachable/);

    node.startBroker();
    await node.simulator.waitFor(() => healthyCount(node) === 6, 5000);
    assert.equal((await get(node, '/readyz')).status, 200);
    assert.equal((await node.launch(pod)).rlimitMode, 1);
    node.simulator.deletePod('default', 'vm-broker-down');
  });

  it('turns the devices Unhealthy when the IOMMUFD device disappears and Healthy when it returns', async () => {
    node.kernel.removeDevice();
    try {
      await node.simulator.waitFor(() => healthyCount(node) === 0, 5000);
      const line = await node.bridge.waitForLog((l) => l.event === 'node_health' && l.health === 'Unhealthy' && /device|DEVICE_MISSING|self-test/.test(String(l.reason)));
      assert.equal(line.brokerReachable, true);
      // The broker is reachable, so the bridge is still ready; the devices say the node cannot serve.
      assert.equal((await get(node, '/readyz')).status, 200);
    } finally {
      node.kernel.restoreDevice();
    }
    await node.simulator.waitFor(() => healthyCount(node) === 6, 5000);
  });
});

describe('kubelet-bridge operations, health policy passthrough', () => {
  let node: LocalNode;
  before(async () => {
    node = await LocalNode.start({ deviceCount: 3, bridgeArgs: ['--health-policy', 'passthrough'] });
  });
  after(async () => node?.stop());

  it('keeps the devices Healthy without IOMMUFD and answers Allocate with no socket and no device', async () => {
    node.kernel.removeDevice();
    try {
      await node.bridge.waitForLog((l) => l.event === 'node_health' && l.iommufdAvailable === false, 5000);
      assert.equal(healthyCount(node), 3, 'passthrough keeps the devices Healthy');
      const pod = await node.admit('vm-no-iommufd');
      const response = pod.containers[0]!.response;
      assert.deepEqual(response.mounts, []);
      assert.deepEqual(response.devices, []);
      assert.equal(await metric(node, 'iommufd_bridge_allocations_total', { result: 'passthrough' }), 1);
      node.simulator.deletePod('default', 'vm-no-iommufd');
    } finally {
      node.kernel.restoreDevice();
    }
    const mark = node.bridge.logs.length;
    await node.bridge.waitForLog((l) => node.bridge.logs.indexOf(l) >= mark && l.event === 'node_health' && l.iommufdAvailable === true, 5000);
    assert.equal(healthyCount(node), 3);
    const pod = await node.admit('vm-with-iommufd');
    assert.equal(pod.containers[0]!.response.mounts.length, 1);
    assert.equal((await node.launch(pod)).rlimitMode, 1);
  });
});
