import pino, { type Logger } from 'pino';
import type { LogLevel } from './command-line';

export type { Logger } from 'pino';

/**
 * JSON logs on stdout, one object per line. Every line carries `service`;
 * events carry a stable `event` name so that logs can be queried by it.
 */
export function createLogger(service: string, level: LogLevel): Logger {
  return pino({
    level,
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
