/**
 * A stand-in for the kubelet, as a device plugin sees it: the Registration
 * service at <dir>/kubelet.sock, the dial back to the plugin, ListAndWatch,
 * Allocate at pod admission, the pod-resources API, and a "restart" that
 * wipes the sockets the way a starting kubelet does. Everything goes over
 * real unix sockets with grpc-js.
 *
 * Where the real kubelet's behaviour is known it is followed, down to the
 * error texts; where the simulator is deliberately stricter or simpler it
 * says so (see README.md next to this file).
 */
import { linkSync, lstatSync, mkdirSync, readdirSync, unlinkSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { deviceplugin, podresources } from '@iommufd-plugin/proto';

export type DeviceHealth = 'Healthy' | 'Unhealthy';

export interface SimulatorOptions {
  /** Serves Registration at <dir>/kubelet.sock; plugins' sockets live here too. */
  devicePluginsDir: string;
  /** Serves v1.PodResourcesLister here. */
  podResourcesSocket: string;
  /** Called for every event as it is recorded (the CLI prints them as JSON lines). */
  log?: (event: string, fields: Record<string, unknown>) => void;
  /** Deadline of every unary call to a plugin (default 10 s). */
  callTimeoutMs?: number;
  /** How long Register waits for the plugin's socket to accept (default 10 s, as the kubelet's blocking dial). */
  dialTimeoutMs?: number;
  /**
   * Current kubelets (1.26+) dial the plugin and call GetDevicePluginOptions
   * *inside* Register and only then reply, so a plugin that is not serving yet
   * gets an error back. Older kubelets replied first and dialled afterwards.
   * Default false: behave like a current kubelet.
   */
  replyBeforeDial?: boolean;
}

export interface PluginView {
  resourceName: string;
  endpoint: string;
  /** The answer to GetDevicePluginOptions (what the kubelet acts on). */
  options: { preStartRequired: boolean; getPreferredAllocationAvailable: boolean };
  /** What came in RegisterRequest.options (read by old kubelets only). */
  registerOptions: deviceplugin.DevicePluginOptions | undefined;
  /** Latest ListAndWatch state. Empty after a restart: unknown until the plugin registers again. */
  devices: Map<string, DeviceHealth>;
  /** A ListAndWatch stream is open (headers or a message came back). */
  connected: boolean;
  /** Time of the latest successful registration (ms since the epoch). */
  registeredAt: number;
  /** Successful Register calls for this resource (refused ones are only in `events`). */
  registrations: number;
}

export interface PodSpec {
  name: string;
  namespace?: string;
  containers: Array<{ name: string; request: number }>;
  resourceName: string;
}

export interface AdmittedPod {
  name: string;
  namespace: string;
  containers: Array<{ name: string; deviceIds: string[]; response: deviceplugin.ContainerAllocateResponse }>;
}

export interface SimulatorEvent {
  event: string;
  at: number;
  [k: string]: unknown;
}

/** A refused admission. `reason` is the kubelet's pod status reason. */
export class AdmissionError extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
    this.name = 'AdmissionError';
  }
}

const SUPPORTED_VERSION = 'v1beta1';
const DEFAULT_TIMEOUT_MS = 10_000;
const WAIT_POLL_MS = 20;

const DNS1123_LABEL = '[a-z0-9]([-a-z0-9]*[a-z0-9])?';
const DNS1123_SUBDOMAIN = new RegExp(`^${DNS1123_LABEL}(\\.${DNS1123_LABEL})*$`);
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

/**
 * The kubelet's check on a device plugin's resource name (v1helper.IsExtendedResourceName):
 * not a native resource (it must have a "/", and must not contain "kubernetes.io/"),
 * not starting with "requests.", and "requests.<name>" must be a qualified name: a DNS-1123
 * subdomain prefix of at most 253 characters, "/", and a name of at most 63 characters.
 */
