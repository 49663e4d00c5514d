import type { Position } from '../eventStore/eventStore.js';
import type { Cache, CacheMetrics, StaleEntry } from './cache.js';

interface Entry {
  position: Position;
  json: string;
  expiresAt: number;
}

interface Invalidation {
  position: Position;
  expiresAt: number;
}

/**
 * The embedded default's cache: an in-process LRU with per-entry expiry. A Map keeps insertion order, so
 * re-inserting on read makes the first key the least recently used.
 *
 * Invalidations are kept apart from the values, in a map of the same bound, so a projection batch that touches
 * thousands of keys does not push the cached values out. When more invalidations than that bound are newer than
 * a query's read, the oldest is forgotten and the query may store its older row: it would have to hold its row
 * across `maxEntries` invalidations.
 */
export class MemoryCache implements Cache {
  readonly name = 'memory' as const;
  private readonly entries = new Map<string, Entry>();
  private readonly invalidations = new Map<string, Invalidation>();

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

  /** The live item of `key` in `map`, or undefined; an expired one is dropped on the way. */
  private live<T extends { expiresAt: number }>(map: Map<string, T>, key: string): T | undefined {
    const item = map.get(key);
    if (item && item.expiresAt <= this.now()) {
      map.delete(key);
      return undefined;
    }
    return item;
  }

  async get<T>(key: string): Promise<T | undefined> {
    const entry = this.live(this.entries, key);
    if (!entry) {
      this.options.metrics.misses.inc({ cache: this.name });
      return undefined;
    }
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.options.metrics.hits.inc({ cache: this.name });
    // Stored as JSON so callers get a copy, exactly as from Redis, and cannot mutate the cached value.
    return JSON.parse(entry.json) as T;
  }

  async set(
    key: string,
    value: unknown,
    position: Position,
    ttlSeconds = this.options.defaultTtlSeconds,
  ): Promise<void> {
    const newer = (item: { position: Position } | undefined) =>
      item !== undefined && item.position > position;
    if (newer(this.live(this.entries, key)) || newer(this.live(this.invalidations, key))) return;
    this.invalidations.delete(key);
    this.put(this.entries, key, {
      position,
      json: JSON.stringify(value),
      expiresAt: this.now() + ttlSeconds * 1000,
    });
  }

  async invalidate(entries: readonly StaleEntry[]): Promise<void> {
    const expiresAt = this.now() + this.options.defaultTtlSeconds * 1000;
    for (const { key, position } of entries) {
      const current = this.live(this.entries, key);
      // A value read at this position or later is the fresh one: keep it.
      if (current && current.position >= position) continue;
      this.entries.delete(key);
      const known = this.live(this.invalidations, key);
      if (!known || known.position < position) this.put(this.invalidations, key, { position, expiresAt });
    }
  }

  private put<T>(map: Map<string, T>, key: string, item: T): void {
    map.delete(key);
    map.set(key, item);
    while (map.size > this.options.maxEntries) map.delete(map.keys().next().value as string);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    this.entries.clear();
    this.invalidations.clear();
  }
}
