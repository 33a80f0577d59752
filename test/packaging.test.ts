/**
 * Packaging: the Dockerfiles, the production install they rely on (made
 * here exactly as they make it, with `pnpm deploy`), and docker-compose.yml.
 * No container engine runs here, so the deployed folders are started
 * directly, and the compose services are run as plain processes with their
 * volumes mapped to directories (see ComposeRun).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Script } from 'node:vm';
import { parse as parseYaml } from 'yaml';
import { type Manifest, RenderedPod } from './support/helm';
import { repoRoot } from './support/paths';
import { scratchDir } from './support/scratch-dir';
import { ServiceProcess } from './support/service-process';

const runningAsRoot = process.geteuid?.() === 0;
const rootPackage = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { packageManager: string };
const pnpmVersion = rootPackage.packageManager.replace(/^pnpm@/, '');
const chartValues = parseYaml(readFileSync(join(repoRoot, 'helm', 'iommufd-device-plugin', 'values.yaml'), 'utf8')) as {
  kubeletBridge: { runAsUser: number; runAsGroup: number };
};

interface ServiceSpec {
  name: 'fd-broker' | 'kubelet-bridge';
  packageName: string;
  dir: string;
  dockerfile: string;
  user: string;
  /** The container in the chart's pod. */
  container: string;
}

const services: ServiceSpec[] = [
  {
    name: 'fd-broker',
    packageName: '@iommufd-plugin/fd-broker',
    dir: join(repoRoot, 'services', 'fd-broker'),
    dockerfile: join(repoRoot, 'services', 'fd-broker', 'Dockerfile'),
    user: '0:0',
    container: 'fd-broker',
  },
  {
    name: 'kubelet-bridge',
    packageName: '@iommufd-plugin/kubelet-bridge',
    dir: join(repoRoot, 'services', 'kubelet-bridge'),
    dockerfile: join(repoRoot, 'services', 'kubelet-bridge', 'Dockerfile'),
    user: `${chartValues.kubeletBridge.runAsUser}:${chartValues.kubeletBridge.runAsGroup}`,
    container: 'kubelet-bridge',
  },
];

// ---------------------------------------------------------------- Dockerfiles

interface Instruction {
  op: string;
  args: string;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Parses a Dockerfile into stages (line continuations joined, comments dropped, global ARGs substituted into FROM). */
function parseDockerfile(path: string): Stage[] {
  const logical: string[] = [];
  let pending = '';
  for (const raw of readFileSync(path, 'utf8').split('\n')) {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.startsWith('#')) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    logical.push(pending + line);
    pending = '';
  }
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of logical) {
    const [op, ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    const upper = op!.toUpperCase();
    if (upper === 'FROM') {
      const match = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(match, `bad FROM in ${path}: ${line}`);
      const from = match[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => globalArgs.get(a ?? b) ?? '');
      stages.push({ from, name: match[2], instructions: [] });
    } else if (stages.length === 0) {
      assert.equal(upper, 'ARG', `only ARG may come before the first FROM (${path})`);
      const [key, value] = args.split('=');
      globalArgs.set(key!, value ?? '');
    } else {
      stages[stages.length - 1]!.instructions.push({ op: upper, args });
    }
  }
  return stages;
}

function runCommands(stage: Stage): string[] {
  return stage.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
}

/**
 * The Dockerfile's `pnpm deploy` command as argv, its output directory, and
 * the shell commands that follow it in the build stage (they tidy the output).
 */
