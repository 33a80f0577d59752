/** Counts by name, printed as `a=1 b=2` in name order: the fuzz and soak summaries. */
export class Tally {
  private readonly counts = new Map<string, number>();

  add(name: string, by = 1): void {
    this.counts.set(name, (this.counts.get(name) ?? 0) + by);
  }

  get(name: string): number {
    return this.counts.get(name) ?? 0;
  }

  toString(): string {
    if (this.counts.size === 0) return '(none)';
    return [...this.counts].sort(([a], [b]) => a.localeCompare(b)).map(([name, count]) => `${name}=${count}`).join(' ');
  }
}
