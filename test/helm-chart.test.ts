/**
 * The Helm chart (helm/iommufd-device-plugin), rendered with helm-render (the
 * `helm template` stand-in) under the default values and several value sets:
 * what the pod runs, as whom, with which mounts, flags and probes; the
 * monitor toggle; the values schema (ajv); the README's values table; and
 * the host-access scripts, run for real against kubelet-like sockets.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Ajv, { type ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { chartDir, type Manifest, ofKind, onlyOfKind, RenderedPod, renderChart, runHelmRender } from './support/helm';

const chartMeta = parseYaml(readFileSync(join(chartDir, 'Chart.yaml'), 'utf8')) as { name: string; version: string; appVersion: string };
const defaults = parseYaml(readFileSync(join(chartDir, 'values.yaml'), 'utf8')) as Record<string, unknown>;
const schema = JSON.parse(readFileSync(join(chartDir, 'values.schema.json'), 'utf8')) as SchemaNode;

interface SchemaNode {
  type?: string | string[];
  description?: string;
  enum?: unknown[];
  properties?: Record<string, SchemaNode>;
  [key: string]: unknown;
}

const standardLabels = [
  'app.kubernetes.io/name',
  'app.kubernetes.io/instance',
  'app.kubernetes.io/version',
  'app.kubernetes.io/component',
  'app.kubernetes.io/part-of',
  'app.kubernetes.io/managed-by',
  'helm.sh/chart',
];

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Helm's merge of values: maps merge key by key, anything else replaces. */
function mergeValues(base: unknown, override: unknown): unknown {
  if (!isObject(base) || !isObject(override)) return structuredClone(override);
  const out: Record<string, unknown> = structuredClone(base);
  for (const [key, value] of Object.entries(override)) out[key] = key in out ? mergeValues(out[key], value) : structuredClone(value);
  return out;
}

function withDefaults(override: Record<string, unknown>): Record<string, unknown> {
  return mergeValues(defaults, override) as Record<string, unknown>;
}

