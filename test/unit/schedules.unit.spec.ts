import { expect } from 'chai';
import { ConflictError, NotFoundError } from '../../src/errors.js';
import type { ScheduleEvent, ScheduleFired, ScheduleSettings } from '../../src/domain/schedules/events.js';
import { schedule } from '../../src/domain/schedules/state.js';
import {
  createSchedule,
  deleteSchedule,
  fireDueTicks,
  unfiredTicks,
  pauseSchedule,
  planTicks,
  recordQueuedTicks,
  resumeSchedule,
  runScheduleNow,
  updateSchedule,
  type FireDueTicks,
} from '../../src/domain/schedules/commands.js';
import { checkCron, parseCron } from '../../src/domain/schedules/cron.js';
import { scheduledTaskId } from '../../src/domain/schedules/taskId.js';
import { scheduleResource } from '../../src/domain/schedules/representation.js';
import { foldEvents } from '../../src/domain/decider.js';
import { given } from '../support/decider.js';
import { taskSpec } from '../support/fixtures.js';

const t0 = new Date('2026-05-01T12:00:00.000Z');
const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);
const iso = (seconds: number) => at(seconds).toISOString();

const S = '0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10';
const ANN = { actorId: 'ann', isAdmin: false };
const BOB = { actorId: 'bob', isAdmin: false };
const ADMIN = { actorId: 'root', isAdmin: true };

const settings = (overrides: Partial<ScheduleSettings> = {}): ScheduleSettings => ({
  name: 'every minute',
  cron: '0 * * * * *',
  timezone: 'UTC',
  task: taskSpec({ title: 'tick' }),
  overlap: 'allow',
  catchUp: 'none',
  ...overrides,
});

const created = (overrides: Partial<ScheduleSettings> = {}): ScheduleEvent => ({
  type: 'ScheduleCreated',
  data: { scheduleId: S, ownerId: 'ann', ...settings(overrides), createdAt: iso(0.5), nextFireAt: iso(60) },
});

const rules = { missedAfterMs: 10_000, maxCatchUpTicks: 100 };
const fireAt =
  (seconds: number, extra: Partial<FireDueTicks> = {}) =>
  (state: Parameters<typeof fireDueTicks>[1]) =>
    fireDueTicks(
      { now: at(seconds), previousRunning: false, catchUp: state.catchUp, ...rules, ...extra },
      state,
    );

const fired = (tickSeconds: number, nowSeconds: number, nextSeconds: number): ScheduleEvent => ({
  type: 'ScheduleFired',
  data: {
    scheduleId: S,
    tick: iso(tickSeconds),
    taskId: scheduledTaskId(S, iso(tickSeconds)),
    manual: false,
    firedAt: iso(nowSeconds),
    nextFireAt: iso(nextSeconds),
  },
});
const skipped = (
  reason: 'missed' | 'overlap',
  first: number,
  last: number,
  nowSeconds: number,
  nextSeconds: number,
): ScheduleEvent => ({
  type: 'ScheduleTicksSkipped',
  data: {
    scheduleId: S,
    reason,
    firstTick: iso(first),
    lastTick: iso(last),
    skippedAt: iso(nowSeconds),
    nextFireAt: iso(nextSeconds),
  },
});

