import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '@iommufd-plugin/common';
import { type Allocation, HandoffSocket, type HandoffOptions } from './handoff-socket';

export interface AllocationsOptions extends Omit<HandoffOptions, 'onRetired'> {
  /** Where sockets are created, as this process sees the directory. */
  socketDir: string;
  /** Told the number of pending sockets whenever it changes. */
  onPendingChange?: (pending: number) => void;
}

/**
 * The handoff sockets given out and not yet retired, by allocation id.
 * Allocate adds one per container; a socket leaves when it has served
 * (mode `once`) or is closed.
 */
export class Allocations {
  private readonly sockets = new Map<string, HandoffSocket>();

  constructor(
    private readonly options: AllocationsOptions,
    private readonly log: Logger,
  ) {
    mkdirSync(options.socketDir, { recursive: true, mode: 0o755 });
  }

  get pending(): number {
    return this.sockets.size;
  }

  /** Creates and starts the handoff socket of a new allocation; returns it once it is listening. */
  async create(deviceIds: readonly string[]): Promise<HandoffSocket> {
    const allocation: Allocation = { id: newAllocationId(), deviceIds, createdAt: new Date() };
    const socket = new HandoffSocket(
      allocation,
      join(this.options.socketDir, socketFileName(allocation.id)),
      {
        ...this.options,
        onRetired: (retired) => {
          this.sockets.delete(retired.allocation.id);
          this.options.onPendingChange?.(this.sockets.size);
        },
      },
      this.log,
    );
    await socket.listen();
    this.sockets.set(allocation.id, socket);
    this.options.onPendingChange?.(this.sockets.size);
    return socket;
  }

  get(id: string): HandoffSocket | undefined {
    return this.sockets.get(id);
  }

  /** Closes and removes every handoff socket. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.sockets.values()].map((socket) => socket.retire()));
  }
}

/** Unique per allocation and sortable by time: base-36 milliseconds, then 6 random bytes. */
function newAllocationId(): string {
  return `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
}

export function socketFileName(allocationId: string): string {
  return `iommufd-${allocationId}.sock`;
}
