import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { cacheContract } from '../contract/cache.contract.js';
import { cacheMetrics } from '../../src/infra/cache/cache.js';
import { MemoryCache } from '../../src/infra/cache/memoryCache.js';
import { RedisCache } from '../../src/infra/cache/redisCache.js';
import { encodePosition } from '../../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import { skipSuiteUnless } from '../support/skips.js';

const redisUrl = process.env.REDIS_URL;
const redisOptions = (url: string, registry = new Registry()) => ({
  url,
  keyPrefix: `tm-test-${randomBytes(4).toString('hex')}:`,
  defaultTtlSeconds: 60,
  commandTimeoutMs: 500,
  metrics: cacheMetrics(registry),
  logger: silentLogger(),
});

let memory: MemoryCache | undefined;
cacheContract(
  'in-process LRU',
  async () =>
    (memory = new MemoryCache({
      maxEntries: 100,
      defaultTtlSeconds: 60,
      metrics: cacheMetrics(new Registry()),
    })),
  async () => memory?.close(),
);

let redis: RedisCache | undefined;
cacheContract(
  'Redis',
  async (context) => {
    skipSuiteUnless(context, Boolean(redisUrl), 'REDIS_URL is not set: no Redis server');
    redis = new RedisCache(redisOptions(redisUrl!));
    if (!(await redis.waitUntilReady(5000))) throw new Error(`Redis at ${redisUrl} did not become ready`);
    return redis;
  },
  async () => redis?.close(),
);

const position = encodePosition(1n, 1n);

describe('Redis cache across an upgrade', function () {
  before(function () {
    skipSuiteUnless(this, Boolean(redisUrl), 'REDIS_URL is not set: no Redis server');
  });

  it("treats an entry in an older release's shape (plain JSON) as absent, and replaces it", async () => {
    const options = redisOptions(redisUrl!);
    const cache = new RedisCache(options);
    const raw = new Redis(redisUrl!, { keyPrefix: options.keyPrefix });
    try {
      await raw.set('task:old', JSON.stringify({ status: 'pending' }), 'EX', 60);
      expect(await cache.get('task:old')).to.equal(undefined);
      await cache.set('task:old', { status: 'done' }, position);
      expect(await cache.get('task:old')).to.deep.equal({ status: 'done' });
    } finally {
      raw.disconnect();
      await cache.close();
    }
  });
});

describe('in-process LRU', () => {
  it('evicts the least recently used entry when full', async () => {
    const cache = new MemoryCache({
      maxEntries: 2,
      defaultTtlSeconds: 60,
      metrics: cacheMetrics(new Registry()),
    });
    await cache.set('a', 1, position);
    await cache.set('b', 2, position);
    await cache.get('a'); // now b is the least recently used
    await cache.set('c', 3, position);
    expect([await cache.get('a'), await cache.get('b'), await cache.get('c')]).to.deep.equal([
      1,
      undefined,
      3,
    ]);
  });
});

describe('Redis cache when Redis cannot be reached', () => {
  it('bypasses the cache (a miss, no error) and counts it, while ping reports the outage', async () => {
    const registry = new Registry();
    // Port 1 on loopback: nothing listens there, so every connection is refused at once.
    const cache = new RedisCache(redisOptions('redis://127.0.0.1:1', registry));
    try {
      expect(await cache.waitUntilReady(300)).to.equal(false);
      await cache.set('k', 'v', position);
      expect(await cache.get('k')).to.equal(undefined);
      await cache.invalidate([{ key: 'k', position }]);
      let pingFailed = false;
      await cache.ping().catch(() => (pingFailed = true));
      expect(pingFailed).to.equal(true);
      const bypassed = await registry.getSingleMetric('cache_bypassed_total')!.get();
      const operations = bypassed.values.map((v) => v.labels.operation).sort();
      expect(operations).to.deep.equal(['get', 'invalidate', 'set']);
    } finally {
      await cache.close();
    }
  });
});