describe('schedules: cron through croner', () => {
  it('refuses a bad expression, an unknown time zone and an expression that never fires, each by its field', () => {
    expect(checkCron('61 * * * *', 'UTC', t0).problems).to.have.keys('cron');
    expect(checkCron('* * * *', 'UTC', t0).problems).to.have.keys('cron');
    expect(checkCron('* * * * *', 'Mars/Olympus_Mons', t0).problems).to.deep.equal({
      timezone: 'is not a known IANA time zone',
    });
    expect(checkCron('0 0 30 2 *', 'UTC', t0).problems).to.deep.equal({ cron: 'never fires after now' });
    expect(checkCron('*/5 * * * * *', 'Europe/Berlin', t0).problems).to.equal(null);
  });

  it('reads the expression in its time zone, daylight saving as croner does it', () => {
    const berlin = parseCron('30 2 * * *', 'Europe/Berlin');
    // Spring forward (29 March 2026, 02:00 -> 03:00): 02:30 does not exist, so it runs at 03:00 CEST (01:00Z).
    expect(berlin.nextTicks(2, new Date('2026-03-28T00:00:00Z')).map((d) => d.toISOString())).to.deep.equal([
      '2026-03-28T01:30:00.000Z',
      '2026-03-29T01:00:00.000Z',
    ]);
    // Fall back (25 October 2026, 03:00 -> 02:00): 02:30 happens twice and runs once, the first time (CEST).
    expect(berlin.nextTicks(3, new Date('2026-10-24T00:00:00Z')).map((d) => d.toISOString())).to.deep.equal([
      '2026-10-24T00:30:00.000Z',
      '2026-10-25T00:30:00.000Z',
      '2026-10-26T01:30:00.000Z',
    ]);
    // An interval (every 30 minutes) keeps running by elapsed time: the repeated hour runs twice.
    const halfHourly = parseCron('0 */30 * * * *', 'Europe/Berlin');
    expect(
      halfHourly.nextTicks(4, new Date('2026-10-24T23:50:00Z')).map((d) => d.toISOString()),
    ).to.deep.equal([
      '2026-10-25T00:00:00.000Z',
      '2026-10-25T00:30:00.000Z',
      '2026-10-25T01:00:00.000Z',
      '2026-10-25T01:30:00.000Z',
    ]);
  });

  it('counts previous ticks at or before an instant, newest first', () => {
    const everySecond = parseCron('* * * * * *', 'UTC');
    expect(everySecond.previousTicks(2, at(3)).map((d) => d.toISOString())).to.deep.equal([iso(3), iso(2)]);
    expect(everySecond.previousTicks(2, at(3.999)).map((d) => d.toISOString())).to.deep.equal([
      iso(3),
      iso(2),
    ]);
    expect(everySecond.next(at(3))?.toISOString()).to.equal(iso(4));
  });
});

describe('schedules: the fired task id', () => {
  it('is the same UUID v5 for the same schedule and tick, and differs for another tick or schedule', () => {
    const id = scheduledTaskId(S, iso(60));
    expect(id).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(scheduledTaskId(S.toUpperCase(), new Date(iso(60)).toISOString())).to.equal(id);
    expect(scheduledTaskId(S, iso(120))).not.to.equal(id);
    expect(scheduledTaskId('1b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10', iso(60))).not.to.equal(id);
  });
});

