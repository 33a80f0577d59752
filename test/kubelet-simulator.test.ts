/**
 * The kubelet simulator itself, against a tiny fake device plugin written
 * here with grpc-js, over real unix sockets in a scratch directory.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { deviceplugin, podresources } from '@iommufd-plugin/proto';
import { AdmissionError, isExtendedResourceName, KubeletSimulator, type SimulatorOptions } from './kubelet-simulator/kubelet-simulator';
import { scratchDir } from './support/scratch-dir';
import { ServiceProcess } from './support/service-process';

const RES = 'devices.example.com/fake';
const TIMEOUT = { timeout: 30_000 };

type Health = 'Healthy' | 'Unhealthy';

/** A device plugin with three devices whose health the test controls. */
class FakePlugin {
  readonly socketPath: string;
  devices = new Map<string, Health>([
    ['dev-0', 'Healthy'],
    ['dev-1', 'Healthy'],
    ['dev-2', 'Healthy'],
  ]);
  options: deviceplugin.DevicePluginOptions = { preStartRequired: false, getPreferredAllocationAvailable: false };
  preferredAnswer: (req: deviceplugin.ContainerPreferredAllocationRequest) => string[] = (r) => r.availableDeviceIDs.slice(0, r.allocationSize);
  /** Given the 0-based number of an Allocate call, the error to answer it with, if any. */
  allocateFails: (n: number) => Partial<grpc.StatusObject> | undefined = () => undefined;
  extraAllocateResponses = 0;
  readonly calls = {
    getDevicePluginOptions: 0,
    listAndWatch: 0,
    cancelledStreams: 0,
    allocate: [] as deviceplugin.AllocateRequest[],
    preferred: [] as deviceplugin.PreferredAllocationRequest[],
    preStart: [] as string[][],
  };
  private server?: grpc.Server;
  private readonly streams = new Set<grpc.ServerWritableStream<deviceplugin.Empty, deviceplugin.ListAndWatchResponse>>();

  constructor(
    readonly dir: string,
    readonly endpoint = 'fake.sock',
  ) {
    this.socketPath = join(dir, endpoint);
  }

  async serve(): Promise<void> {
    const server = new grpc.Server();
    const impl: deviceplugin.DevicePluginServer = {
      getDevicePluginOptions: (_call, cb) => {
        this.calls.getDevicePluginOptions++;
        cb(null, this.options);
      },
      listAndWatch: (call) => {
        this.calls.listAndWatch++;
        this.streams.add(call);
        call.on('cancelled', () => {
          this.calls.cancelledStreams++;
          this.streams.delete(call);
        });
        call.write(this.list());
      },
      getPreferredAllocation: (call, cb) => {
        this.calls.preferred.push(call.request);
        cb(null, { containerResponses: call.request.containerRequests.map((r) => ({ deviceIDs: this.preferredAnswer(r) })) });
      },
      allocate: (call, cb) => {
        const failure = this.allocateFails(this.calls.allocate.length);
        this.calls.allocate.push(call.request);
        if (failure) return cb(failure);
        const responses = call.request.containerRequests.map((r) => FakePlugin.allocation(this.dir, r.devicesIds));
        for (let i = 0; i < this.extraAllocateResponses; i++) responses.push(FakePlugin.allocation(this.dir, ['extra']));
        cb(null, { containerResponses: responses });
      },
      preStartContainer: (call, cb) => {
        this.calls.preStart.push(call.request.devicesIds);
        cb(null, {});
      },
    };
    server.addService(deviceplugin.DevicePluginService, impl);
    await new Promise<void>((ok, fail) => server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? fail(e) : ok())));
    this.server = server;
  }

  /** What Allocate answers for one container. */
  static allocation(dir: string, ids: string[]): deviceplugin.ContainerAllocateResponse {
    return deviceplugin.ContainerAllocateResponse.fromPartial({
      envs: { FAKE_DEVICES: ids.join(',') },
      mounts: [{ containerPath: '/var/run/fake/device.sock', hostPath: join(dir, `alloc-${ids.join('+')}.sock`), readOnly: false }],
    });
  }

  setHealth(id: string, health: Health): void {
    this.devices.set(id, health);
    for (const s of this.streams) s.write(this.list());
  }

  /** Ends every ListAndWatch stream normally (status OK). */
  endStreams(): void {
    for (const s of this.streams) s.end();
    this.streams.clear();
  }

  close(): void {
    this.server?.forceShutdown();
    this.server = undefined;
    this.streams.clear();
  }

  private list(): deviceplugin.ListAndWatchResponse {
    return { devices: [...this.devices].map(([ID, health]) => ({ ID, health, topology: undefined })) };
  }
}

