import {
  type OptionValues,
  parseAbsolutePath,
  parseBoolean,
  parseChoice,
  parseFileMode,
  parseFileName,
  parseInteger,
  parseLogLevel,
} from '@iommufd-plugin/common';

/**
 * Every setting of the kubelet-bridge, in one place. `kubelet-bridge --help`
 * prints this table; docs/CONFIGURATION.md describes it for admins.
 */
export const bridgeOptions = {
  kubeletDir: {
    flag: 'kubelet-dir',
    env: 'KUBELET_BRIDGE_KUBELET_DIR',
    valueName: 'PATH',
    description: "The kubelet's device-plugins directory: kubelet.sock is there, and our endpoint socket goes there.",
    default: '/var/lib/kubelet/device-plugins',
    parse: parseAbsolutePath,
  },
  endpoint: {
    flag: 'endpoint',
    env: 'KUBELET_BRIDGE_ENDPOINT',
    valueName: 'NAME',
    description: 'File name of our device plugin socket inside --kubelet-dir.',
    default: 'kubevirt-iommufd.sock',
    parse: parseFileName,
  },
  resourceName: {
    flag: 'resource-name',
    env: 'KUBELET_BRIDGE_RESOURCE_NAME',
    valueName: 'NAME',
    description: 'Extended resource to advertise.',
    default: 'devices.kubevirt.io/iommufd',
    parse: parseResourceName,
  },
  deviceCount: {
    flag: 'device-count',
    env: 'KUBELET_BRIDGE_DEVICE_COUNT',
    valueName: 'N',
    description: 'How many devices to advertise: the most pods on the node that can hold an IOMMUFD context at once (110 is the kubelet\'s default max pods).',
    default: '110',
    parse: parseInteger(1, 10_000),
  },
  brokerSocket: {
    flag: 'broker-socket',
    env: 'KUBELET_BRIDGE_BROKER_SOCKET',
    valueName: 'PATH',
    description: "The fd-broker's control socket.",
    default: '/var/run/iommufd-broker/broker.sock',
    parse: parseAbsolutePath,
  },
  brokerTimeoutMs: {
    flag: 'broker-timeout-ms',
    env: 'KUBELET_BRIDGE_BROKER_TIMEOUT_MS',
    valueName: 'MS',
    description: 'Longest wait for one broker request, connect to reply.',
    default: '5000',
    parse: parseInteger(10, 600_000),
  },
  socketDir: {
    flag: 'socket-dir',
    env: 'KUBELET_BRIDGE_SOCKET_DIR',
    valueName: 'PATH',
    description: 'Where handoff sockets are created (one per allocation), as this process sees it.',
    default: '/var/run/kubevirt/fd-sockets',
    parse: parseAbsolutePath,
  },
  hostSocketDir: {
    flag: 'host-socket-dir',
    env: 'KUBELET_BRIDGE_HOST_SOCKET_DIR',
    valueName: 'PATH',
    description: 'The same directory as the host (and so the kubelet) sees it, for the mounts in Allocate answers. Empty: same as --socket-dir.',
    default: '',
    parse: (text: string) => (text === '' ? '' : parseAbsolutePath(text)),
  },
  socketMode: {
    flag: 'socket-mode',
    env: 'KUBELET_BRIDGE_SOCKET_MODE',
    valueName: 'MODE',
    description: "Permission bits of handoff sockets (octal); the launcher's unprivileged user must be able to connect.",
    default: '0666',
    parse: parseFileMode,
  },
  selinuxLabel: {
    flag: 'selinux-label',
    env: 'KUBELET_BRIDGE_SELINUX_LABEL',
    valueName: 'LABEL',
    description: 'SELinux label for handoff sockets, so a container may connect. Ignored where SELinux is absent; empty: do not label.',
    default: 'system_u:object_r:container_file_t:s0',
    parse: (text: string) => text,
  },
  containerSocketPath: {
    flag: 'container-socket-path',
    env: 'KUBELET_BRIDGE_CONTAINER_SOCKET_PATH',
    valueName: 'PATH',
    description: 'Where the handoff socket appears inside the container (virt-launcher looks here).',
    default: '/var/run/kubevirt/iommufd.sock',
    parse: parseAbsolutePath,
  },
  exposeDevice: {
    flag: 'expose-device',
    env: 'KUBELET_BRIDGE_EXPOSE_DEVICE',
    valueName: 'true|false',
    description: 'Also give the container the IOMMUFD device node (permissions mrw), as the earlier plugin did.',
    default: 'true',
    parse: parseBoolean,
  },
  devicePath: {
    flag: 'device-path',
    env: 'KUBELET_BRIDGE_DEVICE_PATH',
    valueName: 'PATH',
    description: 'Host path of the IOMMUFD device for --expose-device; it appears at the same path in the container.',
    default: '/dev/iommu',
    parse: parseAbsolutePath,
  },
  handoffMode: {
    flag: 'handoff-mode',
    env: 'KUBELET_BRIDGE_HANDOFF_MODE',
    valueName: 'once|per-connection',
    description:
      'once: an allocation hands out one fd, then its socket is removed. per-connection: every connection (e.g. a launcher that restarts in its pod) gets a fresh context, until the pod is gone.',
    default: 'once',
    parse: parseChoice(['once', 'per-connection'] as const),
  },
  ackTimeoutMs: {
    flag: 'ack-timeout-ms',
    env: 'KUBELET_BRIDGE_ACK_TIMEOUT_MS',
    valueName: 'MS',
    description: 'After sending the fd, how long to leave the connection open for an optional one-byte ACK (some launchers read ~5 s late and then ACK).',
    default: '15000',
    parse: parseInteger(0, 600_000),
  },
  registerRetryMaxMs: {
    flag: 'register-retry-max-ms',
    env: 'KUBELET_BRIDGE_REGISTER_RETRY_MAX_MS',
    valueName: 'MS',
    description: 'Longest pause between attempts to register while the kubelet is away (backoff starts at 100 ms).',
    default: '2000',
    parse: parseInteger(100, 600_000),
  },
  kubeletCheckMs: {
    flag: 'kubelet-check-ms',
    env: 'KUBELET_BRIDGE_KUBELET_CHECK_MS',
    valueName: 'MS',
    description: 'How often to check, besides watching the directory, that our socket still exists and kubelet.sock was not recreated.',
    default: '500',
    parse: parseInteger(50, 60_000),
  },
  healthPolicy: {
    flag: 'health-policy',
    env: 'KUBELET_BRIDGE_HEALTH_POLICY',
    valueName: 'unhealthy|passthrough',
    description:
      'unhealthy: devices turn Unhealthy while the broker is unreachable or its self-test fails, so no new VM is placed on a node that cannot serve it. passthrough: devices stay Healthy, and Allocate answers with no socket and no device while the node has no IOMMUFD (for clusters that add the resource to every launcher).',
    default: 'unhealthy',
    parse: parseChoice(['unhealthy', 'passthrough'] as const),
  },
  brokerCheckMs: {
    flag: 'broker-check-ms',
    env: 'KUBELET_BRIDGE_BROKER_CHECK_MS',
    valueName: 'MS',
    description: "How often to ask the broker for its status (reachable? self-test passed?), which decides the devices' health.",
    default: '5000',
    parse: parseInteger(100, 600_000),
  },
  podResourcesSocket: {
    flag: 'pod-resources-socket',
    env: 'KUBELET_BRIDGE_POD_RESOURCES_SOCKET',
    valueName: 'PATH',
    description: "The kubelet's pod resources API, used to name the pod in handoff logs.",
    default: '/var/lib/kubelet/pod-resources/kubelet.sock',
    parse: parseAbsolutePath,
  },
  httpHost: {
    flag: 'http-host',
    env: 'KUBELET_BRIDGE_HTTP_HOST',
    valueName: 'ADDRESS',
    description: 'Address of the HTTP endpoints /healthz, /readyz and /metrics.',
    default: '0.0.0.0',
    parse: (text: string) => text,
  },
  httpPort: {
    flag: 'http-port',
    env: 'KUBELET_BRIDGE_HTTP_PORT',
    valueName: 'PORT',
    description: 'Port of the HTTP endpoints; 0 picks a free one (logged in the http_listening event).',
    default: '9541',
    parse: parseInteger(0, 65_535),
  },
  logLevel: {
    flag: 'log-level',
    env: 'KUBELET_BRIDGE_LOG_LEVEL',
    valueName: 'LEVEL',
    description: 'fatal, error, warn, info, debug or trace.',
    default: 'info',
    parse: parseLogLevel,
  },
};

export type BridgeConfig = OptionValues<typeof bridgeOptions>;

/** An extended resource name as the kubelet accepts it: <DNS subdomain>/<name>, outside kubernetes.io. */
function parseResourceName(text: string): string {
  const match = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)\/([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$/.exec(text);
  if (!match || text.length > 253 + 64) throw new Error('expected <domain>/<name>, e.g. devices.kubevirt.io/iommufd');
  const domain = match[1] as string;
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) throw new Error('the kubernetes.io domain is reserved');
  return text;
}
