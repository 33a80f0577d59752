import { type FSWatcher, statSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from '@iommufd-plugin/common';

/**
 * Tells when the device node may have appeared or disappeared, without
 * polling: an inotify watch (fs.watch) on its directory, filtered to its
 * name, since /dev changes all the time for other reasons. Bursts of events
 * (udev creates, chmods, labels) become one call after `debounceMs`.
 *
 * A watch can be impossible (the directory is missing) or die (the directory
 * is removed or replaced, e.g. /dev remounted). Then the caller's interval is
 * the fallback, and each `ensureWatching()` tries again.
 */
export class DeviceWatch {
  private watcher: FSWatcher | undefined;
  private watchedDir: { dev: number; ino: number } | undefined;
  private pending: NodeJS.Timeout | undefined;
  private unavailableReason: string | undefined;
  private readonly dir: string;
  private readonly name: string;

  constructor(
    devicePath: string,
    private readonly onChange: () => void,
    private readonly log: Logger,
    private readonly debounceMs = 100,
  ) {
    this.dir = dirname(devicePath);
    this.name = basename(devicePath);
  }

  /** Starts the watch, or restarts it when it died or its directory was replaced. Cheap enough to call on every interval. */
  ensureWatching(): void {
    let dirStat: { dev: number; ino: number };
    try {
      dirStat = statSync(this.dir);
    } catch (err) {
      this.stopWatching();
      this.unavailable(`cannot watch ${this.dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return;
    }
    if (this.watcher && this.watchedDir?.dev === dirStat.dev && this.watchedDir.ino === dirStat.ino) return;

    const replacing = this.watcher !== undefined;
    this.stopWatching();
    try {
      const watcher = watch(this.dir, { persistent: false }, (_event, filename) => {
        // Some platforms give no name; then any change may be ours.
        if (filename === null || filename === this.name) this.changed();
      });
      watcher.on('error', (err) => {
        if (this.watcher !== watcher) return;
        this.stopWatching();
        this.unavailable(`watch on ${this.dir} failed: ${err.message}`);
        this.changed();
      });
      this.watcher = watcher;
      this.watchedDir = { dev: dirStat.dev, ino: dirStat.ino };
    } catch (err) {
      this.unavailable(`cannot watch ${this.dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return;
    }
    const recovered = replacing || this.unavailableReason !== undefined;
    this.unavailableReason = undefined;
    this.log.info({ event: 'device_watch', directory: this.dir, name: this.name }, 'watching for the device to appear or disappear');
    // Whatever happened while nothing watched went unseen.
    if (recovered) this.changed();
  }

  close(): void {
    this.stopWatching();
    if (this.pending) clearTimeout(this.pending);
    this.pending = undefined;
  }

  /** Trailing debounce: the self-test runs once the burst is over, so it sees the node as udev left it. */
  private changed(): void {
    if (this.pending) clearTimeout(this.pending);
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.onChange();
    }, this.debounceMs);
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watchedDir = undefined;
  }

  /** Logs once per distinct reason, since the caller retries on every interval. */
  private unavailable(reason: string): void {
    if (reason === this.unavailableReason) return;
    this.unavailableReason = reason;
    this.log.warn({ event: 'device_watch_unavailable', directory: this.dir, reason }, 'not watching the device; relying on the self-test interval');
  }
}
