import { basename, join } from 'node:path';
import { type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, status } from '@grpc/grpc-js';
import type { Logger } from '@iommufd-plugin/common';
import { deviceplugin } from '@iommufd-plugin/proto';
import { type Allocations, TooManyAllocationsError } from './allocations';
import type { DeviceList } from './device-list';
import type { HandoffSocket } from './handoff-socket';

/** What Allocate needs to know besides the request. */
export interface AllocateContext {
  /** True under the passthrough policy while the node has no IOMMUFD: answer with nothing. */
  withoutHandoff(): boolean;
  count(result: 'handoff' | 'passthrough' | 'error'): void;
}

export interface AllocateAnswerOptions {
  /** The socket dir as the host sees it: the mount's host_path is inside it. */
  hostSocketDir: string;
  containerSocketPath: string;
  exposeDevice: boolean;
  devicePath: string;
}

/** What both GetDevicePluginOptions and RegisterRequest.options say; they must agree. */
export const pluginOptions: deviceplugin.DevicePluginOptions = {
  preStartRequired: false,
  // The devices are interchangeable, so there is nothing to prefer; we still answer if asked.
  getPreferredAllocationAvailable: false,
};

/** A gRPC error with a status code and a message the kubelet will log. */
class RpcError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The v1beta1.DevicePlugin service: the kubelet's view of us. Allocate
 * makes a handoff socket per container and answers at once; it neither
 * opens the device nor waits for the launcher.
 */
export function devicePluginService(
  devices: DeviceList,
  allocations: Allocations,
  answer: AllocateAnswerOptions,
  context: AllocateContext,
  log: Logger,
): deviceplugin.DevicePluginServer {
  return {
    getDevicePluginOptions: (_call: ServerUnaryCall<deviceplugin.Empty, deviceplugin.DevicePluginOptions>, callback) => {
      callback(null, pluginOptions);
    },

    listAndWatch: (call: ServerWritableStream<deviceplugin.Empty, deviceplugin.ListAndWatchResponse>) => {
      log.info({ event: 'list_and_watch_opened', devices: devices.ids.length, health: devices.health }, 'kubelet is watching our devices');
      const unsubscribe = devices.subscribe((list) => call.write({ devices: list }));
      const end = () => {
        unsubscribe();
        log.info({ event: 'list_and_watch_closed' }, 'kubelet stopped watching our devices');
      };
      call.once('cancelled', end);
      call.once('close', () => unsubscribe());
    },

    getPreferredAllocation: (call: ServerUnaryCall<deviceplugin.PreferredAllocationRequest, deviceplugin.PreferredAllocationResponse>, callback) => {
      respond(callback, () => ({ containerResponses: call.request.containerRequests.map(preferDevices) }));
    },

    allocate: (call: ServerUnaryCall<deviceplugin.AllocateRequest, deviceplugin.AllocateResponse>, callback: sendUnaryData<deviceplugin.AllocateResponse>) => {
      void respondAsync(callback, log, 'allocate', () => allocate(call.request, devices, allocations, answer, context, log));
    },

    preStartContainer: (_call: ServerUnaryCall<deviceplugin.PreStartContainerRequest, deviceplugin.PreStartContainerResponse>, callback) => {
      callback(null, {});
    },
  };
}

async function allocate(
  request: deviceplugin.AllocateRequest,
  devices: DeviceList,
  allocations: Allocations,
  answer: AllocateAnswerOptions,
  context: AllocateContext,
  log: Logger,
): Promise<deviceplugin.AllocateResponse> {
  for (const container of request.containerRequests) {
    if (container.devicesIds.length === 0) throw new RpcError(status.INVALID_ARGUMENT, 'a container request names no devices');
    const unknown = container.devicesIds.filter((id) => !devices.has(id));
    if (unknown.length > 0) throw new RpcError(status.INVALID_ARGUMENT, `unknown device ids: ${unknown.join(', ')}`);
  }
  if (context.withoutHandoff()) {
    for (const container of request.containerRequests) {
      context.count('passthrough');
      log.info({ event: 'allocate', result: 'passthrough', deviceIds: container.devicesIds }, 'no IOMMUFD on this node (health policy passthrough): answered with no socket and no device');
    }
    return { containerResponses: request.containerRequests.map(() => ({ envs: {}, mounts: [], devices: [], annotations: {}, cdiDevices: [] })) };
  }
  const containerResponses: deviceplugin.ContainerAllocateResponse[] = [];
  const created: HandoffSocket[] = [];
  try {
    for (const container of request.containerRequests) {
      const started = process.hrtime.bigint();
      const socket = await allocations.create(container.devicesIds);
      created.push(socket);
      const hostPath = join(answer.hostSocketDir, basename(socket.path));
      containerResponses.push({
        envs: {},
        mounts: [{ containerPath: answer.containerSocketPath, hostPath, readOnly: false }],
        devices: answer.exposeDevice ? [{ containerPath: answer.devicePath, hostPath: answer.devicePath, permissions: 'mrw' }] : [],
        annotations: {},
        cdiDevices: [],
      });
      context.count('handoff');
      log.info(
        {
          event: 'allocate',
          result: 'handoff',
          allocationId: socket.allocation.id,
          deviceIds: container.devicesIds,
          hostPath,
          pending: allocations.pending,
          durationMs: Number(process.hrtime.bigint() - started) / 1e6,
        },
        'allocated a handoff socket',
      );
    }
  } catch (err) {
    // All or nothing: the kubelet will retry the whole request.
    context.count('error');
    await Promise.all(created.map((socket) => socket.retire()));
    throw err;
  }
  return { containerResponses };
}

/** Must-include devices first, then others in the order offered, up to the size asked. */
function preferDevices(request: deviceplugin.ContainerPreferredAllocationRequest): deviceplugin.ContainerPreferredAllocationResponse {
  const chosen = [...request.mustIncludeDeviceIDs];
  for (const id of request.availableDeviceIDs) {
    if (chosen.length >= request.allocationSize) break;
    if (!chosen.includes(id)) chosen.push(id);
  }
  return { deviceIDs: chosen };
}

function respond<T>(callback: sendUnaryData<T>, produce: () => T): void {
  try {
    callback(null, produce());
  } catch (err) {
    callback(toServiceError(err));
  }
}

async function respondAsync<T>(callback: sendUnaryData<T>, log: Logger, method: string, produce: () => Promise<T>): Promise<void> {
  try {
    callback(null, await produce());
  } catch (err) {
    log.error({ event: `${method}_failed`, reason: (err as Error).message }, `${method} failed`);
    callback(toServiceError(err));
  }
}

function toServiceError(err: unknown): { code: status; details: string; name: string; message: string } {
  const message = (err as Error).message ?? String(err);
  const code = err instanceof RpcError ? err.code : err instanceof TooManyAllocationsError ? status.RESOURCE_EXHAUSTED : status.INTERNAL;
  return { code, details: message, name: 'Error', message };
}
