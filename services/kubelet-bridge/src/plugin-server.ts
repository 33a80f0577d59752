import { lstatSync } from 'node:fs';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { deviceplugin } from '@iommufd-plugin/proto';
import { removeSocketFile } from './handoff-socket';

/**
 * The gRPC server the kubelet dials: v1beta1.DevicePlugin on
 * <kubelet-dir>/<endpoint>. It can be torn down and started afresh, which is
 * what a kubelet restart asks of us.
 */
export class PluginServer {
  private server: Server | null = null;
  private inode: number | null = null;

  constructor(
    readonly socketPath: string,
    private readonly service: deviceplugin.DevicePluginServer,
  ) {}

  async start(): Promise<void> {
    await this.stop();
    // A socket left by an earlier run of ours, or one the kubelet no longer knows: replace it.
    removeSocketFile(this.socketPath);
    const server = new Server();
    server.addService(deviceplugin.DevicePluginService, this.service);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${this.socketPath}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
    this.inode = lstatSync(this.socketPath).ino;
  }

  /** Ends every call, ListAndWatch streams included, and removes our socket. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server) server.forceShutdown();
    if (this.inode !== null && this.isOurSocketInPlace()) removeSocketFile(this.socketPath);
    this.inode = null;
  }

  /** False once someone (the kubelet, at its start) has deleted or replaced our socket file. */
  isOurSocketInPlace(): boolean {
    try {
      return this.inode !== null && lstatSync(this.socketPath).ino === this.inode;
    } catch {
      return false;
    }
  }
}