function registerWith(dir: string, req: Partial<deviceplugin.RegisterRequest> = {}): Promise<void> {
  const client = new deviceplugin.RegistrationClient(`unix:${join(dir, 'kubelet.sock')}`, grpc.credentials.createInsecure());
  const request = deviceplugin.RegisterRequest.fromPartial({
    version: 'v1beta1',
    endpoint: 'fake.sock',
    resourceName: RES,
    options: { preStartRequired: false, getPreferredAllocationAvailable: false },
    ...req,
  });
  return new Promise((ok, fail) =>
    client.register(request, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err) => {
      client.close();
      if (err) fail(err);
      else ok();
    }),
  );
}

async function refusal(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  assert.fail('expected the call to be refused');
}

/** One call on the pod-resources socket, with a client of its own. */
function podResourcesCall<Res>(socket: string, call: (c: podresources.PodResourcesListerClient, cb: (e: grpc.ServiceError | null, r: Res) => void) => void): Promise<Res> {
  const client = new podresources.PodResourcesListerClient(`unix:${socket}`, grpc.credentials.createInsecure());
  return new Promise<Res>((ok, fail) =>
    call(client, (err, res) => {
      client.close();
      if (err) fail(err);
      else ok(res);
    }),
  );
}
const deadline = (): Partial<grpc.CallOptions> => ({ deadline: Date.now() + 5000 });
const list = (socket: string) => podResourcesCall<podresources.ListPodResourcesResponse>(socket, (c, cb) => c.list({}, new grpc.Metadata(), deadline(), cb));
const allocatable = (socket: string) =>
  podResourcesCall<podresources.AllocatableResourcesResponse>(socket, (c, cb) => c.getAllocatableResources({}, new grpc.Metadata(), deadline(), cb));
const getPod = (socket: string, podName: string, podNamespace: string) =>
  podResourcesCall<podresources.GetPodResourcesResponse>(socket, (c, cb) => c.get({ podName, podNamespace }, new grpc.Metadata(), deadline(), cb));

const inode = (path: string): number => lstatSync(path).ino;
const one = (id: string): podresources.ContainerDevices => ({ resourceName: RES, deviceIds: [id], topology: undefined });

/** A scratch directory, a started simulator and a serving (unregistered) fake plugin. */
function setup(extra: Partial<SimulatorOptions> = {}) {
  const ctx = {} as { dir: string; cleanup: () => void; sim: KubeletSimulator; plugin: FakePlugin; podSocket: string };
  beforeEach(async () => {
    const scratch = scratchDir('kubelet-sim');
    ctx.dir = join(scratch.path, 'device-plugins');
    ctx.podSocket = join(scratch.path, 'pod-resources', 'kubelet.sock');
    ctx.cleanup = scratch.cleanup;
    ctx.sim = new KubeletSimulator({ devicePluginsDir: ctx.dir, podResourcesSocket: ctx.podSocket, ...extra });
    await ctx.sim.start();
    ctx.plugin = new FakePlugin(ctx.dir);
    await ctx.plugin.serve();
  });
  afterEach(async () => {
    ctx.plugin.close();
    await ctx.sim.stop();
    ctx.cleanup();
  });
  return ctx;
}

async function registered(ctx: ReturnType<typeof setup>): Promise<void> {
  await registerWith(ctx.dir);
  await ctx.sim.waitFor((s) => s.healthyDevices(RES).length === 3 && s.plugin(RES)!.connected);
}

