// Tests of the kernel stand-in itself (test/kernel-stand-in): the LD_PRELOAD
// shim that plays /dev/iommu, driven through build/iommu-probe, and the
// scripts/with-fake-iommu wrapper.
//
// Run: node --test test/kernel-stand-in.test.mjs   (as root for the
// char-device and setuid cases; they are skipped otherwise).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');
const standIn = path.join(here, 'kernel-stand-in');
const lib = path.join(standIn, 'build', 'libfake-iommu.so');
const probeBin = path.join(standIn, 'build', 'iommu-probe');
const wrapper = path.join(repo, 'scripts', 'with-fake-iommu');

const isRoot = process.getuid() === 0;
const rootOnly = { skip: isRoot ? false : 'needs root (mknod, setuid)' };
const NOBODY = 65534;
const MISC_MAJOR = 10;

let tmp; // per-run scratch directory
let charDev; // fake device: char node 10:<free minor> (root only)
let minor;
let regDev; // fake device: regular file

function miscMinorsInUse() {
  return new Set(
    fs.readFileSync('/proc/misc', 'utf8').trim().split('\n').map((l) => Number(l.trim().split(/\s+/)[0])),
  );
}

function freeMiscMinor() {
  const used = miscMinorsInUse();
  const m = [196, 197, 198, 199, 190, 191, 192, 193, 194, 195].find((x) => !used.has(x));
  assert.ok(m !== undefined, 'no free misc minor');
  return m;
}

function mknod(file, maj, min, mode = '0600') {
  execFileSync('mknod', ['-m', mode, file, 'c', String(maj), String(min)]);
}

// The environment of this process minus anything of the stand-in's, plus `extra`
// (undefined or null removes the variable).
function cleanEnv(extra = {}) {
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  delete env.FAKE_IOMMU_DEVICE;
  delete env.FAKE_IOMMU_PRIVILEGED_UIDS;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined || v === null) delete env[k];
    else env[k] = String(v);
  }
  return env;
}

function parseLines(stdout) {
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l));
}

