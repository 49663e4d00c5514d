/**
 * src/domain/schedules: cron schedules that queue tasks: their events (this file), state and evolve (state.ts), the
 * pure deciders (commands.ts: the owner's commands and the scheduler's firing, with catch-up and overlap), cron
 * parsing through croner (cron.ts), the fired task's deterministic id (taskId.ts) and the schedule as the API shows
 * it (representation.ts).
 */
import type { DomainEvent } from '../decider.js';
import type { TaskSpec } from '../tasks/events.js';
import type { JsonObject } from '../../infra/eventStore/eventStore.js';

/** Stream `schedule-<scheduleId>`: one schedule's whole history, each firing included. */
export const scheduleStreamId = (scheduleId: string): string => `schedule-${scheduleId}`;
export const SCHEDULE_STREAM_PREFIX = 'schedule-';

/** `skip`: a tick whose previous task is still pending or running queues nothing. `allow`: it queues anyway. */
export type OverlapPolicy = 'skip' | 'allow';
/** Ticks missed while no scheduler ran: `none` skips them, `last` queues the newest, `all` queues each (capped). */
export type CatchUpPolicy = 'none' | 'last' | 'all';
export type ScheduleStatus = 'active' | 'paused' | 'deleted';

/** What a schedule may change after it was created. */
export interface ScheduleSettings extends JsonObject {
  name: string;
  cron: string;
  timezone: string;
  /** The task each tick queues; `runAt` is always null (a fired task is due at once). */
  task: TaskSpec;
  overlap: OverlapPolicy;
  catchUp: CatchUpPolicy;
}

/** The settings an update changes (only those that differ). */
export type ScheduleChanges = {
  name?: string;
  cron?: string;
  timezone?: string;
  task?: TaskSpec;
  overlap?: OverlapPolicy;
  catchUp?: CatchUpPolicy;
};

export type ScheduleCreated = DomainEvent<
  'ScheduleCreated',
  ScheduleSettings & {
    scheduleId: string;
    ownerId: string;
    createdAt: string;
    /** The first tick after createdAt; null when the expression never fires. */
    nextFireAt: string | null;
  }
>;
export type ScheduleUpdated = DomainEvent<
  'ScheduleUpdated',
  {
    scheduleId: string;
    changes: ScheduleChanges;
    updatedBy: string;
    updatedAt: string;
    /** Recomputed from the update's time when the cron or time zone changed, else as it was. */
    nextFireAt: string | null;
  }
>;
export type SchedulePaused = DomainEvent<
  'SchedulePaused',
  { scheduleId: string; pausedBy: string; pausedAt: string }
>;
/** Ticks that fell while it was paused are not caught up: the next is the first after the resume. */
export type ScheduleResumed = DomainEvent<
  'ScheduleResumed',
  { scheduleId: string; resumedBy: string; resumedAt: string; nextFireAt: string | null }
>;
export type ScheduleDeleted = DomainEvent<
  'ScheduleDeleted',
  { scheduleId: string; deletedBy: string; deletedAt: string }
>;
/**
 * A tick queued its task (`manual`: "run now", whose tick is the request's time and which leaves the next tick as
 * it was). Appended after the task's TaskQueued, with the expected revision, so only one scheduler records a tick.
 */
export type ScheduleFired = DomainEvent<
  'ScheduleFired',
  {
    scheduleId: string;
    tick: string;
    taskId: string;
    manual: boolean;
    firedAt: string;
    nextFireAt: string | null;
  }
>;
/** Ticks from firstTick to lastTick that queued nothing: missed while no scheduler ran, or overlapping a run. */
export type ScheduleTicksSkipped = DomainEvent<
  'ScheduleTicksSkipped',
  {
    scheduleId: string;
    reason: 'missed' | 'overlap';
    firstTick: string;
    lastTick: string;
    skippedAt: string;
    nextFireAt: string | null;
  }
>;

export type ScheduleEvent =
  | ScheduleCreated
  | ScheduleUpdated
  | SchedulePaused
  | ScheduleResumed
  | ScheduleDeleted
  | ScheduleFired
  | ScheduleTicksSkipped;

export const SCHEDULE_EVENT_TYPES: ReadonlySet<ScheduleEvent['type']> = new Set([
  'ScheduleCreated',
  'ScheduleUpdated',
  'SchedulePaused',
  'ScheduleResumed',
  'ScheduleDeleted',
  'ScheduleFired',
  'ScheduleTicksSkipped',
]);
