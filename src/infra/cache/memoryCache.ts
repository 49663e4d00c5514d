import type { Cache, CacheMetrics } from './cache.js';

/**
 * The embedded default's cache: an in-process LRU with per-entry expiry. A Map keeps insertion order, so
 * re-inserting on read makes the first key the least recently used.
 */
export class MemoryCache implements Cache {
  readonly name = 'memory' as const;
  private readonly entries = new Map<string, { json: string; expiresAt: number }>();

  constructor(
    private readonly options: {
      maxEntries: number;
      defaultTtlSeconds: number;
      metrics: CacheMetrics;
      now?: () => number;
    },
  ) {}

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  async get<T>(key: string): Promise<T | undefined> {
    const entry = this.entries.get(key);
    if (!entry || entry.expiresAt <= this.now()) {
      if (entry) this.entries.delete(key);
      this.options.metrics.misses.inc({ cache: this.name });
      return undefined;
    }
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.options.metrics.hits.inc({ cache: this.name });
    // Stored as JSON so callers get a copy, exactly as from Redis, and cannot mutate the cached value.
    return JSON.parse(entry.json) as T;
  }

  async set(key: string, value: unknown, ttlSeconds = this.options.defaultTtlSeconds): Promise<void> {
    this.entries.delete(key);
    this.entries.set(key, { json: JSON.stringify(value), expiresAt: this.now() + ttlSeconds * 1000 });
    while (this.entries.size > this.options.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  async delete(...keys: string[]): Promise<void> {
    for (const key of keys) this.entries.delete(key);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.entries.clear();
  }
}
