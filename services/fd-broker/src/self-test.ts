import { closeFd } from '@iommufd-plugin/native';
import { broker } from '@iommufd-plugin/proto';
import type { Logger } from '@iommufd-plugin/common';
import { errorCodeName } from './broker-activity';
import { ContextError, type ContextFactory } from './context-factory';
import type { BrokerMetrics } from './metrics';

export type SelfTestTrigger = 'start' | 'interval' | 'device-change' | 'command';

export interface SelfTestOutcome {
  passed: boolean;
  /** What failed and what to check; empty when passed. */
  reason: string;
  /** ERROR_CODE_UNSPECIFIED when passed. */
  code: broker.ErrorCode;
  errnoName: string;
  syscall: string;
  finishedAt: Date;
  durationSeconds: number;
  trigger: SelfTestTrigger;
}

/**
 * One self-test: a context made exactly as for a request (same factory, so
 * the same strategy, node directory and label), SET and GET-verified by the
 * factory, then closed at once.
 */
export async function performSelfTest(factory: ContextFactory, trigger: SelfTestTrigger): Promise<SelfTestOutcome> {
  const started = process.hrtime.bigint();
  const finish = (fields: Pick<SelfTestOutcome, 'passed' | 'reason' | 'code' | 'errnoName' | 'syscall'>): SelfTestOutcome => ({
    ...fields,
    finishedAt: new Date(),
    durationSeconds: Number(process.hrtime.bigint() - started) / 1e9,
    trigger,
  });
  try {
    closeFd(await factory.open());
    return finish({ passed: true, reason: '', code: broker.ErrorCode.ERROR_CODE_UNSPECIFIED, errnoName: '', syscall: '' });
  } catch (err) {
    const error =
      err instanceof ContextError ? err : new ContextError(broker.ErrorCode.ERROR_CODE_INTERNAL, `self-test failed unexpectedly: ${String(err)}`);
    return finish({ passed: false, reason: error.message, code: error.code, errnoName: error.errnoName, syscall: error.syscall });
  }
}

/** "DEVICE_MISSING (ENOENT): <message>", the way a failure reads in probes and the CLI. */
export function failureSummary(outcome: SelfTestOutcome): string {
  const errno = outcome.errnoName ? ` (${outcome.errnoName})` : '';
  return `${errorCodeName(outcome.code)}${errno}: ${outcome.reason}`;
}

/** The outcome as the broker protocol's status reply carries it. */
export function selfTestResultMessage(outcome: SelfTestOutcome): broker.SelfTestResult {
  return {
    passed: outcome.passed,
    reason: outcome.reason,
    code: outcome.code,
    errnoName: outcome.errnoName,
    finishedAtUnixMs: outcome.finishedAt.getTime(),
    durationSeconds: outcome.durationSeconds,
  };
}

/**
 * The broker's running self-test: runs one at a time, keeps the last
 * outcome for readiness, /status and the status request, and reports each
 * in metrics and (on a change) in the log.
 */
export class SelfTest {
  private lastOutcome: SelfTestOutcome | undefined;
  private running: Promise<SelfTestOutcome> | undefined;
  private rerun: Promise<SelfTestOutcome> | undefined;

  constructor(
    private readonly factory: ContextFactory,
    private readonly metrics: BrokerMetrics,
    private readonly log: Logger,
  ) {}

  /** The most recent outcome; undefined until the first self-test finishes. */
  get last(): SelfTestOutcome | undefined {
    return this.lastOutcome;
  }

  run(trigger: SelfTestTrigger): Promise<SelfTestOutcome> {
    if (this.running === undefined) return this.start(trigger);
    // The one under way may have looked at the device before whatever asked for
    // this one: run once more after it, one run shared by everyone who asks meanwhile.
    this.rerun ??= this.running.then(() => {
      this.rerun = undefined;
      return this.start(trigger);
    });
    return this.rerun;
  }

  private start(trigger: SelfTestTrigger): Promise<SelfTestOutcome> {
    const running = performSelfTest(this.factory, trigger).then((outcome) => {
      this.record(outcome);
      return outcome;
    });
    this.running = running.finally(() => (this.running = undefined));
    return running;
  }

  private record(outcome: SelfTestOutcome): void {
    const previous = this.lastOutcome;
    this.lastOutcome = outcome;
    this.metrics.selfTestFinished(outcome.passed, outcome.finishedAt);

    const fields = {
      event: 'selftest',
      passed: outcome.passed,
      trigger: outcome.trigger,
      durationMs: Math.round(outcome.durationSeconds * 1e6) / 1e3,
    };
    if (outcome.passed) {
      const level = previous === undefined || !previous.passed ? 'info' : 'debug';
      const message = previous && !previous.passed ? 'self-test passed again: the device serves contexts in RLIMIT mode' : 'self-test passed';
      this.log[level](fields, message);
      return;
    }
    const failure = { ...fields, code: errorCodeName(outcome.code), errno: outcome.errnoName || undefined, syscall: outcome.syscall || undefined };
    // An unchanged failure on every interval would bury everything else in the log.
    const repeated = previous !== undefined && !previous.passed && sameFailure(previous, outcome);
    this.log[repeated ? 'debug' : 'error'](failure, `self-test failed: ${failureSummary(outcome)}`);
  }
}

function sameFailure(a: SelfTestOutcome, b: SelfTestOutcome): boolean {
  return a.code === b.code && a.errnoName === b.errnoName && a.syscall === b.syscall && a.reason === b.reason;
}
