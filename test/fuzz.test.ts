/**
 * The fuzzers' short run (scripts/fuzz; longer with --seconds or --long):
 * a fixed seed, so that a failure here reproduces with the command it
 * prints. Each target must run, find nothing, and end holding no more fds
 * than it started with; its summary is printed with the test's output.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { repoRoot } from './support/paths';
import { type CommandResult, runCommand } from './support/run-command';

const seed = process.env.FUZZ_SEED ?? '20261204';
const secondsPerTarget = 12;

function summaryOf(stdout: string, target: string): Record<string, string> {
  const line = stdout.split('\n').find((l) => l.startsWith(`fuzz ${target}: `));
  assert.ok(line, `no summary for the ${target} target:\n${stdout}`);
  return Object.fromEntries([...line.matchAll(/([A-Za-z_-]+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
}

function runFuzz(args: string[]): Promise<CommandResult> {
  return runCommand(process.execPath, [join(repoRoot, 'test', 'dist', 'fuzz', 'run-fuzz.js'), '--seed', seed, ...args], process.env, 170_000);
}

it(`fuzzes the broker protocol and the handoff path (seed ${seed}, ${secondsPerTarget} s each): no crash, no leak, a clear error each time`, { timeout: 180_000 }, async (t) => {
  const { code, stdout, stderr } = await runFuzz(['--seconds', String(secondsPerTarget)]);
  for (const line of stdout.trim().split('\n')) t.diagnostic(line);
  assert.equal(code, 0, `the fuzzers found a problem:\n${stdout}\n${stderr}`);
  assert.match(stdout, new RegExp(`^fuzz: PASSED seed=${seed}$`, 'm'));

  const brokerRun = summaryOf(stdout, 'broker');
  assert.ok(Number(brokerRun.iterations) > 10, `the broker fuzzer ran ${brokerRun.iterations} iterations`);
  assert.ok(Number(brokerRun.contexts) > 0, 'well-formed requests among the fuzz got contexts');
  assert.ok(Number(brokerRun['BAD_REQUEST']) > 0, 'malformed requests got BAD_REQUEST replies');
  assert.match(stdout, /broker fds start=(\d+) end=\1 /, 'the broker ends with the fds it started with');

  const handoffRun = summaryOf(stdout, 'handoff');
  assert.ok(Number(handoffRun.iterations) > 10, `the handoff fuzzer ran ${handoffRun.iterations} iterations`);
  assert.ok(Number(handoffRun['well-behaved-launchers-ok']) > 10, 'well-behaved launchers were served between hostile ones');
  assert.match(stdout, /bridge fds start=(\d+) end=\1 /, 'the bridge ends with the fds it started with');
  assert.match(stdout, /handoff sockets left=0 /);
});

it(`fuzzes the handoff path with --handoff-mode per-connection (seed ${seed}, 8 s)`, { timeout: 120_000 }, async (t) => {
  const { code, stdout, stderr } = await runFuzz(['--target', 'handoff', '--handoff-mode', 'per-connection', '--seconds', '8']);
  for (const line of stdout.trim().split('\n')) t.diagnostic(line);
  assert.equal(code, 0, `the fuzzer found a problem:\n${stdout}\n${stderr}`);
  const run = summaryOf(stdout, 'handoff');
  assert.equal(run.mode, 'per-connection');
  assert.ok(Number(run.iterations) > 5, `the handoff fuzzer ran ${run.iterations} iterations`);
  assert.match(stdout, /bridge fds start=(\d+) end=\1 /, 'the bridge ends with the fds it started with');
  assert.match(stdout, /handoff sockets left=0 /, 'the sockets of deleted pods are reclaimed');
});