// Run iommu-probe under the shim. Returns { steps, pid }.
function runProbe(steps, { device, privileged = String(process.getuid()), preload = true, env = {} } = {}) {
  const r = spawnSync(probeBin, steps.map(String), {
    env: cleanEnv({
      LD_PRELOAD: preload ? lib : undefined,
      FAKE_IOMMU_DEVICE: device,
      FAKE_IOMMU_PRIVILEGED_UIDS: privileged,
      ...env,
    }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `iommu-probe failed: ${r.stderr}`);
  return { steps: parseLines(r.stdout), pid: r.pid };
}

// One short word per step: the errno name on failure, else "get=1",
// "id=2", or the step name.
function brief(step) {
  if (!step.ok) return step.errno ?? `status ${step.status}`;
  if ('val64' in step) return `${step.step}=${step.val64}`;
  if ('id' in step) return `id=${step.id}`;
  return step.step;
}

function probe(steps, opts) {
  return runProbe(steps, opts).steps.map(brief);
}

function hasCapSysResource() {
  const line = fs.readFileSync('/proc/self/status', 'utf8').match(/^CapEff:\s*([0-9a-f]+)$/m);
  return ((BigInt(`0x${line[1]}`) >> 24n) & 1n) === 1n;
}

function devMajorMinor(rdev) {
  return { major: (rdev >> 8) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
}

before(() => {
  execFileSync('make', ['-s', '-C', standIn], { stdio: 'inherit' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-iommu-test-'));
  fs.chmodSync(tmp, 0o755); // setuid'd probes must reach the devices
  regDev = path.join(tmp, 'iommu-file');
  fs.writeFileSync(regDev, '', { mode: 0o600 });
  if (isRoot) {
    minor = freeMiscMinor();
    charDev = path.join(tmp, 'iommu');
    mknod(charDev, MISC_MAJOR, minor);
  }
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---- open ----

test('a fresh context is not in RLIMIT mode (GET -> 0)', rootOnly, () => {
  assert.deepEqual(probe(['open', charDev, 'get'], { device: charDev }), ['open', 'get=0']);
});

test('the open returns a memfd-backed context, not the device', rootOnly, () => {
  const { steps } = runProbe(['open', charDev], { device: charDev });
  assert.equal(steps[0].ok, true);
  assert.ok(steps[0].fd >= 3);
});

test('open of a path that does not exist -> ENOENT', rootOnly, () => {
  assert.deepEqual(probe(['open', path.join(tmp, 'no-such-node')], { device: charDev }), ['ENOENT']);
});

test('a temporary node with the same major:minor elsewhere is the device too', rootOnly, () => {
  const other = fs.mkdtempSync(path.join(tmp, 'broker-'));
  const same = path.join(other, 'iommu-tmp');
  const different = path.join(other, 'not-iommu');
  mknod(same, MISC_MAJOR, minor);
  const otherMinor = [...Array(60).keys()].map((i) => 140 + i).find((m) => m !== minor && !miscMinorsInUse().has(m));
  mknod(different, MISC_MAJOR, otherMinor);
  // A node of another (unregistered) misc minor reaches the real kernel: ENODEV.
  assert.deepEqual(probe(['open', same, 'set', 1, 'get', 'open', different], { device: charDev }), [
    'open',
    'set=1',
    'get=1',
    'ENODEV',
  ]);
});

test('openat with a dirfd, through a symlink, and O_NOFOLLOW -> ELOOP', rootOnly, () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'links-'));
  fs.symlinkSync(charDev, path.join(dir, 'link'));
  assert.deepEqual(
    probe(['openat', tmp, path.basename(charDev), 'get', 'openat', dir, 'link', 'get', 'openat', dir, 'link', 'nofollow'], {
      device: charDev,
    }),
    ['openat', 'get=0', 'openat', 'get=0', 'ELOOP'],
  );
});

test('the node permissions apply: uid 65534 cannot open a 0600 device -> EACCES', rootOnly, () => {
  assert.deepEqual(probe(['setuid', NOBODY, 'open', charDev], { device: charDev }), ['setuid', 'EACCES']);
});

test('every open is an independent context', rootOnly, () => {
  assert.deepEqual(
    probe(['open', charDev, 'set', 1, 'open', charDev, 'get', 'select', 0, 'get'], { device: charDev }),
    ['open', 'set=1', 'open', 'get=0', 'select', 'get=1'],
  );
});

// ---- IOMMU_OPTION / RLIMIT_MODE ----

test('SET by a privileged uid works, GET reads it back, SET 0 undoes it', rootOnly, () => {
  assert.deepEqual(probe(['open', charDev, 'set', 1, 'get', 'set', 0, 'get'], { device: charDev }), [
    'open',
    'set=1',
    'get=1',
    'set=0',
    'get=0',
  ]);
});

test('SET without privilege -> EPERM (uid not listed)', rootOnly, () => {
  assert.deepEqual(probe(['open', charDev, 'set', 1, 'get'], { device: charDev, privileged: '1234,4321' }), [
    'open',
    'EPERM',
    'get=0',
  ]);
});

test('SET after dropping to uid 65534 -> EPERM; the listed uid is checked at ioctl time', rootOnly, () => {
  assert.deepEqual(probe(['open', charDev, 'setuid', NOBODY, 'set', 1, 'get'], { device: charDev, privileged: '0' }), [
    'open',
    'setuid',
    'EPERM',
    'get=0',
  ]);
  assert.deepEqual(
    probe(['open', charDev, 'set', 1, 'setuid', NOBODY, 'set', 1], { device: charDev, privileged: String(NOBODY) }),
    ['open', 'EPERM', 'setuid', 'set=1'],
  );
});

test('without FAKE_IOMMU_PRIVILEGED_UIDS the real CAP_SYS_RESOURCE decides', rootOnly, () => {
  const expected = hasCapSysResource() ? 'set=1' : 'EPERM';
  assert.deepEqual(probe(['open', charDev, 'set', 1], { device: charDev, privileged: null }), ['open', expected]);
  // Whatever root has, uid 65534 after setuid has no capabilities at all.
  assert.deepEqual(probe(['open', charDev, 'setuid', NOBODY, 'set', 1], { device: charDev, privileged: null }), [
    'open',
    'setuid',
    'EPERM',
  ]);
});

test('size checks: < 24 -> EINVAL, non-zero tail -> E2BIG, zero tail -> ok', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'option', 16, 0, 1, 0, 0, 0,
        'option', 0, 0, 1, 0, 0, 0,
        'option', 23, 0, 1, 0, 0, 0,
        'option', 32, 0, 1, 0, 0, 0, 7,
        'option', 32, 0, 1, 0, 0, 0,
        'option', 24, 0, 1, 0, 0, 0, 7, // byte 24 lies outside size 24
        'option', 5000, 0, 1, 0, 0, 0, 1,
        'option', 5000, 0, 1, 0, 0, 0,
      ],
      { device: charDev },
    ),
    ['open', 'EINVAL', 'EINVAL', 'EINVAL', 'E2BIG', 'option=0', 'option=0', 'E2BIG', 'option=0'],
  );
});

