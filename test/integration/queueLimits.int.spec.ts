import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { handleCommand } from '../../src/commands/commandHandler.js';
import { taskStreamId, type TaskSpec } from '../../src/domain/tasks/events.js';
import { task } from '../../src/domain/tasks/state.js';
import { finishAttempt } from '../../src/domain/tasks/workerCommands.js';
import {
  configureQueue,
  queueSettings,
  queueStreamId,
  UNLIMITED,
  type QueueLimits,
} from '../../src/domain/queues/queueSettings.js';
import { claimRound, type ClaimedTask, type ClaimRequest } from '../../src/workers/schedule.js';
import {
  rebuildQueueSettings,
  selectQueueSettings,
  verifyQueueSettings,
} from '../../src/projections/queues/table.js';
import { useTestEventStore } from '../support/postgres.js';
import { queueTestTask, taskSpec, testClaimRequest, testCommandContext } from '../support/fixtures.js';

describe('queue limits in the claim: global concurrency, rate, group keys and fairness, pause', function () {
  this.timeout(60_000);
  const test = useTestEventStore('qlimits', { batchSize: 500 });
  // Each test has a queue of its own, so tests never take each other's tasks.
  let queue = '';
  beforeEach(() => (queue = `q${randomUUID().slice(0, 8)}`));

  const submit = (overrides: Partial<TaskSpec> = {}): Promise<string> =>
    queueTestTask(test.store, taskSpec({ queue, ...overrides }));

  const limit = async (limits: Partial<QueueLimits>, name = queue): Promise<void> => {
    await handleCommand(
      test.store,
      queueStreamId(name),
      queueSettings,
      (state) =>
        configureQueue(
          { queue: name, limits: { ...UNLIMITED, ...limits }, by: 'admin', now: new Date() },
          state,
        ),
      testCommandContext(),
    );
  };

  /** One claim round of a worker with `free` slots, serving every queue (so the claim must tell them apart). */
  const claim = (
    workerId: string,
    free: number,
    overrides: Partial<ClaimRequest> = {},
  ): ReturnType<typeof claimRound> =>
    claimRound(test.db.pool, test.store, testClaimRequest(workerId, free, overrides));

  /** Claims of this test's queue only (another test's leftovers in other queues are not ours to count). */
  const ours = (claimed: ClaimedTask[]) => claimed.filter((c) => c.state.spec!.queue === queue);

  const succeed = async (claimed: ClaimedTask): Promise<void> => {
    await handleCommand(
      test.store,
      taskStreamId(claimed.state.id!),
      task,
      (state) =>
        finishAttempt(
          {
            workerId: state.workerId!,
            attempt: state.attempt,
            outcome: { kind: 'succeeded', result: null, resultTruncated: false },
            retryDelayMs: 0,
            now: new Date(),
          },
          state,
        ),
      testCommandContext(),
    );
  };

  it('never runs more than `concurrency` across workers racing for it, and frees a slot when a task ends', async () => {
    await limit({ concurrency: 3 });
    await Promise.all(Array.from({ length: 30 }, () => submit()));
    // Five workers with 10 free slots each claim at the same moment, twice.
    const rounds = await Promise.all(
      Array.from({ length: 10 }, (_, i) => claim(`w${i % 5}`, 10).then((round) => ours(round.claimed))),
    );
    const running = rounds.flat();
    expect(running).to.have.length(3);
    expect(new Set(running.map((c) => c.state.id)).size).to.equal(3);
    const next = await claim('w9', 10);
    expect(ours(next.claimed)).to.have.length(0);
    expect(next.held).to.deep.include({ queue, heldBy: 'limit', retryAt: null });

    await succeed(running[0]!);
    const after = ours((await claim('w9', 10)).claimed);
    expect(after).to.have.length(1);
  });

  it('never deadlocks workers claiming from several limited queues at once, and a busy queue is looked at again', async () => {
    const other = `${queue}-b`;
    await limit({ concurrency: 50 });
    await limit({ concurrency: 50 }, other);
    for (const name of [queue, other])
      await Promise.all(
        Array.from({ length: 40 }, () => queueTestTask(test.store, taskSpec({ queue: name }))),
      );
    // Twenty workers at once, each over both queues (in its own random order): every round completes.
    const rounds = await Promise.all(Array.from({ length: 20 }, (_, i) => claim(`w${i}`, 5)));
    const claimed = rounds
      .flatMap((round) => round.claimed)
      .filter((c) => [queue, other].includes(c.state.spec!.queue));
    expect(new Set(claimed.map((c) => c.state.id)).size).to.equal(claimed.length);
    expect(claimed.length).to.be.greaterThan(0);
    const busy = rounds.flatMap((round) => round.held).filter((held) => held.heldBy === 'busy');
    for (const held of busy) expect(held.retryAt).to.be.an.instanceOf(Date);
    // Their leftovers stay out of the later tests' claims, which serve every queue.
    await limit({ paused: true });
    await limit({ paused: true }, other);
  });

  it('starts at most `rate.limit` in any window of `rate.interval_ms`, and says when the window frees', async () => {
    await limit({ rate: { limit: 4, intervalMs: 60_000 } });
    await Promise.all(Array.from({ length: 10 }, () => submit()));
    const start = new Date();
    const first = ours((await claim('w1', 10, { now: start })).claimed);
    expect(first).to.have.length(4);
    const blocked = await claim('w2', 10, { now: new Date(start.getTime() + 30_000) });
    expect(ours(blocked.claimed)).to.have.length(0);
    const held = blocked.held.find((h) => h.queue === queue);
    expect(held?.heldBy).to.equal('rate');
    expect(held?.retryAt?.getTime()).to.equal(start.getTime() + 60_000);
    // A window later, four more.
    const later = ours((await claim('w2', 10, { now: new Date(start.getTime() + 60_001) })).claimed);
    expect(later).to.have.length(4);
  });

  it('caps each group key at `group_concurrency` and serves the keys round robin, so a big key starves no one', async () => {
    await limit({ groupConcurrency: 2 });
    for (let i = 0; i < 40; i++) await submit({ groupKey: 'big' });
    for (let i = 0; i < 3; i++) await submit({ groupKey: 'small' });
    for (let i = 0; i < 3; i++) await submit({ groupKey: null });
    const claimed = ours((await claim('w1', 20)).claimed);
    const byKey = (key: string | null) => claimed.filter((c) => c.state.spec!.groupKey === key).length;
    expect(byKey('big')).to.equal(2);
    expect(byKey('small')).to.equal(2);
    // Tasks without a key are not capped by it.
    expect(byKey(null)).to.equal(3);
  });

  it('takes one task of every key before a second of any (round robin), starting after the key it ended on', async () => {
    await limit({ concurrency: 100 });
    for (const key of ['a', 'b', 'c'])
      for (let i = 0; i < 5; i++) await submit({ groupKey: key, priority: key === 'a' ? 9 : 5 });
    const keysOf = (claimed: ClaimedTask[]) => claimed.map((c) => c.state.spec!.groupKey).sort();
    // Key a's higher priority does not let it take both slots.
    expect(keysOf(ours((await claim('w1', 2)).claimed))).to.deep.equal(['a', 'b']);
    // The next round starts after b.
    expect(keysOf(ours((await claim('w1', 1)).claimed))).to.deep.equal(['c']);
    expect(keysOf(ours((await claim('w1', 6)).claimed))).to.deep.equal(['a', 'a', 'b', 'b', 'c', 'c']);
  });

  it('starts nothing of a paused queue, through either claim, until it is resumed', async () => {
    await limit({ paused: true });
    await submit();
    expect(ours((await claim('w1', 10)).claimed)).to.have.length(0);
    expect(ours((await claim('w1', 10, { onlyQueues: [queue] })).claimed)).to.have.length(0);
    await limit({ paused: false });
    expect(ours((await claim('w1', 10)).claimed)).to.have.length(1);
  });

  it("applies config.yml's limits to a queue nobody configured, and an admin's settings over them", async () => {
    await Promise.all(Array.from({ length: 6 }, () => submit()));
    const queueDefaults = { [queue]: { ...UNLIMITED, concurrency: 2 } };
    expect(ours((await claim('w1', 10, { queueDefaults })).claimed)).to.have.length(2);
    expect(ours((await claim('w1', 10, { queueDefaults })).claimed)).to.have.length(0);
    // An admin lifts the limit: the settings win, and the queue goes back to the plain claim.
    await limit({});
    expect(ours((await claim('w1', 10, { queueDefaults })).claimed)).to.have.length(4);
  });

  it('keeps queue_settings equal to a fold of the log, and rebuilds it from the log', async () => {
    await limit({ concurrency: 5, rate: { limit: 7, intervalMs: 1000 } });
    await limit({ concurrency: 6, groupConcurrency: 1 });
    const [row] = await selectQueueSettings(test.db.pool, queue);
    expect(row?.limits).to.deep.equal({ concurrency: 6, rate: null, groupConcurrency: 1, paused: false });
    expect(await verifyQueueSettings(test.db.pool)).to.deep.equal([]);

    await test.db.pool.query('UPDATE queue_settings SET concurrency = 99 WHERE queue = $1', [queue]);
    const differences = await verifyQueueSettings(test.db.pool);
    expect(differences.map((d) => d.queue)).to.deep.equal([queue]);
    expect(differences[0]!.actual?.limits.concurrency).to.equal(99);
    expect(differences[0]!.expected?.limits.concurrency).to.equal(6);

    expect(await rebuildQueueSettings(test.db.pool)).to.be.greaterThan(1);
    expect(await verifyQueueSettings(test.db.pool)).to.deep.equal([]);
  });

  it('appends nothing when the same settings are put again', async () => {
    await limit({ concurrency: 2 });
    await limit({ concurrency: 2 });
    expect(await test.store.readStream(queueStreamId(queue))).to.have.length(1);
  });
});
