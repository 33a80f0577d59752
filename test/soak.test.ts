/**
 * The soak's short run, as part of CI: about 24 s of pods, launchers of every
 * kind and restarts of the kubelet, the broker and the bridge, with a fixed
 * seed. It must pass, every kind of event must have happened, and its
 * figures are printed so that they show in the CI output.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { repoRoot } from './support/paths';
import { type CommandResult, runCommand } from './support/run-command';

const seed = 20240601;
/** Restarts come in the first three quarters: 18 s leave room for at least one of each kind. */
const seconds = 24;

function runSoak(): Promise<CommandResult> {
  return runCommand(process.execPath, [join(repoRoot, 'test', 'dist', 'soak', 'run-soak.js'), '--seconds', String(seconds), '--seed', String(seed)], process.env, 110_000);
}

/** The numbers a summary line shows, by name: "ok=12/12 retried=3" → {ok: 12, retried: 3}. */
function figuresOf(stdout: string, linePrefix: string): Record<string, number> {
  const line = stdout.split('\n').find((l) => l.startsWith(linePrefix));
  assert.ok(line, `the report has no line starting "${linePrefix}":\n${stdout}`);
  return Object.fromEntries([...line.matchAll(/([a-z-]+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

it(`the soak passes a ${seconds} s run with every kind of launcher and restart, and prints its figures`, { timeout: 120_000 }, async (t) => {
  const { code, stdout, stderr } = await runSoak();
  // The figures belong in the CI output whatever happens.
  for (const line of stdout.trimEnd().split('\n')) t.diagnostic(line);
  assert.equal(code, 0, `the soak failed (exit ${code}):\n${stdout}\n${stderr}`);
  assert.match(stdout, new RegExp(`^soak: PASSED seed=${seed}$`, 'm'));

  const line = stdout.split('\n').find((l) => l.startsWith('soak: well-behaved launchers:'));
  const wellBehaved = /ok=(\d+)\/(\d+)/.exec(line ?? '');
  assert.ok(wellBehaved, `no well-behaved launcher line:\n${stdout}`);
  const [ok, total] = [Number(wellBehaved[1]), Number(wellBehaved[2])];
  assert.ok(total > 0, 'well-behaved launchers ran');
  assert.equal(ok, total, 'every well-behaved launcher got a correct fd');

  const pods = figuresOf(stdout, 'soak: pods:');
  for (const kind of ['prompt', 'late', 'silent', 'vanishing']) assert.ok((pods[kind] ?? 0) >= 1, `no ${kind} launcher ran: ${JSON.stringify(pods)}`);
  const restarts = figuresOf(stdout, 'soak: restarts:');
  for (const kind of ['kubelet', 'broker', 'bridge']) assert.ok((restarts[kind] ?? 0) >= 1, `no ${kind} restart happened: ${JSON.stringify(restarts)}`);

  for (const service of ['broker', 'bridge']) assert.match(stdout, new RegExp(`^soak: ${service}: fds baseline=\\d+ peak=\\d+ end=\\d+ \\| RSS MiB`, 'm'));
  assert.match(stdout, /^soak: handoff sockets: baseline=0 peak=\d+ end=0 \| other files left: none$/m);
});
