import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { repoRoot } from './paths';

/** The chart under test, and the `helm template` stand-in (../shared/tools/helm-render, next to the repository). */
export const chartDir = join(repoRoot, 'helm', 'iommufd-device-plugin');
export const helmRender = resolve(repoRoot, '..', 'shared', 'tools', 'helm-render', 'helm-render');

/** A rendered Kubernetes object; tests reach into it freely. */
export type Manifest = Record<string, any>;

export interface RenderOptions {
  /** `--set` expressions, as on the helm command line. */
  set?: string[];
  /** A values file's content (passed with -f). */
  values?: Record<string, unknown>;
  name?: string;
  namespace?: string;
  /** Render another copy of the chart. */
  chart?: string;
}

export interface RenderResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs helm-render; the first call may build it (and apt-get its Go packages), so the timeout is generous. */
export function runHelmRender(options: RenderOptions = {}): RenderResult {
  const args = ['--name', options.name ?? 'iommufd', '--namespace', options.namespace ?? 'kubevirt'];
  for (const expr of options.set ?? []) args.push('--set', expr);
  let scratch: string | undefined;
  try {
    if (options.values) {
      scratch = mkdtempSync(join(tmpdir(), 'helm-values-'));
      const file = join(scratch, 'values.json'); // JSON is YAML
      writeFileSync(file, JSON.stringify(options.values));
      args.push('-f', file);
    }
    args.push(options.chart ?? chartDir);
    const run = spawnSync(helmRender, args, { encoding: 'utf8', timeout: 600_000 });
    if (run.error) throw new Error(`cannot run ${helmRender}: ${run.error.message}`);
    return { status: run.status, stdout: run.stdout, stderr: run.stderr };
  } finally {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  }
}

/** Renders the chart and parses every document; a failed render throws with helm-render's message. */
export function renderChart(options: RenderOptions = {}): Manifest[] {
  const run = runHelmRender(options);
  if (run.status !== 0) throw new Error(`helm-render failed (${run.status}): ${run.stderr}${run.stdout}`);
  const manifests: Manifest[] = [];
  for (const doc of parseAllDocuments(run.stdout)) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML does not parse: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as Manifest | null;
    if (value !== null) manifests.push(value);
  }
  return manifests;
}

export function ofKind(manifests: Manifest[], kind: string): Manifest[] {
  return manifests.filter((m) => m.kind === kind);
}

export function onlyOfKind(manifests: Manifest[], kind: string): Manifest {
  const found = ofKind(manifests, kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, found ${found.length} (kinds: ${manifests.map((m) => m.kind).join(', ')})`);
  return found[0]!;
}

/** A rendered pod's pieces, found by name. */
export class RenderedPod {
  readonly daemonSet: Manifest;
  readonly spec: Manifest;

  constructor(readonly manifests: Manifest[]) {
    this.daemonSet = onlyOfKind(manifests, 'DaemonSet');
    this.spec = this.daemonSet.spec.template.spec;
  }

  static render(options: RenderOptions = {}): RenderedPod {
    return new RenderedPod(renderChart(options));
  }

  container(name: string): Manifest {
    const found = [...(this.spec.initContainers ?? []), ...this.spec.containers].find((c: Manifest) => c.name === name);
    if (!found) throw new Error(`no container ${name}`);
    return found;
  }

  hasContainer(name: string): boolean {
    return [...(this.spec.initContainers ?? []), ...this.spec.containers].some((c: Manifest) => c.name === name);
  }

  volume(name: string): Manifest {
    const found = (this.spec.volumes as Manifest[]).find((v) => v.name === name);
    if (!found) throw new Error(`no volume ${name}`);
    return found;
  }

  /** The volume mounted at `path` in a container, with the mount. */
  mountAt(container: string, path: string): { mount: Manifest; volume: Manifest } {
    const mount = (this.container(container).volumeMounts as Manifest[]).find((m) => m.mountPath === path);
    if (!mount) throw new Error(`${container} mounts nothing at ${path}`);
    return { mount, volume: this.volume(mount.name) };
  }

  /** The value of `--flag=value` in a container's args (the last one, as the services read them), or undefined. */
  flag(container: string, flag: string): string | undefined {
    const prefix = `--${flag}=`;
    const args = (this.container(container).args ?? []) as string[];
    const hits = args.filter((a) => a.startsWith(prefix));
    return hits.length === 0 ? undefined : hits[hits.length - 1]!.slice(prefix.length);
  }

  /** A container's environment variable (the last of a repeated name, as the kubelet does), or undefined. */
  env(container: string, name: string): string | undefined {
    const hits = ((this.container(container).env ?? []) as Manifest[]).filter((e) => e.name === name);
    return hits.length === 0 ? undefined : (hits[hits.length - 1]!.value as string | undefined);
  }

  /**
   * A service setting as the service reads it: its flag, else its environment
   * variable (FD_BROKER_* for fd-broker, KUBELET_BRIDGE_* for kubelet-bridge).
   */
  setting(container: 'fd-broker' | 'kubelet-bridge', flag: string): string | undefined {
    const prefix = container === 'fd-broker' ? 'FD_BROKER_' : 'KUBELET_BRIDGE_';
    return this.flag(container, flag) ?? this.env(container, prefix + flag.toUpperCase().replace(/-/g, '_'));
  }
}
