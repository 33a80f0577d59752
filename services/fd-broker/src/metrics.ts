import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The kinds of request the broker counts; "invalid" is anything it could not take as one of the others. */
export type RequestType = 'open_context' | 'status' | 'invalid';
export type RequestResult = 'ok' | 'error';

/**
 * The broker's Prometheus metrics, in a registry of its own so that nothing
 * else in the process can add to or clash with them. The names are a contract
 * with dashboards and alerts (and the Helm chart's docs): do not rename.
 */
export class BrokerMetrics {
  readonly registry = new Registry();
  private readonly opens: Counter<'result' | 'errno'>;
  private readonly openDuration: Histogram;
  private readonly requests: Counter<'type' | 'result'>;
  private readonly peersRefused: Counter;
  private readonly selfTestRuns: Counter<'result'>;
  private readonly selfTestPassed: Gauge;
  private readonly selfTestLastRun: Gauge;

  /** `devicePresent` is asked at each scrape, so the gauge is never stale. */
  constructor(devicePresent: () => boolean) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.opens = new Counter({
      name: 'iommufd_broker_context_opens_total',
      help: 'open_context requests by result, and by errno name when they failed ("none": no errno)',
      labelNames: ['result', 'errno'],
      registers,
    });
    this.openDuration = new Histogram({
      name: 'iommufd_broker_context_open_duration_seconds',
      help: 'Time from an open_context request being decoded to its fd being ready (open, SET, GET), successful opens only',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.requests = new Counter({
      name: 'iommufd_broker_requests_total',
      help: 'Requests answered, by type (open_context, status, invalid) and result',
      labelNames: ['type', 'result'],
      registers,
    });
    this.peersRefused = new Counter({
      name: 'iommufd_broker_peers_refused_total',
      help: 'Connections refused because the peer uid is not in --allowed-uids',
      registers,
    });
    this.selfTestRuns = new Counter({
      name: 'iommufd_broker_selftest_runs_total',
      help: 'Self-tests (open, SET, GET, close) by result',
      labelNames: ['result'],
      registers,
    });
    this.selfTestPassed = new Gauge({
      name: 'iommufd_broker_selftest_passed',
      help: '1 when the last self-test passed, 0 when it failed or none has finished yet',
      registers,
    });
    this.selfTestLastRun = new Gauge({
      name: 'iommufd_broker_selftest_last_run_timestamp_seconds',
      help: 'When the last self-test finished, in seconds since the Unix epoch; 0 before the first',
      registers,
    });
    new Gauge({
      name: 'iommufd_broker_device_present',
      help: '1 when the IOMMUFD device path exists, else 0',
      registers,
      collect() {
        this.set(devicePresent() ? 1 : 0);
      },
    });

    // Series that exist from the start, so that rate() and alerts see a 0 and not nothing.
    this.opens.inc({ result: 'ok', errno: 'none' }, 0);
    this.requests.inc({ type: 'open_context', result: 'ok' }, 0);
    this.requests.inc({ type: 'open_context', result: 'error' }, 0);
    this.requests.inc({ type: 'status', result: 'ok' }, 0);
    this.requests.inc({ type: 'invalid', result: 'error' }, 0);
    this.selfTestRuns.inc({ result: 'passed' }, 0);
    this.selfTestRuns.inc({ result: 'failed' }, 0);
    this.selfTestPassed.set(0);
    this.selfTestLastRun.set(0);
  }

  contextOpened(seconds: number): void {
    this.opens.inc({ result: 'ok', errno: 'none' });
    this.openDuration.observe(seconds);
  }

  contextOpenFailed(errnoName: string): void {
    this.opens.inc({ result: 'error', errno: errnoName === '' ? 'none' : errnoName });
  }

  requestAnswered(type: RequestType, result: RequestResult): void {
    this.requests.inc({ type, result });
  }

  peerRefused(): void {
    this.peersRefused.inc();
  }

  selfTestFinished(passed: boolean, finishedAt: Date): void {
    this.selfTestRuns.inc({ result: passed ? 'passed' : 'failed' });
    this.selfTestPassed.set(passed ? 1 : 0);
    this.selfTestLastRun.set(finishedAt.getTime() / 1000);
  }
}