describe('kubelet simulator: registration', TIMEOUT, () => {
  const ctx = setup({ dialTimeoutMs: 300 });

  it('refuses an unsupported version with the kubelet error, and never dials', async () => {
    const err = await refusal(registerWith(ctx.dir, { version: 'v1alpha1' }));
    assert.equal(err.code, grpc.status.UNKNOWN);
    assert.equal(err.details, 'requested API version "v1alpha1" is not supported by kubelet. Supported version is ["v1beta1"]');
    assert.equal(ctx.sim.plugin(RES), undefined);
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 0);
    assert.deepEqual(
      ctx.sim.events.filter((e) => e.event === 'register_refused').map((e) => e.error),
      ['requested API version "v1alpha1" is not supported by kubelet. Supported version is ["v1beta1"]'],
    );
  });

  it('refuses resource names that are not extended resource names', async () => {
    const bad = [
      'fake',
      'kubernetes.io/fake',
      'devices.kubernetes.io/fake',
      'requests.example.com/fake',
      'Example.com/fake',
      'example.com/-fake',
      'example.com/fake/more',
      `example.com/${'a'.repeat(64)}`,
      '/fake',
      'example.com/',
    ];
    for (const resourceName of bad) {
      const err = await refusal(registerWith(ctx.dir, { resourceName }));
      assert.equal(err.code, grpc.status.UNKNOWN, resourceName);
      assert.equal(err.details, `the ResourceName "${resourceName}" is invalid`);
    }
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 0);
  });

  it('judges extended resource names as the kubelet does', () => {
    for (const good of ['devices.kubevirt.io/iommufd', 'example.com/fake', 'a.b-c.d/x_y.z-1', `example.com/${'a'.repeat(63)}`, 'nvidia.com/gpu']) {
      assert.equal(isExtendedResourceName(good), true, good);
    }
    for (const bad of ['cpu', 'kubernetes.io/x', 'x.kubernetes.io/y', 'example.com/x.', 'exa_mple.com/x', `${'a'.repeat(245)}/x`]) {
      assert.equal(isExtendedResourceName(bad), false, bad);
    }
  });

  it('refuses endpoints that are not plain socket file names', async () => {
    for (const endpoint of ['../fake.sock', 'sub/fake.sock', '', join(ctx.dir, 'fake.sock'), '..']) {
      const err = await refusal(registerWith(ctx.dir, { endpoint }));
      assert.equal(err.code, grpc.status.UNKNOWN, endpoint);
      assert.equal(err.details, `the endpoint "${endpoint}" is not a socket file name in ${ctx.dir} (the kubelet simulator accepts only plain file names)`);
    }
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 0);
  });

  it('refuses a registration when nothing serves the endpoint (a current kubelet dials inside Register)', async () => {
    const err = await refusal(registerWith(ctx.dir, { endpoint: 'nobody.sock' }));
    assert.equal(err.code, grpc.status.UNKNOWN);
    assert.match(err.details, /^failed to dial device plugin: /);
    assert.equal(ctx.sim.plugin(RES), undefined);
  });

  it('dials back, asks GetDevicePluginOptions before replying, and sees 3 healthy devices', async () => {
    ctx.plugin.options = { preStartRequired: true, getPreferredAllocationAvailable: true };
    const before = Date.now();
    await registerWith(ctx.dir, { options: { preStartRequired: false, getPreferredAllocationAvailable: false } });
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 1, 'options asked before Register returned');
    await ctx.sim.waitFor((s) => s.plugin(RES)!.connected && s.healthyDevices(RES).length === 3);
    const view = ctx.sim.plugin(RES)!;
    assert.equal(view.resourceName, RES);
    assert.equal(view.endpoint, 'fake.sock');
    assert.deepEqual(view.options, { preStartRequired: true, getPreferredAllocationAvailable: true });
    assert.deepEqual(view.registerOptions, { preStartRequired: false, getPreferredAllocationAvailable: false });
    assert.deepEqual(
      view.devices,
      new Map([
        ['dev-0', 'Healthy'],
        ['dev-1', 'Healthy'],
        ['dev-2', 'Healthy'],
      ]),
    );
    assert.equal(view.connected, true);
    assert.equal(view.registrations, 1);
    assert.ok(view.registeredAt >= before && view.registeredAt <= Date.now());
    assert.deepEqual(ctx.sim.healthyDevices(RES), ['dev-0', 'dev-1', 'dev-2']);
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 1);
    assert.equal(ctx.plugin.calls.listAndWatch, 1);
  });

  it('sees a health flip both ways', async () => {
    await registered(ctx);
    ctx.plugin.setHealth('dev-1', 'Unhealthy');
    await ctx.sim.waitFor((s) => s.plugin(RES)!.devices.get('dev-1') === 'Unhealthy');
    assert.deepEqual(ctx.sim.healthyDevices(RES), ['dev-0', 'dev-2']);
    assert.deepEqual(
      ctx.sim.plugin(RES)!.devices,
      new Map([
        ['dev-0', 'Healthy'],
        ['dev-1', 'Unhealthy'],
        ['dev-2', 'Healthy'],
      ]),
    );
    ctx.plugin.setHealth('dev-1', 'Healthy');
    await ctx.sim.waitFor((s) => s.healthyDevices(RES).length === 3);
    assert.deepEqual(ctx.sim.healthyDevices(RES), ['dev-0', 'dev-1', 'dev-2']);
  });

  it('marks every device unhealthy when the plugin ends its ListAndWatch stream', async () => {
    await registered(ctx);
    ctx.plugin.endStreams();
    await ctx.sim.waitFor((s) => !s.plugin(RES)!.connected);
    assert.deepEqual(
      ctx.sim.plugin(RES)!.devices,
      new Map([
        ['dev-0', 'Unhealthy'],
        ['dev-1', 'Unhealthy'],
        ['dev-2', 'Unhealthy'],
      ]),
    );
    assert.deepEqual(ctx.sim.healthyDevices(RES), []);
    const ended = ctx.sim.events.filter((e) => e.event === 'list_and_watch_ended');
    assert.deepEqual(
      ended.map((e) => [e.resourceName, e.code]),
      [[RES, 'Ok']],
    );
  });

  it('marks every device unhealthy when the plugin process goes away', async () => {
    await registered(ctx);
    ctx.plugin.close();
    await ctx.sim.waitFor((s) => !s.plugin(RES)!.connected);
    assert.deepEqual(ctx.sim.healthyDevices(RES), []);
    assert.deepEqual(
      ctx.sim.plugin(RES)!.devices,
      new Map([
        ['dev-0', 'Unhealthy'],
        ['dev-1', 'Unhealthy'],
        ['dev-2', 'Unhealthy'],
      ]),
    );
    // A grpc-js server shut down under an open stream ends it with CANCELLED.
    assert.deepEqual(
      ctx.sim.events.filter((e) => e.event === 'list_and_watch_ended').map((e) => [e.code, e.details]),
      [['Cancelled', 'Call cancelled']],
    );
  });

  it('replaces the old connection when the same resource registers again', async () => {
    await registered(ctx);
    await registerWith(ctx.dir);
    await ctx.sim.waitFor((s) => s.plugin(RES)!.registrations === 2 && s.plugin(RES)!.connected);
    await ctx.sim.waitFor(() => ctx.plugin.calls.cancelledStreams === 1);
    assert.equal(ctx.plugin.calls.listAndWatch, 2);
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 2);
    assert.deepEqual(ctx.sim.healthyDevices(RES), ['dev-0', 'dev-1', 'dev-2']);
    assert.equal(ctx.sim.events.filter((e) => e.event === 'plugin_replaced').length, 1);
    assert.equal(ctx.sim.events.filter((e) => e.event === 'list_and_watch_ended').length, 0, 'the old stream ending changes nothing');
    // The new stream is the live one: a flip still arrives.
    ctx.plugin.setHealth('dev-2', 'Unhealthy');
    await ctx.sim.waitFor((s) => s.healthyDevices(RES).join() === 'dev-0,dev-1');
  });

  it('waitFor rejects with the state it saw', async () => {
    await assert.rejects(ctx.sim.waitFor((s) => s.plugin('example.com/none')!.connected, 50), (err: Error) => {
      assert.match(err.message, /^kubelet simulator: timed out after 50 ms waiting for /);
      assert.match(err.message, /the predicate last threw: /);
      assert.match(err.message, /running: true; plugins: \[\]/);
      return true;
    });
  });
});

