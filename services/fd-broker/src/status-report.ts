import { type CapabilityReport, capabilityReport } from './capabilities';
import { release } from 'node:os';
import type { ProbeResult } from '@iommufd-plugin/common';
import { type ActivityCounters, type BrokerActivity, errorCodeName, type PeerSeen, type RecentError } from './broker-activity';
import type { BrokerConfig } from './config';
import type { SelfTestOutcome, SelfTestTrigger } from './self-test';
import { brokerVersion } from './version';

/** The last self-test as /status shows it; the failure fields are null when it passed. */
export interface SelfTestReport {
  result: 'passed' | 'failed';
  finishedAt: string;
  durationSeconds: number;
  trigger: SelfTestTrigger;
  reason: string | null;
  code: string | null;
  errno: string | null;
  syscall: string | null;
}

/** GET /status: everything an admin asks first about a node's broker, in one document. */
export interface StatusReport {
  service: 'fd-broker';
  version: string;
  pid: number;
  startedAt: string;
  uptimeSeconds: number;
  kernelRelease: string;
  capabilities: CapabilityReport;
  live: ProbeResult;
  ready: ProbeResult;
  controlSocket: string;
  device: { path: string; present: boolean };
  openStrategy: BrokerConfig['openStrategy'];
  /** Where temporary device nodes are made; null with the direct strategy. */
  nodeDir: string | null;
  /** The label given to temporary device nodes; null when none is set (direct strategy, or an empty label). */
  selinuxLabel: string | null;
  selfTestIntervalMs: number;
  /** null until the first self-test finishes. */
  lastSelfTest: SelfTestReport | null;
  counters: ActivityCounters;
  /** Newest first, at most 20. */
  recentErrors: RecentError[];
  /** Client uids served, most recent first. */
  peers: PeerSeen[];
}

export interface StatusSources {
  config: Pick<BrokerConfig, 'devicePath' | 'openStrategy' | 'nodeDir' | 'selinuxLabel' | 'socketPath' | 'selfTestIntervalMs'>;
  startedAt: Date;
  devicePresent: () => boolean;
  lastSelfTest: () => SelfTestOutcome | undefined;
  activity: BrokerActivity;
  liveness: () => ProbeResult;
  readiness: () => ProbeResult;
}

export function statusReport(sources: StatusSources): StatusReport {
  const { config, activity } = sources;
  const temporaryNode = config.openStrategy === 'temporary-node';
  const last = sources.lastSelfTest();
  return {
    service: 'fd-broker',
    version: brokerVersion,
    pid: process.pid,
    startedAt: sources.startedAt.toISOString(),
    uptimeSeconds: Math.round((Date.now() - sources.startedAt.getTime()) / 1000),
    kernelRelease: release(),
    capabilities: capabilityReport(),
    live: sources.liveness(),
    ready: sources.readiness(),
    controlSocket: config.socketPath,
    device: { path: config.devicePath, present: sources.devicePresent() },
    openStrategy: config.openStrategy,
    nodeDir: temporaryNode ? config.nodeDir : null,
    selinuxLabel: temporaryNode && config.selinuxLabel !== '' ? config.selinuxLabel : null,
    selfTestIntervalMs: config.selfTestIntervalMs,
    lastSelfTest: last ? selfTestReport(last) : null,
    counters: structuredClone(activity.counters),
    recentErrors: activity.recentErrors(),
    peers: activity.peersSeen(),
  };
}

function selfTestReport(outcome: SelfTestOutcome): SelfTestReport {
  return {
    result: outcome.passed ? 'passed' : 'failed',
    finishedAt: outcome.finishedAt.toISOString(),
    durationSeconds: outcome.durationSeconds,
    trigger: outcome.trigger,
    reason: outcome.passed ? null : outcome.reason,
    code: outcome.passed ? null : errorCodeName(outcome.code),
    errno: outcome.errnoName || null,
    syscall: outcome.syscall || null,
  };
}
