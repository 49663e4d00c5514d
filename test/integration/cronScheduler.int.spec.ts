import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { handleCommand } from '../../src/commands/commandHandler.js';
import { ConflictError } from '../../src/errors.js';
import { loadConfig } from '../../src/config.js';
import { createSchedule, pauseSchedule } from '../../src/domain/schedules/commands.js';
import { scheduleStreamId } from '../../src/domain/schedules/events.js';
import { schedule } from '../../src/domain/schedules/state.js';
import { foldEvents } from '../../src/domain/decider.js';
import { scheduledTaskId } from '../../src/domain/schedules/taskId.js';
import { taskStreamId } from '../../src/domain/tasks/events.js';
import { task } from '../../src/domain/tasks/state.js';
import { submitTask } from '../../src/domain/tasks/submitTask.js';
import type { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import type { EventStore } from '../../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import { CronScheduler } from '../../src/workers/cronScheduler.js';
import { schedulesProjection } from '../../src/projections/schedules/projection.js';
import { createTestDatabase, testEventStore, type TestDatabase } from '../support/postgres.js';
import { taskSpec, testCommandContext } from '../support/fixtures.js';

/**
 * The scheduler's firing against the real PostgreSQL store, with a clock the test sets: the crash between the
 * task's append and the schedule's, and two schedulers deciding the same tick at once.
 */
describe('cron scheduler: one task per tick', function () {
  this.timeout(30000);
  let db: TestDatabase;
  let store: PostgresEventStore;
  let now: Date;
  const settings = loadConfig({ env: {} }).scheduler;

  before(async () => {
    db = await createTestDatabase('scheduler');
    store = testEventStore(db);
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  const scheduler = (through: EventStore = store) =>
    new CronScheduler({
      store: through,
      pool: db.pool,
      settings,
      logger: silentLogger(),
      clock: () => now,
      newId: randomUUID,
    });
  const newSchedule = async (createdAt: Date) => {
    const scheduleId = randomUUID();
    await handleCommand(
      store,
      scheduleStreamId(scheduleId),
      schedule,
      (state) =>
        createSchedule(
          {
            scheduleId,
            ownerId: randomUUID(),
            now: createdAt,
            settings: {
              name: 'every minute',
              cron: '0 * * * * *',
              timezone: 'UTC',
              task: taskSpec({ title: 'minutely' }),
              overlap: 'allow',
              catchUp: 'none',
            },
          },
          state,
        ),
      testCommandContext(() => createdAt),
    );
    return scheduleId;
  };
  const types = async (streamId: string) => (await store.readStream(streamId)).map((event) => event.type);
  /** A tick's task queued as a scheduler queues it, without the ScheduleFired that would follow. */
  const queueTickTask = (scheduleId: string, tick: string, queuedAt: Date) => {
    const taskId = scheduledTaskId(scheduleId, tick);
    return handleCommand(
      store,
      taskStreamId(taskId),
      task,
      (state) =>
        submitTask(
          {
            taskId,
            ownerId: randomUUID(),
            spec: taskSpec(),
            idempotencyKey: null,
            now: queuedAt,
            origin: { scheduleId, tick },
          },
          state,
        ),
      testCommandContext(),
    );
  };

  it('records a tick whose task a crashed scheduler had queued, without a second task', async () => {
    const id = await newSchedule(new Date('2026-05-01T12:00:30Z'));
    const tick = '2026-05-01T12:01:00.000Z';
    const taskId = scheduledTaskId(id, tick);
    // What a scheduler killed after its first append leaves behind: the task, and no ScheduleFired.
    await queueTickTask(id, tick, new Date(tick));
    now = new Date('2026-05-01T12:01:00.300Z');
    expect(await scheduler().fire(id)).to.equal(1);
    expect(await types(taskStreamId(taskId))).to.deep.equal(['TaskQueued']);
    const fired = (await store.readStream(scheduleStreamId(id))).filter(
      (event) => event.type === 'ScheduleFired',
    );
    expect(fired.map((event) => event.data.taskId)).to.deep.equal([taskId]);
    expect(await scheduler().fire(id), 'nothing due any more').to.equal(null);
  });

  it('after downtime, records the tick whose task a killed scheduler had queued instead of skipping it', async () => {
    const id = await newSchedule(new Date('2026-05-01T13:00:30Z'));
    const tick = '2026-05-01T13:01:00.000Z';
    const taskId = scheduledTaskId(id, tick);
    // Killed after queuing 13:01's task, before its ScheduleFired; no scheduler runs for five minutes.
    await queueTickTask(id, tick, new Date('2026-05-01T13:01:00.040Z'));
    now = new Date('2026-05-01T13:06:00.300Z');
    await scheduler().fire(id);
    const history = await store.readStream(scheduleStreamId(id));
    const firedTick = history.find((event) => event.type === 'ScheduleFired' && event.data.tick === tick);
    expect(firedTick?.data, 'the queued tick is recorded as fired when its task was queued').to.include({
      taskId,
      firedAt: '2026-05-01T13:01:00.040Z',
    });
    const skippedRanges = history
      .filter((event) => event.type === 'ScheduleTicksSkipped')
      .map((event) => [event.data.firstTick, event.data.lastTick] as [string, string]);
    expect(skippedRanges.filter(([first, last]) => first <= tick && tick <= last)).to.deep.equal([]);
    expect(skippedRanges.length, 'catch_up none still skips the other missed ticks').to.be.greaterThan(0);
    expect(await types(taskStreamId(taskId))).to.deep.equal(['TaskQueued']);
  });

  it('fires nothing more from a read-model row that lags the stream', async () => {
    const id = await newSchedule(new Date('2026-05-01T14:00:30Z'));
    // The row as a projector that applied ScheduleCreated only would have it: due at 14:01:00.
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN');
      await schedulesProjection.project(client, await store.readStream(scheduleStreamId(id)), () => {});
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    now = new Date('2026-05-01T14:01:00.200Z');
    const one = scheduler();
    expect((await one.look()).fired).to.equal(1);
    now = new Date('2026-05-01T14:01:00.900Z');
    // The row still says 14:01:00 is due; this process and a fresh one both read the stream and fire nothing.
    expect((await one.look()).fired).to.equal(0);
    expect((await scheduler().look()).fired).to.equal(0);
    const taskId = scheduledTaskId(id, '2026-05-01T14:01:00.000Z');
    expect(await types(taskStreamId(taskId))).to.deep.equal(['TaskQueued']);
    expect(await types(scheduleStreamId(id))).to.deep.equal(['ScheduleCreated', 'ScheduleFired']);
  });

  it('fires the other due schedules when one cannot be fired', async () => {
    const good = await newSchedule(new Date('2026-05-01T16:00:30Z'));
    // A stream the deciders would never have written: an expression croner refuses, due before the good one.
    const broken = randomUUID();
    await store.append(
      scheduleStreamId(broken),
      [
        {
          eventId: randomUUID(),
          type: 'ScheduleCreated',
          data: {
            scheduleId: broken,
            ownerId: randomUUID(),
            name: 'broken',
            cron: 'not a cron',
            timezone: 'UTC',
            task: taskSpec(),
            overlap: 'allow',
            catchUp: 'none',
            createdAt: '2026-05-01T16:00:00.000Z',
            nextFireAt: '2026-05-01T16:00:59.000Z',
          },
          metadata: {
            correlationId: randomUUID(),
            causationId: null,
            userId: null,
            timestamp: '2026-05-01T16:00:00.000Z',
          },
        },
      ],
      { expectedRevision: 'no_stream' },
    );
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('DELETE FROM schedules');
      const events = [
        ...(await store.readStream(scheduleStreamId(broken))),
        ...(await store.readStream(scheduleStreamId(good))),
      ];
      await schedulesProjection.project(client, events, () => {});
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    now = new Date('2026-05-01T16:01:00.200Z');
    expect(await scheduler().look()).to.deep.equal({ fired: 1, decided: 1, conflicts: 0, failed: 1 });
    expect(await types(scheduleStreamId(good))).to.deep.equal(['ScheduleCreated', 'ScheduleFired']);
  });

  it('records the firing of a tick whose task was queued just before a pause', async () => {
    const id = await newSchedule(new Date('2026-05-01T15:00:30Z'));
    const owner = foldEvents(schedule, await store.readStream(scheduleStreamId(id))).ownerId!;
    // The owner's pause lands right after the scheduler queued the tick's task, before its ScheduleFired.
    let paused = false;
    const racing = new Proxy(store, {
      get(target, property) {
        if (property === 'append')
          return async (...args: Parameters<EventStore['append']>) => {
            const result = await target.append(...args);
            if (args[0].startsWith('task-') && !paused) {
              paused = true;
              await handleCommand(
                store,
                scheduleStreamId(id),
                schedule,
                (state) => pauseSchedule({ actorId: owner, isAdmin: false, now }, state),
                testCommandContext(() => now),
              );
            }
            return result;
          };
        const value = Reflect.get(target, property, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    now = new Date('2026-05-01T15:01:00.100Z');
    const error = await scheduler(racing)
      .fire(id)
      .catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ConflictError);
    const taskId = scheduledTaskId(id, '2026-05-01T15:01:00.000Z');
    expect(await types(taskStreamId(taskId))).to.deep.equal(['TaskQueued']);
    const history = await store.readStream(scheduleStreamId(id));
    expect(history.map((event) => event.type)).to.deep.equal([
      'ScheduleCreated',
      'SchedulePaused',
      'ScheduleFired',
    ]);
    expect(history[2]!.data).to.include({ taskId, nextFireAt: null });
    expect(foldEvents(schedule, history)).to.include({
      status: 'paused',
      nextFireAt: null,
      lastTaskId: taskId,
    });
  });

  it('of two schedulers deciding the same tick at once, one records it and one task is queued', async () => {
    const id = await newSchedule(new Date('2026-05-01T13:00:30Z'));
    now = new Date('2026-05-01T13:01:00.100Z');
    const outcomes = await Promise.allSettled([scheduler().fire(id), scheduler().fire(id)]);
    const recorded = outcomes.filter((o) => o.status === 'fulfilled' && o.value === 1);
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(recorded, JSON.stringify(outcomes)).to.have.length(1);
    // The other lost the race at the schedule's revision (or read after it and found nothing due).
    for (const outcome of refused)
      expect((outcome as PromiseRejectedResult).reason).to.be.instanceOf(ConflictError);
    const taskId = scheduledTaskId(id, '2026-05-01T13:01:00.000Z');
    expect(await types(taskStreamId(taskId))).to.deep.equal(['TaskQueued']);
    expect(await types(scheduleStreamId(id))).to.deep.equal(['ScheduleCreated', 'ScheduleFired']);
  });
});
