import type { ProbeResult } from '@iommufd-plugin/common';
import { failureSummary, type SelfTestOutcome } from './self-test';

/**
 * Readiness: the device is there and the last self-test passed. The reason
 * names the protocol's error code (e.g. DEVICE_MISSING) so that an admin can
 * look it up in docs/PROTOCOL.md.
 */
export function readiness(devicePath: string, devicePresent: boolean, last: SelfTestOutcome | undefined): ProbeResult {
  const lastSelfTest = last ? { passed: last.passed, finishedAt: last.finishedAt.toISOString() } : null;
  // The watch reruns the self-test within a fraction of a second, but until then the test that passed is stale.
  if (!devicePresent && (last === undefined || last.passed)) {
    return { ok: false, reason: `DEVICE_MISSING: ${devicePath} does not exist`, devicePresent, lastSelfTest };
  }
  if (last === undefined) return { ok: false, reason: 'no self-test has finished yet', devicePresent, lastSelfTest };
  if (!last.passed) return { ok: false, reason: `self-test failed: ${failureSummary(last)}`, devicePresent, lastSelfTest };
  return { ok: true, devicePresent, lastSelfTest };
}
