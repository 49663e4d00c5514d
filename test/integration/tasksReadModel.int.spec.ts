import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { Registry } from 'prom-client';
import { Ajv2020 } from 'ajv/dist/2020.js';
import formatsPlugin from 'ajv-formats';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { skipSuiteUnless } from '../support/skips.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import type { RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import { cacheMetrics, type Cache } from '../../src/infra/cache/cache.js';
import { MemoryCache } from '../../src/infra/cache/memoryCache.js';
import { RedisCache } from '../../src/infra/cache/redisCache.js';
import { Api } from '../../src/infra/http/api.js';
import { createHttpApp, createMetrics, listen, type RunningServer } from '../../src/infra/http/app.js';
import { UnauthorizedError, ValidationError } from '../../src/errors.js';
import { inTransaction } from '../../src/infra/db/pool.js';
import { applyOnce } from '../../src/projections/projectionRunner.js';
import { tasksProjection } from '../../src/projections/tasks/projection.js';
import { taskCacheKey } from '../../src/projections/tasks/table.js';
import { createTaskQueries, type TaskQueries } from '../../src/queries/tasks/query.js';
import { encodeKeysetCursor } from '../../src/queries/keysetCursor.js';
import { registerTaskQueryRoutes } from '../../src/queries/tasks/route.js';
import { ensureTaskSchemas } from '../../src/domain/tasks/representation.js';
import { foldEvents } from '../../src/domain/decider.js';
import { task as taskDecider, type Task } from '../../src/domain/tasks/state.js';
import {
  taskStreamId,
  type TaskEvent,
  type TaskQueued,
  type TaskSpec,
  type TaskStarted,
} from '../../src/domain/tasks/events.js';
import type { UserRole } from '../../src/domain/identity/events.js';
import { rejection, taskSpec } from '../support/fixtures.js';

const logger = silentLogger();
const T0 = Date.parse('2025-03-01T09:00:00.000Z');
const at = (seconds: number): string => new Date(T0 + seconds * 1000).toISOString();

function queued(taskId: string, ownerId: string, spec: Partial<TaskSpec> = {}, queuedAt = at(0)): TaskQueued {
  return {
    type: 'TaskQueued',
    data: {
      taskId,
      ownerId,
      spec: taskSpec({
        title: 'resize images',
        description: 'the March uploads',
        payload: { images: 12 },
        timeoutMs: 30000,
        ...spec,
      }),
      queuedAt,
      idempotencyKey: null,
    },
  };
}

const started = (taskId: string, attempt: number, startedAt: string): TaskStarted => ({
  type: 'TaskStarted',
  data: {
    taskId,
    attempt,
    workerId: `worker-${attempt}`,
    leaseUntil: new Date(Date.parse(startedAt) + 30000).toISOString(),
    startedAt,
  },
});

let database: TestDatabase;
let store: PostgresEventStore;

/** Appends to the task's stream and returns the recorded events, as a subscriber would receive them. */
async function append(taskId: string, ...events: TaskEvent[]): Promise<RecordedEvent[]> {
  const { nextRevision } = await store.append(
    taskStreamId(taskId),
    events.map((event) => ({
      eventId: randomUUID(),
      type: event.type,
      data: event.data,
      metadata: { correlationId: randomUUID(), causationId: null, userId: null, timestamp: at(0) },
    })),
    { expectedRevision: 'any' },
  );
  return store.readStream(taskStreamId(taskId), { fromRevision: nextRevision - events.length + 1 });
}

/** What runProjection does with each event: apply it once, then invalidate the cache entries it made stale. */
async function project(events: RecordedEvent[], cache?: Cache): Promise<string[]> {
  const outcomes: string[] = [];
  for (const event of events) {
    const { outcome, stale } = await applyOnce(database.pool, tasksProjection, event, logger);
    if (cache && stale.length > 0) await cache.invalidate(stale);
    outcomes.push(outcome);
  }
  return outcomes;
}

/** Appends and projects: a task as it looks once the projector has caught up. */
async function submitted(taskId: string, ...events: TaskEvent[]): Promise<RecordedEvent[]> {
  const recorded = await append(taskId, ...events);
  await project(recorded);
  return recorded;
}

/** The row, with timestamps as ISO strings. */
async function readRow(taskId: string): Promise<Record<string, unknown> | undefined> {
  const { rows } = await database.pool.query<Record<string, unknown>>('SELECT * FROM tasks WHERE id = $1', [
    taskId,
  ]);
  const row = rows[0];
  if (!row) return undefined;
  return Object.fromEntries(
    Object.entries(row).map(([key, value]) => [key, value instanceof Date ? value.toISOString() : value]),
  );
}