describe('schedules: planning due ticks (catch_up)', () => {
  const everySecond = parseCron('* * * * * *', 'UTC');
  const plan = (catchUp: 'none' | 'last' | 'all', fromSeconds: number, nowSeconds: number, cap = 100) =>
    planTicks(everySecond, at(fromSeconds), at(nowSeconds), {
      catchUp,
      missedAfterMs: 2000,
      maxCatchUpTicks: cap,
    });
  const seconds = (dates: Date[]) => dates.map((d) => (d.getTime() - t0.getTime()) / 1000);

  it('fires on-time ticks under every policy and nothing before the next tick', () => {
    for (const catchUp of ['none', 'last', 'all'] as const) {
      const p = plan(catchUp, 10, 10.2);
      expect(seconds(p.fire), catchUp).to.deep.equal([10]);
      expect(p.skipped).to.equal(null);
      expect(p.next!.toISOString()).to.equal(iso(11));
    }
    expect(plan('all', 11, 10.9).fire).to.deep.equal([]);
  });

  it('none: skips the missed ticks, fires those still on time', () => {
    const p = plan('none', 10, 20.5);
    expect(seconds(p.fire)).to.deep.equal([19, 20]);
    expect(seconds([p.skipped!.first, p.skipped!.last])).to.deep.equal([10, 18]);
    expect(p.next!.toISOString()).to.equal(iso(21));
  });

  it('last: fires the newest missed tick and the on-time ones', () => {
    const p = plan('last', 10, 20.5);
    expect(seconds(p.fire)).to.deep.equal([18, 19, 20]);
    expect(seconds([p.skipped!.first, p.skipped!.last])).to.deep.equal([10, 17]);
  });

  it('all: fires every missed tick, oldest first, up to the cap; older ones are skipped', () => {
    expect(seconds(plan('all', 10, 20.5).fire)).to.deep.equal([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    expect(plan('all', 10, 20.5).skipped).to.equal(null);
    const capped = plan('all', 10, 20.5, 4);
    expect(seconds(capped.fire)).to.deep.equal([17, 18, 19, 20]);
    expect(seconds([capped.skipped!.first, capped.skipped!.last])).to.deep.equal([10, 16]);
  });

  it('after a week down, a schedule every second costs only the cap', () => {
    const started = Date.now();
    const p = plan('all', 10, 7 * 24 * 3600, 50);
    expect(p.fire).to.have.length(50);
    expect(Date.now() - started).to.be.below(500);
  });
});

describe('schedules: deciders', () => {
  it('creates a schedule whose first tick is the first after now', () => {
    given(schedule, [])
      .when((state) =>
        createSchedule({ scheduleId: S, ownerId: 'ann', settings: settings(), now: at(0.5) }, state),
      )
      .then([created()]);
    given(schedule, [created()])
      .when((state) =>
        createSchedule({ scheduleId: S, ownerId: 'ann', settings: settings(), now: at(1) }, state),
      )
      .thenThrows(ConflictError);
  });

  it('fires a due tick with the deterministic task id and moves on to the next', () => {
    given(schedule, [created()]).when(fireAt(59.9)).then([]);
    given(schedule, [created()])
      .when(fireAt(60.2))
      .then([fired(60, 60.2, 120)]);
    // The same tick a second time: the stream already moved past it, so nothing.
    given(schedule, [created(), fired(60, 60.2, 120)])
      .when(fireAt(60.3))
      .then([]);
  });

  it('after downtime follows catch_up: none skips, last fires the newest missed, all fires each', () => {
    given(schedule, [created()])
      .when(fireAt(200))
      .then([skipped('missed', 60, 180, 200, 240)]);
    given(schedule, [created({ catchUp: 'last' })])
      .when(fireAt(200))
      .then([skipped('missed', 60, 120, 200, 240), fired(180, 200, 240)]);
    given(schedule, [created({ catchUp: 'all' })])
      .when(fireAt(200))
      .then([fired(60, 200, 240), fired(120, 200, 240), fired(180, 200, 240)]);
    // On time (within missedAfterMs): fired whatever the policy.
    given(schedule, [created()])
      .when(fireAt(65))
      .then([fired(60, 65, 120)]);
  });

  it('records, rather than skips, a missed tick whose task a killed scheduler had queued', () => {
    const first = new Map([[iso(60), iso(60.05)]]);
    given(schedule, [created()])
      .when(fireAt(200, { queued: first }))
      .then([fired(60, 60.05, 240), skipped('missed', 120, 180, 200, 240)]);
    given(schedule, [created({ catchUp: 'last' })])
      .when(fireAt(200, { queued: first }))
      .then([fired(60, 60.05, 240), skipped('missed', 120, 120, 200, 240), fired(180, 200, 240)]);
    // A queued tick inside a skipped range splits it in two.
    given(schedule, [created()])
      .when(fireAt(260, { queued: new Map([[iso(120), iso(120.1)]]) }))
      .then([
        fired(120, 120.1, 300),
        skipped('missed', 60, 60, 260, 300),
        skipped('missed', 180, 240, 260, 300),
      ]);
    // A queued tick the decision fires anyway is fired as usual (its task is there; the scheduler queues no other).
    given(schedule, [created({ catchUp: 'all' })])
      .when(fireAt(130, { queued: first }))
      .then([fired(60, 130, 180), fired(120, 130, 180)]);
    // Where the scheduler looks for such tasks: the skipped ticks, the earliest first, at most `limit` a range.
    const state = foldEvents(schedule, [created()]);
    expect(unfiredTicks([skipped('missed', 60, 240, 260, 300)], state, 2)).to.deep.equal([iso(60), iso(120)]);
    expect(unfiredTicks([fired(60, 60.2, 120)], state, 2)).to.deep.equal([]);
  });

  it('overlap skip: no tick while the previous task runs; of several due ticks only the newest', () => {
    const history = [created({ overlap: 'skip', catchUp: 'all' }), fired(60, 60.1, 120)];
    given(schedule, history)
      .when(fireAt(120.1, { previousRunning: true }))
      .then([skipped('overlap', 120, 120, 120.1, 180)]);
    given(schedule, history)
      .when(fireAt(120.1))
      .then([fired(120, 120.1, 180)]);
    given(schedule, history)
      .when(fireAt(240.1))
      .then([skipped('overlap', 120, 180, 240.1, 300), fired(240, 240.1, 300)]);
    // overlap allow fires even while the previous runs.
    given(schedule, [created({ catchUp: 'all' }), fired(60, 60.1, 120)])
      .when(fireAt(120.1, { previousRunning: true }))
      .then([fired(120, 120.1, 180)]);
  });

  it('pause stops the ticks; resume starts from the first tick after it, without catching up', () => {
    const paused: ScheduleEvent = {
      type: 'SchedulePaused',
      data: { scheduleId: S, pausedBy: 'ann', pausedAt: iso(30) },
    };
    given(schedule, [created()])
      .when((state) => pauseSchedule({ ...ANN, now: at(30) }, state))
      .then([paused]);
    given(schedule, [created(), paused]).when(fireAt(200)).then([]);
    given(schedule, [created(), paused])
      .when((state) => pauseSchedule({ ...ANN, now: at(31) }, state))
      .then([]);
    given(schedule, [created(), paused])
      .when((state) => resumeSchedule({ ...ANN, now: at(200) }, state))
      .then([
        {
          type: 'ScheduleResumed',
          data: { scheduleId: S, resumedBy: 'ann', resumedAt: iso(200), nextFireAt: iso(240) },
        },
      ]);
  });

  it("answers someone else's or a deleted schedule as missing; admins may act on any", () => {
    given(schedule, [created()])
      .when((state) => pauseSchedule({ ...BOB, now: at(1) }, state))
      .thenThrows(NotFoundError);
    given(schedule, [created()])
      .when((state) => runScheduleNow({ ...BOB, now: at(1), taskId: 'x' }, state))
      .thenThrows(NotFoundError);
    const deleted: ScheduleEvent = {
      type: 'ScheduleDeleted',
      data: { scheduleId: S, deletedBy: 'root', deletedAt: iso(2) },
    };
    given(schedule, [created()])
      .when((state) => deleteSchedule({ ...ADMIN, now: at(2) }, state))
      .then([deleted]);
    given(schedule, [created(), deleted])
      .when((state) => pauseSchedule({ ...ANN, now: at(3) }, state))
      .thenThrows(NotFoundError);
    given(schedule, [created(), deleted]).when(fireAt(200)).then([]);
  });

  it('run now records a manual firing and keeps the next tick', () => {
    given(schedule, [created()])
      .when((state) => runScheduleNow({ ...ANN, now: at(10), taskId: 'task-1' }, state))
      .then([
        {
          type: 'ScheduleFired',
          data: {
            scheduleId: S,
            tick: iso(10),
            taskId: 'task-1',
            manual: true,
            firedAt: iso(10),
            nextFireAt: iso(60),
          },
        },
      ]);
  });

  it('an edit records what changed; a new expression counts from the edit', () => {
    given(schedule, [created()])
      .when((state) =>
        updateSchedule({ ...ANN, changes: { name: 'every minute', overlap: 'allow' }, now: at(5) }, state),
      )
      .then([]);
    given(schedule, [created()])
      .when((state) =>
        updateSchedule({ ...ANN, changes: { cron: '*/10 * * * * *', name: 'often' }, now: at(5) }, state),
      )
      .then([
        {
          type: 'ScheduleUpdated',
          data: {
            scheduleId: S,
            changes: { cron: '*/10 * * * * *', name: 'often' },
            updatedBy: 'ann',
            updatedAt: iso(5),
            nextFireAt: iso(10),
          },
        },
      ]);
  });

  it('after a lost race, records the queued ticks the stream does not, leaving its next tick as it is', () => {
    const queued = [fired(60, 60.1, 120), fired(120, 120.1, 180)].map((event) => event as ScheduleFired);
    const paused: ScheduleEvent = {
      type: 'SchedulePaused',
      data: { scheduleId: S, pausedBy: 'ann', pausedAt: iso(120.05) },
    };
    const state = foldEvents(schedule, [created(), fired(60, 60.1, 120), paused]);
    const recorded = new Set([queued[0]!.data.taskId]);
    expect(recordQueuedTicks(queued, recorded, state, at(120.2))).to.deep.equal([
      { type: 'ScheduleFired', data: { ...queued[1]!.data, firedAt: iso(120.2), nextFireAt: null } },
    ]);
    expect(
      recordQueuedTicks(queued, new Set(queued.map((e) => e.data.taskId)), state, at(121)),
    ).to.deep.equal([]);
    // Recorded late and older than the last firing: the newest stays the last.
    const late = foldEvents(schedule, [created(), fired(120, 120.1, 180), fired(60, 121, 180)]);
    expect(late).to.include({ lastTick: iso(120), firedCount: 2 });
  });

  it('shows the next few fire times from the next tick', () => {
    const state = foldEvents(schedule, [created()]);
    expect(scheduleResource(state, 0).next_fire_times).to.deep.equal([
      iso(60),
      iso(120),
      iso(180),
      iso(240),
      iso(300),
    ]);
    const paused = foldEvents(schedule, [
      created(),
      { type: 'SchedulePaused', data: { scheduleId: S, pausedBy: 'ann', pausedAt: iso(1) } },
    ]);
    expect(scheduleResource(paused, 1)).to.include({ status: 'paused', next_fire_at: null });
    expect(scheduleResource(paused, 1).next_fire_times).to.deep.equal([]);
  });
});
