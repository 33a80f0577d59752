import { randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '@iommufd-plugin/common';
import { AllocationState, isAllocationId } from './allocation-state';
import { type Allocation, HandoffSocket, type HandoffOptions, removeSocketFile } from './handoff-socket';

export interface AllocationsOptions extends Omit<HandoffOptions, 'onRetired' | 'onHandedOff' | 'admission'> {
  /** Where sockets are created, as this process sees the directory. */
  socketDir: string;
  /** Most allocations pending at once; Allocate is refused beyond it. */
  maxPending: number;
  /** Most launcher connections open at once, across all sockets; more are closed at once. */
  maxConnections: number;
  /** Told the number of pending sockets whenever it changes. */
  onPendingChange?: (pending: number) => void;
}

/** Allocate was refused because too many allocations are pending. */
export class TooManyAllocationsError extends Error {
  override name = 'TooManyAllocationsError';
}

export type RetireReason = 'pod_gone' | 'max_age' | 'superseded';

/**
 * The handoff sockets given out and not yet retired, by allocation id, and
 * their state on disk. Allocate adds one per container; a socket leaves when
 * it has served (mode `once`), when its pod is gone, or when a newer
 * allocation takes its devices. A restarted bridge listens again on every
 * socket of the saved state.
 */
export class Allocations {
  private readonly sockets = new Map<string, HandoffSocket>();
  private readonly state: AllocationState;
  private openConnections = 0;

  constructor(
    private readonly options: AllocationsOptions,
    private readonly log: Logger,
  ) {
    mkdirSync(options.socketDir, { recursive: true, mode: 0o755 });
    this.state = new AllocationState(options.socketDir);
  }

  get pending(): number {
    return this.sockets.size;
  }

  /** All pending allocations, oldest first. */
  list(): HandoffSocket[] {
    return [...this.sockets.values()];
  }

  /**
   * Listens again on the sockets of the saved state and removes handoff
   * sockets that no saved allocation owns (left by a crash between creating
   * a socket and saving). Returns how many were restored.
   */
  async restore(): Promise<number> {
    let saved: Allocation[];
    try {
      saved = await this.state.load();
    } catch (err) {
      this.log.error({ event: 'state_unreadable', reason: (err as Error).message }, 'starting without the saved allocations');
      saved = [];
    }
    for (const allocation of saved) {
      const socket = this.socketFor(allocation);
      try {
        await socket.listen();
        this.sockets.set(allocation.id, socket);
      } catch (err) {
        this.log.error({ event: 'restore_failed', allocationId: allocation.id, reason: (err as Error).message }, 'could not listen again on a saved handoff socket');
      }
    }
    this.removeOrphans();
    await this.saveState();
    if (saved.length > 0) this.log.info({ event: 'allocations_restored', restored: this.sockets.size, saved: saved.length }, 'listening again on saved handoff sockets');
    return this.sockets.size;
  }

  /** Creates, starts and saves the handoff socket of a new allocation; returns it once it is listening and on disk. */
  async create(deviceIds: readonly string[]): Promise<HandoffSocket> {
    // The kubelet gives a device to a new pod only once its old pod is gone.
    await Promise.all(this.list().filter((s) => s.allocation.deviceIds.some((id) => deviceIds.includes(id))).map((s) => this.retire(s, 'superseded')));
    if (this.sockets.size >= this.options.maxPending) {
      throw new TooManyAllocationsError(`${this.sockets.size} allocations are pending, the most allowed (--max-pending-allocations)`);
    }
    const socket = this.socketFor({ id: newAllocationId(), deviceIds, createdAt: new Date(), handoffs: 0 });
    await socket.listen();
    this.sockets.set(socket.allocation.id, socket);
    this.options.onPendingChange?.(this.sockets.size);
    if (!(await this.saveState())) {
      await socket.retire();
      throw new Error(`could not save the allocation state in ${this.options.socketDir}; see the state_save_failed log line`);
    }
    return socket;
  }

  get(id: string): HandoffSocket | undefined {
    return this.sockets.get(id);
  }

  /** Removes an allocation that will never be used: its pod is gone, or it is past its age. */
  async retire(socket: HandoffSocket, reason: RetireReason): Promise<void> {
    const { id, deviceIds, createdAt } = socket.allocation;
    await socket.retire();
    this.log.info({ event: 'reclaimed', reason, allocationId: id, deviceIds, ageSeconds: (Date.now() - createdAt.getTime()) / 1000 }, 'removed a handoff socket');
  }

  /**
   * For shutdown: every socket stops accepting; handoffs in progress get up to
   * `timeoutMs` to finish; the state is saved. Socket files stay, for the
   * next bridge.
   */
  async shutdown(timeoutMs: number): Promise<void> {
    await Promise.all(this.list().map((socket) => socket.quiesce(timeoutMs)));
    await this.saveState();
  }

  /** Closes and removes every handoff socket and forgets them (tests, and a deliberate reset). */
  async closeAll(): Promise<void> {
    await Promise.all(this.list().map((socket) => socket.retire()));
  }

  private socketFor(allocation: Allocation): HandoffSocket {
    return new HandoffSocket(
      allocation,
      join(this.options.socketDir, socketFileName(allocation.id)),
      {
        ...this.options,
        onRetired: (retired) => {
          this.sockets.delete(retired.allocation.id);
          this.options.onPendingChange?.(this.sockets.size);
          void this.saveState();
        },
        onHandedOff: () => void this.saveState(),
        admission: {
          tryAcquire: () => {
            if (this.openConnections >= this.options.maxConnections) return false;
            this.openConnections++;
            return true;
          },
          release: () => {
            this.openConnections--;
          },
        },
      },
      this.log,
    );
  }

  /** Saves the pending allocations; false (and a log line) if that failed. */
  private saveState(): Promise<boolean> {
    return this.state.save(this.list().map((s) => s.allocation)).then(
      () => true,
      (err: Error) => {
        this.log.error({ event: 'state_save_failed', reason: err.message }, 'could not save the allocations; a restart would lose them');
        return false;
      },
    );
  }

  /** Handoff sockets of ours (by name) that no allocation owns. Only sockets are removed, found with lstat. */
  private removeOrphans(): void {
    for (const name of readdirSync(this.options.socketDir)) {
      const match = /^iommufd-(.+)\.sock$/.exec(name);
      if (!match || !isAllocationId(match[1]!) || this.sockets.has(match[1]!)) continue;
      const path = join(this.options.socketDir, name);
      if (!lstatSync(path).isSocket()) continue;
      removeSocketFile(path);
      this.log.info({ event: 'orphan_removed', path }, 'removed a handoff socket no allocation owns');
    }
  }
}

/** Unique per allocation and sortable by time: base-36 milliseconds, then 6 random bytes. */
function newAllocationId(): string {
  return `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
}

export function socketFileName(allocationId: string): string {
  return `iommufd-${allocationId}.sock`;
}