export function isExtendedResourceName(name: string): boolean {
  if (!name.includes('/') || name.includes('kubernetes.io/')) return false;
  if (name.startsWith('requests.')) return false;
  const parts = `requests.${name}`.split('/');
  if (parts.length !== 2) return false;
  const [prefix, local] = parts as [string, string];
  if (prefix.length === 0 || prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix)) return false;
  return local.length > 0 && local.length <= 63 && QUALIFIED_NAME.test(local);
}

/** The simulator's own, stricter, endpoint check: a plain file name inside the directory. */
export function isPlainSocketName(endpoint: string): boolean {
  return endpoint.length > 0 && endpoint !== '.' && endpoint !== '..' && !endpoint.includes('/') && !endpoint.includes('\0');
}

const GO_CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(grpc.status)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v, k.toLowerCase().replace(/(^|_)([a-z])/g, (_m, _u, c: string) => c.toUpperCase())]),
);

/** An error as grpc-go prints it: `rpc error: code = Unknown desc = ...`. */
function rpcErrorText(err: unknown): string {
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e?.code === 'number') return `rpc error: code = ${GO_CODE_NAMES[e.code] ?? e.code} desc = ${e.details ?? ''}`;
  return String((err as Error)?.message ?? err);
}

/** A handler error as a Go kubelet returns it: a plain error, which gRPC sends as UNKNOWN. */
function kubeletError(message: string): grpc.ServerErrorResponse {
  return Object.assign(new Error(message), { code: grpc.status.UNKNOWN, details: message });
}

function unary<Req, Res>(
  client: grpc.Client,
  method: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise((resolvePromise, reject) => {
    method.call(client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolvePromise(res)));
  });
}

function socketInode(path: string): number | undefined {
  try {
    const st = lstatSync(path);
    return st.isSocket() ? st.ino : undefined;
  } catch {
    return undefined;
  }
}

interface Connection {
  id: number;
  client: deviceplugin.DevicePluginClient;
  stream?: grpc.ClientReadableStream<deviceplugin.ListAndWatchResponse>;
  /** False once replaced, disconnected, or forgotten: its stream's end then changes nothing. */
  current: boolean;
}

interface PluginState {
  view: PluginView;
  topology: Map<string, deviceplugin.TopologyInfo | undefined>;
  conn?: Connection;
}

interface PodRecord {
  name: string;
  namespace: string;
  resourceName: string;
  containers: Array<{
    name: string;
    deviceIds: string[];
    topology: Array<deviceplugin.TopologyInfo | undefined>;
    response: deviceplugin.ContainerAllocateResponse;
  }>;
}

interface Waiter {
  check: () => void;
}

export class KubeletSimulator {
  readonly events: SimulatorEvent[] = [];

