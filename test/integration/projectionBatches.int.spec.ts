import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { Registry } from 'prom-client';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import {
  encodePosition,
  type JsonObject,
  type RecordedEvent,
} from '../../src/infra/eventStore/eventStore.js';
import { inTransaction, type Pool } from '../../src/infra/db/pool.js';
import { silentLogger } from '../../src/infra/logger.js';
import { DirectBus } from '../../src/infra/bus/direct/directBus.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import { cacheMetrics, type StaleEntry } from '../../src/infra/cache/cache.js';
import { MemoryCache } from '../../src/infra/cache/memoryCache.js';
import {
  applyEvents,
  applyEventsInOneWrite,
  GuardMovedError,
  positionsByPartition,
  recordPartitionPositions,
  type ApplyOutcome,
} from '../../src/projections/applyEvents.js';
import { applyBatchOnce, projectionMetrics, runProjections } from '../../src/projections/projectionRunner.js';
import type { Projection } from '../../src/projections/readModel.js';
import { PROJECTIONS } from '../../src/projections/index.js';
import { tasksProjection } from '../../src/projections/tasks/projection.js';
import { usersProjection } from '../../src/projections/users/projection.js';
import { taskStreamId } from '../../src/domain/tasks/events.js';
import { waitFor } from '../support/wait.js';
import { taskSpec } from '../support/fixtures.js';

const logger = silentLogger();
const T0 = Date.parse('2025-07-01T10:00:00.000Z');
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString();
const TABLES: Record<string, string> = {
  tasks: 'id',
  users: 'id',
  refresh_tokens: 'session_id',
  projection_stream_progress: 'projection, stream_id',
  projection_partition_positions: 'projection, partition',
};

async function snapshot(pool: Pool): Promise<Record<string, unknown>> {
  const result: Record<string, unknown> = {};
  for (const [table, order] of Object.entries(TABLES)) {
    const { rows } = await pool.query<{ rows: unknown }>(
      `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY ${order}), '[]') AS rows FROM ${table} t`,
    );
    result[table] = rows[0]!.rows;
  }
  return result;
}

type Step = [streamId: string, type: string, data: JsonObject];

const spec = (title: string) => taskSpec({ title, payload: { title }, timeoutMs: 30000 });