/** Every container in the pod: init containers, then the others. */
function allContainers(pod: RenderedPod): Manifest[] {
  return [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
}

/** Structural checks every rendering must pass, whatever the values. */
function assertWellFormed(pod: RenderedPod): void {
  const names = allContainers(pod).map((c) => c.name as string);
  assert.equal(new Set(names).size, names.length, `container names repeat: ${names.join(', ')}`);
  const volumes = new Set((pod.spec.volumes as Manifest[]).map((v) => v.name as string));
  assert.equal(volumes.size, pod.spec.volumes.length, 'volume names repeat');
  const used = new Set<string>();
  for (const container of allContainers(pod)) {
    for (const mount of container.volumeMounts ?? []) {
      assert.ok(volumes.has(mount.name), `${container.name} mounts unknown volume ${mount.name}`);
      used.add(mount.name);
    }
    const portNames = (container.ports ?? []).map((p: Manifest) => p.name as string);
    for (const portName of portNames) assert.ok(portName.length <= 15, `port name ${portName} is longer than 15 characters`);
  }
  for (const volume of volumes) assert.ok(used.has(volume), `volume ${volume} is mounted nowhere`);
  const podLabels = pod.daemonSet.spec.template.metadata.labels as Record<string, string>;
  for (const [key, value] of Object.entries(pod.daemonSet.spec.selector.matchLabels as Record<string, string>)) {
    assert.equal(podLabels[key], value, `the selector's ${key} must match the pod's labels`);
  }
}

/** The probe's port, resolved to the container's own port number. */
function probePort(container: Manifest, probe: 'livenessProbe' | 'readinessProbe'): number {
  const port = container[probe].httpGet.port as string | number;
  if (typeof port === 'number') return port;
  const named = (container.ports as Manifest[]).find((p) => p.name === port);
  assert.ok(named, `${container.name}'s ${probe} names port ${port}, which it does not expose`);
  return named.containerPort as number;
}

/** The kubelet's expansion of container args: $$ becomes $ ($(VAR) references are not used by the chart). */
function kubeletExpand(text: string): string {
  return text.replace(/\$\$/g, '$');
}

describe('helm chart: default values', () => {
  let manifests: Manifest[];
  let pod: RenderedPod;

  before(() => {
    manifests = renderChart();
    pod = new RenderedPod(manifests);
  });

  it('renders a DaemonSet and its ServiceAccount, and no monitor', () => {
    assert.deepEqual(manifests.map((m) => m.kind).sort(), ['DaemonSet', 'ServiceAccount']);
    assert.equal(pod.daemonSet.apiVersion, 'apps/v1');
    assert.equal(pod.daemonSet.metadata.namespace, 'kubevirt');
    const account = onlyOfKind(manifests, 'ServiceAccount');
    assert.equal(pod.spec.serviceAccountName, account.metadata.name);
    assert.equal(account.automountServiceAccountToken, false);
    assert.equal(pod.spec.automountServiceAccountToken, false, 'neither service calls the API: no token in the pod');
    assertWellFormed(pod);
  });

  it('labels every object with the standard app.kubernetes.io labels and helm.sh/chart', () => {
    for (const manifest of manifests) {
      const labels = manifest.metadata.labels as Record<string, string>;
      for (const key of standardLabels) assert.ok(labels[key], `${manifest.kind} lacks label ${key}`);
      assert.equal(labels['app.kubernetes.io/name'], chartMeta.name);
      assert.equal(labels['app.kubernetes.io/instance'], 'iommufd');
      assert.equal(labels['app.kubernetes.io/version'], chartMeta.appVersion);
      assert.equal(labels['app.kubernetes.io/managed-by'], 'Helm');
      assert.equal(labels['app.kubernetes.io/part-of'], 'kubevirt');
      assert.equal(labels['helm.sh/chart'], `${chartMeta.name}-${chartMeta.version}`);
    }
    const podLabels = pod.daemonSet.spec.template.metadata.labels as Record<string, string>;
    for (const key of standardLabels) assert.ok(podLabels[key], `the pod lacks label ${key}`);
    assert.deepEqual(Object.keys(pod.daemonSet.spec.selector.matchLabels).sort(), ['app.kubernetes.io/instance', 'app.kubernetes.io/name']);
  });

  it('runs at system-node-critical priority, on Linux nodes, rolling one node at a time', () => {
    assert.equal(pod.spec.priorityClassName, 'system-node-critical');
    assert.deepEqual(pod.spec.nodeSelector, { 'kubernetes.io/os': 'linux' });
    assert.deepEqual(pod.daemonSet.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
    assert.equal(pod.spec.imagePullSecrets, undefined);
    assert.equal(pod.spec.hostNetwork, undefined, 'the pod needs no host network');
  });

  it('uses both images at the chart appVersion', () => {
    assert.equal(pod.container('fd-broker').image, `ghcr.io/iommufd-device-plugin/fd-broker:${chartMeta.appVersion}`);
    assert.equal(pod.container('kubelet-bridge').image, `ghcr.io/iommufd-device-plugin/kubelet-bridge:${chartMeta.appVersion}`);
    for (const c of allContainers(pod)) assert.equal(c.imagePullPolicy, 'IfNotPresent');
  });

  it('runs fd-broker privileged as root, with the host /dev, the socket dir and the private emptyDir', () => {
    const broker = pod.container('fd-broker');
    assert.deepEqual(broker.securityContext, { privileged: true, runAsUser: 0, runAsGroup: 0, readOnlyRootFilesystem: true });

    const dev = pod.mountAt('fd-broker', '/host/dev');
    assert.deepEqual(dev.volume.hostPath, { path: '/dev', type: 'Directory' });
    assert.equal(pod.setting('fd-broker', 'device'), '/host/dev/iommu', 'the broker opens the host /dev/iommu through its mount');

    const sockets = pod.mountAt('fd-broker', '/var/run/kubevirt/fd-sockets');
    assert.deepEqual(sockets.volume.hostPath, { path: '/var/run/kubevirt/fd-sockets', type: 'DirectoryOrCreate' });
    assert.equal(pod.setting('fd-broker', 'node-dir'), '/var/run/kubevirt/fd-sockets');

    const control = pod.setting('fd-broker', 'socket')!;
    const controlDir = pod.mountAt('fd-broker', dirname(control));
    assert.ok(controlDir.volume.emptyDir, 'the control socket lives in a pod-private emptyDir');
    assert.notEqual(controlDir.mount.readOnly, true);
    assert.deepEqual(
      (broker.volumeMounts as Manifest[]).map((m) => m.name).sort(),
      ['broker-socket', 'fd-sockets', 'host-dev'],
      'the broker mounts nothing of the kubelet',
    );
  });

  it('runs kubelet-bridge unprivileged: uid/gid 65532, no escalation, no capabilities, read-only root, RuntimeDefault seccomp', () => {
    const bridge = pod.container('kubelet-bridge');
    assert.deepEqual(bridge.securityContext, {
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
  });

  it('gives kubelet-bridge the device-plugins dir, the pod-resources dir, the socket dir and the broker emptyDir', () => {
    const plugins = pod.mountAt('kubelet-bridge', pod.setting('kubelet-bridge', 'kubelet-dir')!);
    assert.deepEqual(plugins.volume.hostPath, { path: '/var/lib/kubelet/device-plugins', type: 'Directory' });
    assert.notEqual(plugins.mount.readOnly, true, 'the bridge creates its endpoint socket there');

    const podResourcesSocket = pod.setting('kubelet-bridge', 'pod-resources-socket')!;
    assert.equal(podResourcesSocket, '/var/lib/kubelet/pod-resources/kubelet.sock');
    const podResources = pod.mountAt('kubelet-bridge', dirname(podResourcesSocket));
    assert.deepEqual(podResources.volume.hostPath, { path: '/var/lib/kubelet/pod-resources', type: 'Directory' });
    assert.equal(podResources.mount.readOnly, true);

    const sockets = pod.mountAt('kubelet-bridge', pod.setting('kubelet-bridge', 'socket-dir')!);
    assert.equal(sockets.volume.name, 'fd-sockets');
    assert.deepEqual(sockets.volume.hostPath, { path: '/var/run/kubevirt/fd-sockets', type: 'DirectoryOrCreate' });
    assert.equal(sockets.volume.hostPath.path, pod.setting('kubelet-bridge', 'socket-dir'), 'same path inside and on the host, as Allocate answers need');
    assert.equal(pod.setting('kubelet-bridge', 'host-socket-dir'), undefined);

    const brokerSocket = pod.setting('kubelet-bridge', 'broker-socket')!;
    assert.equal(brokerSocket, pod.setting('fd-broker', 'socket'), 'the bridge dials the broker where it listens');
    const control = pod.mountAt('kubelet-bridge', dirname(brokerSocket));
    assert.equal(control.volume.name, pod.mountAt('fd-broker', dirname(brokerSocket)).volume.name, 'one emptyDir shared by both');
    assert.equal(control.mount.readOnly, true, 'the bridge cannot replace the broker socket');
  });

  it('lets the broker serve only the bridge: its uid, a 0600 socket it owns', () => {
    assert.equal(pod.setting('fd-broker', 'allowed-uids'), '65532');
    assert.equal(pod.setting('fd-broker', 'socket-owner'), '65532:65532');
    assert.equal(pod.setting('fd-broker', 'socket-mode'), '0600');
  });

  it('passes the defaults of the values as flags', () => {
    const expected: Array<['fd-broker' | 'kubelet-bridge', string, string]> = [
      ['kubelet-bridge', 'resource-name', 'devices.kubevirt.io/iommufd'],
      ['kubelet-bridge', 'device-count', '110'],
      ['kubelet-bridge', 'container-socket-path', '/var/run/kubevirt/iommufd.sock'],
      ['kubelet-bridge', 'expose-device', 'true'],
      ['kubelet-bridge', 'device-path', '/dev/iommu'],
      ['kubelet-bridge', 'health-policy', 'unhealthy'],
      ['kubelet-bridge', 'handoff-mode', 'once'],
      ['kubelet-bridge', 'selinux-label', 'system_u:object_r:container_file_t:s0'],
      ['kubelet-bridge', 'log-level', 'info'],
      ['kubelet-bridge', 'http-port', '9541'],
      ['fd-broker', 'open-strategy', 'temporary-node'],
      ['fd-broker', 'selinux-label', 'system_u:object_r:container_file_t:s0'],
      ['fd-broker', 'log-level', 'info'],
      ['fd-broker', 'http-port', '9540'],
      ['fd-broker', 'selftest-interval-ms', '60000'],
    ];
    for (const [container, flag, value] of expected) assert.equal(pod.setting(container, flag), value, `${container} --${flag}`);
    const args = pod.container('kubelet-bridge').args as string[];
    for (const arg of args) assert.match(arg, /^--[a-z-]+=/, `kubelet-bridge: every chart flag is --flag=value (${arg})`);
    const flags = args.map((a) => a.slice(0, a.indexOf('=')));
    assert.equal(new Set(flags).size, flags.length, 'kubelet-bridge repeats a flag');
    // The broker reads environment variables, which `kubectl exec … fd-broker selftest` inherits.
    assert.equal(pod.container('fd-broker').args, undefined);
    const env = pod.container('fd-broker').env as Manifest[];
    for (const e of env) assert.match(e.name, /^FD_BROKER_[A-Z_]+$/);
    assert.equal(new Set(env.map((e) => e.name)).size, env.length, 'fd-broker repeats a variable');
  });

  it('probes /healthz (liveness) and /readyz (bridge readiness) on the port each service listens on', () => {
    for (const [container, port] of [['fd-broker', 9540], ['kubelet-bridge', 9541]] as const) {
      const c = pod.container(container);
      assert.equal(c.livenessProbe.httpGet.path, '/healthz');
      // The broker's /readyz stays 503 on nodes without IOMMUFD (docs/OPERATIONS.md); by default it is not its readiness.
      assert.equal(c.readinessProbe.httpGet.path, container === 'fd-broker' ? '/healthz' : '/readyz');
      assert.equal(probePort(c, 'livenessProbe'), port);
      assert.equal(probePort(c, 'readinessProbe'), port);
      assert.equal(String(port), pod.setting(container, 'http-port'), `${container} listens where it is probed`);
      assert.equal(c.ports.length, 1);
      assert.equal(c.ports[0].protocol, 'TCP');
      assert.equal(c.livenessProbe.periodSeconds, 10);
      assert.equal(c.readinessProbe.periodSeconds, 5);
    }
  });

  it('prepares the host paths for the non-root bridge with unprivileged host-access containers', () => {
    const init = pod.container('host-access-init');
    assert.ok((pod.spec.initContainers as Manifest[]).includes(init));
    assert.equal(init.image, pod.container('fd-broker').image, 'runs the broker image, which carries setfacl');
    assert.deepEqual(init.securityContext, {
      runAsUser: 0,
      runAsGroup: 0,
      runAsNonRoot: false,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['CHOWN', 'FOWNER'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
    const sidecar = pod.container('host-access');
    assert.ok((pod.spec.containers as Manifest[]).includes(sidecar));
    assert.deepEqual(sidecar.securityContext.capabilities, { drop: ['ALL'] }, 'the sidecar needs no capability at all');
    assert.equal(sidecar.securityContext.privileged, false);
    assert.equal(sidecar.securityContext.allowPrivilegeEscalation, false);
    const env = Object.fromEntries((init.env as Manifest[]).map((e) => [e.name, e.value]));
    assert.equal(env.BRIDGE_UID, '65532');
    assert.equal(env.BRIDGE_GID, '65532');
    assert.equal(env.SOCKET_DIR, '/var/run/kubevirt/fd-sockets');
    assert.equal(env.DEVICE_PLUGINS_DIR, '/var/lib/kubelet/device-plugins');
    assert.equal(env.POD_RESOURCES_DIR, '/var/lib/kubelet/pod-resources');
    for (const dir of [env.SOCKET_DIR, env.DEVICE_PLUGINS_DIR, env.POD_RESOURCES_DIR]) {
      assert.equal(pod.mountAt('host-access-init', dir).volume.hostPath.path, dir);
    }
  });
});

describe('helm chart: values change what the pod runs', () => {
  it('passes resourceName, deviceCount, healthPolicy, exposeDevice, handoffMode, containerSocketPath and logLevel to the bridge', () => {
    const pod = RenderedPod.render({
      set: [
        'resourceName=example.com/iommufd',
        'deviceCount=16',
        'healthPolicy=passthrough',
        'exposeDevice=false',
        'handoffMode=per-connection',
        'containerSocketPath=/run/launcher/iommufd.sock',
        'logLevel=debug',
      ],
    });
    assert.equal(pod.setting('kubelet-bridge', 'resource-name'), 'example.com/iommufd');
    assert.equal(pod.setting('kubelet-bridge', 'device-count'), '16');
    assert.equal(pod.setting('kubelet-bridge', 'health-policy'), 'passthrough');
    assert.equal(pod.setting('kubelet-bridge', 'expose-device'), 'false');
    assert.equal(pod.setting('kubelet-bridge', 'handoff-mode'), 'per-connection');
    assert.equal(pod.setting('kubelet-bridge', 'container-socket-path'), '/run/launcher/iommufd.sock');
    assert.equal(pod.setting('kubelet-bridge', 'log-level'), 'debug');
    assert.equal(pod.setting('fd-broker', 'log-level'), 'debug');
    assertWellFormed(pod);
  });

  it('passes openStrategy, selinuxLabel and devicePath to the broker (and the label to the bridge)', () => {
    const pod = RenderedPod.render({ set: ['openStrategy=direct', 'selinuxLabel=', 'devicePath=/dev/iommu1'] });
    assert.equal(pod.setting('fd-broker', 'open-strategy'), 'direct');
    assert.equal(pod.setting('fd-broker', 'selinux-label'), '', 'empty: do not label');
    assert.equal(pod.setting('kubelet-bridge', 'selinux-label'), '');
    assert.equal(pod.setting('fd-broker', 'device'), '/host/dev/iommu1');
    assert.equal(pod.setting('kubelet-bridge', 'device-path'), '/dev/iommu1', 'the kubelet needs the host path');
  });

  it('moves the socket dir and the kubelet paths everywhere they are used', () => {
    const pod = RenderedPod.render({
      set: ['socketDir=/run/iommufd/sockets', 'kubelet.devicePluginsDir=/var/lib/k0s/kubelet/device-plugins', 'kubelet.podResourcesDir=/var/lib/k0s/kubelet/pod-resources'],
    });
    assert.equal(pod.setting('kubelet-bridge', 'socket-dir'), '/run/iommufd/sockets');
    assert.equal(pod.setting('fd-broker', 'node-dir'), '/run/iommufd/sockets');
    for (const container of ['fd-broker', 'kubelet-bridge', 'host-access-init']) {
      assert.deepEqual(pod.mountAt(container, '/run/iommufd/sockets').volume.hostPath, { path: '/run/iommufd/sockets', type: 'DirectoryOrCreate' });
    }
    assert.equal(pod.setting('kubelet-bridge', 'kubelet-dir'), '/var/lib/k0s/kubelet/device-plugins');
    assert.equal(pod.mountAt('kubelet-bridge', '/var/lib/k0s/kubelet/device-plugins').volume.hostPath.path, '/var/lib/k0s/kubelet/device-plugins');
    assert.equal(pod.setting('kubelet-bridge', 'pod-resources-socket'), '/var/lib/k0s/kubelet/pod-resources/kubelet.sock');
    assert.equal(pod.mountAt('kubelet-bridge', '/var/lib/k0s/kubelet/pod-resources').volume.hostPath.path, '/var/lib/k0s/kubelet/pod-resources');
    const env = Object.fromEntries((pod.container('host-access').env as Manifest[]).map((e) => [e.name, e.value]));
    assert.equal(env.DEVICE_PLUGINS_DIR, '/var/lib/k0s/kubelet/device-plugins');
    assertWellFormed(pod);
  });

  it('uses the broker /readyz for readiness when readinessRequiresDevice is set', () => {
    const pod = RenderedPod.render({ set: ['fdBroker.readinessRequiresDevice=true'] });
    assert.equal(pod.container('fd-broker').readinessProbe.httpGet.path, '/readyz');
    assert.equal(pod.container('fd-broker').livenessProbe.httpGet.path, '/healthz');
  });

  it('moves ports, container ports and probes together', () => {
    const pod = RenderedPod.render({ set: ['fdBroker.httpPort=19540', 'kubeletBridge.httpPort=19541'] });
    for (const [container, port] of [['fd-broker', 19540], ['kubelet-bridge', 19541]] as const) {
      assert.equal(pod.setting(container, 'http-port'), String(port));
      assert.equal(probePort(pod.container(container), 'livenessProbe'), port);
      assert.equal(probePort(pod.container(container), 'readinessProbe'), port);
    }
  });

  it('refuses the same HTTP port for both containers (they share the pod network)', () => {
    const run = runHelmRender({ set: ['kubeletBridge.httpPort=9540'] });
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, /httpPort .* must differ/);
  });

  it('derives the broker allow-list and socket owner from the bridge uid', () => {
    const pod = RenderedPod.render({ set: ['kubeletBridge.runAsUser=2000', 'kubeletBridge.runAsGroup=3000'] });
    assert.equal(pod.container('kubelet-bridge').securityContext.runAsUser, 2000);
    assert.equal(pod.container('kubelet-bridge').securityContext.runAsGroup, 3000);
    assert.equal(pod.setting('fd-broker', 'allowed-uids'), '2000');
    assert.equal(pod.setting('fd-broker', 'socket-owner'), '2000:3000');
    const env = Object.fromEntries((pod.container('host-access-init').env as Manifest[]).map((e) => [e.name, e.value]));
    assert.deepEqual([env.BRIDGE_UID, env.BRIDGE_GID], ['2000', '3000']);
  });

  it('runs the bridge as root without capabilities, and no host-access containers, when runAsUser is 0', () => {
    const pod = RenderedPod.render({ set: ['kubeletBridge.runAsUser=0', 'kubeletBridge.runAsGroup=0'] });
    const sc = pod.container('kubelet-bridge').securityContext;
    assert.equal(sc.runAsNonRoot, false);
    assert.equal(sc.runAsUser, 0);
    assert.equal(sc.privileged, false);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.deepEqual(sc.capabilities, { drop: ['ALL'] });
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.deepEqual(sc.seccompProfile, { type: 'RuntimeDefault' });
    assert.equal(pod.spec.initContainers, undefined);
    assert.equal(pod.hasContainer('host-access'), false);
    assert.equal(pod.setting('fd-broker', 'allowed-uids'), '0');
    assertWellFormed(pod);
  });

  it('turns the host-access containers off, or keeps only the init container', () => {
    const none = RenderedPod.render({ set: ['hostAccess.enabled=false'] });
    assert.equal(none.spec.initContainers, undefined);
    assert.equal(none.hasContainer('host-access'), false);
    assert.equal(none.container('kubelet-bridge').securityContext.runAsUser, 65532);
    const initOnly = RenderedPod.render({ set: ['hostAccess.keepGranted=false'] });
    assert.ok(initOnly.hasContainer('host-access-init'));
    assert.equal(initOnly.hasContainer('host-access'), false);
    const slower = RenderedPod.render({ set: ['hostAccess.intervalSeconds=30'] });
    assert.ok((slower.container('host-access').env as Manifest[]).some((e) => e.name === 'INTERVAL_SECONDS' && e.value === '30'));
  });

  it('applies seLinuxOptions to the bridge and the host-access containers', () => {
    const pod = RenderedPod.render({ set: ['kubeletBridge.seLinuxOptions.type=spc_t'] });
    for (const name of ['kubelet-bridge', 'host-access-init', 'host-access']) {
      assert.deepEqual(pod.container(name).securityContext.seLinuxOptions, { type: 'spc_t' }, name);
    }
    assert.equal(pod.container('fd-broker').securityContext.seLinuxOptions, undefined);
  });

  it('appends extraArgs after the chart flags and adds extraEnv', () => {
    const pod = RenderedPod.render({
      values: {
        fdBroker: { extraArgs: ['--max-connections=64'], extraEnv: [{ name: 'FD_BROKER_REQUEST_TIMEOUT_MS', value: '2000' }] },
        kubeletBridge: {
          extraArgs: ['--ack-timeout-ms=5000', '--device-count=7'],
          extraEnv: [{ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } }],
        },
      },
    });
    assert.deepEqual(pod.container('fd-broker').args, ['--max-connections=64']);
    const brokerEnv = pod.container('fd-broker').env as Manifest[];
    assert.deepEqual(brokerEnv[brokerEnv.length - 1], { name: 'FD_BROKER_REQUEST_TIMEOUT_MS', value: '2000' }, 'after the chart variables');
    assert.equal(pod.setting('fd-broker', 'max-connections'), '64');
    const bridgeArgs = pod.container('kubelet-bridge').args as string[];
    assert.deepEqual(bridgeArgs.slice(-2), ['--ack-timeout-ms=5000', '--device-count=7']);
    assert.equal(pod.setting('kubelet-bridge', 'device-count'), '7', 'the last of a repeated flag wins');
    assert.deepEqual(pod.container('kubelet-bridge').env, [{ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } }]);
  });

  it('uses the image repositories, tags, pull policy and pull secrets given', () => {
    const pod = RenderedPod.render({
      set: [
        'fdBroker.image.repository=registry.example/fd-broker',
        'fdBroker.image.tag=1.2.3',
        'fdBroker.image.pullPolicy=Always',
        'kubeletBridge.image.repository=registry.example/kubelet-bridge',
      ],
      values: { imagePullSecrets: [{ name: 'registry-example' }] },
    });
    assert.equal(pod.container('fd-broker').image, 'registry.example/fd-broker:1.2.3');
    assert.equal(pod.container('fd-broker').imagePullPolicy, 'Always');
    assert.equal(pod.container('host-access-init').image, 'registry.example/fd-broker:1.2.3');
    assert.equal(pod.container('kubelet-bridge').image, `registry.example/kubelet-bridge:${chartMeta.appVersion}`, 'an unset tag is the appVersion');
    assert.deepEqual(pod.spec.imagePullSecrets, [{ name: 'registry-example' }]);
  });

  it('passes scheduling, priority, update strategy, pod labels and annotations through', () => {
    const affinity = { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'gpu', operator: 'Exists' }] }] } } };
    const tolerations = [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }];
    const pod = RenderedPod.render({
      values: {
        priorityClassName: '',
        nodeSelector: { 'nvidia.com/gpu.present': 'true' },
        affinity,
        tolerations,
        updateStrategy: { type: 'OnDelete', rollingUpdate: null },
        podLabels: { team: 'virt' },
        podAnnotations: { 'example.com/owner': 'virt' },
        terminationGracePeriodSeconds: 10,
      },
    });
    assert.equal(pod.spec.priorityClassName, undefined);
    assert.deepEqual(pod.spec.nodeSelector, { 'kubernetes.io/os': 'linux', 'nvidia.com/gpu.present': 'true' });
    assert.deepEqual(pod.spec.affinity, affinity);
    assert.deepEqual(pod.spec.tolerations, tolerations);
    assert.deepEqual(pod.daemonSet.spec.updateStrategy, { type: 'OnDelete' });
    assert.equal(pod.daemonSet.spec.template.metadata.labels.team, 'virt');
    assert.equal(pod.daemonSet.spec.selector.matchLabels.team, undefined, 'pod labels stay out of the immutable selector');
    assert.equal(pod.daemonSet.spec.template.metadata.annotations['example.com/owner'], 'virt');
    assert.equal(pod.spec.terminationGracePeriodSeconds, 10);
  });

  it('names objects after fullnameOverride and uses an existing ServiceAccount when asked', () => {
    const manifests = renderChart({ set: ['fullnameOverride=iommufd-dp', 'serviceAccount.create=false', 'serviceAccount.name=node-agents'] });
    const pod = new RenderedPod(manifests);
    assert.equal(pod.daemonSet.metadata.name, 'iommufd-dp');
    assert.equal(pod.spec.serviceAccountName, 'node-agents');
    assert.equal(ofKind(manifests, 'ServiceAccount').length, 0);
  });
});

