import { expect } from 'chai';
import { LOAD_FACTOR, expectNothingLost, readLog, startLoad, useFaultStack } from './support/stack.js';
import { sleep, waitFor } from '../support/wait.js';

describe('fault: a projector process killed mid-batch', function () {
  this.timeout(180000);
  // The projector only in its own processes.
  const stack = useFaultStack(['api', 'relay', 'worker']);

  it('resumes from the committed offsets, re-applying nothing twice and skipping nothing', async () => {
    const projectedOfLoad = async () => {
      const { rows } = await stack.db.query<{ applied: number }>(
        `SELECT count(*)::int AS applied FROM projection_stream_progress WHERE projection = 'tasks'`,
      );
      return rows[0]!.applied;
    };
    const appliedEvents = async () => {
      const { rows } = await stack.db.query<{ applied: number }>(
        `SELECT coalesce(sum(revision + 1), 0)::int AS applied FROM projection_stream_progress WHERE projection = 'tasks'`,
      );
      return rows[0]!.applied;
    };

    const first = await stack.roleProcess(['projector']);
    const load = startLoad(stack, { count: 300 * LOAD_FACTOR, concurrency: 8, perSecond: 30 * LOAD_FACTOR });
    await waitFor('60 tasks projected', async () => ((await projectedOfLoad()) >= 60 ? true : undefined), {
      timeoutMs: 60000,
      intervalMs: 100,
      ignoreErrors: true,
    });
    await first.kill('SIGKILL');
    const atFirstKill = await appliedEvents();

    // While no projector runs, the backlog grows; the next one is killed while it works through it.
    await sleep(2000);
    const second = await stack.roleProcess(['projector']);
    await waitFor(
      'the second projector to be working through the backlog',
      async () => ((await appliedEvents()) >= atFirstKill + 20 ? true : undefined),
      { timeoutMs: 60000, describe: undefined, intervalMs: 10, ignoreErrors: true },
    );
    await second.kill('SIGKILL');
    const atSecondKill = await appliedEvents();
    const logged = (await readLog(stack)).filter((event) => event.streamId.startsWith('task-')).length;
    console.log(
      `      [projector kill] killed at ${atFirstKill} and ${atSecondKill} task events applied (${logged} in the log at the second kill)`,
    );
    expect(atSecondKill, 'the second kill fell inside the backlog').to.be.lessThan(logged);

    await sleep(1000);
    await stack.roleProcess(['projector']);
    const { events, kafka } = await expectNothingLost(stack, load, {
      done: 300 * LOAD_FACTOR,
      timeoutMs: 120000,
    });
    console.log(`      [projector kill] ${events.length} events, ${kafka.messages} Kafka messages`);
  });
});