describe('kubelet simulator: registration, old kubelets (reply before dial)', TIMEOUT, () => {
  const ctx = setup({ dialTimeoutMs: 300, replyBeforeDial: true });

  it('replies first and reports a failed dial afterwards', async () => {
    await registerWith(ctx.dir, { endpoint: 'nobody.sock' });
    await ctx.sim.waitFor((s) => s.events.some((e) => e.event === 'plugin_connect_failed'));
    const failed = ctx.sim.events.find((e) => e.event === 'plugin_connect_failed')!;
    assert.equal(failed.resourceName, RES);
    assert.match(String(failed.error), /^failed to dial device plugin: /);
    assert.equal(ctx.sim.plugin(RES), undefined);
  });

  it('connects after replying', async () => {
    await registered(ctx);
    assert.equal(ctx.plugin.calls.getDevicePluginOptions, 1);
  });
});

describe('kubelet simulator: admission and pod resources', TIMEOUT, () => {
  const ctx = setup();

  it('gives a pod only healthy, unassigned devices, one Allocate per container, and lists it', async () => {
    await registered(ctx);
    ctx.plugin.setHealth('dev-0', 'Unhealthy');
    await ctx.sim.waitFor((s) => s.healthyDevices(RES).join() === 'dev-1,dev-2');

    const pod = await ctx.sim.admitPod({
      name: 'vm-a',
      resourceName: RES,
      containers: [
        { name: 'compute', request: 1 },
        { name: 'sidecar', request: 0 },
        { name: 'helper', request: 1 },
      ],
    });
    assert.deepEqual(pod, {
      name: 'vm-a',
      namespace: 'default',
      containers: [
        { name: 'compute', deviceIds: ['dev-1'], response: FakePlugin.allocation(ctx.dir, ['dev-1']) },
        { name: 'sidecar', deviceIds: [], response: deviceplugin.ContainerAllocateResponse.create() },
        { name: 'helper', deviceIds: ['dev-2'], response: FakePlugin.allocation(ctx.dir, ['dev-2']) },
      ],
    });
    assert.deepEqual(ctx.plugin.calls.allocate, [{ containerRequests: [{ devicesIds: ['dev-1'] }] }, { containerRequests: [{ devicesIds: ['dev-2'] }] }]);
    assert.deepEqual(ctx.plugin.calls.preferred, []);
    assert.deepEqual(ctx.plugin.calls.preStart, []);

    const expected: podresources.PodResources = {
      name: 'vm-a',
      namespace: 'default',
      containers: [
        { name: 'compute', devices: [one('dev-1')] },
        { name: 'sidecar', devices: [] },
        { name: 'helper', devices: [one('dev-2')] },
      ],
    };
    assert.deepEqual(await list(ctx.podSocket), { podResources: [expected] });
    assert.deepEqual(await getPod(ctx.podSocket, 'vm-a', 'default'), { podResources: expected });
    const err = await refusal(getPod(ctx.podSocket, 'vm-b', 'default'));
    assert.equal(err.code, grpc.status.UNKNOWN);
    assert.equal(err.details, 'pod vm-b in namespace default not found');
    // Allocatable is every healthy device, assigned or not.
    assert.deepEqual(await allocatable(ctx.podSocket), { devices: [one('dev-1'), one('dev-2')] });
  });

  it('refuses admission beyond capacity, and admits again once deletePod frees devices', async () => {
    await registered(ctx);
    const a = await ctx.sim.admitPod({ name: 'vm-a', namespace: 'ns1', resourceName: RES, containers: [{ name: 'compute', request: 2 }] });
    assert.deepEqual(a.containers[0]!.deviceIds, ['dev-0', 'dev-1']);

    await assert.rejects(ctx.sim.admitPod({ name: 'vm-b', namespace: 'ns1', resourceName: RES, containers: [{ name: 'compute', request: 2 }] }), (err: unknown) => {
      assert.ok(err instanceof AdmissionError);
      assert.equal(err.reason, 'UnexpectedAdmissionError');
      assert.equal(err.message, `Allocate failed due to requested number of devices unavailable for ${RES}. Requested: 2, Available: 1, which is unexpected`);
      return true;
    });
    assert.equal(ctx.plugin.calls.allocate.length, 1, 'no Allocate for a refused pod');
    assert.deepEqual((await list(ctx.podSocket)).podResources.map((p) => p.name), ['vm-a']);

    ctx.sim.deletePod('ns1', 'vm-a');
    assert.deepEqual(await list(ctx.podSocket), { podResources: [] });
    const b = await ctx.sim.admitPod({ name: 'vm-b', namespace: 'ns1', resourceName: RES, containers: [{ name: 'compute', request: 2 }] });
    assert.deepEqual(b.containers[0]!.deviceIds, ['dev-0', 'dev-1']);
    assert.deepEqual(ctx.plugin.calls.allocate[1], { containerRequests: [{ devicesIds: ['dev-0', 'dev-1'] }] });
  });

  it('admits pods one at a time, so concurrent admissions never share a device', async () => {
    await registered(ctx);
    const pods = await Promise.all(
      ['p0', 'p1', 'p2'].map((name) => ctx.sim.admitPod({ name, resourceName: RES, containers: [{ name: 'c', request: 1 }] })),
    );
    assert.deepEqual(
      pods.map((p) => p.containers[0]!.deviceIds[0]),
      ['dev-0', 'dev-1', 'dev-2'],
    );
  });

  it('refuses a pod for a resource nobody registered', async () => {
    await assert.rejects(ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 1 }] }), (err: unknown) => {
      assert.ok(err instanceof AdmissionError);
      assert.equal(err.reason, `OutOf${RES}`);
      assert.equal(err.message, `Node didn't have enough resource: ${RES}, requested: 1, used: 0, capacity: 0`);
      return true;
    });
  });

  it('leaves the devices unassigned when Allocate fails', async () => {
    await registered(ctx);
    ctx.plugin.allocateFails = () => ({ code: grpc.status.UNAVAILABLE, details: 'broker unreachable' });
    await assert.rejects(ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 1 }] }), {
      name: 'AdmissionError',
      message: 'Allocate failed due to rpc error: code = Unavailable desc = broker unreachable, which is unexpected',
    });
    assert.deepEqual(await list(ctx.podSocket), { podResources: [] });
    ctx.plugin.allocateFails = () => undefined;
    const pod = await ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 3 }] });
    assert.deepEqual(pod.containers[0]!.deviceIds, ['dev-0', 'dev-1', 'dev-2']);
  });

  it('frees the devices of earlier containers when a later container fails', async () => {
    await registered(ctx);
    ctx.plugin.allocateFails = (n) => (n === 1 ? { code: grpc.status.INTERNAL, details: 'second fails' } : undefined);
    await assert.rejects(
      ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'a', request: 1 }, { name: 'b', request: 1 }] }),
      { message: 'Allocate failed due to rpc error: code = Internal desc = second fails, which is unexpected' },
    );
    assert.deepEqual(ctx.plugin.calls.allocate, [{ containerRequests: [{ devicesIds: ['dev-0'] }] }, { containerRequests: [{ devicesIds: ['dev-1'] }] }]);
    assert.deepEqual(await list(ctx.podSocket), { podResources: [] });
    const pod = await ctx.sim.admitPod({ name: 'vm-b', resourceName: RES, containers: [{ name: 'c', request: 3 }] });
    assert.deepEqual(pod.containers[0]!.deviceIds, ['dev-0', 'dev-1', 'dev-2']);
  });

  it('refuses an Allocate answer with more container responses than requests', async () => {
    await registered(ctx);
    ctx.plugin.extraAllocateResponses = 1;
    await assert.rejects(ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 1 }] }), {
      message: 'Allocate failed due to 2 container responses to an Allocate call for 1 container (the kubelet would use the first; the simulator refuses), which is unexpected',
    });
    assert.deepEqual(await list(ctx.podSocket), { podResources: [] });
  });

  it('asks GetPreferredAllocation when the plugin offers it, and uses the answer', async () => {
    ctx.plugin.options = { preStartRequired: false, getPreferredAllocationAvailable: true };
    ctx.plugin.preferredAnswer = () => ['dev-2'];
    await registered(ctx);
    const pod = await ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 1 }] });
    assert.deepEqual(pod.containers[0]!.deviceIds, ['dev-2']);
    assert.deepEqual(ctx.plugin.calls.preferred, [
      { containerRequests: [{ availableDeviceIDs: ['dev-0', 'dev-1', 'dev-2'], mustIncludeDeviceIDs: [], allocationSize: 1 }] },
    ]);
    assert.deepEqual(ctx.plugin.calls.allocate, [{ containerRequests: [{ devicesIds: ['dev-2'] }] }]);
    assert.equal(ctx.sim.events.filter((e) => e.event === 'preferred_allocation_mismatch').length, 0);

    // An answer outside the available set is noted and, as in the kubelet, made up from the rest.
    ctx.plugin.preferredAnswer = () => ['dev-2', 'dev-9'];
    const pod2 = await ctx.sim.admitPod({ name: 'vm-b', resourceName: RES, containers: [{ name: 'compute', request: 1 }] });
    assert.deepEqual(pod2.containers[0]!.deviceIds, ['dev-0']);
    const mismatch = ctx.sim.events.filter((e) => e.event === 'preferred_allocation_mismatch');
    assert.equal(mismatch.length, 1);
    assert.deepEqual(mismatch[0]!.notAvailable, ['dev-2', 'dev-9']);
  });

  it('calls PreStartContainer with each container’s devices when the plugin requires it', async () => {
    ctx.plugin.options = { preStartRequired: true, getPreferredAllocationAvailable: false };
    await registered(ctx);
    await ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'a', request: 2 }, { name: 'b', request: 1 }] });
    assert.deepEqual(ctx.plugin.calls.preStart, [['dev-0', 'dev-1'], ['dev-2']]);
  });
});

