import { Redis } from 'ioredis';
import type { Logger } from '../logger.js';
import type { Cache, CacheMetrics } from './cache.js';

const DELETE_SLICE = 1000;

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
      const json = await this.redis.get(key);
      if (json === null) {
        this.options.metrics.misses.inc({ cache: this.name });
        return undefined;
      }
      this.options.metrics.hits.inc({ cache: this.name });
      return JSON.parse(json) as T;
    } catch (error) {
      this.bypass('get', error);
      return undefined;
    }
  }

  async set(key: string, value: unknown, ttlSeconds = this.options.defaultTtlSeconds): Promise<void> {
    try {
      await this.redis.set(key, JSON.stringify(value), 'EX', ttlSeconds);
    } catch (error) {
      this.bypass('set', error);
    }
  }

  /**
   * One round trip for a projection batch's keys: UNLINK frees the values in the background, so a large batch
   * does not block Redis. Sent in slices so a huge batch never makes one enormous command.
   */
  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0) return;
    try {
      if (keys.length <= DELETE_SLICE) await this.redis.unlink(...keys);
      else {
        const pipeline = this.redis.pipeline();
        for (let start = 0; start < keys.length; start += DELETE_SLICE)
          pipeline.unlink(...keys.slice(start, start + DELETE_SLICE));
        const results = (await pipeline.exec()) ?? [];
        const failed = results.find(([error]) => error);
        if (failed) throw failed[0];
      }
    } catch (error) {
      this.bypass('delete', error);
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
