import type { Cache } from './cache.js';

/**
 * A cache that keeps nothing: every read goes to the read model. For API processes that share no cache with the
 * projector (`--processes N` without Redis), where an in-process copy would never be invalidated.
 */
export class NoCache implements Cache {
  readonly name = 'none' as const;
  async get<T>(): Promise<T | undefined> {
    return undefined;
  }
  async set(): Promise<void> {}
  async invalidate(): Promise<void> {}
  async ping(): Promise<void> {}
  async close(): Promise<void> {}
}
