/** The benchmark's printed report: Markdown tables, so that they paste into docs/BENCHMARKS.md as they are. */

export interface Row {
  key: string;
  label: string;
  unit: 'ms' | 'MB' | '/s';
  /** One or two figures (e.g. p50 and p99). */
  ours: number[];
  /** The C reference's counterparts, where it has any. */
  c?: number[];
  /** ours / C, figure by figure. */
  ratio?: number[];
  /** Samples (or rounds, or restarts) behind the figure. */
  n?: number;
}

export interface ScalingFigures {
  p50: number;
  p99: number;
  /** Worst round: release → the last fd in hand. */
  allServed: number;
  perSecond: number;
}

export interface ScalingRow {
  key: string;
  launchers: number;
  rounds: number;
  ours: ScalingFigures;
  c: ScalingFigures;
  ratio: { p50: number; p99: number; allServed: number };
}

export interface Target {
  key: string;
  text: string;
  figure: string;
  met: boolean;
}

/** Three significant digits, without exponents. */
export function num(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

const figures = (values: number[], unit: string): string => `${values.map(num).join(' / ')} ${unit}`;
const times = (values: number[]): string => values.map((v) => `${num(v)}×`).join(' / ');

function table(header: string[], body: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...body.map(line)].join('\n');
}

export function formatReport(rows: Row[], scaling: ScalingRow[], targets: Target[], growthNote: string): string {
  const main = table(
    ['figure', 'ours', 'C reference', 'ours / C', 'n'],
    rows.map((r) => [r.label, figures(r.ours, r.unit), r.c ? figures(r.c, r.unit) : '—', r.ratio ? times(r.ratio) : '—', r.n === undefined ? '' : String(r.n)]),
  );
  const growth = table(
    ['launchers at once', 'rounds', 'ours p50 / p99', 'ours all served', 'ours handoffs/s', 'C p50 / p99', 'C all served', 'C handoffs/s', 'ours / C: p50 / p99 / all served'],
    scaling.map((s) => [
      String(s.launchers),
      String(s.rounds),
      `${num(s.ours.p50)} / ${num(s.ours.p99)} ms`,
      `${num(s.ours.allServed)} ms`,
      num(s.ours.perSecond),
      `${num(s.c.p50)} / ${num(s.c.p99)} ms`,
      `${num(s.c.allServed)} ms`,
      num(s.c.perSecond),
      times([s.ratio.p50, s.ratio.p99, s.ratio.allServed]),
    ]),
  );
  const goals = targets.map((t) => `- ${t.met ? 'met   ' : 'MISSED'} ${t.text}: ${t.figure}`).join('\n');
  return [main, '', `How cost grows (all served: the worst round, release → last fd in hand; ${growthNote}):`, '', growth, '', 'Targets:', goals].join('\n');
}