describe('kubelet simulator: restart and stop', TIMEOUT, () => {
  const ctx = setup();

  it('restart deletes every socket (the plugin’s too), keeps other files, and serves a new kubelet.sock', async () => {
    await registered(ctx);
    const kubeletSock = join(ctx.dir, 'kubelet.sock');
    const before = inode(kubeletSock);
    writeFileSync(join(ctx.dir, 'kubelet_internal_checkpoint'), '{}');
    mkdirSync(join(ctx.dir, 'subdir'));

    await ctx.sim.restart();

    assert.equal(existsSync(ctx.plugin.socketPath), false, 'the plugin socket is gone');
    assert.equal(lstatSync(kubeletSock).isSocket(), true);
    assert.notEqual(inode(kubeletSock), before, 'a new kubelet.sock');
    assert.equal(existsSync(join(ctx.dir, 'kubelet_internal_checkpoint')), true);
    assert.equal(existsSync(join(ctx.dir, 'subdir')), true);
    const view = ctx.sim.plugin(RES)!;
    assert.equal(view.connected, false);
    assert.equal(view.devices.size, 0, 'devices unknown until the plugin registers again');
    assert.deepEqual(ctx.sim.healthyDevices(RES), []);
    await ctx.sim.waitFor(() => ctx.plugin.calls.cancelledStreams === 1);
    assert.deepEqual(
      ctx.sim.events.filter((e) => e.event === 'socket_removed').map((e) => e.path),
      [ctx.plugin.socketPath],
    );

    // The plugin notices, serves again (closing its old server first: grpc-js would unlink the new socket otherwise) and re-registers.
    ctx.plugin.close();
    await ctx.plugin.serve();
    await registerWith(ctx.dir);
    await ctx.sim.waitFor((s) => s.plugin(RES)!.connected && s.healthyDevices(RES).length === 3);
    assert.equal(ctx.sim.plugin(RES)!.registrations, 2);
  });

  it('restart is safe to call again and again, even concurrently', async () => {
    await registered(ctx);
    await ctx.sim.restart();
    await Promise.all([ctx.sim.restart(), ctx.sim.restart()]);
    await ctx.sim.restart();
    assert.equal(lstatSync(join(ctx.dir, 'kubelet.sock')).isSocket(), true);
    assert.equal(ctx.sim.events.filter((e) => e.event === 'serving').length, 5);
    ctx.plugin.close();
    await ctx.plugin.serve();
    await registerWith(ctx.dir);
    await ctx.sim.waitFor((s) => s.plugin(RES)!.connected && s.healthyDevices(RES).length === 3);
  });

  it('admitted pods survive a restart, and pod resources is served on a new socket', async () => {
    await registered(ctx);
    await ctx.sim.admitPod({ name: 'vm-a', resourceName: RES, containers: [{ name: 'compute', request: 1 }] });
    const before = inode(ctx.podSocket);
    await ctx.sim.restart();
    assert.notEqual(inode(ctx.podSocket), before);
    assert.deepEqual(await list(ctx.podSocket), {
      podResources: [{ name: 'vm-a', namespace: 'default', containers: [{ name: 'compute', devices: [one('dev-0')] }] }],
    });
    assert.deepEqual(await allocatable(ctx.podSocket), { devices: [] });
  });

  it('stop removes its sockets and closes the plugin stream; start serves again', async () => {
    await registered(ctx);
    await ctx.sim.stop();
    assert.equal(existsSync(join(ctx.dir, 'kubelet.sock')), false);
    assert.equal(existsSync(ctx.podSocket), false);
    assert.equal(existsSync(ctx.plugin.socketPath), true, 'stop is not a restart: plugin sockets stay');
    await ctx.sim.waitFor(() => ctx.plugin.calls.cancelledStreams === 1);
    await ctx.sim.stop();
    await assert.rejects(ctx.sim.admitPod({ name: 'x', resourceName: RES, containers: [] }), { reason: 'NotRunning' });
    await ctx.sim.start();
    await registerWith(ctx.dir);
    await ctx.sim.waitFor((s) => s.plugin(RES)!.connected);
  });
});

