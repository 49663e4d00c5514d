/**
 * src/infra/cache: the query cache port (this file) and its adapters: Redis, in-process LRU, none.
 */
import { Counter, type Registry } from 'prom-client';

/**
 * The query cache port. A cache is an optimisation, never a dependency: every method but ping() swallows its
 * own failures (logged, counted), so a cache outage slows queries down and never fails them.
 */
export interface Cache {
  readonly name: 'redis' | 'memory' | 'none';
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown, ttlSeconds?: number): Promise<void>;
  /** Many keys in one call: a projection drops a whole batch's stale keys in one round trip. */
  delete(...keys: string[]): Promise<void>;
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
