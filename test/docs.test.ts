/** Documentation that is generated from code must match the code. */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './support/paths';

it('docs/CONFIGURATION.md lists every setting as the services declare it (regenerate with `pnpm docs:config`)', () => {
  const generated = execFileSync(process.execPath, [join(repoRoot, 'scripts', 'config-docs.js')], { encoding: 'utf8' });
  const committed = readFileSync(join(repoRoot, 'docs', 'CONFIGURATION.md'), 'utf8');
  assert.equal(committed, generated);
  for (const flag of ['--socket PATH', '--allowed-uids', '--kubelet-dir', '--handoff-mode', 'FD_BROKER_DEVICE', 'KUBELET_BRIDGE_RESOURCE_NAME']) {
    assert.ok(committed.includes(flag), flag);
  }
});
