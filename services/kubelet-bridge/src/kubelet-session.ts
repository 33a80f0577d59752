import { type FSWatcher, statSync, watch } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '@iommufd-plugin/common';
import type { deviceplugin } from '@iommufd-plugin/proto';
import type { PluginServer } from './plugin-server';
import { registerWithKubelet } from './registration';

/** Told of registrations and restarts, for metrics. */
export interface KubeletSessionObserver {
  registered(isRegistered: boolean): void;
  kubeletRestarted(): void;
}

export interface KubeletSessionOptions {
  kubeletDir: string;
  registerRequest: deviceplugin.RegisterRequest;
  registerRetryMaxMs: number;
  checkIntervalMs: number;
}

const kubeletSocketName = 'kubelet.sock';
const registerTimeoutMs = 5000;
const firstRetryMs = 100;

/**
 * Keeps us registered with the kubelet. When the kubelet starts it deletes
 * every socket in its directory and creates a new kubelet.sock; we notice
 * either (by watching the directory, and by a periodic check in case a
 * watch event is missed), serve again and register again, retrying with
 * backoff while the kubelet is away.
 */
export class KubeletSession {
  private registered = false;
  private stopped = false;
  private kubeletSocketInode: number | null = null;
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private establishing: Promise<void> | null = null;
  private wake: (() => void) | null = null;

  constructor(
    private readonly server: PluginServer,
    private readonly options: KubeletSessionOptions,
    private readonly observer: KubeletSessionObserver,
    private readonly log: Logger,
  ) {}

  get isRegistered(): boolean {
    return this.registered;
  }

  /** Serves and registers; resolves once registered (or once stopped). */
  async start(): Promise<void> {
    this.watchDirectory();
    this.timer = setInterval(() => this.check(), this.options.checkIntervalMs);
    await this.establish();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.watcher?.close();
    if (this.timer) clearInterval(this.timer);
    await this.establishing;
    await this.server.stop();
    this.setRegistered(false);
  }

  private setRegistered(registered: boolean): void {
    this.registered = registered;
    this.observer.registered(registered);
  }

  private get kubeletSocket(): string {
    return join(this.options.kubeletDir, kubeletSocketName);
  }

  /** (Re)starts the plugin server and registers, retrying until it works or we stop. */
  private establish(): Promise<void> {
    this.establishing ??= this.serveAndRegister().finally(() => {
      this.establishing = null;
    });
    return this.establishing;
  }

  private async serveAndRegister(): Promise<void> {
    this.setRegistered(false);
    let pauseMs = firstRetryMs;
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        await this.server.start();
        this.kubeletSocketInode = inodeOf(this.kubeletSocket);
        await registerWithKubelet(this.kubeletSocket, this.options.registerRequest, registerTimeoutMs);
        this.setRegistered(true);
        this.log.info(
          { event: 'registered', resourceName: this.options.registerRequest.resourceName, endpoint: this.server.socketPath, attempt },
          'registered with the kubelet',
        );
        return;
      } catch (err) {
        const level = attempt === 1 ? 'warn' : 'debug';
        this.log[level]({ event: 'register_failed', attempt, reason: (err as Error).message, retryInMs: pauseMs }, 'could not register with the kubelet; retrying');
      }
      await this.pause(pauseMs);
      pauseMs = Math.min(pauseMs * 2, this.options.registerRetryMaxMs);
    }
  }

  /** Waits `ms`, or less if the directory changes meanwhile (the kubelet may be back). */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  private watchDirectory(): void {
    try {
      this.watcher = watch(this.options.kubeletDir, () => {
        this.wake?.();
        this.check();
      });
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = null;
      });
    } catch {
      // The directory may not exist yet; the periodic check covers us until a restart re-watches.
      this.watcher = null;
    }
  }

  /** Has the kubelet restarted since we registered? */
  private check(): void {
    if (this.stopped || this.establishing) return;
    const ourSocketGone = !this.server.isOurSocketInPlace();
    const kubeletInode = inodeOf(this.kubeletSocket);
    const kubeletReplaced = kubeletInode !== null && kubeletInode !== this.kubeletSocketInode;
    if (!ourSocketGone && !kubeletReplaced) return;
    this.observer.kubeletRestarted();
    this.log.warn({ event: 'kubelet_restart_detected', ourSocketGone, kubeletSocketReplaced: kubeletReplaced }, 'the kubelet restarted; serving and registering again');
    if (!this.watcher) this.watchDirectory();
    void this.establish();
  }
}

function inodeOf(path: string): number | null {
  try {
    return statSync(path).ino;
  } catch {
    return null;
  }
}
