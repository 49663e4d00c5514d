import { expect } from 'chai';
import { skipSuiteUnless } from '../support/skips.js';
import { call, unavailableReason } from '../support/service.js';
import {
  LOAD_FACTOR,
  expectNothingLost,
  metricTotal,
  startFaultStack,
  startLoad,
  type FaultStack,
} from './support/stack.js';
import { waitFor } from '../support/wait.js';
import { newEmail } from '../support/fixtures.js';
import { OwnRedis } from './support/processes.js';

const MAX_FAILED_LOGINS = 3;

describe('fault: Redis stopped', function () {
  this.timeout(180000);
  let redis: OwnRedis | null = null;
  let stack: FaultStack | null = null;

  before(async function () {
    const missing = unavailableReason('full');
    skipSuiteUnless(this, missing === null, missing ?? '');
    // A redis-server of this suite's own, so stopping it touches nobody else.
    redis = await OwnRedis.start();
    stack = await startFaultStack(['api', 'relay', 'projector', 'worker'], (config) => {
      config.redisUrl = redis!.url;
      config.auth.maxFailedLoginsPerEmail = MAX_FAILED_LOGINS;
      config.auth.maxFailedLoginsPerAddress = 1000;
    });
  });
  after(async () => {
    await stack?.stop();
    await redis?.stop();
  });

  it('answers queries without the cache, limits logins per process, and uses the cache again once Redis is back', async () => {
    const s = stack!;
    const hits = () => metricTotal(s.url, 'cache_hits_total');
    const bypassed = () => metricTotal(s.url, 'cache_bypassed_total');
    const getTask = (id: string) => call(s.url, 'GET', `/tasks/${id}`, { token: s.token });
    /** GET twice: the second is a cache hit when the cache works. */
    const readTwice = async (id: string) => {
      const first = await getTask(id);
      const second = await getTask(id);
      expect([first.status, second.status]).to.deep.equal([200, 200]);
      expect(second.body.id).to.equal(id);
    };
    const loginsUntilLimited = async () => {
      const email = newEmail('limited');
      const statuses: number[] = [];
      for (let attempt = 0; attempt <= MAX_FAILED_LOGINS; attempt++)
        statuses.push(
          (await call(s.url, 'POST', '/login', { body: { email, password: 'not the password' } })).status,
        );
      return statuses;
    };
    const limitedAfterFailures = [...Array(MAX_FAILED_LOGINS).fill(401), 429];

    const load = startLoad(s, { count: 240 * LOAD_FACTOR, concurrency: 6, perSecond: 20 * LOAD_FACTOR });
    await waitFor('some tasks', async () => load.submitted >= 40 * LOAD_FACTOR || undefined, {
      timeoutMs: 30000,
      intervalMs: 100,
      ignoreErrors: true,
    });

    // With Redis up: the cache serves repeated reads, and failed logins are limited.
    const hitsBefore = await hits();
    await readTwice(load.ids[0]!);
    expect(await hits(), 'cache hits with Redis up').to.be.greaterThan(hitsBefore);
    expect(await loginsUntilLimited()).to.deep.equal(limitedAfterFailures);

    await redis!.stop();
    const bypassedAtStop = await bypassed();
    const hitsAtStop = await hits();
    for (const id of load.ids.slice(0, 20)) await readTwice(id);
    const list = await call(s.url, 'GET', '/tasks?limit=10', { token: s.token });
    expect(list.status).to.equal(200);
    expect(await bypassed(), 'cache_bypassed_total while Redis is down').to.be.greaterThan(bypassedAtStop);
    expect(await hits(), 'no cache hits while Redis is down').to.equal(hitsAtStop);
    // The fallback: failed logins are still counted, per process, and a 429 still comes.
    expect(await loginsUntilLimited(), 'failed logins while Redis is down').to.deep.equal(
      limitedAfterFailures,
    );
    const login = await call(s.url, 'POST', '/login', {
      body: { email: 'nobody@example.com', password: 'password123' },
    });
    expect(login.status, 'logins are answered while Redis is down').to.equal(401);

    await redis!.start();
    const id = load.ids[1]!;
    await waitFor(
      'the cache to serve hits again',
      async () => {
        const before = await hits();
        await readTwice(id);
        return (await hits()) > before ? true : undefined;
      },
      { timeoutMs: 20000, describe: undefined, intervalMs: 500, ignoreErrors: true },
    );
    const bypassedAfter = await bypassed();
    await readTwice(load.ids[2]!);
    expect(await bypassed(), 'no more bypasses once Redis is back').to.equal(bypassedAfter);

    const { events, kafka } = await expectNothingLost(s, load, { done: 240 * LOAD_FACTOR, timeoutMs: 90000 });
    console.log(
      `      [redis stopped] ${(await bypassed()) - bypassedAtStop} cache operations bypassed; ${events.length} events, ${kafka.messages} Kafka messages`,
    );
  });
});
