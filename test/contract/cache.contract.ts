import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { Cache } from '../../src/infra/cache/cache.js';
import { encodePosition } from '../../src/infra/eventStore/eventStore.js';
import { sleep } from '../support/wait.js';

/** The n-th position of a log: what a read model row reflects, and what a projection invalidates at. */
const at = (n: number) => encodePosition(7n, BigInt(n));

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
      await cache.set(key, value, at(1));
      const read = await cache.get<typeof value>(key);
      expect(read).to.deep.equal(value);
      read!.nested.tags.push('mutated');
      expect(await cache.get(key)).to.deep.equal(value);
    });

    it('forgets invalidated keys, several at once', async () => {
      const [a, b, c] = [`a-${randomUUID()}`, `b-${randomUUID()}`, `c-${randomUUID()}`];
      await Promise.all([cache.set(a, 1, at(1)), cache.set(b, 2, at(1)), cache.set(c, 3, at(1))]);
      await cache.invalidate([
        { key: a, position: at(2) },
        { key: b, position: at(2) },
      ]);
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
      await Promise.all(keys.map((key, i) => cache.set(key, i, at(1))));
      // Last, so a small LRU keeps it (and the newest of the others, which the invalidation must still remove).
      await cache.set(kept, 2500, at(1));
      await cache.invalidate(keys.map((key) => ({ key, position: at(2) })));
      const left = await Promise.all(keys.map((key) => cache.get(key)));
      expect(left.filter((value) => value !== undefined)).to.deep.equal([]);
      expect(await cache.get(kept)).to.equal(2500);
    });

    it('refuses a row read before an invalidation and stored after it (the read that overlapped a commit)', async () => {
      const key = `race-${randomUUID()}`;
      await cache.set(key, { status: 'pending' }, at(10));
      // The projection commits the row at position 11 and invalidates; a query that read the row at 10 just
      // before the commit stores it just after.
      await cache.invalidate([{ key, position: at(11) }]);
      await cache.set(key, { status: 'pending' }, at(10));
      expect(await cache.get(key)).to.equal(undefined);
      // The row read after the commit is stored and served.
      await cache.set(key, { status: 'in_progress' }, at(11));
      expect(await cache.get(key)).to.deep.equal({ status: 'in_progress' });
    });

    it('keeps the newer of two values, whatever order they are stored in', async () => {
      const key = `order-${randomUUID()}`;
      await cache.set(key, 'newer', at(20));
      await cache.set(key, 'older', at(19));
      expect(await cache.get(key)).to.equal('newer');
      await cache.set(key, 'newest', at(21));
      expect(await cache.get(key)).to.equal('newest');
    });

    it('keeps a value already at the invalidated position, and ignores an older invalidation', async () => {
      const key = `late-${randomUUID()}`;
      // A query read the committed row before the projection got round to invalidating it.
      await cache.set(key, 'fresh', at(30));
      await cache.invalidate([{ key, position: at(30) }]);
      expect(await cache.get(key)).to.equal('fresh');
      await cache.invalidate([{ key, position: at(29) }]);
      expect(await cache.get(key)).to.equal('fresh');
    });

    it('expires an entry after its time to live', async function () {
      this.timeout(5000);
      const key = `ttl-${randomUUID()}`;
      await cache.set(key, 'short-lived', at(1), 1);
      expect(await cache.get(key)).to.equal('short-lived');
      await sleep(1300);
      expect(await cache.get(key)).to.equal(undefined);
    });

    it('answers ping when reachable', async () => {
      await cache.ping();
    });
  });
}