describe('helm chart: monitoring', () => {
  function assertScrapesBoth(endpoints: Manifest[], portNames: string[]): void {
    assert.deepEqual(endpoints.map((e) => e.port).sort(), ['bridge-http', 'broker-http']);
    for (const endpoint of endpoints) {
      assert.ok(portNames.includes(endpoint.port), `scrapes port ${endpoint.port}, which no container exposes`);
      assert.equal(endpoint.path, '/metrics');
      assert.equal(endpoint.interval, '30s');
      assert.equal(endpoint.scrapeTimeout, '10s');
    }
  }

  it('creates no monitor by default', () => {
    const manifests = renderChart();
    assert.equal(manifests.filter((m) => String(m.apiVersion).startsWith('monitoring.coreos.com/')).length, 0);
  });

  it('creates a PodMonitor for both /metrics endpoints when enabled', () => {
    const manifests = renderChart({ set: ['monitoring.enabled=true', 'monitoring.labels.release=prometheus'] });
    const pod = new RenderedPod(manifests);
    const monitor = onlyOfKind(manifests, 'PodMonitor');
    assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
    assert.equal(monitor.metadata.labels.release, 'prometheus');
    assert.deepEqual(monitor.spec.selector.matchLabels, pod.daemonSet.spec.selector.matchLabels);
    assert.deepEqual(monitor.spec.namespaceSelector, { matchNames: ['kubevirt'] });
    const portNames = allContainers(pod).flatMap((c) => (c.ports ?? []).map((p: Manifest) => p.name as string));
    assertScrapesBoth(monitor.spec.podMetricsEndpoints, portNames);
    assert.equal(ofKind(manifests, 'Service').length, 0);
  });

  it('creates a headless Service and a ServiceMonitor when kind is ServiceMonitor', () => {
    const manifests = renderChart({ set: ['monitoring.enabled=true', 'monitoring.kind=ServiceMonitor', 'monitoring.scrapeTimeout='] });
    const pod = new RenderedPod(manifests);
    const service = onlyOfKind(manifests, 'Service');
    assert.equal(service.spec.clusterIP, 'None');
    assert.deepEqual(service.spec.selector, pod.daemonSet.spec.selector.matchLabels);
    const containerPorts = allContainers(pod).flatMap((c) => (c.ports ?? []) as Manifest[]);
    for (const port of service.spec.ports as Manifest[]) {
      const target = containerPorts.find((p) => p.name === port.targetPort);
      assert.ok(target, `the Service targets port ${port.targetPort}, which no container exposes`);
      assert.equal(port.port, target.containerPort);
    }
    const monitor = onlyOfKind(manifests, 'ServiceMonitor');
    assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
    for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels as Record<string, string>)) {
      assert.equal(service.metadata.labels[key], value, 'the ServiceMonitor selects the Service');
    }
    const endpoints = monitor.spec.endpoints as Manifest[];
    assert.deepEqual(endpoints.map((e) => e.port).sort(), (service.spec.ports as Manifest[]).map((p) => p.name).sort());
    for (const endpoint of endpoints) assert.equal(endpoint.scrapeTimeout, undefined, 'an empty scrapeTimeout is left out');
    assert.equal(ofKind(manifests, 'PodMonitor').length, 0);
  });
});

