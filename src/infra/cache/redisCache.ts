import { Redis, type Result } from 'ioredis';
import type { Position } from '../eventStore/eventStore.js';
import type { Logger } from '../logger.js';
import type { Cache, CacheMetrics, StaleEntry } from './cache.js';

/** A position is two 16-digit hex numbers and a dash: every stored string starts with the one it stands for. */
const POSITION_LENGTH = 33;

/**
 * Stores ARGV[1] (a position) followed by ARGV[2] (the value's JSON, or '' for an invalidation) for ARGV[3]
 * seconds, unless the key already holds a newer position (an invalidation also yields to the same position: a
 * value read there is fresh). Entries of another shape (an older release's plain JSON) are overwritten.
 */
const VERSIONED_SET = `
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 17, 17) == '-' then
  local at = string.sub(current, 1, ${POSITION_LENGTH})
  if at > ARGV[1] or (ARGV[2] == '' and at == ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
return 1`;

declare module 'ioredis' {
  interface RedisCommander<Context> {
    versionedSet(key: string, position: string, json: string, ttlSeconds: number): Result<number, Context>;
  }
}

export interface RedisCacheOptions {
  url: string;
  /** Namespaces the keys, so two deployments (or test runs) can share one Redis. */
  keyPrefix: string;
  defaultTtlSeconds: number;
  commandTimeoutMs: number;
  metrics: CacheMetrics;
  logger: Logger;
}

/**
 * Redis through ioredis. With the offline queue off and a short command timeout, a Redis that is down makes
 * each call fail fast, and the failure turns into a bypass (a warning, at most one every few seconds, and a
 * metric), while ioredis keeps reconnecting in the background.
 */
export class RedisCache implements Cache {
  readonly name = 'redis' as const;
  private readonly redis: Redis;
  private lastWarnAt = 0;

  constructor(private readonly options: RedisCacheOptions) {
    this.redis = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs,
      connectTimeout: 2000,
      retryStrategy: (attempt) => Math.min(200 * attempt, 2000),
    });
    this.redis.defineCommand('versionedSet', { numberOfKeys: 1, lua: VERSIONED_SET });
    // Without a listener, ioredis reports connection errors as unhandled 'error' events.
    this.redis.on('error', (error) => this.warn('connection', error));
  }

  private warn(operation: string, error: unknown): void {
    if (Date.now() - this.lastWarnAt < 5000) return;
    this.lastWarnAt = Date.now();
    this.options.logger.warn({ err: error, operation }, 'Redis unavailable; cache bypassed');
  }

  private bypass(operation: string, error: unknown): void {
    this.options.metrics.bypassed.inc({ cache: this.name, operation });
    this.warn(operation, error);
  }

  async get<T>(key: string): Promise<T | undefined> {
    try {
      const stored = await this.redis.get(key);
      // An invalidation is a position alone; a value of an older release's shape counts as absent.
      if (stored === null || stored.length <= POSITION_LENGTH || stored[16] !== '-') {
        this.options.metrics.misses.inc({ cache: this.name });
        return undefined;
      }
      this.options.metrics.hits.inc({ cache: this.name });
      return JSON.parse(stored.slice(POSITION_LENGTH)) as T;
    } catch (error) {
      this.bypass('get', error);
      return undefined;
    }
  }

  async set(
    key: string,
    value: unknown,
    position: Position,
    ttlSeconds = this.options.defaultTtlSeconds,
  ): Promise<void> {
    try {
      await this.redis.versionedSet(key, position, JSON.stringify(value), ttlSeconds);
    } catch (error) {
      this.bypass('set', error);
    }
  }

  /** One round trip for a projection batch's keys: one pipeline of the versioned set, with no value. */
  async invalidate(entries: readonly StaleEntry[]): Promise<void> {
    if (entries.length === 0) return;
    try {
      const pipeline = this.redis.pipeline();
      for (const { key, position } of entries)
        pipeline.versionedSet(key, position, '', this.options.defaultTtlSeconds);
      const results = (await pipeline.exec()) ?? [];
      const failed = results.find(([error]) => error);
      if (failed) throw failed[0];
    } catch (error) {
      this.bypass('invalidate', error);
    }
  }

  async ping(): Promise<void> {
    await this.redis.ping();
  }

  /**
   * Waits, bounded, for the first connection, so a fresh process does not bypass the cache for its first
   * requests. Returns false (and the cache keeps bypassing until Redis is back) if it is not up in time.
   */
  async waitUntilReady(timeoutMs: number): Promise<boolean> {
    if (this.redis.status === 'ready') return true;
    return new Promise((resolve) => {
      const done = (ready: boolean) => {
        clearTimeout(timer);
        this.redis.off('ready', onReady);
        resolve(ready);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.redis.once('ready', onReady);
    });
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
