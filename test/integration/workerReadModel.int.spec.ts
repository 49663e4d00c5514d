import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { Registry } from 'prom-client';
import { handleCommand, type CommandContext } from '../../src/commands/commandHandler.js';
import { taskStreamId, type TaskSpec } from '../../src/domain/tasks/events.js';
import { cancelTask } from '../../src/domain/tasks/ownerCommands.js';
import { task } from '../../src/domain/tasks/state.js';
import { startTask } from '../../src/domain/tasks/workerCommands.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import type { RunningConsumer } from '../../src/infra/bus/bus.js';
import { DirectBus } from '../../src/infra/bus/direct/directBus.js';
import { cacheMetrics } from '../../src/infra/cache/cache.js';
import { MemoryCache } from '../../src/infra/cache/memoryCache.js';
import type { EventStore } from '../../src/infra/eventStore/eventStore.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import { projectionMetrics, runProjections } from '../../src/projections/projectionRunner.js';
import { tasksProjection } from '../../src/projections/tasks/projection.js';
import {
  ensureReadModelClaimIndexes,
  msUntilNextDueTask,
  selectDueTaskRows,
  selectExpiredLeaseTaskIds,
  selectTaskRow,
} from '../../src/projections/tasks/table.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { waitFor } from '../support/wait.js';
import { startTestWorker } from '../support/worker.js';
import { queueTestTask, taskSpec, testCommandContext } from '../support/fixtures.js';

const spec = taskSpec;

/**
 * The PostgreSQL store under another name: the worker then takes its EventStoreDB path (claims from the tasks
 * read model, cancellation through each task's stream), which these tests drive without an EventStoreDB.
 */
