/**
 * The benchmark keeps working: a short run (--quick) must finish, print its
 * whole table and write every figure. How fast anything was is not judged
 * here; docs/BENCHMARKS.md has the figures of a full run.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import type { Row, ScalingRow, Target } from './bench/report';
import { repoRoot } from './support/paths';
import { runCommand } from './support/run-command';
import { scratchDir } from './support/scratch-dir';

interface BenchmarkJson {
  machine: { cpuModel: string; cores: number };
  rows: Row[];
  growth: ScalingRow[];
  targets: Target[];
}

const rowKeys = [
  'allocate',
  'handoff_one',
  'handoff_110',
  'served_110',
  'rate_110',
  'start_registered',
  'start_serving',
  'start_broker',
  'cpu_one',
  'cpu_110',
  'rss_idle_broker',
  'rss_idle_bridge',
  'rss_load_broker',
  'rss_load_bridge',
];
/** Rows that must stand next to the C reference. */
const comparedKeys = ['handoff_one', 'handoff_110', 'served_110', 'rate_110', 'start_broker', 'cpu_one', 'cpu_110', 'rss_idle_broker', 'rss_idle_bridge'];

function assertFigure(value: unknown, what: string): void {
  assert.ok(typeof value === 'number' && Number.isFinite(value) && value > 0, `${what} is ${String(value)}, not a positive finite number`);
}

it('the benchmark runs (--quick) and prints every figure, each against the C reference where there is one', { timeout: 240_000 }, async () => {
  const scratch = scratchDir('iommufd-bench-test');
  try {
    const jsonFile = join(scratch.path, 'bench.json');
    const benchmark = join(repoRoot, 'test', 'dist', 'bench', 'run-benchmark.js');
    const { code, stdout, stderr } = await runCommand(process.execPath, [benchmark, '--quick', '--json', jsonFile], process.env, 230_000);
    assert.equal(code, 0, `the benchmark failed:\n${stdout}\n${stderr}`);
    assert.match(stdout, /^machine: .+, \d+ cores, .+ GiB, Linux .+, Node v\d+/m);

    const result = JSON.parse(readFileSync(jsonFile, 'utf8')) as BenchmarkJson;
    assert.deepEqual(result.rows.map((r) => r.key), rowKeys);
    for (const row of result.rows) {
      assert.ok(stdout.includes(`| ${row.label} |`), `the table has no row "${row.label}"`);
      row.ours.forEach((v, i) => assertFigure(v, `${row.key} ours[${i}]`));
      if (comparedKeys.includes(row.key)) assert.ok(row.c && row.ratio, `${row.key} has no C figure or ratio`);
      row.c?.forEach((v, i) => assertFigure(v, `${row.key} c[${i}]`));
      assert.equal(row.ratio?.length, row.c?.length, `${row.key}: one ratio per C figure`);
      row.ratio?.forEach((v, i) => assertFigure(v, `${row.key} ratio[${i}]`));
    }

    assert.deepEqual(result.growth.map((g) => g.launchers), [1, 10, 110, 500]);
    for (const g of result.growth) {
      assert.match(stdout, new RegExp(`^\\| ${g.launchers} \\| `, 'm'), `the growth table has no row for ${g.launchers}`);
      for (const side of ['ours', 'c', 'ratio'] as const) {
        for (const [name, value] of Object.entries(g[side])) assertFigure(value, `growth ${g.launchers} ${side}.${name}`);
      }
    }

    assert.deepEqual(result.targets.map((t) => t.key), ['handoff_p99', 'served_110', 'rss_idle', 'start_registered']);
    for (const t of result.targets) {
      assert.equal(typeof t.met, 'boolean');
      assert.ok(stdout.includes(`${t.text}: ${t.figure}`), `the target "${t.text}" is not printed with its figure`);
    }
  } finally {
    scratch.cleanup();
  }
});
