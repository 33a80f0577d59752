/**
 * Command-line options with environment-variable equivalents, declared once
 * as a table so that parsing, validation and --help cannot drift apart.
 * Precedence: flag, then environment variable, then default.
 */

export interface OptionSpec<T> {
  /** Long flag without dashes, e.g. "socket" for --socket. */
  flag: string;
  /** Environment variable read when the flag is absent. */
  env: string;
  /** Shown in --help after the flag, e.g. "PATH". */
  valueName: string;
  description: string;
  /** The default as text, parsed like user input; undefined means required. */
  default: string | undefined;
  /** Turns text into a value, or throws an Error whose message says what is wrong. */
  parse: (text: string) => T;
}

export type OptionTable = Record<string, OptionSpec<unknown>>;
export type OptionValues<Table extends OptionTable> = {
  [K in keyof Table]: Table[K] extends OptionSpec<infer T> ? T : never;
};

/** A configuration problem; main() prints it and exits 2, like other CLI tools do for usage errors. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export type ParseOutcome<Table extends OptionTable> =
  | { kind: 'run'; options: OptionValues<Table>; positionals: string[] }
  | { kind: 'help' }
  | { kind: 'version' };

export function parseCommandLine<Table extends OptionTable>(
  table: Table,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): ParseOutcome<Table> {
  const byFlag = new Map(Object.entries(table).map(([key, spec]) => [spec.flag, key]));
  const fromFlags = new Map<string, string>();
  const positionals: string[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '--help' || arg === '-h') return { kind: 'help' };
    if (arg === '--version') return { kind: 'version' };
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = arg.slice(2, eq < 0 ? undefined : eq);
    const key = byFlag.get(flag);
    if (key === undefined) throw new ConfigError(`unknown flag --${flag} (see --help)`);
    let value: string | undefined;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      value = argv[i + 1];
      if (value === undefined) throw new ConfigError(`--${flag} needs a value`);
      i++;
    }
    fromFlags.set(key, value);
  }

  const options: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(table)) {
    const flagValue = fromFlags.get(key);
    const envValue = env[spec.env];
    const [text, source] =
      flagValue !== undefined
        ? [flagValue, `--${spec.flag}`]
        : // A variable set to the empty string means the empty value (e.g. no SELinux label), not "unset".
          envValue !== undefined
          ? [envValue, spec.env]
          : [spec.default, 'default'];
    if (text === undefined) throw new ConfigError(`--${spec.flag} (or ${spec.env}) is required`);
    try {
      options[key] = spec.parse(text);
    } catch (err) {
      throw new ConfigError(`${source}=${JSON.stringify(text)}: ${(err as Error).message}`);
    }
  }
  return { kind: 'run', options: options as OptionValues<Table>, positionals };
}

/** The --help text: usage line, then one block per option with its variable and default. */
export function helpText(usage: string, summary: string, table: OptionTable): string {
  const lines = [`Usage: ${usage}`, '', summary, '', 'Options (each flag also reads the environment variable shown):', ''];
  for (const spec of Object.values(table)) {
    lines.push(`  --${spec.flag} ${spec.valueName}`);
    lines.push(`      ${spec.description}`);
    const shownDefault = spec.default === undefined ? 'required' : spec.default === '' ? '(empty)' : spec.default;
    lines.push(`      env ${spec.env}; default: ${shownDefault}`);
    lines.push('');
  }
  lines.push('  --help      print this text');
  lines.push('  --version   print the version');
  return lines.join('\n');
}

// Parsers for the value kinds both services use.

export function parseInteger(min: number, max: number): (text: string) => number {
  return (text) => {
    if (!/^\d+$/.test(text)) throw new Error('expected a whole number');
    const value = Number(text);
    if (value < min || value > max) throw new Error(`expected a number from ${min} to ${max}`);
    return value;
  };
}

export function parseFileMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text)) throw new Error('expected an octal file mode such as 0600');
  return parseInt(text, 8);
}

export function parseAbsolutePath(text: string): string {
  if (!text.startsWith('/')) throw new Error('expected an absolute path');
  return text;
}

export function parseChoice<const C extends string>(choices: readonly C[]): (text: string) => C {
  return (text) => {
    if (!(choices as readonly string[]).includes(text)) throw new Error(`expected one of: ${choices.join(', ')}`);
    return text as C;
  };
}

export function parseUidList(text: string): number[] {
  const parts = text.split(',').map((p) => p.trim()).filter((p) => p !== '');
  if (parts.length === 0) throw new Error('expected one or more numeric uids, comma-separated');
  return parts.map((p) => parseInteger(0, 0xfffffffe)(p));
}

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof logLevels)[number];
export const parseLogLevel = parseChoice(logLevels);

export function parseBoolean(text: string): boolean {
  if (text === 'true') return true;
  if (text === 'false') return false;
  throw new Error('expected true or false');
}

export function parseFileName(text: string): string {
  if (text === '' || text.includes('/') || text === '.' || text === '..') throw new Error('expected a plain file name, without /');
  return text;
}