const withoutSchedule = (store: PostgresEventStore): EventStore =>
  new Proxy(store, {
    get(target, property) {
      if (property === 'name') return 'esdb';
      if (property === 'onAppended') return undefined;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as unknown as EventStore;

describe('the worker on the tasks read model (the EventStoreDB path)', function () {
  this.timeout(60_000);
  let db: TestDatabase;
  let store: PostgresEventStore;
  let bus: DirectBus;
  let projector: RunningConsumer;
  const now = () => new Date();
  const context = (): CommandContext => testCommandContext(now);

  before(async () => {
    db = await createTestDatabase('wrm');
    // What the service does when it starts on EventStoreDB: the claims' indexes, which migrations leave out.
    await ensureReadModelClaimIndexes(db.pool);
    await ensureReadModelClaimIndexes(db.pool); // and again at the next start
    store = testEventStore(db, { pollIntervalMs: 20 });
    bus = new DirectBus({ store, checkpoints: new LogCheckpoints(db.pool), logger: silentLogger() });
    projector = await runProjections({
      bus,
      pool: db.pool,
      cache: new MemoryCache({
        maxEntries: 100,
        defaultTtlSeconds: 60,
        metrics: cacheMetrics(new Registry()),
      }),
      projections: [tasksProjection],
      logger: silentLogger(),
      metrics: projectionMetrics(new Registry()),
    });
  });
  after(async () => {
    await projector?.stop();
    await bus?.close();
    await store?.close();
    await db?.drop();
  });
  it('has the indexes its claims and lease reaper read, which the PostgreSQL path goes without', async () => {
    const { rows } = await db.pool.query<{ indexname: string }>(
      `SELECT indexname FROM pg_indexes WHERE tablename = 'tasks' AND indexname IN ('tasks_dispatch', 'tasks_lease_expiry')
        ORDER BY 1`,
    );
    expect(rows.map((row) => row.indexname)).to.deep.equal(['tasks_dispatch', 'tasks_lease_expiry']);
    const fresh = await createTestDatabase('wrmpg');
    try {
      const { rows: none } = await fresh.pool.query(
        `SELECT indexname FROM pg_indexes WHERE tablename = 'tasks' AND indexname IN ('tasks_dispatch', 'tasks_lease_expiry')`,
      );
      expect(none).to.deep.equal([]);
    } finally {
      await fresh.drop();
    }
  });

  // Each test uses a queue of its own, so tests never see each other's tasks.
  let queue = '';
  beforeEach(() => (queue = `q${randomUUID().slice(0, 8)}`));

  const submit = (overrides: Partial<TaskSpec> = {}): Promise<string> =>
    queueTestTask(store, spec({ queue, ...overrides }), now);
  /** Another worker's claim, with a lease of `leaseMs`. */
  const startElsewhere = (taskId: string, leaseMs: number) =>
    handleCommand(
      store,
      taskStreamId(taskId),
      task,
      (state) => startTask({ workerId: 'vanished-worker', leaseMs, now: now() }, state),
      context(),
    );
  const projected = (taskId: string, status: string) =>
    waitFor(`task ${taskId} to be ${status} in the read model`, async () => {
      const row = await selectTaskRow(db.pool, taskId);
      return row?.status === status ? row : undefined;
    });
  const typesOf = async (taskId: string) => (await store.readStream(taskStreamId(taskId))).map((e) => e.type);

  const startWorker = () =>
    startTestWorker({ store: withoutSchedule(store), pool: db.pool, bus }, queue, {
      cancelCheckIntervalMs: 50,
      progressIntervalMs: 100,
      shutdownGraceMs: 1000,
    });

  describe('the reads the worker makes of the table', () => {
    it('lists due pending tasks by priority, leaving out full queues, running tasks and other queues', async () => {
      const low = await submit({ priority: 1 });
      const high = await submit({ priority: 9 });
      const running = await submit({ priority: 8 });
      const later = await submit({ priority: 10, runAt: new Date(Date.now() + 60_000).toISOString() });
      const full = `${queue}-full`;
      const inFullQueue = await submit({ queue: full, priority: 10 });
      for (const id of [low, high, running, later, inFullQueue]) await projected(id, 'pending');

      const due = (filter: Partial<Parameters<typeof selectDueTaskRows>[1]> = {}) =>
        selectDueTaskRows(db.pool, {
          now: now(),
          fullQueues: [],
          runningIds: [],
          onlyQueues: [queue, full],
          limit: 10,
          ...filter,
        }).then((rows) => rows.map((row) => row.id));
      expect(await due()).to.deep.equal([inFullQueue, high, running, low]);
      expect(await due({ fullQueues: [full], runningIds: [running] })).to.deep.equal([high, low]);
      expect(await due({ onlyQueues: [full] })).to.deep.equal([inFullQueue]);
      expect(await due({ limit: 2 })).to.deep.equal([inFullQueue, high]);
      const rows = await selectDueTaskRows(db.pool, {
        now: now(),
        fullQueues: [],
        runningIds: [],
        onlyQueues: [full],
        limit: 1,
      });
      expect(rows).to.deep.equal([{ id: inFullQueue, queue: full }]);
    });

    it('says how long until the next pending task of the queues falls due, or null', async () => {
      const at = Date.now() + 30_000;
      const laterStill = await submit({ runAt: new Date(at + 30_000).toISOString() });
      const next = await submit({ runAt: new Date(at).toISOString() });
      await projected(laterStill, 'pending');
      await projected(next, 'pending');
      const t = new Date();
      const ms = await msUntilNextDueTask(db.pool, t, [queue]);
      expect(ms).to.equal(at - t.getTime());
      expect(await msUntilNextDueTask(db.pool, t, [`${queue}-empty`])).to.equal(null);
    });

    it('finds the tasks in progress whose lease has ended', async () => {
      const expiring = await submit();
      const holding = await submit();
      await startElsewhere(expiring, 100);
      await startElsewhere(holding, 60_000);
      await projected(expiring, 'in_progress');
      await projected(holding, 'in_progress');
      const ids = await selectExpiredLeaseTaskIds(db.pool, new Date(Date.now() + 1000));
      expect(ids).to.include(expiring);
      expect(ids).not.to.include(holding);
      expect(await selectExpiredLeaseTaskIds(db.pool, new Date(Date.now() - 1000))).not.to.include(expiring);
    });
  });

  it('claims a due task from the read model and runs it once, recording its progress', async () => {
    const taskId = await submit({ type: 'sleep', payload: { ms: 1200 } });
    const worker = await startWorker();
    try {
      await waitFor('the task to succeed', async () =>
        (await typesOf(taskId)).includes('TaskSucceeded') ? true : undefined,
      );
      const types = await typesOf(taskId);
      expect(types.filter((type) => type !== 'TaskProgressed')).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskSucceeded',
      ]);
      expect(types.filter((type) => type === 'TaskProgressed').length).to.be.at.least(1);
    } finally {
      await worker.stop();
    }
  });

  it("aborts a running handler when its task is canceled, through the task's stream", async () => {
    const taskId = await submit({ type: 'sleep', payload: { ms: 30_000 } });
    const worker = await startWorker();
    try {
      await waitFor('the task to be running here', async () =>
        worker.runningTaskIds.includes(taskId) ? true : undefined,
      );
      await handleCommand(
        store,
        taskStreamId(taskId),
        task,
        (state) => cancelTask({ actorId: state.ownerId!, now: now() }, state),
        context(),
      );
      await waitFor('the handler to be aborted', async () =>
        worker.runningTaskIds.includes(taskId) ? undefined : true,
      );
      const types = (await typesOf(taskId)).filter((type) => type !== 'TaskProgressed');
      expect(types).to.deep.equal(['TaskQueued', 'TaskStarted', 'TaskCanceled']);
    } finally {
      await worker.stop();
    }
  });

  it('fails an attempt that runs past its timeout', async () => {
    const taskId = await submit({ type: 'sleep', payload: { ms: 30_000 }, timeoutMs: 200, maxAttempts: 1 });
    const worker = await startWorker();
    try {
      const failed = await waitFor('the attempt to time out', async () => {
        const events = await store.readStream(taskStreamId(taskId));
        return events.find((event) => event.type === 'TaskFailed');
      });
      expect((failed.data as { error: { kind: string } }).error.kind).to.equal('timeout');
    } finally {
      await worker.stop();
    }
  });

  it('reaps the lease of a worker that vanished mid-task, and runs the task again', async () => {
    const taskId = await submit();
    await startElsewhere(taskId, 200);
    await projected(taskId, 'in_progress');
    const worker = await startWorker();
    try {
      await waitFor(
        'the task to be reaped and run again',
        async () => ((await typesOf(taskId)).includes('TaskSucceeded') ? true : undefined),
        { timeoutMs: 20_000 },
      );
      expect(await typesOf(taskId)).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskAttemptFailed',
        'TaskStarted',
        'TaskSucceeded',
      ]);
    } finally {
      await worker.stop();
    }
  });
});