function deployCommand(stage: Stage): { argv: string[]; out: string; after: string[] } {
  const runs = runCommands(stage);
  const index = runs.findIndex((r) => r.startsWith('pnpm deploy '));
  assert.ok(index >= 0, 'the build stage runs pnpm deploy');
  const run = runs[index]!;
  assert.doesNotMatch(run, /[&|;<>$`]/, 'the deploy step is one plain command');
  const argv = run.split(/\s+/);
  return { argv, out: argv[argv.length - 1]!, after: runs.slice(index + 1) };
}

function finalStage(stages: Stage[]): Stage {
  return stages[stages.length - 1]!;
}

/** Where the final stage puts the deployed service (COPY --from=build /out <dir>). */
function installDir(stages: Stage[]): string {
  const copy = finalStage(stages).instructions.find((i) => i.op === 'COPY');
  const match = /^--from=(\S+)\s+(\S+)\s+(\S+)$/.exec(copy?.args ?? '');
  assert.ok(match, `the final stage copies the deployed service from the build stage: ${copy?.args}`);
  return match[3]!;
}

function labels(stage: Stage): Map<string, string> {
  const out = new Map<string, string>();
  for (const instruction of stage.instructions.filter((i) => i.op === 'LABEL')) {
    for (const match of instruction.args.matchAll(/([\w.-]+)="([^"]*)"/g)) out.set(match[1]!, match[2]!);
  }
  return out;
}

describe('images: the Dockerfiles', () => {
  for (const service of services) {
    describe(service.name, () => {
      const stages = parseDockerfile(service.dockerfile);
      const build = stages.find((s) => s.name === 'build');

      it('builds on node:20-bookworm-slim: compilers, pinned pnpm, frozen lockfile, the whole build, then a production deploy', () => {
        assert.ok(stages.length >= 2, 'multi-stage');
        assert.ok(build, 'a stage named build');
        assert.equal(build.from, 'node:20-bookworm-slim');
        const runs = runCommands(build).join('\n');
        assert.match(runs, /apt-get install -y --no-install-recommends [^\n]*\bgcc\b/);
        assert.match(runs, /apt-get install -y --no-install-recommends [^\n]*\bmake\b/);
        assert.match(runs, new RegExp(`npm install --global pnpm@${pnpmVersion.replace(/\./g, '\\.')}\\b`), 'the pnpm of packageManager');
        assert.match(runs, /pnpm install [^\n]*--frozen-lockfile/);
        assert.match(runs, /^pnpm build$/m);
        const { argv, out } = deployCommand(build);
        assert.deepEqual(argv.slice(0, 2), ['pnpm', 'deploy']);
        assert.ok(argv.includes('--prod'), 'production dependencies only');
        assert.equal(argv[argv.indexOf('--filter') + 1], service.packageName);
        assert.equal(out, '/out');
        assert.ok(build.instructions.some((i) => i.op === 'WORKDIR' && i.args === '/src'), 'the workspace is at /src (docker-compose.yml relies on it)');
        assert.ok(build.instructions.some((i) => i.op === 'COPY' && i.args === '. .'));
      });

      it('runs only the deployed service, as the right user, from its bin script, with OCI labels', () => {
        const runtime = finalStage(stages);
        assert.notEqual(runtime, build);
        assert.equal(runtime.from, 'node:20-bookworm-slim');
        const copies = runtime.instructions.filter((i) => i.op === 'COPY');
        assert.equal(copies.length, 1, 'nothing from the build context reaches the runtime image');
        assert.match(copies[0]!.args, /^--from=build \/out \S+$/);
        const dir = installDir(stages);
        const entrypoint = runtime.instructions.find((i) => i.op === 'ENTRYPOINT');
        assert.deepEqual(JSON.parse(entrypoint!.args), [`${dir}/bin/${service.name}`]);
        assert.ok(existsSync(join(service.dir, 'bin', service.name)), 'the bin script the entrypoint names');
        const users = runtime.instructions.filter((i) => i.op === 'USER');
        assert.equal(users[users.length - 1]?.args, service.user);
        const oci = labels(runtime);
        for (const key of ['title', 'description', 'version', 'revision', 'created', 'source', 'licenses']) {
          assert.ok(oci.has(`org.opencontainers.image.${key}`), `label org.opencontainers.image.${key}`);
        }
        assert.equal(oci.get('org.opencontainers.image.title'), service.name);
        assert.equal(oci.get('org.opencontainers.image.licenses'), 'Apache-2.0');
        const version = JSON.parse(readFileSync(join(service.dir, 'package.json'), 'utf8')).version as string;
        const versionArg = runtime.instructions.find((i) => i.op === 'ARG' && i.args.startsWith('VERSION='));
        assert.equal(versionArg?.args, `VERSION=${version}`, 'the image version defaults to the package version');
      });
    });
  }

  it('runs the bridge image as the uid the chart gives the bridge, and the broker image as root', () => {
    const bridgeUser = finalStage(parseDockerfile(services[1]!.dockerfile)).instructions.filter((i) => i.op === 'USER').pop()!.args;
    assert.equal(bridgeUser, `${chartValues.kubeletBridge.runAsUser}:${chartValues.kubeletBridge.runAsGroup}`);
    assert.notEqual(chartValues.kubeletBridge.runAsUser, 0);
  });

  it('shares one build stage between the two images, up to the deploy step', () => {
    const [broker, bridge] = services.map((s) => parseDockerfile(s.dockerfile).find((st) => st.name === 'build')!);
    const upToDeploy = (stage: Stage) => stage.instructions.slice(0, stage.instructions.findIndex((i) => i.args.startsWith('pnpm deploy ')));
    assert.deepEqual(upToDeploy(broker!), upToDeploy(bridge!));
  });
});

/** A .dockerignore pattern as a test: matches the path or any of its parent directories. */
function dockerignoreMatcher(patterns: string[]): (path: string) => boolean {
  const regexes = patterns.map((pattern) => {
    const source = pattern
      .replace(/^\/+/, '')
      .split('/')
      .map((part) => (part === '**' ? '(?:.+/)?' : `${part.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}/`))
      .join('')
      .replace(/\/$/, '');
    return new RegExp(`^${source.replace(/\(\?:\.\+\/\)\?\//g, '(?:.+/)?')}(?:/.*)?$`);
  });
  return (path) => regexes.some((r) => r.test(path));
}

describe('images: .dockerignore', () => {
  const patterns = readFileSync(join(repoRoot, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const ignored = dockerignoreMatcher(patterns);

  it('uses no negations (so the simple matcher here reads it right)', () => {
    assert.ok(patterns.every((p) => !p.startsWith('!')));
  });

  it('keeps what was installed or built on the host out of the build context', () => {
    for (const path of [
      'node_modules/.pnpm/x',
      'services/fd-broker/node_modules/pino',
      'services/fd-broker/dist/main.js',
      'services/common/tsconfig.tsbuildinfo',
      'native/build/libiommufd-native.so',
      'proto/src/gen/x.ts',
      'test/dist/helm-chart.test.js',
      'test/kernel-stand-in/build/libfake-iommu.so',
      'test/launcher-stand-in/build/launcher-stand-in',
      '.git/HEAD',
    ]) {
      assert.ok(ignored(path), `${path} must be ignored`);
    }
  });

  it('sends everything the build needs', () => {
    const needed = [
      'package.json',
      'pnpm-lock.yaml',
      'pnpm-workspace.yaml',
      'tsconfig.json',
      'tsconfig.base.json',
      'native/Makefile',
      'native/c/fd_passing.c',
      'native/src/index.ts',
      'proto/buf.gen.yaml',
      'proto/buf.yaml',
      'proto/schema/broker/v1/broker.proto',
      'services/common/src/index.ts',
      'services/fd-broker/src/main.ts',
      'services/fd-broker/bin/fd-broker',
      'services/kubelet-bridge/src/main.ts',
      'services/kubelet-bridge/bin/kubelet-bridge',
      'test/package.json',
      'test/tsconfig.json',
      'test/kernel-stand-in/Makefile',
      'test/kernel-stand-in/fake-iommu.c',
      'test/launcher-stand-in/Makefile',
      'test/launcher-stand-in/launcher.c',
      'scripts/with-fake-iommu',
    ];
    for (const path of needed) {
      assert.ok(existsSync(join(repoRoot, path)), `${path} exists`);
      assert.ok(!ignored(path), `${path} must reach the build context`);
    }
  });
});

// ------------------------------------------------------------ production install

/** Every file under `dir` (not following links), relative. */
function walk(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    out.push(relative(base, path));
    if (entry.isDirectory()) out.push(...walk(path, base));
  }
  return out;
}

/** Package names in a deployed node_modules/.pnpm store ("@scope+name@1.2.3" → "@scope/name"). */
function storePackages(deployed: string): Set<string> {
  const names = new Set<string>();
  for (const entry of readdirSync(join(deployed, 'node_modules', '.pnpm'))) {
    const match = /^(@[^+]+\+[^@]+|[^@]+)@/.exec(entry);
    if (match) names.add(match[1]!.replace('+', '/'));
  }
  return names;
}

/** The flags and environment variables a service's --help lists. */
function helpSettings(bin: string): { flags: Set<string>; variables: Set<string> } {
  const run = spawnSync(bin, ['--help'], { encoding: 'utf8' });
  assert.equal(run.status, 0, `${bin} --help: ${run.stderr}`);
  return {
    flags: new Set([...run.stdout.matchAll(/^ {2}--([a-z][a-z-]*) /gm)].map((m) => m[1]!)),
    variables: new Set([...run.stdout.matchAll(/^ +env ([A-Z_]+);/gm)].map((m) => m[1]!)),
  };
}

/** A free TCP port on the loopback interface. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Runs the Dockerfile's deploy step, and the commands after it, with `out` for its /out. */
async function deploy(service: ServiceSpec, out: string): Promise<void> {
  const { argv, out: imageOut, after } = deployCommand(parseDockerfile(service.dockerfile).find((s) => s.name === 'build')!);
  const run = (file: string, args: string[]) =>
    new Promise<void>((resolve, reject) => {
      execFile(file, args, { cwd: repoRoot, timeout: 120_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`));
        else resolve();
      });
    });
  await run('pnpm', [...argv.slice(1, -1), out]);
  for (const command of after) {
    assert.ok(command.includes(`${imageOut}/`), `a step after the deploy that does not touch ${imageOut}: ${command}`);
    await run('sh', ['-ec', command.split(`${imageOut}/`).join(`${out}/`)]);
  }
}

const deployed: Record<string, string> = {};
let deployScratch: ReturnType<typeof scratchDir>;
let deploying: Promise<void> | undefined;

/** Both services deployed once (in parallel), for every test that needs them. */
function deployBoth(): Promise<void> {
  deploying ??= (async () => {
    for (const service of services) {
      assert.ok(existsSync(join(service.dir, 'dist', 'main.js')), `${service.name} is not built: run \`pnpm build\` first`);
    }
    deployScratch = scratchDir('iommufd-deploy');
    await Promise.all(
      services.map((service) => {
        deployed[service.name] = join(deployScratch.path, service.name);
        return deploy(service, deployed[service.name]!);
      }),
    );
  })();
  return deploying;
}

after(() => deployScratch?.cleanup());

describe('production install: pnpm deploy --prod, as the Dockerfiles make it', () => {
  before(deployBoth, { timeout: 180_000 });

  for (const service of services) {
    describe(service.name, () => {
      it('holds only the package, its production dependencies and the native library, self-contained', () => {
        const dir = deployed[service.name]!;
        assert.deepEqual(readdirSync(dir).sort(), ['bin', 'dist', 'node_modules', 'package.json']);
        const native = join(dir, 'node_modules', '@iommufd-plugin', 'native');
        assert.ok(existsSync(join(native, 'build', 'libiommufd-native.so')), 'the native library travels with its package');
        assert.equal(existsSync(join(native, 'c')), false, 'but not its C sources');
        assert.equal(existsSync(join(native, 'src')), false);
        for (const path of walk(dir)) {
          const full = join(dir, path);
          if (!lstatSync(full).isSymbolicLink()) continue;
          const target = realpathSync(full);
          assert.ok(target.startsWith(realpathSync(dir) + '/'), `${path} points outside the deployed folder, to ${target}`);
        }
      });

      it('has no development dependency of the workspace', () => {
        const dir = deployed[service.name]!;
        const packages = storePackages(dir);
        const devDependencies = new Set<string>();
        for (const pkg of ['package.json', 'native/package.json', 'proto/package.json', 'services/common/package.json', 'services/fd-broker/package.json', 'services/kubelet-bridge/package.json', 'test/package.json']) {
          const json = JSON.parse(readFileSync(join(repoRoot, pkg), 'utf8')) as { devDependencies?: Record<string, string> };
          for (const name of Object.keys(json.devDependencies ?? {})) devDependencies.add(name);
        }
        // A devDependency of ours may still arrive as some production package's own dependency (@types/node does, via protobufjs).
        const neededByProduction = new Set<string>();
        for (const entry of readdirSync(join(dir, 'node_modules', '.pnpm'))) {
          const nodeModules = join(dir, 'node_modules', '.pnpm', entry, 'node_modules');
          if (!existsSync(nodeModules)) continue;
          for (const pkgJson of walk(nodeModules).filter((p) => /^(@[^/]+\/)?[^/@]+\/package\.json$/.test(p))) {
            const json = JSON.parse(readFileSync(join(nodeModules, pkgJson), 'utf8')) as { dependencies?: Record<string, string> };
            for (const name of Object.keys(json.dependencies ?? {})) neededByProduction.add(name);
          }
        }
        for (const name of ['typescript', '@bufbuild/buf', 'ts-proto']) assert.ok(!packages.has(name), `${name} must not be deployed`);
        for (const name of devDependencies) {
          if (!neededByProduction.has(name)) assert.ok(!packages.has(name), `devDependency ${name} must not be deployed`);
        }
        assert.ok(!packages.has('@iommufd-plugin/test'));
        assert.equal(existsSync(join(dir, 'node_modules', '@iommufd-plugin', 'test')), false);
      });

      it('answers --help and --version from its own folder', () => {
        const bin = join(deployed[service.name]!, 'bin', service.name);
        const help = spawnSync(bin, ['--help'], { encoding: 'utf8' });
        assert.equal(help.status, 0, help.stderr);
        assert.match(help.stdout, new RegExp(`^Usage: ${service.name} `));
        const version = spawnSync(bin, ['--version'], { encoding: 'utf8' });
        assert.equal(version.status, 0, version.stderr);
        assert.equal(version.stdout.trim(), JSON.parse(readFileSync(join(service.dir, 'package.json'), 'utf8')).version);
      });

      it('knows every flag and variable the chart and docker-compose.yml give it', () => {
        const known = helpSettings(join(deployed[service.name]!, 'bin', service.name));
        const container = RenderedPod.render({ set: ['selinuxLabel='] }).container(service.container);
        const composed = composeConfig().services[service.name]!;
        const flags = [...(container.args ?? []), ...(composed.command ?? [])].map((arg: string) => /^--([a-z-]+)=/.exec(arg)![1]!);
        const prefix = service.name === 'fd-broker' ? 'FD_BROKER_' : 'KUBELET_BRIDGE_';
        const variables = [...((container.env ?? []) as Manifest[]).map((e) => e.name as string), ...Object.keys(composed.environment ?? {})].filter((n) => n.startsWith(prefix));
        assert.ok(flags.length + variables.length > 10, 'the chart configures the service');
        assert.deepEqual(flags.filter((f) => !known.flags.has(f)), [], `${service.name} does not know these flags`);
        assert.deepEqual(variables.filter((v) => !known.variables.has(v)), [], `${service.name} does not know these variables`);
      });
    });
  }

  it('starts fd-broker from its deployed folder, loading the native library from there', async () => {
    const dir = deployed['fd-broker']!;
    const scratch = scratchDir('deployed-broker');
    const port = await freePort();
    const broker = new ServiceProcess(
      join(dir, 'bin', 'fd-broker'),
      ['--socket', join(scratch.path, 'broker.sock'), '--open-strategy', 'direct', '--device', '/dev/null'],
      { PATH: process.env.PATH, FD_BROKER_HTTP_HOST: '127.0.0.1', FD_BROKER_HTTP_PORT: String(port) },
    );
    try {
      const listening = await broker.waitForEvent('listening', 10_000);
      assert.equal(listening.socket, join(scratch.path, 'broker.sock'));
      assert.ok(lstatSync(join(scratch.path, 'broker.sock')).isSocket());
      await broker.waitForEvent('http_listening', 10_000);
      assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200, 'the liveness endpoint the chart probes');
      assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 503, '/dev/null is no IOMMUFD device');
      assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^iommufd_broker_/m);
      const maps = readFileSync(`/proc/${broker.pid}/maps`, 'utf8');
      const library = maps.split('\n').find((l) => l.endsWith('libiommufd-native.so'));
      assert.ok(library, 'the native library is loaded');
      assert.ok(library.includes(realpathSync(dir)), `loaded from the deployed folder: ${library}`);
      assert.equal(maps.includes(join(repoRoot, 'native')), false, 'nothing is loaded from the workspace');
      assert.deepEqual(await broker.stop(), { code: 0, signal: null });
    } finally {
      await broker.stop();
      scratch.cleanup();
    }
  });

  it('starts kubelet-bridge from its deployed folder; with no kubelet it keeps trying to register', async () => {
    const dir = deployed['kubelet-bridge']!;
    const scratch = scratchDir('deployed-bridge');
    for (const sub of ['device-plugins', 'fd-sockets']) mkdirSync(join(scratch.path, sub));
    const port = await freePort();
    const bridge = new ServiceProcess(
      join(dir, 'bin', 'kubelet-bridge'),
      ['--kubelet-dir', join(scratch.path, 'device-plugins'), '--socket-dir', join(scratch.path, 'fd-sockets'), '--broker-socket', join(scratch.path, 'broker.sock')],
      {
        PATH: process.env.PATH,
        KUBELET_BRIDGE_HTTP_HOST: '127.0.0.1',
        KUBELET_BRIDGE_HTTP_PORT: String(port),
        KUBELET_BRIDGE_POD_RESOURCES_SOCKET: join(scratch.path, 'pod-resources.sock'),
      },
    );
    try {
      const starting = await bridge.waitForEvent('starting', 10_000);
      assert.equal(starting.service, 'kubelet-bridge');
      await bridge.waitForEvent('register_failed', 10_000);
      await bridge.waitForEvent('http_listening', 10_000);
      assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200, 'the liveness endpoint the chart probes');
      assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 503, 'not registered: not ready');
      const maps = readFileSync(`/proc/${bridge.pid}/maps`, 'utf8');
      assert.ok(maps.split('\n').some((l) => l.endsWith('libiommufd-native.so') && l.includes(realpathSync(dir))));
      assert.deepEqual(await bridge.stop(), { code: 0, signal: null });
    } finally {
      await bridge.stop();
      scratch.cleanup();
    }
  });
});