describe('helm chart: NOTES.txt', () => {
  let scratch: string;
  before(() => {
    scratch = mkdtempSync(join(tmpdir(), 'helm-notes-'));
  });
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('renders, and says how to check the resource on the nodes', () => {
    // helm-render skips NOTES.txt, so a copy of the chart renders it into a ConfigMap.
    const copy = join(scratch, 'iommufd-device-plugin');
    cpSync(chartDir, copy, { recursive: true });
    writeFileSync(
      join(copy, 'templates', 'zz-notes.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "iommufd-device-plugin/templates/NOTES.txt" . | toJson }}\n',
    );
    const notes = onlyOfKind(renderChart({ chart: copy, set: ['resourceName=example.com/iommufd'] }), 'ConfigMap').data.notes as string;
    assert.match(notes, /kubectl get nodes -o custom-columns='NODE:\.metadata\.name,IOMMUFD:\.status\.allocatable\.example\\\.com\/iommufd'/);
    assert.match(notes, /kubectl -n kubevirt get pods -l app\.kubernetes\.io\/name=iommufd-device-plugin,app\.kubernetes\.io\/instance=iommufd/);
    assert.match(notes, /curl -s localhost:9540\/status/);
    assert.match(notes, /example\.com\/iommufd: 1/);
    assert.doesNotMatch(notes, /<no value>|%!/);
  });
});

describe('helm chart: values schema', () => {
  let validate: ValidateFunction;
  before(() => {
    const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
    validate = ajv.compile(schema);
  });

  const explain = () => JSON.stringify(validate.errors);

  it('is draft-07 and accepts values.yaml itself', () => {
    assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#');
    assert.equal(validate(defaults), true, explain());
  });

  it('accepts the value sets the other tests render', () => {
    const good: Array<Record<string, unknown>> = [
      { resourceName: 'example.com/iommufd', deviceCount: 16, healthPolicy: 'passthrough', exposeDevice: false, handoffMode: 'per-connection' },
      { openStrategy: 'direct', selinuxLabel: '', devicePath: '/dev/iommu1', logLevel: 'trace' },
      { socketDir: '/run/iommufd/sockets', kubelet: { devicePluginsDir: '/var/lib/k0s/kubelet/device-plugins' } },
      { kubeletBridge: { runAsUser: 0, runAsGroup: 0, seLinuxOptions: { type: 'spc_t' }, extraArgs: ['--ack-timeout-ms=5000'] } },
      { fdBroker: { image: { repository: 'r.example/b', tag: '1.2.3', pullPolicy: 'Always' }, extraEnv: [{ name: 'A', value: 'b' }] } },
      { imagePullSecrets: [{ name: 'registry-example' }], tolerations: [{ operator: 'Exists' }], affinity: { nodeAffinity: {} } },
      { updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: '10%' } }, podLabels: { team: 'virt' } },
      { monitoring: { enabled: true, kind: 'ServiceMonitor', interval: '1m30s', scrapeTimeout: '', labels: { release: 'prom' } } },
      { fdBroker: { resources: { requests: { cpu: 0.1, memory: '64Mi' }, limits: { memory: '1Gi' } } } },
      { hostAccess: { enabled: false, keepGranted: false, intervalSeconds: 60 } },
    ];
    for (const override of good) assert.equal(validate(withDefaults(override)), true, `${JSON.stringify(override)}: ${explain()}`);
  });

  it('rejects wrong types, unknown keys, bad choices and bad paths', () => {
    const bad: Array<[string, Record<string, unknown>]> = [
      ['deviceCount as a string', { deviceCount: '110' }],
      ['deviceCount 0', { deviceCount: 0 }],
      ['deviceCount fractional', { deviceCount: 1.5 }],
      ['exposeDevice as a string', { exposeDevice: 'yes' }],
      ['an unknown top-level key', { resourceNames: 'x/y' }],
      ['an unknown nested key', { fdBroker: { imag: {} } }],
      ['an unknown image key', { kubeletBridge: { image: { registry: 'x' } } }],
      ['an unknown probe key', { fdBroker: { livenessProbe: { path: '/other' } } }],
      ['an unknown monitoring key', { monitoring: { enable: true } }],
      ['healthPolicy not a choice', { healthPolicy: 'ignore' }],
      ['openStrategy not a choice', { openStrategy: 'mknod' }],
      ['handoffMode not a choice', { handoffMode: 'always' }],
      ['logLevel not a choice', { logLevel: 'verbose' }],
      ['pullPolicy not a choice', { fdBroker: { image: { pullPolicy: 'Sometimes' } } }],
      ['monitoring.kind not a choice', { monitoring: { kind: 'Probe' } }],
      ['a relative socketDir', { socketDir: 'var/run/kubevirt' }],
      ['a relative containerSocketPath', { containerSocketPath: 'iommufd.sock' }],
      ['a devicePath outside /dev', { devicePath: '/tmp/iommu' }],
      ['a resource name without a domain', { resourceName: 'iommufd' }],
      ['a resource name in kubernetes.io', { resourceName: 'devices.kubernetes.io/iommufd' }],
      ['a port out of range', { kubeletBridge: { httpPort: 70000 } }],
      ['a port as a string', { fdBroker: { httpPort: '9540' } }],
      ['a negative uid', { kubeletBridge: { runAsUser: -1 } }],
      ['extraArgs as a string', { fdBroker: { extraArgs: '--log-level=debug' } }],
      ['extraArgs with a number', { kubeletBridge: { extraArgs: [5] } }],
      ['extraEnv without a name', { fdBroker: { extraEnv: [{ value: 'x' }] } }],
      ['a pull secret as a string', { imagePullSecrets: ['registry-example'] }],
      ['a nodeSelector value that is not a string', { nodeSelector: { gpu: true } }],
      ['podAnnotations as a list', { podAnnotations: ['a'] }],
      ['tolerations as a map', { tolerations: { key: 'x' } }],
      ['resources with an unknown key', { fdBroker: { resources: { request: { cpu: '1' } } } }],
      ['a bad scrape interval', { monitoring: { interval: 'often' } }],
      ['an empty image repository', { fdBroker: { image: { repository: '' } } }],
      ['an updateStrategy type not a choice', { updateStrategy: { type: 'Recreate' } }],
      ['seLinuxOptions with an unknown key', { kubeletBridge: { seLinuxOptions: { kind: 'x' } } }],
      ['a zero interval', { hostAccess: { intervalSeconds: 0 } }],
    ];
    for (const [what, override] of bad) assert.equal(validate(withDefaults(override)), false, `${what} must be rejected: ${JSON.stringify(override)}`);
  });

  it('describes every value, and gives every object of ours additionalProperties: false', () => {
    const walk = (node: SchemaNode, path: string) => {
      if (!node.properties) return;
      assert.equal(node.additionalProperties, false, `${path || '(root)'} must refuse unknown keys`);
      for (const [key, child] of Object.entries(node.properties)) walk(child, path ? `${path}.${key}` : key);
    };
    walk(schema, '');
    for (const row of schemaRows()) assert.ok(row.description, `${row.key} has no description`);
  });
});

