import { expect } from 'chai';
import {
  LOAD_FACTOR,
  checkHistories,
  kafkaReport,
  readLog,
  readModelDifferences,
  startLoad,
  waitUntilAllTerminal,
  useFaultStack,
} from './support/stack.js';
import { waitFor } from '../support/wait.js';
import { loggedLines } from './support/processes.js';
import type { Child } from '../support/processes.js';

const HOLDS_LOCK = 'relay holds the lock; publishing';

describe('fault: two relays started at once', function () {
  this.timeout(180000);
  const stack = useFaultStack(['api', 'projector', 'worker']);

  const lockHolders = async () => {
    const { rows } = await stack.db.query<{ pid: number }>(
      `SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
          AND a.application_name = 'task-manager-relay'`,
    );
    return rows.length;
  };

  it('publishes through one of them only, and the other takes over when it dies', async () => {
    const relays: Child[] = await Promise.all([stack.roleProcess(['relay']), stack.roleProcess(['relay'])]);
    const first = startLoad(stack, { count: 150 * LOAD_FACTOR, concurrency: 8, perSecond: 50 * LOAD_FACTOR });
    await first.done;
    expect(first.failures).to.deep.equal([]);
    await waitUntilAllTerminal(stack.db, first.ids, 60000);

    const active = relays.filter((relay) => loggedLines(relay, HOLDS_LOCK).length > 0);
    expect(active.length, 'relays that took the lock').to.equal(1);
    const [publisher] = active as [Child];
    const standby = relays.find((relay) => relay !== publisher)!;
    expect(await lockHolders(), 'advisory lock holders').to.equal(1);
    // Nothing crashed yet, so one publisher means each event is in the topic exactly once.
    const before = await readLog(stack);
    const calm = await kafkaReport(stack, before);
    expect(calm.missing).to.deep.equal([]);
    expect(calm.duplicated, 'events published twice while both relays ran').to.equal(0);
    expect(calm.messages).to.equal(before.length);

    const second = startLoad(stack, {
      count: 150 * LOAD_FACTOR,
      concurrency: 8,
      perSecond: 40 * LOAD_FACTOR,
    });
    await waitFor('half of the second load', async () => second.submitted >= 60 * LOAD_FACTOR || undefined, {
      timeoutMs: 30000,
      intervalMs: 100,
      ignoreErrors: true,
    });
    await publisher.kill('SIGKILL');
    await standby.waitForOutput(HOLDS_LOCK, 15000);
    await second.done;
    expect(second.failures).to.deep.equal([]);
    const ids = [...first.ids, ...second.ids];
    expect(await waitUntilAllTerminal(stack.db, ids, 90000)).to.deep.equal({ done: 300 * LOAD_FACTOR });

    const events = await readLog(stack);
    expect(checkHistories(events, ids).problems).to.deep.equal([]);
    expect(await readModelDifferences(stack, events)).to.deep.equal([]);
    const kafka = await kafkaReport(stack, events);
    expect(kafka.missing, 'log events missing from Kafka').to.deep.equal([]);
    expect(await lockHolders(), 'advisory lock holders after the takeover').to.equal(1);
    console.log(
      `      [two relays] ${before.length} events published once each by one relay; after its SIGKILL the standby ` +
        `took over: ${events.length} events, ${kafka.messages} Kafka messages, ${kafka.duplicated} re-published`,
    );
  });
});