describe('kubelet simulator: as its own process', TIMEOUT, () => {
  it('serves, logs JSON events, restarts on SIGHUP, and exits cleanly on SIGTERM', async () => {
    const scratch = scratchDir('kubelet-sim-cli');
    const dir = join(scratch.path, 'device-plugins');
    const podSocket = join(scratch.path, 'pod-resources', 'kubelet.sock');
    const proc = new ServiceProcess(process.execPath, [join(__dirname, 'kubelet-simulator', 'main.js'), '--device-plugins-dir', dir, '--pod-resources-socket', podSocket], process.env);
    const plugin = new FakePlugin(dir);
    try {
      const serving = await proc.waitForEvent('serving');
      assert.equal(serving.kubeletSocket, join(dir, 'kubelet.sock'));
      await plugin.serve();
      await registerWith(dir);
      const devices = await proc.waitForEvent('devices');
      assert.deepEqual(devices.healthy, ['dev-0', 'dev-1', 'dev-2']);

      process.kill(proc.pid, 'SIGHUP');
      await proc.waitForLog((l) => l.event === 'socket_removed' && l.path === plugin.socketPath, 5000, 'plugin socket removed');
      await proc.waitForLog((l) => l.event === 'serving' && l.kubeletSocketInode !== serving.kubeletSocketInode, 5000, 'second serving');
      assert.equal(existsSync(plugin.socketPath), false);

      const exit = await proc.stop('SIGTERM');
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(proc.logs.some((l) => l.event === 'exit_forced'), false);
      assert.equal(proc.logs.at(-1)!.event, 'stopped');
      assert.equal(existsSync(join(dir, 'kubelet.sock')), false);
      assert.equal(existsSync(podSocket), false);
    } finally {
      plugin.close();
      await proc.stop('SIGKILL');
      scratch.cleanup();
    }
  });

  it('with --admit-pods, admits that many pods once the resource has healthy devices, one per interval', async () => {
    const scratch = scratchDir('kubelet-sim-admit');
    const dir = join(scratch.path, 'device-plugins');
    const podSocket = join(scratch.path, 'pod-resources', 'kubelet.sock');
    const main = join(__dirname, 'kubelet-simulator', 'main.js');
    const args = ['--device-plugins-dir', dir, '--pod-resources-socket', podSocket, '--resource-name', RES, '--admit-pods', '2', '--admit-interval-ms', '100'];
    const proc = new ServiceProcess(process.execPath, [main, ...args], process.env);
    const plugin = new FakePlugin(dir);
    try {
      await proc.waitForEvent('serving');
      await sleep(300);
      assert.equal(proc.logs.some((l) => l.event === 'pod_admitted'), false, 'nothing is admitted before the resource has devices');
      await plugin.serve();
      await registerWith(dir);
      const admitted = await proc.waitForCount((l) => l.event === 'pod_admitted', 2);
      assert.deepEqual(admitted.map((l) => l.pod), ['vm-1', 'vm-2']);
      assert.equal(plugin.calls.allocate.length, 2, 'each admission called Allocate');
      await sleep(300);
      assert.equal(proc.logs.filter((l) => l.event === 'pod_admitted').length, 2, 'no more than asked for');
      assert.deepEqual(await proc.stop('SIGTERM'), { code: 0, signal: null });
    } finally {
      plugin.close();
      await proc.stop('SIGKILL');
      scratch.cleanup();
    }
  });

  it('refuses a bad --admit-pods with exit code 2', async () => {
    const run = spawnSync(process.execPath, [join(__dirname, 'kubelet-simulator', 'main.js'), '--admit-pods', 'many'], { encoding: 'utf8' });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /--admit-pods must be a whole number/);
  });
});