// ------------------------------------------------------------ docker-compose.yml

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile?: string; target?: string };
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  user?: string;
  group_add?: string[];
  volumes?: string[];
  working_dir?: string;
  depends_on?: Record<string, { condition: string }> | string[];
  privileged?: boolean;
  read_only?: boolean;
  cap_drop?: string[];
}

interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes: Record<string, unknown>;
}

let composeBinary: string | undefined;

/** docker-compose (Debian's, v1) or `docker compose`; installed with apt as root when missing. */
function dockerCompose(): string {
  if (composeBinary) return composeBinary;
  const has = () => spawnSync('sh', ['-c', 'command -v docker-compose'], { encoding: 'utf8' }).stdout.trim();
  if (!has() && runningAsRoot) {
    spawnSync('sh', ['-c', 'apt-get install -y docker-compose || (apt-get update && apt-get install -y docker-compose)'], { stdio: 'ignore', timeout: 600_000 });
  }
  const found = has();
  assert.ok(found, 'docker-compose is missing and could not be installed (`apt-get install -y docker-compose`, as root); it is needed to validate docker-compose.yml');
  composeBinary = found;
  return found;
}

function composeRun(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const run = spawnSync(dockerCompose(), ['-f', join(repoRoot, 'docker-compose.yml'), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 120_000,
  });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

const composeConfigs = new Map<string, ComposeFile>();

/** The file as docker-compose resolves it (anchors merged, variables substituted; $$ stays $$). */
function composeConfig(env: Record<string, string> = {}): ComposeFile {
  const key = JSON.stringify(env);
  let config = composeConfigs.get(key);
  if (!config) {
    const run = composeRun(['config'], env);
    assert.equal(run.status, 0, `docker-compose config failed: ${run.stderr}`);
    config = parseYaml(run.stdout) as ComposeFile;
    composeConfigs.set(key, config);
  }
  return config;
}

/** Compose's own unescaping of $$. */
function unescapeCompose(text: string): string {
  return text.replace(/\$\$/g, '$');
}

function volumeMounts(service: ComposeService): Array<{ source: string; target: string; readOnly: boolean }> {
  return (service.volumes ?? []).map((spec) => {
    const [source, target, mode] = spec.split(':');
    return { source: source!, target: target!, readOnly: mode === 'ro' };
  });
}

function flagsOf(args: string[]): Map<string, string> {
  return new Map(args.map((a) => /^--([a-z-]+)=(.*)$/.exec(a)!).map((m) => [m[1]!, m[2]!]));
}

/** The volume a service mounts at a path (the longest mount that contains it). */
function volumeAt(service: ComposeService, path: string): { source: string; readOnly: boolean } {
  const mount = volumeMounts(service)
    .filter((m) => path === m.target || path.startsWith(`${m.target}/`))
    .sort((a, b) => b.target.length - a.target.length)[0];
  assert.ok(mount, `nothing is mounted at ${path}`);
  return mount;
}

describe('docker-compose.yml', () => {
  before(() => {
    dockerCompose();
  }, { timeout: 600_000 });

  it('is valid for docker-compose, on the kernel stand-in and on the host /dev/iommu', () => {
    for (const env of [{}, { IOMMUFD_MODE: 'host' }]) {
      const run = composeRun(['config', '-q'], env);
      assert.equal(run.status, 0, `docker-compose config ${JSON.stringify(env)}: ${run.stderr}`);
    }
    assert.deepEqual(Object.keys(composeConfig().services).sort(), ['fd-broker', 'host-access', 'kubelet', 'kubelet-bridge', 'launcher', 'setup']);
    assert.equal(composeConfig().services['fd-broker']!.environment!.IOMMUFD_MODE, 'fake');
    assert.equal(composeConfig({ IOMMUFD_MODE: 'host' }).services['fd-broker']!.environment!.IOMMUFD_MODE, 'host');
  });

  it('builds from Dockerfiles and stages that exist', () => {
    for (const [name, service] of Object.entries(composeConfig().services)) {
      assert.ok(service.build, `${name} is built here`);
      assert.equal(service.build.context, repoRoot);
      const dockerfile = join(repoRoot, service.build.dockerfile ?? 'Dockerfile');
      assert.ok(existsSync(dockerfile), `${name}: ${dockerfile}`);
      if (service.build.target) {
        assert.ok(parseDockerfile(dockerfile).some((s) => s.name === service.build!.target), `${name}: stage ${service.build.target}`);
      }
    }
  });

  it('refers only to commands and files that exist (workspace files in the build stage, the deployed service in the images)', async () => {
    await deployBoth();
    const config = composeConfig();
    for (const [name, service] of Object.entries(config.services)) {
      const texts = [...(service.entrypoint ?? []), ...(service.command ?? []), ...Object.values(service.environment ?? {})].map(unescapeCompose);
      const paths = texts.flatMap((t) => [...t.matchAll(/(?<![\w.-])\/(?:src|opt)\/[\w.+/-]*[\w+-]/g)].map((m) => m[0]));
      const dockerfile = join(repoRoot, service.build!.dockerfile!);
      const stages = parseDockerfile(dockerfile);
      for (const path of paths) {
        if (path.startsWith('/src/')) {
          assert.equal(service.build!.target, 'build', `${name} uses ${path}, which only the build stage has`);
          assert.ok(existsSync(join(repoRoot, path.slice('/src/'.length))), `${name}: ${path} is not in the workspace (after pnpm build)`);
        } else if (path === '/opt/stand-ins' || path.startsWith('/opt/stand-ins/')) {
          assert.ok(volumeMounts(service).some((m) => m.source === 'stand-ins' && m.target === '/opt/stand-ins'), `${name} mounts the stand-ins volume`);
        } else {
          const dir = installDir(stages);
          assert.ok(!service.build!.target && path.startsWith(`${dir}/`), `${name}: ${path} is outside the image's ${dir}`);
          const service_ = services.find((s) => dockerfile === s.dockerfile)!;
          assert.ok(existsSync(join(deployed[service_.name]!, path.slice(dir.length + 1))), `${name}: ${path} is not in the deployed ${service_.name}`);
        }
      }
    }
    // What setup copies into the stand-ins volume is what the broker preloads.
    const setupScript = unescapeCompose(config.services.setup!.command!.join('\n'));
    assert.match(setupScript, /cp \/src\/test\/kernel-stand-in\/build\/libfake-iommu\.so \/opt\/stand-ins\//);
    assert.match(unescapeCompose(config.services['fd-broker']!.entrypoint!.join('\n')), /LD_PRELOAD=\/opt\/stand-ins\/libfake-iommu\.so/);
    // The launcher stand-in takes the flags the demo passes.
    const usage = spawnSync(join(repoRoot, 'test', 'launcher-stand-in', 'build', 'launcher-stand-in'), [], { encoding: 'utf8' }).stderr;
    for (const flag of ['--socket', '--set']) assert.ok(usage.includes(flag), `launcher-stand-in takes ${flag}`);
  });

  it('has inline scripts that parse (sh -n, and the kubelet script as JavaScript)', () => {
    for (const [name, service] of Object.entries(composeConfig().services)) {
      const argv = [...(service.entrypoint ?? []), ...(service.command ?? [])].map(unescapeCompose);
      if (argv[0] === '/bin/sh') {
        const script = argv[2]!;
        assert.match(argv[1]!, /^-e?c$/);
        const check = spawnSync('sh', ['-n', '-c', script], { encoding: 'utf8' });
        assert.equal(check.status, 0, `${name}: ${check.stderr}`);
      } else if (argv[0] === 'node' && argv[1] === '-e') {
        assert.doesNotThrow(() => new Script(argv[2]!), `${name}'s script`);
      }
    }
  });

  it('runs the pair as the chart does: same flags, same users, same shared volumes', () => {
    const config = composeConfig();
    const broker = config.services['fd-broker']!;
    const bridge = config.services['kubelet-bridge']!;
    const pod = RenderedPod.render();

    // Settings: the chart's. The broker's device comes from the mode switch (in host mode, the chart's own).
    const chartBroker = new Map(((pod.container('fd-broker').env ?? []) as Manifest[]).map((e) => [e.name as string, e.value as string]));
    const composeBroker = new Map(Object.entries(broker.environment!).filter(([k]) => k.startsWith('FD_BROKER_')));
    assert.match(unescapeCompose(broker.entrypoint![2]!), new RegExp(`then\\n\\s*export FD_BROKER_DEVICE=${chartBroker.get('FD_BROKER_DEVICE')!.replace(/\//g, '\\/')}\\n`));
    chartBroker.delete('FD_BROKER_DEVICE');
    assert.deepEqual(Object.fromEntries(composeBroker), Object.fromEntries(chartBroker));
    assert.equal(pod.container('fd-broker').args, undefined);
    assert.deepEqual(broker.command ?? [], []);
    assert.deepEqual(Object.fromEntries(flagsOf(bridge.command!)), Object.fromEntries(flagsOf(pod.container('kubelet-bridge').args as string[])));

    // Users and confinement.
    assert.equal(broker.privileged, true);
    const bridgeContext = pod.container('kubelet-bridge').securityContext as Manifest;
    assert.equal(bridge.user, `${bridgeContext.runAsUser}:${bridgeContext.runAsGroup}`);
    assert.equal(bridge.read_only, true);
    assert.deepEqual(bridge.cap_drop, ['ALL']);
    assert.equal(bridge.privileged, undefined);

    // Volumes: what the chart shares between containers, compose shares between services.
    const kubelet = config.services.kubelet!;
    const launcher = config.services.launcher!;
    const hostAccess = config.services['host-access']!;
    const brokerSocketDir = composeBroker.get('FD_BROKER_SOCKET')!.replace(/\/[^/]+$/, '');
    assert.equal(volumeAt(broker, brokerSocketDir).source, volumeAt(bridge, brokerSocketDir).source);
    assert.equal(volumeAt(bridge, brokerSocketDir).readOnly, true);
    assert.ok(!volumeMounts(kubelet).some((m) => m.source === volumeAt(broker, brokerSocketDir).source), 'the broker socket stays private to the pair');
    const socketDir = flagsOf(bridge.command!).get('socket-dir')!;
    assert.equal(composeBroker.get('FD_BROKER_NODE_DIR'), socketDir);
    const sockets = volumeAt(bridge, socketDir).source;
    for (const service of [broker, launcher, hostAccess]) assert.equal(volumeAt(service, socketDir).source, sockets);
    const kubeletDir = flagsOf(bridge.command!).get('kubelet-dir')!;
    assert.equal(volumeAt(kubelet, kubeletDir).source, volumeAt(bridge, kubeletDir).source);
    assert.equal(volumeAt(hostAccess, kubeletDir).source, volumeAt(bridge, kubeletDir).source);
    const podResources = flagsOf(bridge.command!).get('pod-resources-socket')!;
    assert.equal(volumeAt(kubelet, podResources).source, volumeAt(bridge, podResources).source);
    assert.equal(volumeAt(bridge, podResources).readOnly, true);
    assert.equal(hostAccess.environment!.BRIDGE_UID, String(bridgeContext.runAsUser));
    assert.equal(hostAccess.environment!.SOCKET_DIR, socketDir);
    assert.equal(hostAccess.environment!.DEVICE_PLUGINS_DIR, kubeletDir);
    for (const name of Object.keys(config.volumes)) {
      assert.ok(Object.values(config.services).some((s) => volumeMounts(s).some((m) => m.source === name)), `volume ${name} is used`);
    }
  });

  it('works without an engine: every service run as a process, volumes as directories, a pretend VM pod gets its fd', { skip: !runningAsRoot && 'needs root (users, mknod, chown)', timeout: 90_000 }, async () => {
    await deployBoth();
    if (spawnSync('sh', ['-c', 'command -v setfacl && command -v getfacl']).status !== 0) {
      const install = spawnSync('sh', ['-c', 'apt-get install -y acl || (apt-get update && apt-get install -y acl)'], { stdio: 'ignore', timeout: 300_000 });
      assert.equal(install.status, 0, 'host-access needs setfacl, and `apt-get install -y acl` failed; install the acl package');
    }
    const run = new ComposeRun(composeConfig({ DEMO_PODS: '2', DEMO_ADMIT_INTERVAL_MS: '1000' }));
    try {
      await run.start();
      const reports = await run.waitForLaunches(2, 40_000);
      for (const report of reports) {
        assert.equal(report.result, 'ok', JSON.stringify(report));
        assert.equal(report.rlimitMode, 1, 'the fd is in RLIMIT mode');
        assert.equal(report.uid, 107, 'as virt-launcher\'s uid');
        assert.equal(report.set, 'EPERM', 'and the launcher itself cannot change it');
      }
      const broker = run.logs('fd-broker');
      assert.ok(broker.some((l) => l.event === 'context_opened'), 'the broker opened the contexts');
      // The endpoints the chart's probes use answer as a working node's should.
      for (const [service, path] of [['fd-broker', '/healthz'], ['fd-broker', '/readyz'], ['kubelet-bridge', '/healthz'], ['kubelet-bridge', '/readyz']] as const) {
        const response = await fetch(`http://127.0.0.1:${await run.port(service)}${path}`);
        assert.equal(response.status, 200, `${service} ${path}: ${await response.text()}`);
      }
      assert.ok(run.logs('host-access').some((l) => l.event === 'access_granted'), 'host-access granted the kubelet socket');
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- compose services' output ---\n${run.describe()}`);
    } finally {
      await run.stop();
    }
  });
});

/**
 * docker-compose.yml's services as plain processes on this machine: each
 * named volume is a directory, each mount target in a service's strings is
 * replaced by that directory, the images' install directories by the
 * deployed services and the build stage's /src by the workspace. Users
 * come from `user` (a group_add becomes the primary group: node cannot add
 * supplementary groups). What an engine adds (read-only root, dropped
 * capabilities, privileged) is not reproduced; the chart tests cover it.
 */
class ComposeRun {
  private readonly scratch = scratchDir('compose-run');
  private readonly children = new Map<string, ChildProcess>();
  private readonly output = new Map<string, string[]>();
  private readonly ports = new Map<string, number>();

  /** The HTTP port a service listens on here (instead of the one compose publishes). */
  async port(name: string): Promise<number> {
    if (!this.ports.has(name)) this.ports.set(name, await freePort());
    return this.ports.get(name)!;
  }

  constructor(private readonly config: ComposeFile) {
    for (const name of Object.keys(config.volumes)) mkdirSync(join(this.scratch.path, 'volumes', name), { recursive: true, mode: 0o755 });
    // The stand-ins, copied where every uid can reach them.
    mkdirSync(join(this.scratch.path, 'bin'), { mode: 0o755 });
    for (const file of ['test/kernel-stand-in/build/libfake-iommu.so', 'test/launcher-stand-in/build/launcher-stand-in']) {
      copyFileSync(join(repoRoot, file), join(this.scratch.path, 'bin', file.split('/').pop()!));
      chmodSync(join(this.scratch.path, 'bin', file.split('/').pop()!), 0o755);
    }
  }

  /** Container path → host path, longest first. */
  private mapping(name: string): Array<[string, string]> {
    const service = this.config.services[name]!;
    const map: Array<[string, string]> = [];
    for (const mount of volumeMounts(service)) {
      map.push([mount.target, mount.source.startsWith('/') ? mount.source : join(this.scratch.path, 'volumes', mount.source)]);
    }
    const dockerfile = join(repoRoot, service.build!.dockerfile!);
    if (service.build!.target === 'build') {
      map.push(['/src/test/kernel-stand-in/build', join(this.scratch.path, 'bin')]);
      map.push(['/src/test/launcher-stand-in/build', join(this.scratch.path, 'bin')]);
      map.push(['/src', repoRoot]);
    } else {
      const spec = services.find((s) => s.dockerfile === dockerfile)!;
      map.push([installDir(parseDockerfile(dockerfile)), deployed[spec.name]!]);
    }
    return map.sort((a, b) => b[0].length - a[0].length);
  }

  private remap(name: string, text: string): string {
    let out = unescapeCompose(text);
    for (const [from, to] of this.mapping(name)) {
      out = out.replace(new RegExp(`(?<![\\w.-])${from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=[/'"\\s:]|$)`, 'g'), to);
    }
    return out;
  }

  private async argv(name: string): Promise<string[]> {
    const service = this.config.services[name]!;
    const dockerfile = join(repoRoot, service.build!.dockerfile!);
    const stages = parseDockerfile(dockerfile);
    let entrypoint = service.entrypoint;
    if (!entrypoint && !service.build!.target) entrypoint = JSON.parse(finalStage(stages).instructions.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    // HTTP on a free port, not the one compose publishes.
    const command = await Promise.all(
      (service.command ?? []).map(async (arg) => (arg.startsWith('--http-port=') ? `--http-port=${await this.port(name)}` : arg)),
    );
    return [...(entrypoint ?? []), ...command].map((arg) => this.remap(name, arg));
  }

  private async startService(name: string): Promise<ChildProcess> {
    const service = this.config.services[name]!;
    const [file, ...args] = await this.argv(name);
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
    for (const [key, value] of Object.entries(service.environment ?? {})) env[key] = key.endsWith('_HTTP_PORT') ? String(await this.port(name)) : this.remap(name, value);
    const [uid, gid] = (service.user ?? '0:0').split(':').map(Number);
    const group = service.group_add?.[0] !== undefined ? Number(service.group_add[0]) : gid;
    const child = spawn(file!, args, {
      cwd: service.working_dir ? this.remap(name, service.working_dir) : '/',
      env,
      uid,
      gid: group,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    this.output.set(name, lines);
    createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
    createInterface({ input: child.stderr! }).on('line', (l) => lines.push(`stderr: ${l}`));
    this.children.set(name, child);
    return child;
  }

  async start(): Promise<void> {
    const setup = await this.startService('setup');
    const code = await new Promise<number | null>((resolve) => setup.once('close', resolve));
    assert.equal(code, 0, 'setup must complete (the broker waits for it)');
    for (const name of ['host-access', 'kubelet', 'fd-broker']) await this.startService(name);
    // The bridge restarts in compose until host-access has prepared the socket dir; here it starts after.
    const socketDir = join(this.scratch.path, 'volumes', 'fd-sockets');
    const deadline = Date.now() + 10_000;
    while (statSync(socketDir).uid !== 65532 && Date.now() < deadline) await sleep(50);
    for (const name of ['kubelet-bridge', 'launcher']) await this.startService(name);
  }

  logs(name: string): Array<Record<string, unknown>> {
    return (this.output.get(name) ?? []).flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  async waitForLaunches(count: number, timeoutMs: number): Promise<Array<Record<string, unknown>>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reports = this.logs('launcher').filter((l) => 'result' in l);
      if (reports.length >= count) return reports;
      for (const [name, child] of this.children) {
        if (name !== 'setup' && child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
      }
      if (Date.now() > deadline) throw new Error(`saw ${reports.length} of ${count} launches`);
      await sleep(100);
    }
  }

  describe(): string {
    return [...this.output].map(([name, lines]) => `[${name}]\n${lines.slice(-15).join('\n')}`).join('\n');
  }

  async stop(): Promise<void> {
    const waits: Array<Promise<unknown>> = [];
    for (const child of this.children.values()) {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) continue;
      waits.push(new Promise((resolve) => child.once('close', resolve)));
      try {
        process.kill(-child.pid, 'SIGTERM'); // the group of a process this test started
      } catch {
        // already gone
      }
    }
    await Promise.race([Promise.all(waits), sleep(8000)]);
    for (const child of this.children.values()) {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    this.scratch.cleanup();
  }
}
