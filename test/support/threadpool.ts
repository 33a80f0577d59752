/**
 * Import first in an entry point that waits on many native receives at once:
 * each receive occupies one libuv worker thread (native/src/fd-passing.ts),
 * and the default pool has four. Takes effect only before the pool's first use.
 */
process.env.UV_THREADPOOL_SIZE ??= '32';

export {};