test('__reserved != 0, unknown option_id, object_id for RLIMIT, unknown op -> EOPNOTSUPP', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'option', 24, 0, 1, 1, 0, 0, // reserved
        'option', 24, 7, 1, 0, 0, 0, // option_id 7
        'option', 24, 0, 1, 0, 1, 0, // RLIMIT with object_id 1
        'option', 24, 0, 2, 0, 0, 0, // op 2
        'get',
      ],
      { device: charDev },
    ),
    ['open', 'EOPNOTSUPP', 'EOPNOTSUPP', 'EOPNOTSUPP', 'EOPNOTSUPP', 'get=0'],
  );
});

test('SET with val64 other than 0 or 1 -> EINVAL, state unchanged', rootOnly, () => {
  assert.deepEqual(probe(['open', charDev, 'set', 2, 'set', '0x100000001', 'get'], { device: charDev }), [
    'open',
    'EINVAL',
    'EINVAL',
    'get=0',
  ]);
});

test('the checks come in the kernel order', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'option', 16, 0, 0, 1, 0, 1, // short size beats reserved
        'option', 32, 0, 0, 1, 0, 1, 9, // non-zero tail beats reserved
        'option', 24, 0, 0, 0, 5, 1, // object_id beats the capability check
        'option', 24, 0, 0, 0, 0, 2, // the capability check beats the value
      ],
      { device: charDev, privileged: '1234' },
    ),
    ['open', 'EINVAL', 'E2BIG', 'EOPNOTSUPP', 'EPERM'],
  );
  // With an object in the context, EBUSY beats a bad value.
  assert.deepEqual(probe(['open', charDev, 'ioas_alloc', 'set', 7], { device: charDev }), ['open', 'id=1', 'EBUSY']);
});

test('SET after IOMMU_IOAS_ALLOC -> EBUSY, and works again after IOMMU_DESTROY', rootOnly, () => {
  assert.deepEqual(
    probe(['open', charDev, 'ioas_alloc', 'set', 1, 'get', 'destroy', 1, 'set', 1, 'get'], { device: charDev }),
    ['open', 'id=1', 'EBUSY', 'get=0', 'destroy', 'set=1', 'get=1'],
  );
});

// ---- IOMMU_IOAS_ALLOC / IOMMU_DESTROY / HUGE_PAGES ----

