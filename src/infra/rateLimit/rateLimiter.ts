/**
 * src/infra/rateLimit: fixed-window rate limits in Redis, or in process without it.
 */
import { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/**
 * Counts events (failed logins) per key in a fixed window. `count` and `record` answer how many there were in
 * the current window and, when over the limit, how long until it resets.
 */
export interface RateLimiter {
  readonly name: 'redis' | 'memory';
  /** Records one more event and returns the count in the window, with the window's remaining seconds. */
  record(key: string, windowSeconds: number): Promise<{ count: number; resetInSeconds: number }>;
  count(key: string): Promise<{ count: number; resetInSeconds: number }>;
  /** Takes back one recorded event (a reserved attempt that turned out fine). */
  release(key: string): Promise<void>;
  close(): Promise<void>;
}

export class MemoryRateLimiter implements RateLimiter {
  readonly name = 'memory' as const;
  private readonly windows = new Map<string, { count: number; resetAt: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  private current(key: string) {
    const window = this.windows.get(key);
    if (window && window.resetAt > this.now()) return window;
    if (window) this.windows.delete(key);
    return null;
  }

  async record(key: string, windowSeconds: number) {
    const window = this.current(key) ?? { count: 0, resetAt: this.now() + windowSeconds * 1000 };
    window.count++;
    this.windows.set(key, window);
    if (this.windows.size > 100_000) this.sweep();
    return { count: window.count, resetInSeconds: Math.ceil((window.resetAt - this.now()) / 1000) };
  }

  async count(key: string) {
    const window = this.current(key);
    return window
      ? { count: window.count, resetInSeconds: Math.ceil((window.resetAt - this.now()) / 1000) }
      : { count: 0, resetInSeconds: 0 };
  }

  async release(key: string) {
    const window = this.current(key);
    if (window && window.count > 0) window.count--;
  }

  private sweep() {
    for (const key of [...this.windows.keys()]) this.current(key);
  }

  async close() {
    this.windows.clear();
  }
}

/**
 * Redis-backed, so the limit holds across every API process. If Redis cannot be reached, it falls back to a
 * per-process in-memory limiter (documented in the README): limits stay on, only per process instead of global.
 */
export class RedisRateLimiter implements RateLimiter {
  readonly name = 'redis' as const;
  private readonly redis: Redis;
  private readonly fallback = new MemoryRateLimiter();
  private lastWarnAt = 0;

  constructor(
    private readonly options: { url: string; keyPrefix: string; commandTimeoutMs: number; logger: Logger },
  ) {
    this.redis = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs,
      connectTimeout: 2000,
      retryStrategy: (attempt) => Math.min(200 * attempt, 2000),
    });
    this.redis.on('error', () => undefined); // reported, throttled, where a call falls back
  }

  private fellBack(error: unknown) {
    if (Date.now() - this.lastWarnAt > 5000) {
      this.lastWarnAt = Date.now();
      this.options.logger.warn(
        { err: error },
        'Redis unavailable; rate limits are per process until it is back',
      );
    }
  }

  async record(key: string, windowSeconds: number) {
    try {
      const results = await this.redis.multi().incr(key).expire(key, windowSeconds, 'NX').ttl(key).exec();
      const count = Number(results?.[0]?.[1]);
      const ttl = Number(results?.[2]?.[1]);
      return { count, resetInSeconds: ttl > 0 ? ttl : windowSeconds };
    } catch (error) {
      this.fellBack(error);
      return this.fallback.record(key, windowSeconds);
    }
  }

  async count(key: string) {
    try {
      const [count, ttl] = await Promise.all([this.redis.get(key), this.redis.ttl(key)]);
      return { count: Number(count ?? 0), resetInSeconds: Math.max(0, ttl) };
    } catch (error) {
      this.fellBack(error);
      return this.fallback.count(key);
    }
  }

  async release(key: string) {
    try {
      await this.redis.decr(key);
    } catch (error) {
      this.fellBack(error);
      await this.fallback.release(key);
    }
  }

  async close() {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