/** The lives of a few tasks, users and sessions, interleaved in the log as concurrent work would be. */
function history(): Step[] {
  const lives: Step[][] = [];
  for (let n = 0; n < 6; n++) {
    const taskId = randomUUID();
    const stream = taskStreamId(taskId);
    const life: Step[] = [
      [
        stream,
        'TaskQueued',
        { taskId, ownerId: randomUUID(), spec: spec(`task ${n}`), queuedAt: at(n), idempotencyKey: null },
      ],
      [
        stream,
        'TaskStarted',
        { taskId, attempt: 1, workerId: 'w1', leaseUntil: at(n + 60), startedAt: at(n + 1) },
      ],
      [
        stream,
        'TaskProgressed',
        { taskId, attempt: 1, progress: 0.5, message: 'half', progressedAt: at(n + 2) },
      ],
    ];
    if (n % 2 === 0)
      life.push(
        [
          stream,
          'TaskAttemptFailed',
          {
            taskId,
            attempt: 1,
            error: { kind: 'error', message: 'boom' },
            nextRunAt: at(n + 9),
            failedAt: at(n + 3),
          },
        ],
        [
          stream,
          'TaskStarted',
          { taskId, attempt: 2, workerId: 'w2', leaseUntil: at(n + 70), startedAt: at(n + 10) },
        ],
      );
    life.push(
      n === 5
        ? [
            stream,
            'TaskCanceled',
            { taskId, canceledBy: randomUUID(), wasRunning: true, canceledAt: at(n + 11) },
          ]
        : [
            stream,
            'TaskSucceeded',
            {
              taskId,
              attempt: 1 + (n % 2 === 0 ? 1 : 0),
              result: { n },
              resultTruncated: false,
              finishedAt: at(n + 12),
            },
          ],
    );
    lives.push(life);
  }
  for (let n = 0; n < 3; n++) {
    const userId = randomUUID();
    const account = `account-${randomUUID().replace(/-/g, '')}`;
    const email = `u${n}-${randomUUID()}@example.com`;
    lives.push([
      [account, 'UserRegistered', { userId, email, passwordHash: 'x', role: 'user', registeredAt: at(n) }],
      [account, 'RoleGranted', { userId, role: 'auditor', grantedAt: at(n + 1) }],
      [account, 'RoleGranted', { userId, role: 'admin', grantedAt: at(n + 2) }],
    ]);
    const sessionId = randomUUID();
    const session = `session-${sessionId}`;
    const life: Step[] = [
      [
        session,
        'SessionStarted',
        {
          sessionId,
          userId,
          email,
          refreshTokenHash: `h0-${sessionId}`,
          expiresAt: at(1000),
          startedAt: at(n),
        },
      ],
      [
        session,
        'RefreshTokenRotated',
        {
          sessionId,
          previousTokenHash: `h0-${sessionId}`,
          refreshTokenHash: `h1-${sessionId}`,
          expiresAt: at(2000),
          rotatedAt: at(n + 1),
        },
      ],
      [
        session,
        'RefreshTokenRotated',
        {
          sessionId,
          previousTokenHash: `h1-${sessionId}`,
          refreshTokenHash: `h2-${sessionId}`,
          expiresAt: at(3000),
          rotatedAt: at(n + 2),
        },
      ],
    ];
    if (n === 1)
      life.push([session, 'SessionRevoked', { sessionId, userId, reason: 'logout', revokedAt: at(n + 3) }]);
    lives.push(life);
  }
  lives.push([
    ['loginAttempts-0123abcd', 'LoginFailed', { email: 'eve@example.com', reason: 'unknown_email' }],
  ]);
  // Round robin: every stream's events spread over the log, so batches cut across streams.
  const steps: Step[] = [];
  for (let i = 0; lives.some((life) => i < life.length); i++)
    for (const life of lives) if (life[i]) steps.push(life[i]!);
  return steps;
}

/**
 * The projection, except that its first batch dies before it commits, as a dropped connection would: after its
 * writes inside a transaction, or (one-statement path) after the fold, before the statement that writes.
 */
function failingOnce(projection: Projection): Projection & { failuresLeft: number } {
  const dropped = () => Object.assign(new Error('terminating connection'), { code: '57P01' });
  const flaky = {
    ...projection,
    failuresLeft: 1,
    async project(...args: Parameters<Projection['project']>) {
      const keys = await projection.project(...args);
      if (flaky.failuresLeft-- > 0) throw dropped();
      return keys;
    },
    async fold(...args: Parameters<Projection['fold']>) {
      const folded = await projection.fold(...args);
      if (flaky.failuresLeft-- > 0) throw dropped();
      return folded;
    },
  };
  return flaky;
}

