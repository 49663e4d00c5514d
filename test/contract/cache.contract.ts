import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { Cache } from '../../src/infra/cache/cache.js';
import { sleep } from '../support/wait.js';

/** One suite for both caches: what query code may rely on. */
export function cacheContract(
  name: string,
  setUp: (context: Mocha.Context) => Promise<Cache | null>,
  tearDown: () => Promise<void>,
) {
  describe(`cache contract: ${name}`, function () {
    let cache: Cache;
    before(async function () {
      const made = await setUp(this);
      if (!made) return this.skip();
      cache = made;
    });
    after(tearDown);

    it('returns undefined for a key it never stored', async () => {
      expect(await cache.get(`missing-${randomUUID()}`)).to.equal(undefined);
    });

    it('returns a stored JSON value as a copy', async () => {
      const key = `k-${randomUUID()}`;
      const value = { id: 1, nested: { tags: ['a', 'ü'] }, none: null };
      await cache.set(key, value);
      const read = await cache.get<typeof value>(key);
      expect(read).to.deep.equal(value);
      read!.nested.tags.push('mutated');
      expect(await cache.get(key)).to.deep.equal(value);
    });

    it('forgets deleted keys, several at once', async () => {
      const [a, b, c] = [`a-${randomUUID()}`, `b-${randomUUID()}`, `c-${randomUUID()}`];
      await Promise.all([cache.set(a, 1), cache.set(b, 2), cache.set(c, 3)]);
      await cache.delete(a, b);
      expect([await cache.get(a), await cache.get(b), await cache.get(c)]).to.deep.equal([
        undefined,
        undefined,
        3,
      ]);
    });

    it("forgets a projection batch's worth of keys in one call, and only those", async () => {
      const prefix = `batch-${randomUUID()}`;
      const keys = Array.from({ length: 2500 }, (_, i) => `${prefix}:${i}`);
      const kept = `${prefix}:kept`;
      await Promise.all(keys.map((key, i) => cache.set(key, i)));
      // Last, so a small LRU keeps it (and the newest of the others, which the delete must still remove).
      await cache.set(kept, 2500);
      await cache.delete(...keys);
      const left = await Promise.all(keys.map((key) => cache.get(key)));
      expect(left.filter((value) => value !== undefined)).to.deep.equal([]);
      expect(await cache.get(kept)).to.equal(2500);
    });

    it('expires an entry after its time to live', async function () {
      this.timeout(5000);
      const key = `ttl-${randomUUID()}`;
      await cache.set(key, 'short-lived', 1);
      expect(await cache.get(key)).to.equal('short-lived');
      await sleep(1300);
      expect(await cache.get(key)).to.equal(undefined);
    });

    it('answers ping when reachable', async () => {
      await cache.ping();
    });
  });
}
