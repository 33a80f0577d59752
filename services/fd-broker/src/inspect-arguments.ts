import { resolve } from 'node:path';
import { ConfigError, parseInteger } from '@iommufd-plugin/common';

export interface InspectArguments {
  /** A handoff socket (as virt-launcher sees it) or the broker's control socket. */
  source: { kind: 'handoff' | 'broker'; path: string };
  timeoutMs: number;
  /** Send the optional one-byte ACK after receiving, as some launchers do (handoff only). */
  ack: boolean;
}

export const inspectUsage = `Usage: fd-broker inspect (--handoff PATH | --broker PATH) [--timeout-ms MS] [--ack]

Connects to a socket, takes what it hands out, and prints a JSON report: whether
an fd came, what it points to, its file type, and its IOMMUFD RLIMIT mode. The
fd is closed afterwards. Exit 0 when an fd in RLIMIT mode arrived, 1 otherwise.

  --handoff PATH    a handoff socket: read one byte and an fd, as virt-launcher does
  --broker PATH     the fd-broker's control socket: ask for a context (open_context)
  --timeout-ms MS   longest wait for the connection and the reply (default 10000)
  --ack             after receiving from a handoff socket, send the optional ACK byte`;

/**
 * Parses `fd-broker inspect`'s own arguments; they are not server settings,
 * so they have no environment variables and stay out of the option table.
 * Returns 'help' for --help.
 */
export function parseInspectArguments(argv: readonly string[]): InspectArguments | 'help' {
  let source: InspectArguments['source'] | undefined;
  let timeoutMs = 10_000;
  let ack = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const value = (): string => {
      const next = argv[++i];
      if (next === undefined) throw new ConfigError(`${arg} needs a value`);
      return next;
    };
    const checked = <T>(parse: (text: string) => T): T => {
      const text = value();
      try {
        return parse(text);
      } catch (err) {
        throw new ConfigError(`${arg}=${JSON.stringify(text)}: ${(err as Error).message}`);
      }
    };
    switch (arg) {
      case '--help':
      case '-h':
        return 'help';
      case '--handoff':
      case '--broker':
        if (source) throw new ConfigError('give one of --handoff or --broker, not both');
        source = { kind: arg === '--handoff' ? 'handoff' : 'broker', path: checked(parseSocketPath) };
        break;
      case '--timeout-ms':
        timeoutMs = checked(parseInteger(1, 600_000));
        break;
      case '--ack':
        ack = true;
        break;
      default:
        throw new ConfigError(`inspect: unexpected argument ${arg} (see fd-broker inspect --help)`);
    }
  }
  if (!source) throw new ConfigError('inspect needs --handoff PATH or --broker PATH');
  return { source, timeoutMs, ack };
}

function parseSocketPath(text: string): string {
  if (text === '') throw new Error('expected a socket path');
  return resolve(text);
}