describe('projections in batches', function () {
  this.timeout(60000);
  let one: TestDatabase;
  let batched: TestDatabase;
  let store: PostgresEventStore;

  beforeEach(async () => {
    [one, batched] = await Promise.all([createTestDatabase('batch1'), createTestDatabase('batchn')]);
    store = testEventStore(one, { logger, pollIntervalMs: 50 });
  });

  afterEach(async () => {
    await store.close();
    await Promise.all([one.drop(), batched.drop()]);
  });

  /** Appends the steps and returns them as recorded, in log order. */
  async function record(steps: Step[]): Promise<RecordedEvent[]> {
    const after = await store.headPosition();
    for (const [streamId, type, data] of steps)
      await store.append(
        streamId,
        [
          {
            eventId: randomUUID(),
            type,
            data,
            metadata: { correlationId: randomUUID(), causationId: null, userId: null, timestamp: at(0) },
          },
        ],
        { expectedRevision: 'any' },
      );
    return waitFor(
      `the ${steps.length} events appended`,
      async () => {
        const events = await store.readAll({ after, limit: 10_000 });
        return events.length === steps.length ? events : undefined;
      },
      // As long as the suite's own timeout allows: another suite's open transaction may hold them back.
      { timeoutMs: 60000, intervalMs: 10 },
    );
  }

  /**
   * The reference: every event to every projection, one transaction each, under the guards' locks, as the runner
   * used to (positions of events a projection ignores moved too, as the runner does lazily). Never the
   * one-statement path, which the batches below take for the tasks.
   */
  async function oneByOne(pool: Pool, events: readonly RecordedEvent[]): Promise<ApplyOutcome[]> {
    const outcomes: ApplyOutcome[] = [];
    for (const event of events)
      for (const projection of PROJECTIONS)
        if (projection.eventTypes.has(event.type)) {
          const partitionPositions = positionsByPartition([{ partition: 0, events: [event] }]);
          const applied = await inTransaction(pool, (client) =>
            applyEvents(client, projection, [event], { logger, partitionPositions }),
          );
          outcomes.push(applied.outcomes[0]!);
        } else await recordPartitionPositions(pool, projection.name, new Map([[0, event.position]]));
    return outcomes;
  }

  async function inBatches(
    pool: Pool,
    events: readonly RecordedEvent[],
    size: number,
  ): Promise<ApplyOutcome[]> {
    const outcomes: ApplyOutcome[] = [];
    for (let start = 0; start < events.length; start += size) {
      const batch = events.slice(start, start + size);
      for (const projection of PROJECTIONS) {
        const result = await applyBatchOnce(pool, projection, batch, logger);
        outcomes.push(...result.outcomes.filter((o) => o !== 'ignored'));
      }
    }
    return outcomes;
  }

  it('gives the same rows, guards and positions as applying one by one, whatever the batch size', async () => {
    const events = await record(history());
    await oneByOne(one.pool, events);
    const expected = await snapshot(one.pool);
    expect((expected.tasks as unknown[]).length).to.equal(6);
    expect((expected.refresh_tokens as unknown[]).length).to.equal(2);

    for (const size of [events.length, 7, 2]) {
      await batched.pool.query(
        'TRUNCATE tasks, users, refresh_tokens, projection_stream_progress, projection_partition_positions',
      );
      const outcomes = await inBatches(batched.pool, events, size);
      expect(new Set(outcomes), `batches of ${size}`).to.deep.equal(new Set(['applied']));
      expect(await snapshot(batched.pool), `batches of ${size}`).to.deep.equal(expected);
    }
  });

  it('skips the bad events of a batch, and only them, applying the rest as one by one would', async () => {
    const good = history();
    const orphan = randomUUID(); // started, never queued: the fold rejects it
    const [victim] = good
      .filter(([, type]) => type === 'TaskQueued')
      .map(([, , data]) => data.taskId as string);
    const [registered] = good.filter(([, type]) => type === 'UserRegistered');
    const steps: Step[] = [
      ...good.slice(0, 20),
      [
        taskStreamId(orphan),
        'TaskStarted',
        { taskId: orphan, attempt: 1, workerId: 'w', leaseUntil: at(9), startedAt: at(9) },
      ],
      // The database rejects these two: a number column given a word, a second live user in a taken account stream.
      [
        taskStreamId(victim!),
        'TaskProgressed',
        { taskId: victim!, attempt: 1, progress: 'lots', message: 'odd', progressedAt: at(30) },
      ],
      [registered![0], 'UserRegistered', { ...registered![2], userId: randomUUID() }],
      ...good.slice(20),
    ];
    const events = await record(steps);
    const reference = await oneByOne(one.pool, events);
    expect(reference.filter((o) => o === 'bad_data')).to.have.length(3);

    const { outcomes } = await applyBatchOnce(batched.pool, tasksProjection, events, logger);
    const bad = events.filter((_, i) => outcomes[i] === 'bad_data').map((e) => e.type);
    expect(bad).to.deep.equal(['TaskStarted', 'TaskProgressed']);
    const users = await applyBatchOnce(batched.pool, usersProjection, events, logger);
    expect(events.filter((_, i) => users.outcomes[i] === 'bad_data').map((e) => e.type)).to.deep.equal([
      'UserRegistered',
    ]);
    for (const projection of PROJECTIONS.filter((p) => p !== tasksProjection && p !== usersProjection))
      await applyBatchOnce(batched.pool, projection, events, logger);

    expect(await snapshot(batched.pool)).to.deep.equal(await snapshot(one.pool));
    // The stream went on after its bad event: the task finished.
    const { rows } = await batched.pool.query('SELECT status, revision FROM tasks WHERE id = $1', [victim]);
    expect(rows).to.deep.equal([{ status: 'done', revision: 6 }]);
  });

  it('applies a batch exactly once when it is delivered again after a crash before its commit', async () => {
    const events = await record(history());
    await oneByOne(one.pool, events);

    let crashed = false;
    await inTransaction(batched.pool, async (client) => {
      for (const projection of PROJECTIONS)
        await applyEvents(client, projection, events, {
          logger,
          partitionPositions: positionsByPartition([{ partition: 0, events }]),
        });
      throw new Error('crash before commit');
    }).catch(() => (crashed = true));
    expect(crashed).to.equal(true);
    expect((await snapshot(batched.pool)).projection_stream_progress).to.deep.equal([]);

    expect(new Set(await inBatches(batched.pool, events, events.length))).to.deep.equal(new Set(['applied']));
    const once = await snapshot(batched.pool);
    expect(once).to.deep.equal(await snapshot(one.pool));
    // And once more after the commit (the offset or checkpoint was not recorded): all duplicates, nothing moves.
    expect(new Set(await inBatches(batched.pool, events, 5))).to.deep.equal(new Set(['duplicate']));
    expect(await snapshot(batched.pool)).to.deep.equal(once);
  });

  it('applies the batches of several partitions in one transaction, each partition moved to its newest event', async () => {
    const events = await record(history());
    await oneByOne(one.pool, events);
    // Two partitions, a stream in one of them, as the relay keys them; the combiner hands both over at once.
    const streams = [...new Set(events.map((event) => event.streamId))];
    const parts = [0, 1].map((partition) => ({
      partition,
      events: events.filter((event) => streams.indexOf(event.streamId) % 2 === partition),
    }));
    const together = parts.flatMap((part) => part.events);
    for (const projection of PROJECTIONS)
      await applyBatchOnce(batched.pool, projection, together, logger, positionsByPartition(parts));

    const expected = await snapshot(one.pool);
    const actual = await snapshot(batched.pool);
    for (const table of ['tasks', 'users', 'refresh_tokens', 'projection_stream_progress'])
      expect(actual[table], table).to.deep.equal(expected[table]);
    const { rows } = await batched.pool.query(
      `SELECT DISTINCT partition, position FROM projection_partition_positions ORDER BY partition`,
    );
    expect(rows).to.deep.equal(
      parts.map((part) => ({
        partition: part.partition,
        position: part.events[part.events.length - 1]!.position,
      })),
    );
  });

  it('applies a batch once when two consumers are given it at the same moment (a rebalance)', async () => {
    const events = await record(history());
    await oneByOne(one.pool, events);
    const [first, second] = await Promise.all([
      applyBatchOnce(batched.pool, tasksProjection, events, logger),
      applyBatchOnce(batched.pool, tasksProjection, events, logger),
    ]);
    const handled = (outcomes: ApplyOutcome[]) => [...new Set(outcomes.filter((o) => o !== 'ignored'))];
    expect([handled(first.outcomes), handled(second.outcomes)].map(String).sort()).to.deep.equal([
      'applied',
      'duplicate',
    ]);
    const tasks = (pool: Pool) => pool.query('SELECT * FROM tasks ORDER BY id').then((r) => r.rows);
    expect(await tasks(batched.pool)).to.deep.equal(await tasks(one.pool));
  });

  describe('in one statement (folds with a row per stream)', () => {
    /** The tasks projection, except that another consumer applies `prefix` while this one folds its batch. */
    function racedBy(
      prefix: readonly RecordedEvent[],
    ): Projection & { snapshotAfterRace?: Record<string, unknown> } {
      let raced = false;
      const racing: Projection & { snapshotAfterRace?: Record<string, unknown> } = {
        ...tasksProjection,
        async fold(...args: Parameters<Projection['fold']>) {
          const folded = await tasksProjection.fold(...args);
          if (!raced) {
            raced = true;
            await applyBatchOnce(batched.pool, tasksProjection, prefix, logger);
            racing.snapshotAfterRace = await snapshot(batched.pool);
          }
          return folded;
        },
      };
      return racing;
    }
    const tasksOnly = async (pool: Pool) => {
      const { tasks, projection_stream_progress: guards } = await snapshot(pool);
      return {
        tasks,
        guards: (guards as Array<{ projection: string }>).filter((g) => g.projection === 'tasks'),
      };
    };

    it('writes nothing, rows included, when a guard moved between its read and the write', async () => {
      const events = await record(history());
      const taskEvents = events.filter((event) => tasksProjection.eventTypes.has(event.type));
      const racing = racedBy(taskEvents.slice(0, Math.floor(taskEvents.length / 2)));
      let failure: unknown = null;
      await applyEventsInOneWrite(batched.pool, racing, events, {
        logger,
        partitionPositions: positionsByPartition([{ partition: 0, events }]),
      }).catch((error: unknown) => (failure = error));
      expect(failure).to.be.instanceOf(GuardMovedError);
      expect(racing.snapshotAfterRace).to.not.equal(undefined);
      expect(await snapshot(batched.pool)).to.deep.equal(racing.snapshotAfterRace);
    });

    it('applies the events another consumer did not, once, after losing the race to it', async () => {
      const events = await record(history());
      await oneByOne(one.pool, events);
      const taskEvents = events.filter((event) => tasksProjection.eventTypes.has(event.type));
      const prefix = taskEvents.slice(0, Math.floor(taskEvents.length / 2));
      const { outcomes } = await applyBatchOnce(batched.pool, racedBy(prefix), events, logger);

      const expected = events.map((event) =>
        !tasksProjection.eventTypes.has(event.type)
          ? 'ignored'
          : prefix.includes(event)
            ? 'duplicate'
            : 'applied',
      );
      expect(outcomes).to.deep.equal(expected);
      expect(await tasksOnly(batched.pool)).to.deep.equal(await tasksOnly(one.pool));
    });

    it('is refused for a fold whose rows may span streams', async () => {
      const events = await record(history());
      let failure: unknown = null;
      await applyEventsInOneWrite(batched.pool, usersProjection, events, {
        logger,
        partitionPositions: null,
      }).catch((error: unknown) => (failure = error));
      expect(failure).to.be.instanceOf(TypeError);
      expect((await snapshot(batched.pool)).users).to.deep.equal([]);
    });
  });

  it('runs on the bus in batches: retried after a database failure, applied once, cache keys invalidated per batch', async () => {
    const events = await record(history());
    await oneByOne(batched.pool, events);
    const expected = await snapshot(batched.pool);
    const taskIds = (expected.tasks as Array<{ id: string }>).map((t) => t.id);

    // The projector reads one's log into one's own tables; its first transaction dies after writing.
    const flaky = failingOnce(tasksProjection);
    const cache = new MemoryCache({
      maxEntries: 100,
      defaultTtlSeconds: 60,
      metrics: cacheMetrics(new Registry()),
    });
    for (const id of taskIds) await cache.set(`task:${id}`, 'stale', encodePosition(0n, 0n));
    const invalidations: StaleEntry[][] = [];
    const invalidate = cache.invalidate.bind(cache);
    cache.invalidate = async (entries) => {
      invalidations.push([...entries]);
      await invalidate(entries);
    };
    const registry = new Registry();
    const bus = new DirectBus({ store, checkpoints: new LogCheckpoints(one.pool), logger });
    const running = await runProjections({
      bus,
      pool: one.pool,
      cache,
      projections: [flaky],
      logger,
      metrics: projectionMetrics(registry),
      maxBatchSize: 1000,
    });
    try {
      await waitFor(
        'the projector to apply the 30 task events',
        async () =>
          (await registry.getSingleMetric('projection_events_applied_total')!.get()).values[0]?.value ===
            30 || undefined,
        { timeoutMs: 20000 },
      );
    } finally {
      await running.stop();
    }
    expect(flaky.failuresLeft).to.be.below(0);
    expect((await snapshot(one.pool)).tasks).to.deep.equal(expected.tasks);
    // The log was read as one page, so one batch: one invalidation for the six keys, not one per event, each at
    // the position of its task's last event.
    expect(invalidations).to.have.length(1);
    const lastPositionOf = new Map(events.map((event) => [event.streamId, event.position]));
    expect([...invalidations[0]!].sort((a, b) => a.key.localeCompare(b.key))).to.deep.equal(
      taskIds
        .map((id) => ({ key: `task:${id}`, position: lastPositionOf.get(`task-${id}`)! }))
        .sort((a, b) => a.key.localeCompare(b.key)),
    );
    for (const id of taskIds) expect(await cache.get(`task:${id}`)).to.equal(undefined);
    const { rows } = await one.pool.query(
      `SELECT position FROM projection_partition_positions WHERE projection = 'tasks' AND partition = 0`,
    );
    expect(rows).to.deep.equal([{ position: events[events.length - 1]!.position }]);
  });

  it('feeds every read model from one consumer: a failure of one redelivers the batch, the others skip it', async () => {
    const events = await record(history());
    await oneByOne(batched.pool, events);
    const expected = await snapshot(batched.pool);

    const flakyTasks = failingOnce(tasksProjection);
    const projections = PROJECTIONS.map((p) => (p.name === 'tasks' ? flakyTasks : p));
    const registry = new Registry();
    const cache = new MemoryCache({
      maxEntries: 100,
      defaultTtlSeconds: 60,
      metrics: cacheMetrics(new Registry()),
    });
    const bus = new DirectBus({ store, checkpoints: new LogCheckpoints(one.pool), logger });
    const running = await runProjections({
      bus,
      pool: one.pool,
      cache,
      projections,
      logger,
      metrics: projectionMetrics(registry),
      maxBatchSize: 1000,
    });
    const valuesOf = async (name: string) =>
      (await registry.getSingleMetric(name)!.get()).values.map((v) => ({ labels: v.labels, value: v.value }));
    const userEvents = events.filter((e) => usersProjection.eventTypes.has(e.type)).length;
    try {
      await waitFor(
        'the projector to apply the task events',
        async () =>
          (await valuesOf('projection_events_applied_total')).some((v) => v.labels.projection === 'tasks') ||
          undefined,
        { timeoutMs: 20000 },
      );
    } finally {
      await running.stop();
    }
    expect(flakyTasks.failuresLeft).to.be.below(0);
    // Every read model equals the one-by-one reference, positions of ignored events included.
    expect(await snapshot(one.pool)).to.deep.equal(expected);
    // The users projection had applied the batch when the tasks projection failed: the redelivery found it done.
    const skipped = await valuesOf('projection_events_skipped_total');
    expect(skipped).to.deep.include({
      labels: { projection: 'users', reason: 'duplicate' },
      value: userEvents,
    });
    // One consumer, so one checkpoint, named for the set of read models.
    const { rows } = await one.pool.query(`SELECT name FROM log_checkpoints WHERE name LIKE 'consumer:%'`);
    expect(rows).to.deep.equal([{ name: 'consumer:projection.refresh_tokens+schedules+tasks+users' }]);
  });
});
