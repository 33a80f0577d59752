import { readFileSync } from 'node:fs';
import type { Logger } from '@iommufd-plugin/common';
import { capability, restrictCapabilitiesAndReexec } from '@iommufd-plugin/native';
import type { BrokerConfig } from './config';

/** Set in the environment of the re-executed broker, so it does not restrict (and re-execute) again. */
const restrictedMarker = 'FD_BROKER_CAPABILITIES_RESTRICTED';

/**
 * What the broker needs after start-up, and why:
 * - CAP_SYS_RESOURCE: IOMMU_OPTION SET of RLIMIT mode;
 * - CAP_MKNOD and CAP_DAC_OVERRIDE (temporary-node strategy only): make the
 *   node in the socket directory, which may belong to the bridge's user;
 * - CAP_CHOWN (only with --socket-owner): give the control socket to the bridge.
 */
export function neededCapabilities(config: BrokerConfig): number[] {
  const needed: number[] = [capability.SYS_RESOURCE];
  if (config.openStrategy === 'temporary-node') needed.push(capability.MKNOD, capability.DAC_OVERRIDE);
  if (config.socketOwner) needed.push(capability.CHOWN);
  return needed;
}

export interface CapabilityReport {
  effective: string[];
  bounding: string[];
  noNewPrivs: boolean;
}

/** The capabilities this process holds now, by name, from /proc/self/status. */
export function capabilityReport(): CapabilityReport {
  const status = readFileSync('/proc/self/status', 'utf8');
  const field = (name: string) => BigInt(`0x${/^(\w+):\s+([0-9a-f]+)$/m.exec(status.split('\n').find((l) => l.startsWith(`${name}:`)) ?? '')?.[2] ?? '0'}`);
  return { effective: namesOf(field('CapEff')), bounding: namesOf(field('CapBnd')), noNewPrivs: /^NoNewPrivs:\s+1$/m.test(status) };
}

/**
 * Unless told not to, re-executes the broker keeping only the capabilities
 * it needs, with no_new_privs set (never returns then). Does nothing if it
 * already runs that way, or cannot (no CAP_SETPCAP, e.g. not root).
 */
export function restrictCapabilities(config: BrokerConfig, log: Logger): void {
  if (!config.restrictCapabilities) {
    log.warn({ event: 'capabilities', ...capabilityReport() }, 'keeping every capability (--restrict-capabilities false)');
    return;
  }
  const report = capabilityReport();
  if (process.env[restrictedMarker] === '1') {
    log.info({ event: 'capabilities', ...report }, 'running with only the capabilities the broker needs');
    return;
  }
  if (!report.effective.includes('CAP_SETPCAP')) {
    log.info({ event: 'capabilities', ...report }, 'cannot restrict capabilities (no CAP_SETPCAP); running with what was given');
    return;
  }
  process.env[restrictedMarker] = '1';
  restrictCapabilitiesAndReexec(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], neededCapabilities(config));
}

const capabilityNames = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK',
  'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
  'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
];

function namesOf(mask: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) if (mask & (1n << BigInt(bit))) names.push(capabilityNames[bit] ?? `CAP_${bit}`);
  return names;
}
