/**
 * src/infra/cache: the query cache port (this file) and its adapters: Redis, in-process LRU, none.
 */
import { Counter, type Registry } from 'prom-client';
import type { Position } from '../eventStore/eventStore.js';

/**
 * A cache entry that a projection's commit made stale, and the log position of that change: the position of the
 * last event the row now reflects (the row's `last_position`).
 */
export interface StaleEntry {
  key: string;
  position: Position;
}

/**
 * The query cache port. A cache is an optimisation, never a dependency: every method but ping() swallows its
 * own failures (logged, counted), so a cache outage slows queries down and never fails them.
 *
 * Entries are versioned by log position, so the usual cache-aside race cannot serve an old row for a whole TTL: a
 * query that read a row just before a projection committed a change, and stores it just after the projection
 * invalidated the key, is refused, because the invalidation left a marker at the newer position. Positions of one
 * store compare as plain strings (see `Position`).
 */
export interface Cache {
  readonly name: 'redis' | 'memory' | 'none';
  /** The value stored for `key`, or undefined (never stored, expired, or invalidated since). */
  get<T>(key: string): Promise<T | undefined>;
  /**
   * Stores `value`, read from a read model row that reflects the log up to `position`, unless the entry already
   * holds something newer: a value or an invalidation at a later position.
   */
  set(key: string, value: unknown, position: Position, ttlSeconds?: number): Promise<void>;
  /**
   * Invalidates many entries in one call (a projection batch's): each key then answers undefined, and refuses
   * values older than its position, for the default time to live.
   */
  invalidate(entries: readonly StaleEntry[]): Promise<void>;
  /** Throws when the cache cannot be reached (for /ready, which reports it as degraded). */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface CacheMetrics {
  hits: Counter<'cache'>;
  misses: Counter<'cache'>;
  bypassed: Counter<'cache' | 'operation'>;
}

const metricsByRegistry = new WeakMap<Registry, CacheMetrics>();

export function cacheMetrics(registry?: Registry): CacheMetrics {
  const existing = registry && metricsByRegistry.get(registry);
  if (existing) return existing;
  const registers = registry ? [registry] : [];
  const metrics: CacheMetrics = {
    hits: new Counter({ name: 'cache_hits_total', help: 'Cache hits', labelNames: ['cache'], registers }),
    misses: new Counter({
      name: 'cache_misses_total',
      help: 'Cache misses',
      labelNames: ['cache'],
      registers,
    }),
    bypassed: new Counter({
      name: 'cache_bypassed_total',
      help: 'Cache operations skipped because the cache could not be reached',
      labelNames: ['cache', 'operation'],
      registers,
    }),
  };
  if (registry) metricsByRegistry.set(registry, metrics);
  return metrics;
}
