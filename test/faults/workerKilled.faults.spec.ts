import { expect } from 'chai';
import { LOAD_FACTOR, expectNothingLost, startLoad, useFaultStack } from './support/stack.js';
import { waitFor } from '../support/wait.js';
import type { Child } from '../support/processes.js';

describe('fault: a worker process killed with SIGKILL mid-load', function () {
  this.timeout(180000);
  // Workers only in their own processes: the API, relay and projector stay here.
  const stack = useFaultStack(['api', 'relay', 'projector']);

  it('lets the other worker finish everything once the dead one’s leases expire, each attempt run once', async () => {
    const workers: Child[] = await Promise.all([
      stack.roleProcess(['worker']),
      stack.roleProcess(['worker']),
    ]);
    const [victim] = workers as [Child, Child];
    const load = startLoad(stack, {
      count: 300 * LOAD_FACTOR,
      concurrency: 8,
      perSecond: 40 * LOAD_FACTOR,
      spec: (index) =>
        index % 3 === 0
          ? { title: `echo ${index}`, type: 'echo', payload: { index }, timeout_ms: 2000 }
          : {
              title: `sleep ${index}`,
              type: 'sleep',
              payload: { ms: 200 + (index % 5) * 100 },
              timeout_ms: 2000,
            },
    });

    // Kill it while it runs tasks (as the log, not the lagging read model, says), so there are leases to expire.
    const runningOnVictim = async () => {
      const { rows } = await stack.db.query<{ count: number }>(
        `SELECT count(*)::int AS count FROM events started
          WHERE started.type = 'TaskStarted' AND started.data::jsonb->>'workerId' LIKE $1
            AND NOT EXISTS (SELECT 1 FROM events later
                             WHERE later.stream_id = started.stream_id AND later.revision > started.revision)`,
        [`%-${victim.pid}-%`],
      );
      return rows[0]!.count;
    };
    await waitFor(
      'a third of the load to be submitted',
      async () => load.submitted >= 100 * LOAD_FACTOR || undefined,
      { timeoutMs: 60000, intervalMs: 100, ignoreErrors: true },
    );
    const inFlight = await waitFor(
      'the victim to run at least 3 tasks',
      async () => {
        const running = await runningOnVictim();
        return running >= 3 ? running : undefined;
      },
      { timeoutMs: 30000, describe: undefined, intervalMs: 20, ignoreErrors: true },
    );
    await victim.kill('SIGKILL');
    console.log(`      [worker kill] SIGKILL worker pid ${victim.pid} with ${inFlight} tasks in progress`);

    const { events, histories, kafka } = await expectNothingLost(stack, load, {
      done: 300 * LOAD_FACTOR,
      timeoutMs: 90000,
    });
    const reaped = histories.leaseExpired.filter((entry) => entry.workerId?.includes(`-${victim.pid}-`));
    // Those it was running when killed (it may have claimed more, or finished one, since the count was taken).
    expect(reaped.length, 'attempts of the killed worker failed by the reaper').to.be.at.least(1);
    expect(histories.leaseExpired.length, 'only the killed worker lost leases').to.equal(reaped.length);
    console.log(
      `      [worker kill] ${events.length} events; ${reaped.length} attempts reaped and retried; ${kafka.messages} Kafka messages`,
    );
  });
});