test('IOAS ids start at 1, the lowest free id is reused, unknown ids -> ENOENT', rootOnly, () => {
  assert.deepEqual(
    probe(
      ['open', charDev, 'ioas_alloc', 'ioas_alloc', 'ioas_alloc', 'destroy', 2, 'destroy', 2, 'destroy', 0, 'ioas_alloc', 'ioas_alloc'],
      { device: charDev },
    ),
    ['open', 'id=1', 'id=2', 'id=3', 'destroy', 'ENOENT', 'ENOENT', 'id=2', 'id=4'],
  );
});

test('IOMMU_IOAS_ALLOC and IOMMU_DESTROY check size, tail and flags', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'ioas_alloc', 8, 0,
        'ioas_alloc', 16, 0, 1,
        'ioas_alloc', 12, 1,
        'ioas_alloc', 16, 0,
        'destroy', 1, 4,
        'destroy', 1, 16, 1,
        'destroy', 1, 16,
      ],
      { device: charDev },
    ),
    ['open', 'EINVAL', 'E2BIG', 'EOPNOTSUPP', 'id=1', 'EINVAL', 'E2BIG', 'destroy'],
  );
});

test('HUGE_PAGES needs an existing IOAS, defaults to 1, takes 0/1, needs no capability', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'option', 24, 1, 1, 0, 0, 0, // no IOAS 0
        'ioas_alloc',
        'option', 24, 1, 1, 0, 1, 0, // GET
        'option', 24, 1, 0, 0, 1, 0, // SET 0
        'option', 24, 1, 1, 0, 1, 0,
        'option', 24, 1, 0, 0, 1, 2, // SET 2
        'option', 24, 1, 3, 0, 1, 0, // op 3
        'option', 24, 1, 1, 0, 9, 0, // no IOAS 9
      ],
      { device: charDev, privileged: '1234' },
    ),
    ['open', 'ENOENT', 'id=1', 'option=1', 'option=0', 'option=0', 'EINVAL', 'EOPNOTSUPP', 'ENOENT'],
  );
});

// ---- other ioctls ----

test('unknown ioctl on a context -> ENOTTY; NULL argument -> EFAULT', rootOnly, () => {
  assert.deepEqual(
    probe(
      [
        'open', charDev,
        'raw_ioctl', '3b99',
        'raw_ioctl', '3b64', // VFIO_GET_API_VERSION: no VFIO compatibility here
        'raw_ioctl', 'c0183b87', // IOMMU_OPTION with size/direction bits is another number
        'raw_ioctl', '3b87', 'null',
        'raw_ioctl', '3b81', 'null',
        'raw_ioctl', '3b80', 'null',
      ],
      { device: charDev },
    ),
    ['open', 'ENOTTY', 'ENOTTY', 'ENOTTY', 'EFAULT', 'EFAULT', 'EFAULT'],
  );
});

test('ioctl on an fd that is not a context reaches the real kernel (/dev/null -> ENOTTY)', rootOnly, () => {
  assert.deepEqual(probe(['open', '/dev/null', 'get', 'ioas_alloc'], { device: charDev }), ['open', 'ENOTTY', 'ENOTTY']);
});

// ---- the context travels with the fd ----

test('a context passed over SCM_RIGHTS keeps its state; uid 65534 there gets EPERM', rootOnly, () => {
  const { steps, pid } = runProbe(
    ['open', charDev, 'set', 1, 'pass', 'get', 'setuid', NOBODY, 'set', 0, 'get', 'end', 'get'],
    { device: charDev },
  );
  assert.deepEqual(steps.map(brief), ['open', 'set=1', 'pass', 'get=1', 'setuid', 'EPERM', 'get=1', 'end', 'get=1']);
  assert.notEqual(steps[2].pid, pid, 'the receiver is another process');
});

test('changes made by the receiving process are seen by the sender', rootOnly, () => {
  assert.deepEqual(
    probe(['open', charDev, 'pass', 'ioas_alloc', 'end', 'set', 1, 'destroy', 1, 'set', 1, 'pass', 'get', 'end'], {
      device: charDev,
    }),
    ['open', 'pass', 'id=1', 'end', 'EBUSY', 'destroy', 'set=1', 'pass', 'get=1', 'end'],
  );
});