/** The row the domain's own fold says there should be, written out column by column. */
function expectedRow(state: Task, revision: number, position: string): Record<string, unknown> {
  const spec = state.spec!;
  return {
    id: state.id,
    owner_id: state.ownerId,
    title: spec.title,
    description: spec.description,
    type: spec.type,
    payload: spec.payload,
    priority: spec.priority,
    queue: spec.queue,
    status: state.status,
    attempt: state.attempt,
    attempts_before: state.attemptsBefore,
    max_attempts: spec.maxAttempts,
    timeout_ms: spec.timeoutMs,
    run_at: state.runAt,
    worker_id: state.workerId,
    lease_until: state.leaseUntil,
    progress: state.progress,
    result: state.result,
    last_error: state.lastError,
    created_at: state.createdAt,
    updated_at: state.updatedAt,
    revision,
    last_position: position,
    archived_at: state.archivedAt,
    group_key: spec.groupKey,
    dependencies: spec.dependencies,
    schedule_id: state.origin?.scheduleId ?? null,
    schedule_tick: state.origin?.tick ?? null,
  };
}

// Response bodies are whatever the server sent; the assertions check their shape.
const json = (response: Response): Promise<any> => response.json();

describe('tasks read model', () => {
  before(async function () {
    this.timeout(30000);
    database = await createTestDatabase('tasks');
    store = testEventStore(database, { logger });
  });

  after(async () => {
    await store?.close();
    await database?.drop();
  });

  describe('tasks projection', () => {
    async function expectRowFollowsTheFold(taskId: string, events: TaskEvent[]): Promise<void> {
      for (const [index, event] of events.entries()) {
        const [recorded] = await append(taskId, event);
        expect(await project([recorded!])).to.deep.equal(['applied']);
        const history = await store.readStream(taskStreamId(taskId));
        const state = foldEvents(taskDecider, history);
        expect(await readRow(taskId), `after ${event.type} (#${index})`).to.deep.equal(
          expectedRow(state, recorded!.revision, recorded!.position),
        );
      }
    }

    it('keeps the row equal to evolveTask folded over the stream through retries, a release and success', async () => {
      const id = randomUUID();
      await expectRowFollowsTheFold(id, [
        queued(id, randomUUID(), { payload: [1, 'two', { three: 3 }], runAt: at(5) }),
        {
          type: 'TaskUpdated',
          data: {
            taskId: id,
            changes: { title: 'renamed', description: null, priority: 9 },
            updatedAt: at(1),
          },
        },
        started(id, 1, at(6)),
        {
          type: 'TaskProgressed',
          data: { taskId: id, attempt: 1, progress: 0.25, message: 'a quarter', progressedAt: at(7) },
        },
        {
          type: 'TaskAttemptFailed',
          data: {
            taskId: id,
            attempt: 1,
            error: { message: 'boom', kind: 'error' },
            nextRunAt: at(60),
            failedAt: at(8),
          },
        },
        started(id, 2, at(61)),
        {
          type: 'TaskReleased',
          data: { taskId: id, attempt: 2, workerId: 'worker-2', reason: 'shutdown', releasedAt: at(62) },
        },
        started(id, 2, at(63)),
        {
          type: 'TaskSucceeded',
          data: {
            taskId: id,
            attempt: 2,
            result: 'a plain string',
            resultTruncated: false,
            finishedAt: at(64),
          },
        },
      ]);
    });

    it('keeps the row equal to the fold through failure, requeue and cancel', async () => {
      const id = randomUUID();
      const owner = randomUUID();
      await expectRowFollowsTheFold(id, [
        queued(id, owner, { payload: null, maxAttempts: 1 }),
        started(id, 1, at(1)),
        {
          type: 'TaskFailed',
          data: { taskId: id, attempt: 1, error: { message: 'timed out', kind: 'timeout' }, failedAt: at(2) },
        },
        { type: 'TaskRequeued', data: { taskId: id, requeuedBy: owner, requeuedAt: at(3) } },
        started(id, 1, at(4)),
        {
          type: 'TaskCanceled',
          data: { taskId: id, canceledBy: owner, wasRunning: true, canceledAt: at(5) },
        },
        { type: 'TaskArchived', data: { taskId: id, archivedBy: owner, archivedAt: at(6) } },
      ]);
    });

    it('changes nothing when an event is delivered again', async () => {
      const id = randomUUID();
      const events = await submitted(id, queued(id, randomUUID()), started(id, 1, at(1)));
      const before = await readRow(id);
      expect(await project(events)).to.deep.equal(['duplicate', 'duplicate']);
      expect(await readRow(id)).to.deep.equal(before);
    });

    it('never rolls a row back, even when the stream guard is not there to stop an old event', async () => {
      const id = randomUUID();
      const [first] = await submitted(id, queued(id, randomUUID()), started(id, 1, at(1)));
      const before = await readRow(id);
      const bad: unknown[] = [];
      const stale = await inTransaction(database.pool, (client) =>
        tasksProjection.project(client, [first!], (_event, error) => bad.push(error)),
      );
      expect(stale).to.deep.equal([]);
      expect(bad).to.deep.equal([]);
      expect(await readRow(id)).to.deep.equal(before);
    });

    it('updates a task row in place (heap-only) as it starts and ends, so no index grows with its status', async () => {
      const id = randomUUID();
      const [queuedEvent, startedEvent, succeededEvent] = await append(
        id,
        queued(id, randomUUID()),
        started(id, 1, at(1)),
        {
          type: 'TaskSucceeded',
          data: { taskId: id, attempt: 1, result: { ok: true }, resultTruncated: false, finishedAt: at(2) },
        },
      );
      await inTransaction(database.pool, (client) =>
        tasksProjection.project(client, [queuedEvent!], () => {}),
      );
      // Each event in its own statement, as the projector writes them when they come one by one. The counts are
      // the backend's own, not yet reported, and are read before and after inside one transaction, so nothing
      // else running in the database can change the difference.
      const hotUpdates = await inTransaction(database.pool, async (client) => {
        const counts = async () =>
          (
            await client.query<{ hot: number; all: number }>(
              `SELECT pg_stat_get_xact_tuples_hot_updated('tasks'::regclass)::int AS hot,
                      pg_stat_get_xact_tuples_updated('tasks'::regclass)::int AS all`,
            )
          ).rows[0]!;
        const before = await counts();
        for (const event of [startedEvent!, succeededEvent!])
          await tasksProjection.project(client, [event], () => {});
        const after = await counts();
        return { hot: after.hot - before.hot, all: after.all - before.all };
      });
      expect(hotUpdates).to.deep.equal({ hot: 2, all: 2 });
      expect((await readRow(id))?.status).to.equal('done');
    });

    it("returns the task's cache key as stale, at the position of the event applied", async () => {
      const id = randomUUID();
      const [recorded] = await append(id, queued(id, randomUUID()));
      const { stale } = await applyOnce(database.pool, tasksProjection, recorded!, logger);
      expect(stale).to.deep.equal([{ key: `task:${id}`, position: recorded!.position }]);
      expect(taskCacheKey(id)).to.equal(`task:${id}`);
    });

    it('skips, without stopping, an event for a task whose TaskQueued it never saw', async () => {
      const id = randomUUID();
      const [orphan] = await append(id, started(id, 1, at(1)));
      expect(await project([orphan!])).to.deep.equal(['bad_data']);
      expect(await readRow(id)).to.equal(undefined);
    });
  });

  describe('task queries', () => {
    let queries: TaskQueries;
    let cache: MemoryCache;

    before(() => {
      cache = new MemoryCache({
        maxEntries: 1000,
        defaultTtlSeconds: 60,
        metrics: cacheMetrics(new Registry()),
      });
      queries = createTaskQueries({ pool: database.pool, cache });
    });

    describe('listTasks', () => {
      it('leaves archived tasks out, also from the unpaged owner list, which stops at its cap', async () => {
        const owner = randomUUID();
        const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
        await submitted(a, queued(a, owner, {}, at(1)));
        const archived = await submitted(
          b,
          queued(b, owner, {}, at(2)),
          {
            type: 'TaskCanceled',
            data: { taskId: b, canceledBy: owner, wasRunning: false, canceledAt: at(3) },
          },
          { type: 'TaskArchived', data: { taskId: b, archivedBy: owner, archivedAt: at(4) } },
        );
        await submitted(c, queued(c, owner, {}, at(5)));
        expect(await project(archived.slice(-1))).to.deep.equal(['duplicate']);

        expect((await queries.listTasks({ ownerId: owner })).items.map((item) => item.id)).to.deep.equal([
          c,
          a,
        ]);
        const all = await queries.listOwnerTasks(owner, 10);
        expect({ ids: all.items.map((item) => item.id), truncated: all.truncated }).to.deep.equal({
          ids: [c, a],
          truncated: false,
        });
        const capped = await queries.listOwnerTasks(owner, 1);
        expect({ ids: capped.items.map((item) => item.id), truncated: capped.truncated }).to.deep.equal({
          ids: [c],
          truncated: true,
        });
        const shown = await queries.getTask(b);
        expect(shown!.task).to.include({ status: 'canceled', archived_at: at(4) });
      });

      it('filters by owner, status, type and queue', async () => {
        const owner = randomUUID();
        const other = randomUUID();
        const queue = `q-${randomUUID()}`;
        const [a, b, c, d] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
        await submitted(a, queued(a, owner, { queue, type: 'echo' }, at(1)));
        await submitted(b, queued(b, owner, { queue, type: 'sleep' }, at(2)), started(b, 1, at(3)));
        await submitted(c, queued(c, owner, { type: 'echo' }, at(3)));
        await submitted(d, queued(d, other, { queue, type: 'echo' }, at(4)));

        const ids = async (filter: Parameters<TaskQueries['listTasks']>[0]) =>
          (await queries.listTasks(filter)).items.map((item) => item.id);
        expect(await ids({ ownerId: owner })).to.deep.equal([c, b, a]);
        expect(await ids({ ownerId: owner, queue })).to.deep.equal([b, a]);
        expect(await ids({ ownerId: owner, status: 'in_progress' })).to.deep.equal([b]);
        expect(await ids({ ownerId: owner, type: 'echo' })).to.deep.equal([c, a]);
        expect(await ids({ ownerId: owner, type: 'echo', queue })).to.deep.equal([a]);
        expect(await ids({ ownerId: null, queue })).to.deep.equal([d, b, a]);
        expect(await ids({ ownerId: null, queue, status: 'done' })).to.deep.equal([]);
      });

      it('pages newest first and stays stable while tasks are submitted between pages', async () => {
        const owner = randomUUID();
        // Two tasks share a created_at, so the id decides between them.
        const times = [10, 20, 30, 30, 40, 50];
        const tasks: Array<{ id: string; time: number }> = [];
        for (const time of times) {
          const id = randomUUID();
          await submitted(id, queued(id, owner, {}, at(time)));
          tasks.push({ id, time });
        }
        const expected = [...tasks]
          .sort((x, y) => y.time - x.time || (x.id < y.id ? 1 : -1))
          .map((t) => t.id);

        const first = await queries.listTasks({ ownerId: owner, limit: 2 });
        expect(first.items.map((item) => item.id)).to.deep.equal(expected.slice(0, 2));
        expect(first.next_cursor).to.be.a('string');

        const late = randomUUID();
        await submitted(late, queued(late, owner, {}, at(60)));

        const second = await queries.listTasks({ ownerId: owner, limit: 2, cursor: first.next_cursor });
        expect(second.items.map((item) => item.id)).to.deep.equal(expected.slice(2, 4));
        const third = await queries.listTasks({ ownerId: owner, limit: 2, cursor: second.next_cursor });
        expect(third.items.map((item) => item.id)).to.deep.equal(expected.slice(4, 6));
        expect(third.next_cursor).to.equal(null);

        const fresh = await queries.listTasks({ ownerId: owner, limit: 2 });
        expect(fresh.items[0]!.id).to.equal(late);
      });

      it('answers an exact last page with no next cursor, and an empty list with none either', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(id, queued(id, owner));
        expect(await queries.listTasks({ ownerId: owner, limit: 1 })).to.deep.include({ next_cursor: null });
        expect(await queries.listTasks({ ownerId: randomUUID() })).to.deep.equal({
          items: [],
          next_cursor: null,
        });
      });

      it('rejects a cursor it did not issue', async () => {
        const owner = randomUUID();
        const forged = [
          'not a cursor!',
          Buffer.from('{"created_at":"2025-03-01"}').toString('base64url'),
          Buffer.from('["2025-03-01T09:00:00.000000Z"]').toString('base64url'),
          Buffer.from('["yesterday","0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10"]').toString('base64url'),
          Buffer.from('["2025-03-01T09:00:00.000000Z","1; DROP TABLE tasks"]').toString('base64url'),
          encodeKeysetCursor('2025-03-01T09:00:00.000000Z', randomUUID()).slice(0, -3),
        ];
        for (const cursor of forged) {
          const error = await rejection(queries.listTasks({ ownerId: owner, cursor }));
          expect(error, cursor).to.be.instanceOf(ValidationError);
          expect((error as ValidationError).errors[0]!.path).to.equal('/query/cursor');
        }
      });

      it('rejects a page size outside 1 to 100', async () => {
        expect(await rejection(queries.listTasks({ ownerId: null, limit: 0 }))).to.be.instanceOf(
          ValidationError,
        );
        expect(await rejection(queries.listTasks({ ownerId: null, limit: 101 }))).to.be.instanceOf(
          ValidationError,
        );
      });
    });

    const cacheKinds: Array<{ name: string; create: (context: Mocha.Context) => Promise<Cache> }> = [
      {
        name: 'in-process LRU',
        create: async () =>
          new MemoryCache({ maxEntries: 1000, defaultTtlSeconds: 60, metrics: cacheMetrics(new Registry()) }),
      },
      {
        name: 'Redis',
        create: async (context) => {
          const url = process.env.REDIS_URL;
          skipSuiteUnless(context, Boolean(url), 'REDIS_URL is not set: no Redis server');
          const redis = new RedisCache({
            url: url!,
            keyPrefix: `tm-test-${randomBytes(4).toString('hex')}:`,
            defaultTtlSeconds: 60,
            commandTimeoutMs: 500,
            metrics: cacheMetrics(new Registry()),
            logger,
          });
          if (!(await redis.waitUntilReady(5000))) throw new Error(`Redis at ${url} did not become ready`);
          return redis;
        },
      },
    ];

    for (const kind of cacheKinds) {
      describe(`getTask through the ${kind.name} cache`, () => {
        let cached: Cache | undefined;
        let through: TaskQueries;

        before(async function () {
          cached = await kind.create(this);
          through = createTaskQueries({ pool: database.pool, cache: cached });
        });
        after(async () => {
          await cached?.close();
        });

        it('answers null for a task that does not exist, and does not cache the absence', async () => {
          const id = randomUUID();
          expect(await through.getTask(id)).to.equal(null);
          await submitted(id, queued(id, randomUUID()));
          expect((await through.getTask(id))?.task.id).to.equal(id);
        });

        it('serves the second read from the cache', async () => {
          const id = randomUUID();
          const [recorded] = await submitted(id, queued(id, randomUUID(), { title: 'original' }));
          const first = await through.getTask(id);
          expect(first).to.deep.include({ position: recorded!.position });
          expect(await cached!.get(taskCacheKey(id))).to.deep.equal(first);
          // Changed behind the projection's back, so only a cache hit still shows the old title.
          await database.pool.query("UPDATE tasks SET title = 'changed behind the cache' WHERE id = $1", [
            id,
          ]);
          expect((await through.getTask(id))?.task.title).to.equal('original');
        });

        it('shows the new state once the projection applies an event and invalidates the key', async () => {
          const id = randomUUID();
          await submitted(id, queued(id, randomUUID()));
          expect((await through.getTask(id))?.task.status).to.equal('pending');
          const events = await append(id, started(id, 1, at(1)));
          await project(events, cached);
          const after = await through.getTask(id);
          expect(after?.task).to.deep.include({ status: 'in_progress', attempt: 1, revision: 1 });
          expect(after?.position).to.equal(events[0]!.position);
        });

        it('never serves a row read before a projection commit and stored after its invalidation', async () => {
          const id = randomUUID();
          await submitted(id, queued(id, randomUUID()));
          const events = await append(id, started(id, 1, at(1)));
          // The query reads the pending row; before it stores it, the projection commits and invalidates the key.
          const store = cached!.set.bind(cached);
          cached!.set = async (...args) => {
            await project(events, cached);
            await store(...args);
          };
          try {
            expect((await through.getTask(id))?.task.status).to.equal('pending');
          } finally {
            cached!.set = store;
          }
          expect((await through.getTask(id))?.task.status).to.equal('in_progress');
        });

        it('reads the row again when the cached one is older than the min position', async () => {
          const id = randomUUID();
          await submitted(id, queued(id, randomUUID()));
          await through.getTask(id);
          // Applied but the key not yet invalidated: the moment between the projection's commit and its invalidation.
          const [start] = await append(id, started(id, 1, at(1)));
          await project([start!]);
          expect((await through.getTask(id))?.task.status).to.equal('pending');
          const fresh = await through.getTask(id, { minPosition: start!.position });
          expect(fresh?.task.status).to.equal('in_progress');
          expect(fresh?.position).to.equal(start!.position);
          // And the fresh row replaced the stale entry.
          expect((await through.getTask(id))?.task.status).to.equal('in_progress');
        });

        it('serves a cached row that already has the min position', async () => {
          const id = randomUUID();
          const [recorded] = await submitted(id, queued(id, randomUUID(), { title: 'original' }));
          await through.getTask(id);
          await database.pool.query("UPDATE tasks SET title = 'changed behind the cache' WHERE id = $1", [
            id,
          ]);
          const hit = await through.getTask(id, { minPosition: recorded!.position });
          expect(hit?.task.title).to.equal('original');
        });
      });
    }
  });

  describe('task query routes', () => {
    const info = { title: 'task-manager', version: '0.0.0-test' };
    const WAIT_MS = 400;
    let running: RunningServer;
    let api: Api;
    let cache: MemoryCache;
    /** What readModelReached compares against; null = the read model has nothing yet. */
    let watermark: string | null = null;

    before(async () => {
      api = new Api({
        // Stands in for the bearer check: `X-Test-User: <user id> <role>`.
        authenticate: (req) => {
          const [userId, role] = (req.get('x-test-user') ?? '').split(' ');
          if (!userId || !role) throw new UnauthorizedError('send X-Test-User');
          req.auth = {
            userId,
            role: role as UserRole,
            sessionId: randomUUID(),
            jti: randomUUID(),
            expiresAt: new Date(Date.now() + 60000),
          };
        },
      });
      cache = new MemoryCache({
        maxEntries: 1000,
        defaultTtlSeconds: 60,
        metrics: cacheMetrics(new Registry()),
      });
      registerTaskQueryRoutes(api, {
        pool: database.pool,
        cache,
        store,
        readModelReached: async (position) => watermark !== null && position <= watermark,
        minPositionWaitMs: WAIT_MS,
      });
      const app = createHttpApp({
        logger,
        bodyLimit: '100kb',
        api,
        readiness: [],
        metrics: createMetrics(),
        info,
      });
      running = await listen(app, 0, '127.0.0.1');
    });
    after(async () => {
      await running?.close(1000);
    });
    beforeEach(() => {
      watermark = null;
    });

    const as = (userId: string, role: UserRole = 'user', headers: Record<string, string> = {}) => ({
      headers: { 'x-test-user': `${userId} ${role}`, ...headers },
    });
    const get = (path: string, init: RequestInit = {}) => fetch(`${running.url}${path}`, init);

    /** Validates a response body against a named schema of the served OpenAPI document. */
    function expectSchema(name: string, body: unknown): void {
      const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
      (formatsPlugin as unknown as (ajv: Ajv2020) => void)(ajv);
      ajv.addKeyword({ keyword: 'components' });
      const { schemas } = api.openApiDocument(info).components;
      const validate = ajv.compile({ $ref: `#/components/schemas/${name}`, components: { schemas } });
      expect(validate(body), ajv.errorsText(validate.errors)).to.equal(true);
    }

    describe('GET /tasks/:id', () => {
      it('shows the owner their task in the documented representation', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(
          id,
          queued(id, owner, { title: 'send the report', payload: { to: 'ann@example.com' } }, at(0)),
          started(id, 1, at(1)),
          {
            type: 'TaskAttemptFailed',
            data: {
              taskId: id,
              attempt: 1,
              error: { message: 'smtp down', kind: 'error' },
              nextRunAt: at(30),
              failedAt: at(2),
            },
          },
        );
        const response = await get(`/tasks/${id}`, as(owner));
        expect(response.status).to.equal(200);
        const body = await json(response);
        expect(body).to.deep.equal({
          id,
          owner_id: owner,
          title: 'send the report',
          description: 'the March uploads',
          type: 'echo',
          payload: { to: 'ann@example.com' },
          priority: 5,
          queue: 'default',
          group_key: null,
          depends_on: [],
          on_dependency_failure: null,
          status: 'pending',
          attempt: 1,
          max_attempts: 3,
          timeout_ms: 30000,
          run_at: at(30),
          progress: null,
          result: null,
          error: { message: 'smtp down', kind: 'error' },
          created_at: at(0),
          updated_at: at(2),
          archived_at: null,
          schedule_id: null,
          schedule_tick: null,
          revision: 2,
        });
        expectSchema('Task', body);
      });

      it('answers 404 to another user, as for a task that does not exist', async () => {
        const id = randomUUID();
        await submitted(id, queued(id, randomUUID()));
        const foreign = await get(`/tasks/${id}`, as(randomUUID()));
        const missing = await get(`/tasks/${randomUUID()}`, as(randomUUID()));
        expect(foreign.status).to.equal(404);
        expect(missing.status).to.equal(404);
        expect(foreign.headers.get('content-type')).to.match(/^application\/problem\+json/);
        expect((await json(foreign)).title).to.equal((await json(missing)).title);
      });

      it('shows any task to an auditor and an admin', async () => {
        const id = randomUUID();
        await submitted(id, queued(id, randomUUID()));
        for (const role of ['auditor', 'admin'] as const) {
          const response = await get(`/tasks/${id}`, as(randomUUID(), role));
          expect(response.status, role).to.equal(200);
          expect((await json(response)).id).to.equal(id);
        }
      });

      it('answers 400 for an id that is not a UUID, and 401 without a user', async () => {
        expect((await get('/tasks/not-a-uuid', as(randomUUID()))).status).to.equal(400);
        expect((await get(`/tasks/${randomUUID()}`)).status).to.equal(401);
      });
    });

    describe('GET /tasks', () => {
      it("lists a user's own tasks only; auditors see everyone's and may pick an owner", async () => {
        const ann = randomUUID();
        const bob = randomUUID();
        const queue = `q-${randomUUID()}`;
        const [a1, a2, b1] = [randomUUID(), randomUUID(), randomUUID()];
        await submitted(a1, queued(a1, ann, { queue }, at(1)));
        await submitted(a2, queued(a2, ann, { queue }, at(2)));
        await submitted(b1, queued(b1, bob, { queue }, at(3)));

        const ids = async (response: Response) => {
          expect(response.status).to.equal(200);
          const body = await json(response);
          expectSchema('TaskList', body);
          return body.items.map((item: { id: string }) => item.id);
        };
        expect(await ids(await get(`/tasks?queue=${queue}`, as(ann)))).to.deep.equal([a2, a1]);
        expect(await ids(await get(`/tasks?queue=${queue}&owner_id=${ann}`, as(ann)))).to.deep.equal([
          a2,
          a1,
        ]);
        expect(await ids(await get(`/tasks?queue=${queue}`, as(randomUUID(), 'auditor')))).to.deep.equal([
          b1,
          a2,
          a1,
        ]);
        expect(
          await ids(await get(`/tasks?queue=${queue}&owner_id=${bob}`, as(randomUUID(), 'admin'))),
        ).to.deep.equal([b1]);
        expect((await get(`/tasks?queue=${queue}&owner_id=${bob}`, as(ann))).status).to.equal(403);
      });

      it('pages with limit and cursor, and answers 400 for a forged cursor or a bad filter', async () => {
        const owner = randomUUID();
        const [x, y] = [randomUUID(), randomUUID()];
        await submitted(x, queued(x, owner, {}, at(1)));
        await submitted(y, queued(y, owner, {}, at(2)));
        const first = await json(await get('/tasks?limit=1', as(owner)));
        expect(first.items.map((item: { id: string }) => item.id)).to.deep.equal([y]);
        const second = await json(await get(`/tasks?limit=1&cursor=${first.next_cursor}`, as(owner)));
        expect(second).to.deep.include({ next_cursor: null });
        expect(second.items.map((item: { id: string }) => item.id)).to.deep.equal([x]);

        const forged = await get('/tasks?cursor=bm90LWEtY3Vyc29y', as(owner));
        expect(forged.status).to.equal(400);
        expect((await json(forged)).errors).to.deep.equal([
          { path: '/query/cursor', message: 'is not a valid cursor' },
        ]);
        expect((await get('/tasks?status=sleeping', as(owner))).status).to.equal(400);
        expect((await get('/tasks?limit=101', as(owner))).status).to.equal(400);
      });
    });

    describe('GET /tasks/:id/events', () => {
      it("shows the task's history from the log, with its metadata", async () => {
        const owner = randomUUID();
        const id = randomUUID();
        const recorded = await submitted(id, queued(id, owner), started(id, 1, at(1)));
        const response = await get(`/tasks/${id}/events`, as(owner));
        expect(response.status).to.equal(200);
        const body = await json(response);
        expectSchema('TaskEventList', body);
        expect(body.items).to.have.length(2);
        expect(body.items.map((item: { type: string }) => item.type)).to.deep.equal([
          'TaskQueued',
          'TaskStarted',
        ]);
        const [first] = body.items;
        const stored = recorded[0]!;
        expect(first).to.deep.equal({
          type: 'TaskQueued',
          revision: 0,
          position: stored.position,
          data: JSON.parse(stored.rawData),
          metadata: {
            event_id: stored.metadata.eventId,
            correlation_id: stored.metadata.correlationId,
            causation_id: null,
            user_id: null,
            timestamp: stored.metadata.timestamp,
            hash: stored.metadata.hash,
          },
          recorded_at: stored.recordedAt,
        });
        expect(first.data.spec.maxAttempts).to.equal(3);
      });

      it('answers 404 to another user and to a task with no history; an auditor sees it', async () => {
        const id = randomUUID();
        await append(id, queued(id, randomUUID()));
        expect((await get(`/tasks/${id}/events`, as(randomUUID()))).status).to.equal(404);
        expect((await get(`/tasks/${randomUUID()}/events`, as(randomUUID(), 'auditor'))).status).to.equal(
          404,
        );
        expect((await get(`/tasks/${id}/events`, as(randomUUID(), 'auditor'))).status).to.equal(200);
      });
    });

    describe('read-your-writes', () => {
      it('waits for the row to reach X-Min-Position, then answers with it', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(id, queued(id, owner));
        expect((await json(await get(`/tasks/${id}`, as(owner)))).status).to.equal('pending');
        const [start] = await append(id, started(id, 1, at(1)));
        const startedAt = Date.now();
        setTimeout(() => void project([start!], cache), 150);
        const response = await get(`/tasks/${id}`, as(owner, 'user', { 'x-min-position': start!.position }));
        expect(response.status).to.equal(200);
        expect(await json(response)).to.deep.include({ status: 'in_progress', revision: 1 });
        expect(Date.now() - startedAt).to.be.within(140, WAIT_MS);
      });

      it('waits for a task submitted a moment ago to appear', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        const [queuedEvent] = await append(id, queued(id, owner));
        setTimeout(() => void project([queuedEvent!], cache), 100);
        const response = await get(`/tasks/${id}?min_position=${queuedEvent!.position}`, as(owner));
        expect(response.status).to.equal(200);
        expect((await json(response)).id).to.equal(id);
      });

      it('answers 202 with Retry-After when the position is not reached within the wait', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(id, queued(id, owner));
        const [start] = await append(id, started(id, 1, at(1)));
        const startedAt = Date.now();
        const response = await get(`/tasks/${id}`, as(owner, 'user', { 'x-min-position': start!.position }));
        expect(Date.now() - startedAt).to.be.at.least(WAIT_MS - 10);
        expect(response.status).to.equal(202);
        expect(response.headers.get('retry-after')).to.equal('1');
        const body = await json(response);
        expect(body).to.deep.equal({
          status: 'pending',
          detail: 'the read model has not reached that position yet',
        });
        expectSchema('ReadModelPending', body);
      });

      it("accepts the watermark for a position of another stream, and then serves the task's row", async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(id, queued(id, owner));
        const other = randomUUID();
        const [elsewhere] = await append(other, queued(other, randomUUID()));
        watermark = elsewhere!.position;
        const response = await get(
          `/tasks/${id}`,
          as(owner, 'user', { 'x-min-position': elsewhere!.position }),
        );
        expect(response.status).to.equal(200);
        expect((await json(response)).id).to.equal(id);
      });

      it("treats another user's task like a missing one while waiting, and 404s once the watermark passes", async () => {
        const id = randomUUID();
        const [recorded] = await submitted(id, queued(id, randomUUID()));
        const waiting = await get(
          `/tasks/${id}`,
          as(randomUUID(), 'user', { 'x-min-position': recorded!.position }),
        );
        expect(waiting.status).to.equal(202);
        watermark = recorded!.position;
        const settled = await get(
          `/tasks/${id}`,
          as(randomUUID(), 'user', { 'x-min-position': recorded!.position }),
        );
        expect(settled.status).to.equal(404);
      });

      it('makes a list wait for the watermark only', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        const [recorded] = await submitted(id, queued(id, owner));
        const behind = await get(`/tasks?min_position=${recorded!.position}`, as(owner));
        expect(behind.status).to.equal(202);
        expect(behind.headers.get('retry-after')).to.equal('1');
        setTimeout(() => (watermark = recorded!.position), 100);
        const caughtUp = await get('/tasks', as(owner, 'user', { 'x-min-position': recorded!.position }));
        expect(caughtUp.status).to.equal(200);
        expect((await json(caughtUp)).items.map((item: { id: string }) => item.id)).to.deep.equal([id]);
      });

      it('answers 400 for a malformed min position, in the header or the query', async () => {
        const owner = randomUUID();
        const id = randomUUID();
        await submitted(id, queued(id, owner));
        const header = await get(`/tasks/${id}`, as(owner, 'user', { 'x-min-position': '42' }));
        expect(header.status).to.equal(400);
        expect((await json(header)).errors[0].path).to.equal('/headers/x-min-position');
        const query = await get(`/tasks?min_position=0000-zzzz`, as(owner));
        expect(query.status).to.equal(400);
        expect((await json(query)).errors[0].path).to.equal('/query/min_position');
      });
    });

    describe('schemas', () => {
      it('adds the task schemas once and hands the same refs to a second caller', () => {
        expect(ensureTaskSchemas(api)).to.deep.equal(ensureTaskSchemas(api));
        expect(ensureTaskSchemas(api).task).to.deep.equal({ $ref: '#/components/schemas/Task' });
        const doc = api.openApiDocument(info);
        expect(doc.paths['/tasks/{id}']!.get!.tags).to.deep.equal(['tasks']);
        expect(Object.keys(doc.components.schemas)).to.include.members(['Task', 'TaskList', 'TaskEvent']);
      });
    });
  });
});
