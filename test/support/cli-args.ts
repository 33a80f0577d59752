/** A tiny parser for the fuzz and soak scripts: `--name value` and `--flag`, nothing else. */
export class CliArgs {
  private readonly values = new Map<string, string>();
  private readonly flags = new Set<string>();

  constructor(argv: readonly string[], valued: readonly string[], switches: readonly string[]) {
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i]!;
      const name = arg.replace(/^--/, '').split('=')[0]!;
      const inline = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : undefined;
      if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
      if (switches.includes(name)) {
        this.flags.add(name);
      } else if (valued.includes(name)) {
        const value = inline ?? argv[++i];
        if (value === undefined) throw new Error(`--${name} needs a value`);
        this.values.set(name, value);
      } else {
        throw new Error(`unknown option --${name}`);
      }
    }
  }

  flag(name: string): boolean {
    return this.flags.has(name);
  }

  string(name: string): string | undefined {
    return this.values.get(name);
  }

  number(name: string, min = 0): number | undefined {
    const text = this.values.get(name);
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isFinite(value) || value < min) throw new Error(`--${name}=${text}: expected a number ≥ ${min}`);
    return value;
  }
}