interface TableRow {
  key: string;
  type: string;
  default: string;
  description: string;
}

/**
 * The rows the README's values table must have: each schema property, except
 * objects whose properties are all described themselves (those are rows of their own).
 */
function schemaRows(): TableRow[] {
  const rows: TableRow[] = [];
  const walk = (node: SchemaNode, prefix: string, values: unknown) => {
    for (const [key, child] of Object.entries(node.properties ?? {})) {
      const path = prefix ? `${prefix}.${key}` : key;
      const value = isObject(values) ? values[key] : undefined;
      const children = Object.values(child.properties ?? {});
      if (children.length > 0 && children.every((c) => c.description)) {
        walk(child, path, value);
        continue;
      }
      const type = Array.isArray(child.type) ? child.type.join(' or ') : String(child.type);
      const choices = child.enum ? `: ${child.enum.map((e) => `\`${String(e)}\``).join(', ')}` : '';
      rows.push({ key: path, type: `${type}${choices}`, default: `\`${JSON.stringify(value)}\``, description: child.description ?? '' });
    }
  };
  walk(schema, '', defaults);
  return rows;
}

function readmeRows(): TableRow[] {
  const readme = readFileSync(join(chartDir, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Values'));
  assert.ok(section.length > 20, 'the README has a "## Values" section');
  const rows: TableRow[] = [];
  for (const line of section.split('\n')) {
    const match = /^\| `([^`]+)` \| (.*?) \| (`.*?`) \| (.*) \|$/.exec(line);
    if (match) rows.push({ key: match[1]!, type: match[2]!, default: match[3]!, description: match[4]! });
  }
  return rows;
}

describe('helm chart: README values table', () => {
  it('lists every schema value, and nothing else', () => {
    const expected = schemaRows().map((r) => r.key);
    const documented = readmeRows().map((r) => r.key);
    assert.deepEqual(
      documented.filter((k) => !expected.includes(k)),
      [],
      'the README documents values the schema does not have',
    );
    assert.deepEqual(
      expected.filter((k) => !documented.includes(k)),
      [],
      'the README lacks values the schema has',
    );
    assert.deepEqual(documented, expected, 'the README lists the values in the schema order');
  });

  it('gives each value the schema type, the values.yaml default and the schema description', () => {
    const documented = new Map(readmeRows().map((r) => [r.key, r]));
    for (const row of schemaRows()) {
      const line = `| \`${row.key}\` | ${row.type} | ${row.default} | ${row.description} |`;
      assert.deepEqual(documented.get(row.key), row, `README row should be:\n${line}`);
    }
  });
});

