import { constants } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Allocation } from './handoff-socket';

/**
 * The pending allocations, kept in a file next to their sockets so that a
 * restarted bridge can listen on them again. Written whole to a temporary
 * file and renamed over the old one, so a crash leaves either the old or the
 * new state, never a torn one. Never follows a symlink: the directory is
 * shared with the host.
 */
export class AllocationState {
  readonly path: string;
  private writing: Promise<void> = Promise.resolve();
  private latest: readonly Allocation[] | null = null;

  constructor(socketDir: string) {
    this.path = join(socketDir, stateFileName);
  }

  /** The saved allocations; none if there is no state yet. Throws with a clear message if the file is unusable. */
  async load(): Promise<Allocation[]> {
    let text: string;
    try {
      const file = await open(this.path, constants.O_RDONLY | constants.O_NOFOLLOW);
      try {
        text = await file.readFile('utf8');
      } finally {
        await file.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new Error(`cannot read ${this.path}: ${(err as Error).message}`);
    }
    return parseState(text, this.path);
  }

  /** Saves `allocations`; concurrent calls are coalesced and the last one wins. Resolves once it is on disk. */
  save(allocations: readonly Allocation[]): Promise<void> {
    this.latest = allocations;
    // A failed write is reported to its caller and must not stop the ones after it.
    this.writing = this.writing.catch(() => undefined).then(() => this.flush());
    return this.writing;
  }

  private async flush(): Promise<void> {
    const allocations = this.latest;
    if (allocations === null) return;
    this.latest = null;
    const document: StateDocument = {
      version: 1,
      allocations: allocations.map((a) => ({ id: a.id, deviceIds: [...a.deviceIds], createdAt: a.createdAt.toISOString(), handoffs: a.handoffs })),
    };
    const temporary = `${this.path}.tmp`;
    await unlink(temporary).catch(() => undefined);
    // O_EXCL|O_NOFOLLOW: create a new file, never write through something planted at that name.
    const file = await open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await file.writeFile(`${JSON.stringify(document)}\n`);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, this.path);
  }
}

export const stateFileName = '.kubelet-bridge-state.json';

interface StateDocument {
  version: 1;
  allocations: Array<{ id: string; deviceIds: string[]; createdAt: string; handoffs: number }>;
}

const allocationIdPattern = /^[a-z0-9]{1,16}-[0-9a-f]{12}$/;

/** Validates every field: the ids become file names, so nothing unexpected may pass. */
function parseState(text: string, path: string): Allocation[] {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  const doc = document as Partial<StateDocument>;
  if (doc?.version !== 1 || !Array.isArray(doc.allocations)) throw new Error(`${path} is not a version 1 state file`);
  return doc.allocations.map((entry, i) => {
    const { id, deviceIds, createdAt, handoffs } = entry ?? {};
    const created = new Date(String(createdAt));
    if (
      typeof id !== 'string' ||
      !allocationIdPattern.test(id) ||
      !Array.isArray(deviceIds) ||
      !deviceIds.every((d) => typeof d === 'string') ||
      Number.isNaN(created.getTime()) ||
      !Number.isInteger(handoffs)
    ) {
      throw new Error(`${path}: allocation ${i} is malformed`);
    }
    return { id, deviceIds, createdAt: created, handoffs };
  });
}

export function isAllocationId(text: string): boolean {
  return allocationIdPattern.test(text);
}