  private readonly dir: string;
  private readonly kubeletSocket: string;
  private readonly podResourcesSocket: string;
  private readonly callTimeoutMs: number;
  private readonly dialTimeoutMs: number;
  private readonly plugins = new Map<string, PluginState>();
  private readonly pods = new Map<string, PodRecord>();
  private readonly waiters = new Set<Waiter>();
  private registrationServer?: grpc.Server;
  private podResourcesServer?: grpc.Server;
  private kubeletSocketInode?: number;
  private podResourcesInode?: number;
  private running = false;
  /** Bumped whenever serving stops, so that work begun before (a slow Register) is dropped. */
  private epoch = 0;
  private nextConnId = 1;
  private lifecycle: Promise<void> = Promise.resolve();
  private admission: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: SimulatorOptions) {
    this.dir = resolve(options.devicePluginsDir);
    this.kubeletSocket = join(this.dir, 'kubelet.sock');
    this.podResourcesSocket = resolve(options.podResourcesSocket);
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.dialTimeoutMs = options.dialTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Creates the directory if needed, then serves kubelet.sock and the pod-resources socket. */
  start(): Promise<void> {
    return this.inLifecycle(async () => {
      if (this.running) return;
      mkdirSync(this.dir, { recursive: true });
      // A stale socket left by a killed process would make the bind fail (EADDRINUSE).
      this.removeIfSocket(this.kubeletSocket);
      this.removeIfSocket(this.podResourcesSocket);
      await this.serve();
    });
  }

  /** Closes plugin streams and clients and both servers; removes the sockets it created. */
  stop(): Promise<void> {
    return this.inLifecycle(async () => {
      if (!this.running) return;
      this.stopServing('stop');
      this.removeIfOurs(this.kubeletSocket, this.kubeletSocketInode);
      this.removeIfOurs(this.podResourcesSocket, this.podResourcesInode);
      this.emit('stopped', {});
    });
  }

  /**
   * As a starting kubelet: stop serving and drop every plugin connection (their
   * devices become unknown until they register again), delete every socket in
   * the device-plugins directory (plugins' too; only sockets, found with lstat),
   * then serve a new kubelet.sock. Admitted pods survive, as the kubelet's
   * checkpoint keeps them.
   */
  restart(): Promise<void> {
    return this.inLifecycle(async () => {
      this.emit('restarting', {});
      // The kernel hands a just-freed inode number straight to the next new file, so a new
      // kubelet.sock often has the old one's inode. To keep tests deterministic the old inodes
      // stay allocated (a hidden hard link) until the new sockets exist. A real node gives no
      // such promise: plugins must not detect a restart by comparing inode numbers.
      const held = [this.holdInode(this.kubeletSocket), this.holdInode(this.podResourcesSocket)];
      try {
        if (this.running) this.stopServing('restart');
        mkdirSync(this.dir, { recursive: true });
        this.cleanupPluginDirectory(held);
        this.removeIfSocket(this.podResourcesSocket);
        await this.serve();
      } finally {
        for (const path of held) if (path) unlinkSync(path);
      }
    });
  }

  /** A snapshot of what the simulator knows about a resource's plugin. */
  plugin(resourceName: string): PluginView | undefined {
    const state = this.plugins.get(resourceName);
    if (!state) return undefined;
    const v = state.view;
    return { ...v, options: { ...v.options }, registerOptions: v.registerOptions && { ...v.registerOptions }, devices: new Map(v.devices) };
  }

  healthyDevices(resourceName: string): string[] {
    const state = this.plugins.get(resourceName);
    if (!state) return [];
    return [...state.view.devices].filter(([, h]) => h === 'Healthy').map(([id]) => id).sort();
  }

  /**
   * Resolves once `predicate` holds. It is evaluated now, after every recorded
   * event, and every 20 ms besides (for predicates that also look outside the
   * simulator). A predicate that throws counts as false; the timeout message
   * says what it threw last, the plugins' state and the latest events.
   */
  waitFor(predicate: (sim: KubeletSimulator) => boolean, timeoutMs = 5000): Promise<void> {
    return new Promise((resolvePromise, reject) => {
      let lastError: unknown;
      const holds = (): boolean => {
        try {
          return predicate(this);
        } catch (err) {
          lastError = err;
          return false;
        }
      };
      if (holds()) return resolvePromise();
      const waiter: Waiter = {
        check: () => {
          if (!holds()) return;
          this.waiters.delete(waiter);
          clearTimeout(timer);
          clearInterval(poll);
          resolvePromise();
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        clearInterval(poll);
        reject(new Error(this.describeTimeout(predicate, timeoutMs, lastError)));
      }, timeoutMs);
      // The predicate may also look at things outside the simulator (the plugin's own state).
      const poll = setInterval(() => waiter.check(), WAIT_POLL_MS);
      this.waiters.add(waiter);
    });
  }

  /**
   * Admits a pod as the kubelet does: per container, choose devices from the
   * healthy, unassigned ones (asking GetPreferredAllocation first if the plugin
   * offers it), call Allocate with that one container, then, once all
   * containers are allocated, PreStartContainer if the plugin asked for it.
   * Admissions run one at a time, as in the kubelet.
   */
  admitPod(pod: PodSpec): Promise<AdmittedPod> {
    const run = this.admission.then(() => this.admit(pod));
    this.admission = run.catch(() => undefined);
    return run;
  }

  /** The pod is gone: its devices are free again and pod resources no longer lists it. */
  deletePod(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const pod = this.pods.get(key);
    if (!pod) return;
    this.pods.delete(key);
    this.emit('pod_deleted', { namespace, pod: name, resourceName: pod.resourceName, freed: pod.containers.flatMap((c) => c.deviceIds) });
  }

  // ---------------------------------------------------------------- serving

  private inLifecycle(fn: () => Promise<void>): Promise<void> {
    const run = this.lifecycle.then(fn);
    this.lifecycle = run.catch(() => undefined);
    return run;
  }

  private async serve(): Promise<void> {
    mkdirSync(dirname(this.podResourcesSocket), { recursive: true });
    const registration = new grpc.Server();
    registration.addService(deviceplugin.RegistrationService, {
      register: (call: grpc.ServerUnaryCall<deviceplugin.RegisterRequest, deviceplugin.Empty>, callback: grpc.sendUnaryData<deviceplugin.Empty>) => {
        this.onRegister(call.request).then(
          () => callback(null, {}),
          (err: grpc.ServerErrorResponse) => callback(err),
        );
      },
    } satisfies deviceplugin.RegistrationServer);
    const podResources = new grpc.Server();
    podResources.addService(podresources.PodResourcesListerService, this.podResourcesImpl());
    try {
      await bind(registration, this.kubeletSocket);
      await bind(podResources, this.podResourcesSocket);
    } catch (err) {
      registration.forceShutdown();
      podResources.forceShutdown();
      throw err;
    }
    this.registrationServer = registration;
    this.podResourcesServer = podResources;
    this.kubeletSocketInode = socketInode(this.kubeletSocket);
    this.podResourcesInode = socketInode(this.podResourcesSocket);
    this.running = true;
    this.emit('serving', {
      kubeletSocket: this.kubeletSocket,
      kubeletSocketInode: this.kubeletSocketInode,
      podResourcesSocket: this.podResourcesSocket,
    });
  }

  /** Drops all plugin connections and closes both servers. */
  private stopServing(why: 'stop' | 'restart'): void {
    this.epoch++;
    this.running = false;
    for (const [resourceName, state] of this.plugins) {
      if (state.conn) this.closeConnection(state.conn);
      state.conn = undefined;
      state.view.connected = false;
      if (why === 'restart') {
        // A new kubelet knows the resource from its checkpoint but none of its devices.
        state.view.devices = new Map();
        state.topology.clear();
      }
      this.emit('plugin_forgotten', { resourceName, why });
    }
    // grpc-js closes the listener synchronously; libuv unlinks the socket path as it does.
    this.registrationServer?.forceShutdown();
    this.podResourcesServer?.forceShutdown();
    this.registrationServer = undefined;
    this.podResourcesServer = undefined;
  }

  /** What a starting kubelet does to its directory: remove every socket, nothing else. */
  private cleanupPluginDirectory(keep: Array<string | undefined>): void {
    for (const name of readdirSync(this.dir)) {
      const path = join(this.dir, name);
      if (keep.includes(path)) continue;
      try {
        if (!lstatSync(path).isSocket()) continue;
        unlinkSync(path);
        this.emit('socket_removed', { path });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }

  /** A second name for the socket at `path`, so that its inode is not freed; undefined if there is none. */
  private holdInode(path: string): string | undefined {
    if (socketInode(path) === undefined) return undefined;
    const holder = join(dirname(path), `.${basename(path)}.restarting`);
    try {
      unlinkSync(holder);
    } catch {
      // not there
    }
    linkSync(path, holder);
    return holder;
  }

  private removeIfSocket(path: string): void {
    if (socketInode(path) === undefined) return;
    try {
      unlinkSync(path);
      this.emit('socket_removed', { path });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** Removes `path` only if it is still the socket we bound (not one someone else made since). */
  private removeIfOurs(path: string, inode: number | undefined): void {
    if (inode !== undefined && socketInode(path) === inode) this.removeIfSocket(path);
  }

  // ----------------------------------------------------------- registration

  private async onRegister(req: deviceplugin.RegisterRequest): Promise<void> {
    const epoch = this.epoch;
    const { resourceName, endpoint, version } = req;
    this.emit('register_request', { resourceName, endpoint, version, registerOptions: req.options });
    const refuse = (message: string): grpc.ServerErrorResponse => {
      this.emit('register_refused', { resourceName, endpoint, error: message });
      return kubeletError(message);
    };
    if (version !== SUPPORTED_VERSION) {
      throw refuse(`requested API version "${version}" is not supported by kubelet. Supported version is ["${SUPPORTED_VERSION}"]`);
    }
    if (!isExtendedResourceName(resourceName)) throw refuse(`the ResourceName "${resourceName}" is invalid`);
    if (!isPlainSocketName(endpoint)) {
      throw refuse(`the endpoint "${endpoint}" is not a socket file name in ${this.dir} (the kubelet simulator accepts only plain file names)`);
    }
    if (this.options.replyBeforeDial) {
      // Old kubelets: reply now, connect in the background.
      this.connect(req, epoch).catch((err: Error) => this.emit('plugin_connect_failed', { resourceName, endpoint, error: err.message }));
      return;
    }
    try {
      await this.connect(req, epoch);
    } catch (err) {
      throw refuse((err as Error).message);
    }
  }

  /** Dial the plugin, ask its options, install the connection, start ListAndWatch. */
  private async connect(req: deviceplugin.RegisterRequest, epoch: number): Promise<void> {
    const { resourceName, endpoint } = req;
    const socketPath = join(this.dir, endpoint);
    const client = new deviceplugin.DevicePluginClient(`unix:${socketPath}`, grpc.credentials.createInsecure(), {
      // A connection of its own, as each kubelet client has (grpc-js would otherwise share one per target).
      'grpc.use_local_subchannel_pool': 1,
    });
    let options: deviceplugin.DevicePluginOptions;
    try {
      await new Promise<void>((ok, fail) => client.waitForReady(Date.now() + this.dialTimeoutMs, (err) => (err ? fail(err) : ok())));
    } catch (err) {
      client.close();
      throw new Error(`failed to dial device plugin: ${(err as Error).message}`);
    }
    try {
      options = await unary(client, client.getDevicePluginOptions, {}, this.callTimeoutMs);
    } catch (err) {
      client.close();
      throw new Error(`failed to get device plugin options: ${rpcErrorText(err)}`);
    }
    if (epoch !== this.epoch) {
      client.close();
      throw new Error('the kubelet stopped while the plugin was being connected');
    }

    let state = this.plugins.get(resourceName);
    if (state?.conn) {
      this.closeConnection(state.conn);
      this.emit('plugin_replaced', { resourceName, endpoint: state.view.endpoint });
    }
    if (!state) {
      state = {
        view: {
          resourceName,
          endpoint,
          options: { preStartRequired: false, getPreferredAllocationAvailable: false },
          registerOptions: undefined,
          devices: new Map(),
          connected: false,
          registeredAt: 0,
          registrations: 0,
        },
        topology: new Map(),
      };
      this.plugins.set(resourceName, state);
    }
    const conn: Connection = { id: this.nextConnId++, client, current: true };
    state.conn = conn;
    Object.assign(state.view, {
      endpoint,
      options: { preStartRequired: options.preStartRequired, getPreferredAllocationAvailable: options.getPreferredAllocationAvailable },
      registerOptions: req.options,
      connected: false,
      registeredAt: Date.now(),
      registrations: state.view.registrations + 1,
    });
    this.emit('plugin_registered', {
      resourceName,
      endpoint,
      options: state.view.options,
      registerOptions: req.options,
      registrations: state.view.registrations,
    });
    this.listAndWatch(state, conn);
  }

  private listAndWatch(state: PluginState, conn: Connection): void {
    const { resourceName } = state.view;
    const stream = conn.client.listAndWatch({});
    conn.stream = stream;
    const markConnected = (): void => {
      if (!conn.current || state.view.connected) return;
      state.view.connected = true;
      this.emit('list_and_watch_opened', { resourceName });
    };
    stream.on('metadata', markConnected);
    stream.on('data', (resp: deviceplugin.ListAndWatchResponse) => {
      if (!conn.current) return;
      markConnected();
      // Every response is the whole device list.
      const devices = new Map<string, DeviceHealth>();
      state.topology.clear();
      for (const d of resp.devices) {
        devices.set(d.ID, d.health === 'Healthy' ? 'Healthy' : 'Unhealthy');
        state.topology.set(d.ID, d.topology);
      }
      state.view.devices = devices;
      this.emit('devices', {
        resourceName,
        healthy: [...devices].filter(([, h]) => h === 'Healthy').map(([id]) => id).sort(),
        unhealthy: [...devices].filter(([, h]) => h !== 'Healthy').map(([id]) => id).sort(),
      });
    });
    stream.on('error', () => undefined); // the 'status' event below carries the same news
    stream.on('status', (status: grpc.StatusObject) => {
      if (!conn.current) return;
      // The kubelet's reaction to a closed stream: the plugin is gone, its devices unhealthy.
      conn.current = false;
      conn.client.close();
      state.conn = undefined;
      state.view.connected = false;
      for (const id of state.view.devices.keys()) state.view.devices.set(id, 'Unhealthy');
      this.emit('list_and_watch_ended', { resourceName, code: GO_CODE_NAMES[status.code] ?? status.code, details: status.details });
    });
  }

  private closeConnection(conn: Connection): void {
    conn.current = false;
    conn.stream?.cancel();
    conn.client.close();
  }

  // -------------------------------------------------------------- admission

  private async admit(spec: PodSpec): Promise<AdmittedPod> {
    const namespace = spec.namespace ?? 'default';
    const key = `${namespace}/${spec.name}`;
    const resourceName = spec.resourceName;
    const reject = (message: string, reason: string): AdmissionError => {
      this.emit('pod_rejected', { namespace, pod: spec.name, reason, message });
      return new AdmissionError(message, reason);
    };
    const unexpected = (cause: string): AdmissionError => reject(`Allocate failed due to ${cause}, which is unexpected`, 'UnexpectedAdmissionError');

    if (!this.running) throw reject('the kubelet simulator is not running', 'NotRunning');
    if (this.pods.has(key)) throw reject(`pod ${key} is already admitted`, 'AlreadyAdmitted');
    const names = new Set(spec.containers.map((c) => c.name));
    if (names.size !== spec.containers.length) throw reject(`pod ${key} has duplicate container names`, 'Invalid');
    for (const c of spec.containers) {
      if (!Number.isInteger(c.request) || c.request < 0) throw reject(`container ${c.name} requests ${c.request} ${resourceName}`, 'Invalid');
    }
    const total = spec.containers.reduce((n, c) => n + c.request, 0);
    const state = this.plugins.get(resourceName);
    if (total > 0 && !state) {
      // Never registered: the node has no such resource, and the predicate admit handler says so.
      throw reject(`Node didn't have enough resource: ${resourceName}, requested: ${total}, used: 0, capacity: 0`, `OutOf${resourceName}`);
    }

    const taken = this.allocatedDevices(resourceName);
    const containers: PodRecord['containers'] = [];
    for (const c of spec.containers) {
      if (c.request === 0 || !state) {
        containers.push({ name: c.name, deviceIds: [], topology: [], response: deviceplugin.ContainerAllocateResponse.create() });
        continue;
      }
      const available = this.healthyDevices(resourceName).filter((id) => !taken.has(id));
      if (available.length < c.request) {
        throw unexpected(`requested number of devices unavailable for ${resourceName}. Requested: ${c.request}, Available: ${available.length}`);
      }
      const chosen: string[] = [];
      const conn = state.conn;
      if (!conn) throw unexpected(`endpoint for ${resourceName} has been stopped`);

      if (state.view.options.getPreferredAllocationAvailable) {
        const request: deviceplugin.PreferredAllocationRequest = {
          containerRequests: [{ availableDeviceIDs: available, mustIncludeDeviceIDs: [], allocationSize: c.request }],
        };
        let resp: deviceplugin.PreferredAllocationResponse;
        try {
          resp = await unary(conn.client, conn.client.getPreferredAllocation, request, this.callTimeoutMs);
        } catch (err) {
          throw unexpected(`device plugin GetPreferredAllocation rpc failed with err: ${rpcErrorText(err)}`);
        }
        const preferred = resp.containerResponses[0]?.deviceIDs ?? [];
        this.emit('preferred_allocation', { namespace, pod: spec.name, container: c.name, available, size: c.request, preferred });
        const outside = preferred.filter((id) => !available.includes(id));
        if (resp.containerResponses.length !== 1 || outside.length > 0 || new Set(preferred).size !== c.request || preferred.length !== c.request) {
          // The kubelet does not refuse: it takes what it can of the answer and fills up from the rest.
          this.emit('preferred_allocation_mismatch', {
            namespace,
            pod: spec.name,
            container: c.name,
            containerResponses: resp.containerResponses.length,
            preferred,
            notAvailable: outside,
            size: c.request,
          });
        }
        for (const id of preferred) if (chosen.length < c.request && available.includes(id) && !chosen.includes(id)) chosen.push(id);
      }
      for (const id of available) if (chosen.length < c.request && !chosen.includes(id)) chosen.push(id);
      for (const id of chosen) taken.add(id);

      // One container per Allocate call, as the kubelet does.
      let resp: deviceplugin.AllocateResponse;
      try {
        resp = await unary(conn.client, conn.client.allocate, { containerRequests: [{ devicesIds: chosen }] }, this.callTimeoutMs);
      } catch (err) {
        this.emit('allocate_failed', { namespace, pod: spec.name, container: c.name, deviceIds: chosen, error: rpcErrorText(err) });
        throw unexpected(rpcErrorText(err));
      }
      const n = resp.containerResponses.length;
      if (n !== 1) {
        this.emit('allocate_failed', { namespace, pod: spec.name, container: c.name, deviceIds: chosen, containerResponses: n });
        throw unexpected(
          n === 0
            ? `no containers return in allocation response ${JSON.stringify(deviceplugin.AllocateResponse.toJSON(resp))}`
            : `${n} container responses to an Allocate call for 1 container (the kubelet would use the first; the simulator refuses)`,
        );
      }
      const response = resp.containerResponses[0]!;
      this.emit('allocate', {
        namespace,
        pod: spec.name,
        container: c.name,
        deviceIds: chosen,
        response: deviceplugin.ContainerAllocateResponse.toJSON(response),
      });
      containers.push({ name: c.name, deviceIds: chosen, topology: chosen.map((id) => state.topology.get(id)), response });
    }

    const record: PodRecord = { name: spec.name, namespace, resourceName, containers };
    this.pods.set(key, record);
    this.emit('pod_admitted', { namespace, pod: spec.name, resourceName, containers: containers.map((c) => ({ name: c.name, deviceIds: c.deviceIds })) });

    // Container start. A failure here leaves the pod admitted with its devices, as in the kubelet.
    if (state?.view.options.preStartRequired) {
      for (const c of containers) {
        if (c.deviceIds.length === 0) continue;
        const conn = state.conn;
        try {
          if (!conn) throw new Error(`endpoint for ${resourceName} has been stopped`);
          await unary(conn.client, conn.client.preStartContainer, { devicesIds: c.deviceIds }, this.callTimeoutMs);
          this.emit('pre_start_container', { namespace, pod: spec.name, container: c.name, deviceIds: c.deviceIds });
        } catch (err) {
          const message = `PreStartContainer failed for container ${c.name}: ${rpcErrorText(err)}`;
          this.emit('pre_start_container_failed', { namespace, pod: spec.name, container: c.name, error: message });
          throw new AdmissionError(message, 'RunContainerError');
        }
      }
    }
    return {
      name: record.name,
      namespace,
      containers: containers.map((c) => ({ name: c.name, deviceIds: [...c.deviceIds], response: c.response })),
    };
  }

  private allocatedDevices(resourceName: string): Set<string> {
    const ids = new Set<string>();
    for (const pod of this.pods.values()) {
      if (pod.resourceName !== resourceName) continue;
      for (const c of pod.containers) for (const id of c.deviceIds) ids.add(id);
    }
    return ids;
  }

  // ---------------------------------------------------------- pod resources

  private podResourcesImpl(): podresources.PodResourcesListerServer {
    return {
      list: (_call, callback) => {
        this.emit('pod_resources_call', { method: 'List' });
        callback(null, { podResources: [...this.pods.values()].map((p) => this.podResources(p)) });
      },
      getAllocatableResources: (_call, callback) => {
        this.emit('pod_resources_call', { method: 'GetAllocatableResources' });
        const devices: podresources.ContainerDevices[] = [];
        for (const [resourceName, state] of [...this.plugins].sort(([a], [b]) => a.localeCompare(b))) {
          for (const id of this.healthyDevices(resourceName)) devices.push(...containerDevices(resourceName, id, state.topology.get(id)));
        }
        callback(null, { devices });
      },
      get: (call, callback) => {
        const { podName, podNamespace } = call.request;
        this.emit('pod_resources_call', { method: 'Get', podName, podNamespace });
        const pod = this.pods.get(`${podNamespace}/${podName}`);
        if (!pod) return callback(kubeletError(`pod ${podName} in namespace ${podNamespace} not found`));
        callback(null, { podResources: this.podResources(pod) });
      },
    };
  }

  private podResources(pod: PodRecord): podresources.PodResources {
    return {
      name: pod.name,
      namespace: pod.namespace,
      containers: pod.containers.map((c) => ({
        name: c.name,
        devices: c.deviceIds.flatMap((id, i) => containerDevices(pod.resourceName, id, c.topology[i])),
      })),
    };
  }

  // ----------------------------------------------------------------- events

  private emit(event: string, fields: Record<string, unknown>): void {
    this.events.push({ ...fields, event, at: Date.now() });
    this.options.log?.(event, fields);
    for (const w of [...this.waiters]) w.check();
  }

  private describeTimeout(predicate: (sim: KubeletSimulator) => boolean, timeoutMs: number, lastError: unknown): string {
    const plugins = [...this.plugins.values()].map(({ view }) => ({
      resourceName: view.resourceName,
      endpoint: view.endpoint,
      connected: view.connected,
      registrations: view.registrations,
      devices: Object.fromEntries(view.devices),
    }));
    const recent = this.events.slice(-15).map((e) => JSON.stringify(e));
    return [
      `kubelet simulator: timed out after ${timeoutMs} ms waiting for ${predicate.toString()}`,
      ...(lastError ? [`the predicate last threw: ${String((lastError as Error).message ?? lastError)}`] : []),
      `running: ${this.running}; plugins: ${JSON.stringify(plugins)}`,
      `pods: ${JSON.stringify([...this.pods.keys()])}`,
      `last events:`,
      ...recent.map((l) => `  ${l}`),
    ].join('\n');
  }
}

/** As the kubelet reports devices: one entry per device ID (per NUMA node when the plugin gave a topology). */
function containerDevices(resourceName: string, id: string, topology: deviceplugin.TopologyInfo | undefined): podresources.ContainerDevices[] {
  if (!topology) return [{ resourceName, deviceIds: [id], topology: undefined }];
  return topology.nodes.map((node) => ({ resourceName, deviceIds: [id], topology: { nodes: [{ ID: node.ID }] } }));
}

function bind(server: grpc.Server, path: string): Promise<void> {
  return new Promise((ok, fail) =>
    server.bindAsync(`unix:${path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? fail(new Error(`cannot serve on ${path}: ${err.message}`)) : ok())),
  );
}
