import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { handleCommand, type CommandContext } from '../../src/commands/commandHandler.js';
import { taskStreamId, type TaskSpec } from '../../src/domain/tasks/events.js';
import { task } from '../../src/domain/tasks/state.js';
import { cancelTask, updateTask } from '../../src/domain/tasks/ownerCommands.js';
import { DirectBus } from '../../src/infra/bus/direct/directBus.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import {
  claimDueTasks,
  claimRound,
  claimStatement,
  expiredLeases,
  rebuildSchedule,
  releaseAbandonedClaims,
  verifySchedule,
  type ClaimRequest,
} from '../../src/workers/schedule.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { planNodes, planRoot } from '../support/plans.js';
import { waitFor } from '../support/wait.js';
import { startTestWorker } from '../support/worker.js';
import { TaskWorker } from '../../src/workers/taskWorker.js';
import { queueTestTask, taskSpec, testClaimRequest, testCommandContext } from '../support/fixtures.js';

const spec = taskSpec;

describe('the task schedule (inline projection) and batched claims', function () {
  this.timeout(60_000);
  let db: TestDatabase;
  let store: PostgresEventStore;
  const now = () => new Date();
  const context = (): CommandContext => testCommandContext(now);

  before(async () => {
    db = await createTestDatabase('sched');
    store = testEventStore(db, { batchSize: 500 });
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });
  // Each test uses a queue of its own and claims only from it, so tests never take each other's tasks.
  let queue = '';
  beforeEach(() => (queue = `q${randomUUID().slice(0, 8)}`));

  const submit = (overrides: Partial<TaskSpec> = {}): Promise<string> =>
    queueTestTask(store, spec({ queue, ...overrides }), now);

  const request = (workerId: string, limit: number): ClaimRequest =>
    testClaimRequest(workerId, limit, { now: now(), onlyQueues: [queue] });

  it('gives every attempt to exactly one worker when batches of claims race', async () => {
    const ids = await Promise.all(Array.from({ length: 300 }, () => submit()));
    const claimedBy = new Map<string, string[]>();
    // Four workers claiming batches of 25 at once, round after round, until nothing is left.
    await Promise.all(
      ['w1', 'w2', 'w3', 'w4'].map(async (workerId) => {
        for (;;) {
          const claimed = await claimDueTasks(db.pool, store, request(workerId, 25));
          if (claimed.length === 0) return;
          for (const claim of claimed) {
            expect(claim.state.status).to.equal('in_progress');
            expect(claim.state.workerId).to.equal(workerId);
            claimedBy.set(claim.state.id!, [...(claimedBy.get(claim.state.id!) ?? []), workerId]);
          }
        }
      }),
    );
    expect(claimedBy.size).to.equal(ids.length);
    for (const [taskId, workers] of claimedBy) expect(workers, taskId).to.have.length(1);
    const started = await db.pool.query<{ count: string }>(
      `SELECT count(*) FROM events WHERE type = 'TaskStarted' AND stream_id = ANY($1)`,
      [ids.map(taskStreamId)],
    );
    expect(Number(started.rows[0]!.count)).to.equal(ids.length);
    expect(await verifySchedule(db.pool)).to.deep.equal([]);
  });

  it('claims only the queues a worker serves, reading them by the index by queue past another queue’s backlog', async () => {
    const mine = queue;
    const second = `${mine}b`;
    const elsewhere = `${mine}x`;
    // An older, higher-priority backlog in a queue this worker does not serve: first in the shared index's order.
    await Promise.all(Array.from({ length: 40 }, () => submit({ queue: elsewhere, priority: 9 })));
    const own = await Promise.all([submit(), submit()]);
    const other = await submit({ queue: second, runAt: new Date(Date.now() + 60_000).toISOString() });

    const claimed = await claimDueTasks(db.pool, store, request('w', 10));
    expect(claimed.map((c) => c.state.id).sort()).to.deep.equal([...own].sort());
    const both = { ...request('w2', 10), onlyQueues: [mine, second] };
    const round = await claimRound(db.pool, store, both);
    expect(round.claimed).to.deep.equal([]); // the second queue's task is not due yet
    expect(round.nextDueAt!.getTime() - both.now.getTime()).to.be.within(50_000, 60_000);
    expect((await claimRound(db.pool, store, request('w2', 10))).nextDueAt).to.equal(null);
    expect(other).to.be.a('string');

    // The plan of a one-queue claim seeks that queue in the index by queue (migrations/0012). A table this small
    // might be read whole instead, so sequential scans are ruled out: the question is which index is chosen.
    const client = await db.pool.connect();
    try {
      // With statistics, the planner knows the backlog of the other queue is there to be skipped.
      await client.query('ANALYZE task_schedule');
      await client.query('BEGIN');
      await client.query('SET LOCAL enable_seqscan = off');
      const { rows } = await client.query<{ 'QUERY PLAN': string }>(
        `EXPLAIN SELECT task_id FROM task_schedule
          WHERE status = 'pending' AND run_at <= now() AND queue = $1::text
          ORDER BY priority DESC, run_at, created_at LIMIT 10`,
        [mine],
      );
      await client.query('COMMIT');
      expect(rows.map((row) => row['QUERY PLAN']).join('\n')).to.include('task_schedule_due_by_queue');
    } finally {
      client.release();
    }
  });

  it('claims from a large backlog by walking the index in order, never by sorting the backlog', async () => {
    // 20,000 due rows of this queue and 20,000 of another, only inside a transaction that is rolled back (the
    // other tests verify the schedule against the log). With statistics (an analyzed, empty queue_settings too,
    // as after any VACUUM ANALYZE), the claim's plan must walk an index in the claim's order and stop at its
    // LIMIT: sorting the due rows makes every claim cost as much as the whole backlog (it did, when the managed
    // queues were left out by anti-joins that PostgreSQL estimated to leave one row).
    const client = await db.pool.connect();
    const planOf = async (onlyQueues: string[]) => {
      const statement = claimStatement(testClaimRequest('w', 16, { now: now(), onlyQueues }));
      const { rows } = await client.query<{ 'QUERY PLAN': unknown }>(
        `EXPLAIN (FORMAT JSON) ${statement.text}`,
        statement.values,
      );
      const root = planRoot(rows);
      const due = planNodes(root).find((node) => node['Subplan Name'] === 'CTE due');
      expect(due, 'the claim has a CTE due').to.not.equal(undefined);
      return planNodes(due!);
    };
    try {
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO task_schedule (task_id, queue, priority, status, run_at, attempt, created_at)
         SELECT gen_random_uuid(), q, i % 5, 'pending', now() - interval '1 hour' + i * interval '10 ms', 0, now()
           FROM generate_series(1, 20000) i, unnest($1::text[]) q`,
        [[queue, `${queue}x`]],
      );
      await client.query('DELETE FROM queue_settings');
      await client.query('ANALYZE task_schedule, queue_settings');
      for (const onlyQueues of [[queue], [], [queue, `${queue}b`]]) {
        const plan = await planOf(onlyQueues);
        const shape = JSON.stringify(plan.map((node) => node['Node Type']));
        expect(
          plan.map((node) => node['Node Type']),
          `${onlyQueues.length} queue(s): ${shape}`,
        ).not.to.include('Sort');
        const scan = plan.find((node) => node['Relation Name'] === 'task_schedule');
        expect(scan?.['Node Type'], `${onlyQueues.length} queue(s): ${shape}`).to.equal('Index Scan');
      }
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('finds when the next task falls due without reading the pending backlog', async () => {
    // 20,000 pending rows not due yet in this queue and 20,000 in another, alone in the schedule inside a
    // transaction that is rolled back. A round that finds nothing due looks up the next due time; no scan of it
    // may return more than a few rows (before migrations/0021 every pending row went to min(run_at)). EXPLAIN
    // ANALYZE runs the claim, which claims nothing here (nothing is due), then the claim itself gives the answer.
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN');
      // The earlier tests' rows too are gone until the rollback: a claim of every queue sees only these.
      await client.query('DELETE FROM task_schedule');
      await client.query(
        `INSERT INTO task_schedule (task_id, queue, priority, status, run_at, attempt, created_at)
         SELECT gen_random_uuid(), q, i % 5, 'pending', now() + interval '1 hour' + i * interval '10 ms', 0, now()
           FROM generate_series(1, 20000) i, unnest($1::text[]) q`,
        [[queue, `${queue}x`]],
      );
      await client.query('ANALYZE task_schedule');
      for (const onlyQueues of [[queue], []]) {
        const statement = claimStatement(testClaimRequest('w', 16, { now: now(), onlyQueues }));
        const { rows } = await client.query<{ 'QUERY PLAN': unknown }>(
          `EXPLAIN (ANALYZE, FORMAT JSON) ${statement.text}`,
          statement.values,
        );
        const plan = planNodes(planRoot(rows));
        const widest = Math.max(
          ...plan
            .filter((node) => node['Relation Name'] === 'task_schedule')
            .map((node) => node['Actual Rows'] ?? 0),
        );
        expect(widest, `${onlyQueues.length} queue(s): rows from one scan of task_schedule`).to.be.below(100);
        // The lookup ran, and found the earliest of them.
        const { rows: answer } = await client.query<{ held_by: string | null; retry_at: Date | null }>(
          statement.text,
          statement.values,
        );
        const { rows: earliest } = await client.query<{ at: Date }>(
          `SELECT min(run_at) AS at FROM task_schedule WHERE status = 'pending'
              AND (cardinality($1::text[]) = 0 OR queue = ANY($1::text[]))`,
          [onlyQueues],
        );
        expect(answer.find((row) => row.held_by === 'next_due')?.retry_at?.toISOString()).to.equal(
          earliest[0]!.at.toISOString(),
        );
      }
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('claims the highest priority first, and never a task before its run_at', async () => {
    const low = await submit({ priority: 1 });
    const high = await submit({ priority: 9 });
    const later = await submit({ priority: 10, runAt: new Date(Date.now() + 60_000).toISOString() });
    const first = await claimDueTasks(db.pool, store, request('w', 1));
    expect(first.map((c) => c.state.id)).to.deep.equal([high]);
    const rest = await claimDueTasks(db.pool, store, request('w', 10));
    expect(rest.map((c) => c.state.id)).to.deep.equal([low]);
    expect(rest.map((c) => c.state.id)).not.to.include(later);
  });

  it('says whether more may be due (a round took as many rows as it asked for), and when the next task falls due', async () => {
    await Promise.all([submit(), submit(), submit()]);
    const full = await claimRound(db.pool, store, request('w', 2));
    expect([full.claimed.length, full.mayHaveMore, full.nextDueAt]).to.deep.equal([2, true, null]);
    const runAt = new Date(Date.now() + 60_000);
    await submit({ runAt: runAt.toISOString() });
    // One due of the three: a round asking for two empties the schedule, and says so, so the worker waits.
    const last = await claimRound(db.pool, store, request('w', 2));
    expect([last.claimed.length, last.mayHaveMore]).to.deep.equal([1, false]);
    expect(last.nextDueAt?.toISOString()).to.equal(runAt.toISOString());
    const none = await claimRound(db.pool, store, request('w', 2));
    expect([none.claimed.length, none.mayHaveMore, none.held]).to.deep.equal([0, false, []]);
  });

  it('keeps a row another writer changed during the claim out of the claim (a cancel wins)', async () => {
    const taskId = await submit();
    await handleCommand(
      store,
      taskStreamId(taskId),
      task,
      (state) => cancelTask({ actorId: state.ownerId!, now: now() }, state),
      context(),
    );
    const claimed = await claimDueTasks(db.pool, store, request('w', 10));
    expect(claimed.map((c) => c.state.id)).not.to.include(taskId);
    const events = await store.readStream(taskStreamId(taskId));
    expect(events.map((e) => e.type)).to.deep.equal(['TaskQueued', 'TaskCanceled']);
  });

  it('wakes a worker for a TaskQueued of a queue it serves, never of one it leaves alone', async () => {
    // Only wake-ups make it look (its poll is a minute away); each look is a claim, counted here.
    const worker = TaskWorker.prototype as unknown as {
      claimDueTasks: (...args: unknown[]) => Promise<unknown>;
    };
    const claimDueTasksOf = worker.claimDueTasks;
    let looks = 0;
    worker.claimDueTasks = function (this: unknown, ...args: unknown[]) {
      looks++;
      return claimDueTasksOf.apply(this, args);
    };
    const bus = new DirectBus({ store, checkpoints: new LogCheckpoints(db.pool), logger: silentLogger() });
    const running = await startTestWorker({ store, pool: db.pool, bus }, queue, { pollIntervalMs: 60_000 });
    const settle = () => new Promise((resolve) => setTimeout(resolve, 400));
    try {
      await settle(); // its first look, at start
      const before = looks;
      // Both wake-up paths see these: the store's append signal at once, the (direct) bus a moment later.
      await Promise.all(Array.from({ length: 20 }, () => submit({ queue: `${queue}-elsewhere` })));
      await settle();
      expect(looks - before, 'looks after TaskQueued of another queue').to.equal(0);
      const own = await submit();
      await waitFor(
        'the task of its own queue to run',
        async () =>
          (await store.readStream(taskStreamId(own))).some((e) => e.type === 'TaskSucceeded') || undefined,
      );
      expect(looks).to.be.greaterThan(before);
    } finally {
      worker.claimDueTasks = claimDueTasksOf;
      await running.stop();
      await bus.close();
    }
  });

  it('leaves no task stuck when a worker dies between its claim and running it: the lease ends, another worker runs it', async () => {
    const taskId = await submit();
    const [claim] = await claimDueTasks(db.pool, store, {
      ...request('vanished-worker', 1),
      leaseMs: () => 200,
    });
    expect(claim?.state.id).to.equal(taskId);
    // The claiming worker is gone (it never ran the handler); a live one reaps the lease and runs the task.
    const bus = new DirectBus({ store, checkpoints: new LogCheckpoints(db.pool), logger: silentLogger() });
    const worker = await startTestWorker({ store, pool: db.pool, bus }, queue);
    try {
      const types = await waitFor(
        'the task to be reaped and run again',
        async () => {
          const events = await store.readStream(taskStreamId(taskId));
          return events.some((e) => e.type === 'TaskSucceeded') ? events.map((e) => e.type) : undefined;
        },
        { timeoutMs: 20_000 },
      );
      expect(types).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskAttemptFailed',
        'TaskStarted',
        'TaskSucceeded',
      ]);
      expect(await expiredLeases(db.pool, now())).not.to.include(taskId);
    } finally {
      await worker.stop();
      await bus.close();
    }
  });

  it('gives back the rows of a worker that died between marking them and appending TaskStarted', async () => {
    const taskId = await submit();
    // What the first step of a claim leaves behind when its worker dies at once.
    await db.pool.query(
      `UPDATE task_schedule SET status = 'claimed', worker_id = 'dead', lease_until = now() - interval '1 second'
        WHERE task_id = $1`,
      [taskId],
    );
    expect(await verifySchedule(db.pool), 'a claim marker is not a difference').to.deep.equal([]);
    expect(await claimDueTasks(db.pool, store, request('w', 10))).to.deep.equal([]);
    expect(await releaseAbandonedClaims(db.pool, now())).to.equal(1);
    const claimed = await claimDueTasks(db.pool, store, request('w', 10));
    expect(claimed.map((c) => c.state.id)).to.deep.equal([taskId]);
  });

  it('gives a row back when its TaskStarted conflicts with another writer', async () => {
    const taskId = await submit();
    // The real store, but an owner's edit lands on the stream just before the claim's TaskStarted does.
    const losing = {
      append: async (...args: Parameters<PostgresEventStore['append']>) => {
        await handleCommand(
          store,
          args[0],
          task,
          (state) => updateTask({ actorId: state.ownerId!, changes: { priority: 7 }, now: now() }, state),
          context(),
        );
        return store.append(...args);
      },
    };
    expect(await claimDueTasks(db.pool, losing, request('w', 10))).to.deep.equal([]);
    const { rows } = await db.pool.query('SELECT status, worker_id FROM task_schedule WHERE task_id = $1', [
      taskId,
    ]);
    expect(rows).to.deep.equal([{ status: 'pending', worker_id: null }]);
  });

  it('is verified against a fold of the log, and rebuilt from it', async () => {
    const taskId = await submit({ priority: 3 });
    expect(await verifySchedule(db.pool)).to.deep.equal([]);
    // Damage it as drift would: a wrong priority, a missing row.
    await db.pool.query('UPDATE task_schedule SET priority = 0 WHERE task_id = $1', [taskId]);
    const other = await submit();
    await db.pool.query('DELETE FROM task_schedule WHERE task_id = $1', [other]);
    const differences = await verifySchedule(db.pool);
    expect(differences.map((d) => d.taskId).sort()).to.deep.equal([taskId, other].sort());
    expect(differences.find((d) => d.taskId === other)!.actual).to.equal(null);
    expect(await rebuildSchedule(db.pool)).to.be.greaterThan(0);
    expect(await verifySchedule(db.pool)).to.deep.equal([]);
  });
});