test('concurrent callers on one context lose no update (8 threads x 100 allocs)', rootOnly, () => {
  const { steps } = runProbe(['open', charDev, 'threads', 8, 100, 'ioas_alloc'], { device: charDev });
  assert.deepEqual(steps[1], { step: 'threads', ok: true, calls: 800, failures: 0 });
  assert.equal(brief(steps[2]), 'id=801');
});

test('a context inherited across exec is served by the shim alone; without the shim it is a plain memfd', () => {
  // bash opens the device under the shim (fd 5 survives exec); the probes
  // adopt fd 5: the first has LD_PRELOAD but no FAKE_IOMMU_DEVICE, the second
  // no shim at all.
  const script = [
    'exec 5<>"$FAKE_IOMMU_DEVICE"',
    'env -u FAKE_IOMMU_DEVICE "$PROBE" fd 5 set 1 get',
    'env -u LD_PRELOAD "$PROBE" fd 5 get',
  ].join('\n');
  const r = spawnSync('bash', ['-c', script], {
    env: cleanEnv({ LD_PRELOAD: lib, FAKE_IOMMU_DEVICE: regDev, FAKE_IOMMU_PRIVILEGED_UIDS: process.getuid(), PROBE: probeBin }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(parseLines(r.stdout).map(brief), ['fd', 'set=1', 'get=1', 'fd', 'ENOTTY']);
});

// ---- fstat: a context looks like the node it was opened from ----

// Every libc call iommu-probe can stat the current fd with.
const STAT_VIAS = ['fstat', 'fstat64', 'fstatat', 'fstatat64', 'statx', 'fxstat', 'fxstat64', 'fxstatat', 'fxstatat64'];

function fstatSteps(vias = STAT_VIAS) {
  return vias.flatMap((v) => ['fstat', v]);
}

// The fields of a probe stat step that describe which file it is.
function identity(step) {
  assert.equal(step.ok, true, JSON.stringify(step));
  return {
    type: step.type,
    mode: step.mode,
    rdev: `${step.rdev_major}:${step.rdev_minor}`,
    dev: `${step.dev_major}:${step.dev_minor}`,
    ino: step.ino,
  };
}

// The same, from fs.Stats of the node.
function identityOf(file) {
  const st = fs.statSync(file);
  const dev = devMajorMinor(st.dev);
  const rdev = devMajorMinor(st.rdev);
  return {
    type: st.isCharacterDevice() ? 'chr' : st.isFile() ? 'reg' : 'other',
    mode: st.mode & 0o7777,
    rdev: `${rdev.major}:${rdev.minor}`,
    dev: `${dev.major}:${dev.minor}`,
    ino: st.ino,
  };
}

test('fstat of a context from a char-device fake: a char device with its major:minor, by every stat call', rootOnly, () => {
  const { steps } = runProbe(['open', charDev, ...fstatSteps(), 'set', 1, 'get'], { device: charDev });
  const want = identityOf(charDev);
  assert.deepEqual(want, { ...want, type: 'chr', mode: 0o600, rdev: `${MISC_MAJOR}:${minor}` });
  const stats = steps.filter((s) => s.step === 'fstat');
  assert.deepEqual(stats.map((s) => s.via), STAT_VIAS);
  for (const s of stats) {
    assert.deepEqual(identity(s), want, s.via);
    assert.equal(s.size, 0, s.via);
    assert.equal(s.nlink, 1, s.via);
  }
  // The ioctls do not care.
  assert.deepEqual(steps.slice(-2).map(brief), ['set=1', 'get=1']);
});

test('fstat through a temporary node (same major:minor, other path) reports that node', rootOnly, () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'tmpnode-'));
  const node = path.join(dir, '.iommufd-node');
  mknod(node, MISC_MAJOR, minor, '0640');
  const { steps } = runProbe(['open', node, ...fstatSteps(['fstat', 'statx']), 'statat', ''], {
    device: charDev,
  });
  const want = identityOf(node);
  assert.equal(want.mode, 0o640);
  assert.notEqual(want.ino, identityOf(charDev).ino);
  for (const s of steps.slice(1)) assert.deepEqual(identity(s), { ...want, rdev: `${MISC_MAJOR}:${minor}` }, s.via);
});