/**
 * The host-access scripts, run as the chart renders them, against a pretend
 * kubelet: a 0750 device-plugins dir and sockets made root-owned 0755 as the
 * kubelet makes them. Needs root (to be the kubelet and to connect as the
 * bridge's uid) and setfacl (the acl package, installed here if missing).
 */
describe('helm chart: host-access scripts on kubelet-like sockets', { skip: process.geteuid?.() !== 0 ? 'needs root' : false }, () => {
  const bridgeUid = 65532;
  let scratch: string;
  let pod: RenderedPod;
  const servers: Server[] = [];

  function listenLikeKubelet(path: string): Promise<void> {
    const old = process.umask(0o022);
    const server = createServer((c) => c.destroy());
    servers.push(server);
    return new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        process.umask(old);
        resolve();
      });
    });
  }

  /** Connects to `path` as the bridge's uid; resolves with "connected" or the error code. */
  function connectAsBridge(path: string): Promise<string> {
    const probe = `const s = require('net').connect(process.argv[1]);
      s.on('connect', () => { console.log('connected'); s.destroy(); });
      s.on('error', (e) => console.log(e.code));`;
    return new Promise((resolve, reject) => {
      execFile(process.execPath, ['-e', probe, path], { uid: bridgeUid, gid: bridgeUid, timeout: 10_000 }, (err, stdout) => {
        if (err && !stdout) reject(err);
        else resolve(stdout.trim());
      });
    });
  }

  function scriptEnv(container: string, dirs: Record<string, string>): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
    for (const e of pod.container(container).env as Manifest[]) env[e.name] = e.value;
    return { ...env, ...dirs };
  }

  before(() => {
    if (spawnSync('sh', ['-c', 'command -v setfacl && command -v getfacl']).status !== 0) {
      const install = spawnSync('sh', ['-c', 'apt-get install -y acl || (apt-get update && apt-get install -y acl)'], { stdio: 'ignore', timeout: 300_000 });
      assert.equal(install.status, 0, 'setfacl is missing and `apt-get install -y acl` failed; install the acl package');
    }
    scratch = mkdtempSync(join(tmpdir(), 'host-access-'));
    chmodSync(scratch, 0o755);
    pod = RenderedPod.render({ set: ['hostAccess.intervalSeconds=1'] });
  });

  after(() => {
    for (const server of servers) server.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('lets the non-root bridge use the socket dir and the kubelet sockets, and again after a kubelet restart', async () => {
    const dirs = {
      SOCKET_DIR: join(scratch, 'fd-sockets'),
      DEVICE_PLUGINS_DIR: join(scratch, 'device-plugins'),
      POD_RESOURCES_DIR: join(scratch, 'pod-resources'),
    };
    mkdirSync(dirs.SOCKET_DIR, { mode: 0o755 });
    mkdirSync(dirs.DEVICE_PLUGINS_DIR, { mode: 0o750 });
    mkdirSync(dirs.POD_RESOURCES_DIR, { mode: 0o750 });
    const kubeletSock = join(dirs.DEVICE_PLUGINS_DIR, 'kubelet.sock');
    const podResourcesSock = join(dirs.POD_RESOURCES_DIR, 'kubelet.sock');
    await listenLikeKubelet(kubeletSock);
    await listenLikeKubelet(podResourcesSock);
    assert.equal(statSync(kubeletSock).mode & 0o777, 0o755);
    assert.equal(await connectAsBridge(kubeletSock), 'EACCES', 'without the grant the bridge cannot reach the kubelet');

    const init = kubeletExpand((pod.container('host-access-init').args as string[])[0]!);
    const run = spawnSync('/bin/sh', ['-c', init], { env: scriptEnv('host-access-init', dirs), encoding: 'utf8' });
    assert.equal(run.status, 0, `host-access-init failed: ${run.stderr}`);
    const events = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; path: string });
    assert.ok(events.some((e) => e.event === 'access_granted' && e.path === kubeletSock), run.stdout);

    const socketDir = statSync(dirs.SOCKET_DIR);
    assert.deepEqual([socketDir.uid, socketDir.gid, socketDir.mode & 0o777], [bridgeUid, bridgeUid, 0o750]);
    assert.equal(await connectAsBridge(kubeletSock), 'connected');
    assert.equal(await connectAsBridge(podResourcesSock), 'connected');
    const makeSocket = spawnSync(
      process.execPath,
      ['-e', "require('net').createServer().listen(process.argv[1], function () { this.close(); })", join(dirs.DEVICE_PLUGINS_DIR, 'bridge.sock')],
      { uid: bridgeUid, gid: bridgeUid, encoding: 'utf8' },
    );
    assert.equal(makeSocket.status, 0, `the bridge cannot create its endpoint in the device-plugins dir: ${makeSocket.stderr}`);
    const rerun = spawnSync('/bin/sh', ['-c', init], { env: scriptEnv('host-access-init', dirs), encoding: 'utf8' });
    assert.equal(rerun.status, 0, 'the init container can run again (pod restart)');

    // The sidecar, then a kubelet restart: the kubelet deletes its sockets and makes new ones.
    const sidecar = spawn('/bin/sh', ['-c', kubeletExpand((pod.container('host-access').args as string[])[0]!)], {
      env: scriptEnv('host-access', dirs),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let sidecarOut = '';
    sidecar.stdout.on('data', (chunk: Buffer) => (sidecarOut += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => sidecar.once('close', (code) => resolve(code)));
    try {
      for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
      assert.equal(existsSync(kubeletSock), false);
      await listenLikeKubelet(kubeletSock);
      await listenLikeKubelet(podResourcesSock);
      const deadline = Date.now() + 10_000;
      let outcome = await connectAsBridge(kubeletSock);
      while (outcome !== 'connected' && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        outcome = await connectAsBridge(kubeletSock);
      }
      assert.equal(outcome, 'connected', `the sidecar did not grant the new kubelet.sock; it said: ${sidecarOut}`);
      assert.equal(await connectAsBridge(podResourcesSock), 'connected');
    } finally {
      sidecar.kill('SIGTERM');
    }
    assert.equal(await exited, 0, 'the sidecar stops cleanly on SIGTERM');
  });

  it('fails with a clear message where ACLs cannot be set', () => {
    const dirs = {
      SOCKET_DIR: join(scratch, 'no-acl-sockets'),
      DEVICE_PLUGINS_DIR: join(scratch, 'missing', 'device-plugins'),
      POD_RESOURCES_DIR: join(scratch, 'missing', 'pod-resources'),
    };
    mkdirSync(dirs.SOCKET_DIR);
    const init = kubeletExpand((pod.container('host-access-init').args as string[])[0]!);
    const run = spawnSync('/bin/sh', ['-c', init], { env: scriptEnv('host-access-init', dirs), encoding: 'utf8' });
    assert.equal(run.status, 1);
    assert.match(run.stdout, /"event":"acl_failed"/);
    assert.match(run.stderr, /kubeletBridge\.runAsUser=0/);
  });
});
