import {
  type OptionValues,
  parseBoolean,
  parseAbsolutePath,
  parseChoice,
  parseFileMode,
  parseInteger,
  parseLogLevel,
  parseUidList,
} from '@iommufd-plugin/common';
import type { OpenStrategy } from '@iommufd-plugin/native';

/**
 * Every setting of the fd-broker, in one place. `fd-broker --help` prints
 * this table; docs/CONFIGURATION.md describes it for admins.
 */
export const brokerOptions = {
  socketPath: {
    flag: 'socket',
    env: 'FD_BROKER_SOCKET',
    valueName: 'PATH',
    description: 'Control socket the kubelet-bridge connects to. Keep it in a directory only the pod can reach.',
    default: '/var/run/iommufd-broker/broker.sock',
    parse: parseAbsolutePath,
  },
  socketMode: {
    flag: 'socket-mode',
    env: 'FD_BROKER_SOCKET_MODE',
    valueName: 'MODE',
    description: 'Permission bits of the control socket (octal).',
    default: '0600',
    parse: parseFileMode,
  },
  socketOwner: {
    flag: 'socket-owner',
    env: 'FD_BROKER_SOCKET_OWNER',
    valueName: 'UID[:GID]',
    description: 'Numeric owner (and group) given to the control socket, e.g. the bridge\'s uid when the mode is 0600. Empty: the broker\'s own.',
    default: '',
    parse: parseOwner,
  },
  allowedUids: {
    flag: 'allowed-uids',
    env: 'FD_BROKER_ALLOWED_UIDS',
    valueName: 'UID,...',
    description: 'Peer uids (checked with SO_PEERCRED) that may ask for a context; others get PEER_NOT_ALLOWED. Empty: only the broker\'s own uid.',
    default: '',
    parse: (text: string) => (text === '' ? [process.geteuid?.() ?? 0] : parseUidList(text)),
  },
  devicePath: {
    flag: 'device',
    env: 'FD_BROKER_DEVICE',
    valueName: 'PATH',
    description: 'The IOMMUFD device.',
    default: '/dev/iommu',
    parse: parseAbsolutePath,
  },
  openStrategy: {
    flag: 'open-strategy',
    env: 'FD_BROKER_OPEN_STRATEGY',
    valueName: 'direct|temporary-node',
    description:
      'direct: open the device path. temporary-node: mknod a node with its major:minor in --node-dir, label it with --selinux-label, open it, remove it; needed on SELinux hosts so a container may receive the fd.',
    default: 'temporary-node',
    parse: parseChoice(['direct', 'temporary-node'] as const),
  },
  nodeDir: {
    flag: 'node-dir',
    env: 'FD_BROKER_NODE_DIR',
    valueName: 'PATH',
    description: 'Directory for temporary device nodes (temporary-node strategy); the handoff socket directory.',
    default: '/var/run/kubevirt/fd-sockets',
    parse: parseAbsolutePath,
  },
  selinuxLabel: {
    flag: 'selinux-label',
    env: 'FD_BROKER_SELINUX_LABEL',
    valueName: 'LABEL',
    description: 'SELinux label for temporary device nodes. Ignored where SELinux is absent; empty: do not label.',
    default: 'system_u:object_r:container_file_t:s0',
    parse: (text: string) => text,
  },
  maxRequestBytes: {
    flag: 'max-request-bytes',
    env: 'FD_BROKER_MAX_REQUEST_BYTES',
    valueName: 'N',
    description: 'Largest request accepted; a larger length prefix gets REQUEST_TOO_LARGE and the connection is closed.',
    default: '4096',
    parse: parseInteger(16, 1024 * 1024),
  },
  requestTimeoutMs: {
    flag: 'request-timeout-ms',
    env: 'FD_BROKER_REQUEST_TIMEOUT_MS',
    valueName: 'MS',
    description: 'A connection must deliver each whole request within this time of connecting or of its previous reply; otherwise it gets TIMEOUT (if it sent part of one) and is closed.',
    default: '5000',
    parse: parseInteger(10, 600_000),
  },
  maxConnections: {
    flag: 'max-connections',
    env: 'FD_BROKER_MAX_CONNECTIONS',
    valueName: 'N',
    description: 'Connections served at once; more are closed on accept.',
    default: '256',
    parse: parseInteger(1, 65_536),
  },
  httpHost: {
    flag: 'http-host',
    env: 'FD_BROKER_HTTP_HOST',
    valueName: 'ADDRESS',
    description: 'Address of the HTTP endpoint for probes and admins: /healthz, /readyz, /metrics, /status.',
    default: '0.0.0.0',
    parse: parseHost,
  },
  httpPort: {
    flag: 'http-port',
    env: 'FD_BROKER_HTTP_PORT',
    valueName: 'PORT',
    description: 'Port of the HTTP endpoint; 0 picks a free one (logged in the http_listening event).',
    default: '9540',
    parse: parseInteger(0, 65_535),
  },
  selfTestIntervalMs: {
    flag: 'selftest-interval-ms',
    env: 'FD_BROKER_SELFTEST_INTERVAL_MS',
    valueName: 'MS',
    description:
      'How often to self-test the device (open a context, SET and GET RLIMIT mode, close it); its result decides readiness and the health the bridge reports. The device appearing or disappearing also starts one at once.',
    default: '60000',
    parse: parseInteger(100, 86_400_000),
  },
  restrictCapabilities: {
    flag: 'restrict-capabilities',
    env: 'FD_BROKER_RESTRICT_CAPABILITIES',
    valueName: 'true|false',
    description:
      'At start, re-execute keeping only the capabilities the broker needs (CAP_SYS_RESOURCE; CAP_MKNOD and CAP_DAC_OVERRIDE for temporary-node; CAP_CHOWN with --socket-owner) and set no_new_privs. Needs CAP_SETPCAP; without it the broker runs with what it was given.',
    default: 'true',
    parse: parseBoolean,
  },
  logLevel: {
    flag: 'log-level',
    env: 'FD_BROKER_LOG_LEVEL',
    valueName: 'LEVEL',
    description: 'fatal, error, warn, info, debug or trace.',
    default: 'info',
    parse: parseLogLevel,
  },
};

export type BrokerConfig = OptionValues<typeof brokerOptions>;

/** How the configured broker opens the device; requests, the self-test and `fd-broker selftest` share it. */
export function openStrategyOf(config: Pick<BrokerConfig, 'openStrategy' | 'nodeDir' | 'selinuxLabel'>): OpenStrategy {
  return config.openStrategy === 'direct'
    ? { kind: 'direct' }
    : { kind: 'temporary-node', nodeDir: config.nodeDir, selinuxLabel: config.selinuxLabel };
}

export interface SocketOwner {
  uid: number;
  gid: number;
}

function parseOwner(text: string): SocketOwner | null {
  if (text === '') return null;
  const match = /^(\d+)(?::(\d+))?$/.exec(text);
  if (!match) throw new Error('expected UID or UID:GID, numeric');
  const uid = Number(match[1]);
  return { uid, gid: match[2] === undefined ? uid : Number(match[2]) };
}

function parseHost(text: string): string {
  if (text === '' || /\s/.test(text)) throw new Error('expected an IP address or host name');
  return text;
}