test('a context passed over SCM_RIGHTS still fstats as the device', rootOnly, () => {
  const { steps } = runProbe(['open', charDev, 'pass', ...fstatSteps(['fstat', 'statx', 'fxstat']), 'get', 'end'], {
    device: charDev,
  });
  assert.deepEqual(steps.map(brief), ['open', 'pass', 'fstat', 'fstat', 'fstat', 'get=0', 'end']);
  for (const s of steps.slice(2, 5)) assert.deepEqual(identity(s), identityOf(charDev), s.via);
});

test('the node is recorded in the context: fstat needs neither FAKE_IOMMU_DEVICE nor the node; without the shim it is a memfd', rootOnly, () => {
  // The production sequence: make a node, open it, remove it, hand the fd on.
  const dir = fs.mkdtempSync(path.join(tmp, 'gone-'));
  const node = path.join(dir, 'iommu-tmp');
  mknod(node, MISC_MAJOR, minor);
  const want = { ...identityOf(node) };
  const script = [
    'exec 5<>"$NODE"',
    'rm "$NODE"',
    'env -u FAKE_IOMMU_DEVICE "$PROBE" fd 5 fstat fstat fstat statx',
    'env -u LD_PRELOAD "$PROBE" fd 5 fstat',
  ].join('\n');
  const r = spawnSync('bash', ['-c', script], {
    env: cleanEnv({ LD_PRELOAD: lib, FAKE_IOMMU_DEVICE: charDev, NODE: node, PROBE: probeBin }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  const steps = parseLines(r.stdout);
  assert.deepEqual(steps.map(brief), ['fd', 'fstat', 'fstat', 'fd', 'fstat']);
  assert.deepEqual(identity(steps[1]), want);
  assert.deepEqual(identity(steps[2]), want);
  assert.equal(steps[4].type, 'reg');
  assert.equal(steps[4].mode, 0o777);
  assert.equal(steps[4].nlink, 0);
});

test('fstat of fds that are not contexts is left alone', () => {
  const plain = path.join(tmp, 'plain-for-fstat');
  fs.writeFileSync(plain, 'abc', { mode: 0o644 });
  const { steps } = runProbe(
    [
      'open', '/dev/null', ...fstatSteps(['fstat', 'statx']),
      'open', plain, 'fstat',
      'memfd', 'fake-iommufd', ...fstatSteps(['fstat', 'fstatat', 'statx']), // the name alone is not enough
      'open', regDev, 'statat', '/dev/null', // a path given: that file, not the context
    ],
    { device: regDev },
  );
  assert.deepEqual(steps.map(brief), [
    'open', 'fstat', 'fstat', 'open', 'fstat', 'memfd', 'fstat', 'fstat', 'fstat', 'open', 'statat',
  ]);
  for (const i of [1, 2, 10]) assert.deepEqual(identity(steps[i]), identityOf('/dev/null'));
  assert.deepEqual(identity(steps[4]), identityOf(plain));
  assert.equal(steps[4].size, 3);
  for (const s of steps.slice(6, 9)) {
    assert.equal(s.type, 'reg', s.via);
    assert.equal(s.mode, 0o777, s.via);
    assert.equal(s.nlink, 0, s.via);
    assert.equal(`${s.rdev_major}:${s.rdev_minor}`, '0:0', s.via);
  }
});

test('fstat of a context from a regular-file fake: that regular file', () => {
  const want = identityOf(regDev);
  const { nlink } = fs.statSync(regDev);
  const { steps } = runProbe(['open', regDev, ...fstatSteps(), 'get'], { device: regDev });
  assert.deepEqual(want, { ...want, type: 'reg', mode: 0o600, rdev: '0:0' });
  const stats = steps.filter((s) => s.step === 'fstat');
  assert.equal(stats.length, STAT_VIAS.length);
  for (const s of stats) {
    assert.deepEqual(identity(s), want, s.via);
    assert.equal(s.size, 0, s.via);
    assert.equal(s.nlink, nlink, s.via);
  }
  assert.equal(brief(steps.at(-1)), 'get=0');
});

// ---- configuration ----

test('a regular file as the fake device: it and its hard links are contexts, other files are not', () => {
  const link = path.join(tmp, 'iommu-file-link');
  const plain = path.join(tmp, 'plain-file');
  fs.linkSync(regDev, link);
  fs.writeFileSync(plain, '');
  assert.deepEqual(
    probe(['open', regDev, 'set', 1, 'get', 'open', link, 'get', 'open', plain, 'get'], { device: regDev }),
    ['open', 'set=1', 'get=1', 'open', 'get=0', 'open', 'ENOTTY'],
  );
});

test('without FAKE_IOMMU_DEVICE nothing is intercepted', () => {
  assert.deepEqual(probe(['open', regDev, 'get'], { device: undefined }), ['open', 'ENOTTY']);
  if (isRoot) {
    // The node's misc minor has no driver here: the real kernel answers.
    assert.deepEqual(probe(['open', charDev], { device: undefined }), ['ENODEV']);
  }
});

// ---- scripts/with-fake-iommu ----

function runWrapper(args, env = {}) {
  return spawnSync(wrapper, args.map(String), { env: cleanEnv(env), encoding: 'utf8' });
}

test('with-fake-iommu --help prints the usage', () => {
  const r = runWrapper(['--help']);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^usage: with-fake-iommu \[--device PATH\] \[--privileged-uid UID\]/);
  assert.equal(runWrapper([]).status, 2);
});

test('with-fake-iommu makes the device and runs the command under the shim', () => {
  const dev = path.join(tmp, 'via-wrapper', 'iommu');
  const r = runWrapper(['--device', dev, '--privileged-uid', process.getuid(), '--', probeBin, 'open', dev, 'set', 1, 'get']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(parseLines(r.stdout).map(brief), ['open', 'set=1', 'get=1']);
  const st = fs.statSync(dev);
  if (isRoot) {
    assert.ok(st.isCharacterDevice());
    const mm = devMajorMinor(st.rdev);
    assert.equal(mm.major, MISC_MAJOR);
    assert.ok(!miscMinorsInUse().has(mm.minor), `minor ${mm.minor} is free`);
  } else {
    assert.ok(st.isFile());
  }
  // Without --, and without a privileged uid: SET is refused.
  const r2 = runWrapper(['--device', dev, probeBin, 'open', dev, 'set', 1]);
  assert.equal(r2.status, 0, r2.stderr);
  assert.deepEqual(parseLines(r2.stdout).map(brief), hasCapSysResource() ? ['open', 'set=1'] : ['open', 'EPERM']);
});

test('with-fake-iommu defaults the device under $TMPDIR and exports the environment', () => {
  const tmpdir = fs.mkdtempSync(path.join(tmp, 'tmpdir-'));
  const r = runWrapper(
    ['--privileged-uid', '0', '--privileged-uid', '4321', 'sh', '-c', 'printf "%s\\n" "$LD_PRELOAD" "$FAKE_IOMMU_DEVICE" "$FAKE_IOMMU_PRIVILEGED_UIDS"'],
    { TMPDIR: tmpdir, LD_PRELOAD: lib },
  );
  assert.equal(r.status, 0, r.stderr);
  const dev = path.join(fs.realpathSync(tmpdir), `fake-iommu-${process.getuid()}`, 'iommu');
  assert.deepEqual(r.stdout.split('\n'), [`${lib}:${lib}`, dev, '0,4321', '']);
  assert.ok(fs.existsSync(dev));
});
