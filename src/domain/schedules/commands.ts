import { ConflictError, NotFoundError } from '../../errors.js';
import type {
  CatchUpPolicy,
  ScheduleCreated,
  ScheduleDeleted,
  ScheduleEvent,
  ScheduleFired,
  SchedulePaused,
  ScheduleResumed,
  ScheduleChanges,
  ScheduleSettings,
  ScheduleTicksSkipped,
  ScheduleUpdated,
} from './events.js';
import { parseCron, type CronSchedule } from './cron.js';
import type { Schedule } from './state.js';
import { scheduledTaskId } from './taskId.js';

const iso = (date: Date | null): string | null => (date === null ? null : date.toISOString());

/** Who gives an owner's command: the owner, or an admin (who sees every schedule). */
export interface ScheduleActor {
  actorId: string;
  isAdmin: boolean;
}

/** Someone else's schedule answers exactly like a missing one (404), so ids cannot be probed; so does a deleted one. */
function visibleTo(state: Schedule, actor: ScheduleActor): asserts state is Schedule & { id: string } {
  if (!state.exists || state.status === 'deleted' || (state.ownerId !== actor.actorId && !actor.isAdmin))
    throw new NotFoundError('no such schedule');
}

export interface CreateSchedule {
  scheduleId: string;
  ownerId: string;
  settings: ScheduleSettings;
  now: Date;
}

/** The cron expression and time zone must have been checked (checkCron): a bad one throws here. */
export const createSchedule = (command: CreateSchedule, state: Schedule): ScheduleCreated[] => {
  if (state.exists) throw new ConflictError(`schedule ${command.scheduleId} already exists`);
  const { cron, timezone } = command.settings;
  return [
    {
      type: 'ScheduleCreated',
      data: {
        scheduleId: command.scheduleId,
        ownerId: command.ownerId,
        ...command.settings,
        createdAt: command.now.toISOString(),
        nextFireAt: iso(parseCron(cron, timezone).next(command.now)),
      },
    },
  ];
};

export interface UpdateSchedule extends ScheduleActor {
  changes: ScheduleChanges;
  now: Date;
}

/** Only what differs is recorded; a new cron or time zone starts counting from now (no tick before it fires). */
export const updateSchedule = (command: UpdateSchedule, state: Schedule): ScheduleUpdated[] => {
  visibleTo(state, command);
  const changes = Object.fromEntries(
    Object.entries(command.changes).filter(
      ([key, value]) =>
        value !== undefined && JSON.stringify(state[key as keyof Schedule]) !== JSON.stringify(value),
    ),
  ) as ScheduleChanges;
  if (Object.keys(changes).length === 0) return [];
  const timing = changes.cron !== undefined || changes.timezone !== undefined;
  const nextFireAt = timing
    ? iso(parseCron(changes.cron ?? state.cron, changes.timezone ?? state.timezone).next(command.now))
    : state.nextFireAt;
  return [
    {
      type: 'ScheduleUpdated',
      data: {
        scheduleId: state.id,
        changes,
        updatedBy: command.actorId,
        updatedAt: command.now.toISOString(),
        nextFireAt,
      },
    },
  ];
};

export interface ScheduleCommand extends ScheduleActor {
  now: Date;
}

/** Pausing a paused schedule decides nothing, so a repeated request is harmless; likewise resuming. */
export const pauseSchedule = (command: ScheduleCommand, state: Schedule): SchedulePaused[] => {
  visibleTo(state, command);
  if (state.status === 'paused') return [];
  return [
    {
      type: 'SchedulePaused',
      data: { scheduleId: state.id, pausedBy: command.actorId, pausedAt: command.now.toISOString() },
    },
  ];
};

export const resumeSchedule = (command: ScheduleCommand, state: Schedule): ScheduleResumed[] => {
  visibleTo(state, command);
  if (state.status === 'active') return [];
  return [
    {
      type: 'ScheduleResumed',
      data: {
        scheduleId: state.id,
        resumedBy: command.actorId,
        resumedAt: command.now.toISOString(),
        nextFireAt: iso(parseCron(state.cron, state.timezone).next(command.now)),
      },
    },
  ];
};

export const deleteSchedule = (command: ScheduleCommand, state: Schedule): ScheduleDeleted[] => {
  visibleTo(state, command);
  return [
    {
      type: 'ScheduleDeleted',
      data: { scheduleId: state.id, deletedBy: command.actorId, deletedAt: command.now.toISOString() },
    },
  ];
};

/** Refuses unless the actor may see the schedule: what "run now" checks before it queues the task. */
export const assertRunnable = (actor: ScheduleActor, state: Schedule): void => visibleTo(state, actor);

export interface RunScheduleNow extends ScheduleCommand {
  /** The task already queued for this run (a fresh id: two requests are two runs). */
  taskId: string;
}

/** "Run now": records a run whose tick is the request's time; the next tick stays as it was, overlap is not asked. */
export const runScheduleNow = (command: RunScheduleNow, state: Schedule): ScheduleFired[] => {
  visibleTo(state, command);
  const now = command.now.toISOString();
  return [
    {
      type: 'ScheduleFired',
      data: {
        scheduleId: state.id,
        tick: now,
        taskId: command.taskId,
        manual: true,
        firedAt: now,
        nextFireAt: state.nextFireAt,
      },
    },
  ];
};

/** Which of the due ticks fire and which are skipped, and the next tick after now. */
export interface TickPlan {
  /** Oldest first. */
  fire: Date[];
  /** The span of due ticks that fire nothing, or null. */
  skipped: { first: Date; last: Date } | null;
  next: Date | null;
}

export interface TickRules {
  catchUp: CatchUpPolicy;
  /** A tick later than this is missed (no scheduler ran at its time); an earlier one is on time and always fires. */
  missedAfterMs: number;
  /** The most ticks one decision fires: `all` after long downtime fires the newest this many and skips the rest. */
  maxCatchUpTicks: number;
}

/**
 * The ticks due from `nextFireAt` to `now`: on-time ticks (late by at most `missedAfterMs`) always fire; missed ones
 * follow `catchUp`. Pure; croner enumerates only the newest `maxCatchUpTicks` ticks, so a schedule every second
 * that was down for a week costs no more than one down for a minute.
 */
export function planTicks(cron: CronSchedule, nextFireAt: Date, now: Date, rules: TickRules): TickPlan {
  const next = cron.next(now);
  if (nextFireAt.getTime() > now.getTime()) return { fire: [], skipped: null, next: nextFireAt };
  const due = cron
    .previousTicks(rules.maxCatchUpTicks, now)
    .filter((tick) => tick.getTime() >= nextFireAt.getTime())
    .reverse();
  // Due ticks older than the newest maxCatchUpTicks: never fired, whatever the policy.
  const older = due.length === 0 ? [] : cron.previousTicks(1, new Date(due[0]!.getTime() - 1));
  const truncated = older.length === 1 && older[0]!.getTime() >= nextFireAt.getTime() ? older[0]! : null;
  const missedBefore = now.getTime() - rules.missedAfterMs;
  const onTime = due.filter((tick) => tick.getTime() >= missedBefore);
  const missed = due.filter((tick) => tick.getTime() < missedBefore);
  let fire: Date[];
  let skippedLast: Date | null;
  switch (rules.catchUp) {
    case 'all':
      fire = due;
      skippedLast = truncated;
      break;
    case 'last':
      fire = [...missed.slice(-1), ...onTime];
      skippedLast = missed.length > 1 ? missed.at(-2)! : truncated;
      break;
    case 'none':
      fire = onTime;
      skippedLast = missed.at(-1) ?? truncated;
      break;
  }
  return { fire, skipped: skippedLast ? { first: nextFireAt, last: skippedLast } : null, next };
}

export interface FireDueTicks extends TickRules {
  now: Date;
  /**
   * Whether the task of the schedule's last firing is still pending or in progress, as its own stream (not a read
   * model) says; only asked with overlap "skip".
   */
  previousRunning: boolean;
  /**
   * Ticks this decision would not fire whose tasks are in the log already, each with its task's `queuedAt`: a
   * scheduler killed between a tick's two appends queued them, and a restarted one decides after downtime to skip
   * them (catch_up none or last, overlap skip). They are recorded as fired, when their tasks were queued, and left
   * out of the skipped ranges, so every scheduled task has its ScheduleFired. The scheduler looks them up among
   * `unfiredTicks`.
   */
  queued?: ReadonlyMap<string, string>;
}

/**
 * The ticks a decision skipped (its ScheduleTicksSkipped ranges), the earliest first and at most `limit` of each
 * range: where a scheduler killed between a tick's two appends can have left a task (the first due ticks, from the
 * stream's nextFireAt on).
 */
export function unfiredTicks(events: readonly ScheduleEvent[], state: Schedule, limit: number): string[] {
  if (!state.cron || !state.timezone) return [];
  const cron = parseCron(state.cron, state.timezone);
  return events.flatMap((event) => {
    if (event.type !== 'ScheduleTicksSkipped') return [];
    const first = new Date(event.data.firstTick);
    const last = Date.parse(event.data.lastTick);
    return [first, ...cron.nextTicks(Math.max(0, limit - 1), first)]
      .filter((tick) => tick.getTime() <= last)
      .map((tick) => tick.toISOString());
  });
}

/** `range` without the ticks of `taken` (sorted, inside it): the runs of ticks left, each as its first and last. */
function rangesWithout(
  cron: CronSchedule,
  range: { first: Date; last: Date },
  taken: readonly Date[],
): Array<{ first: Date; last: Date }> {
  const ranges: Array<{ first: Date; last: Date }> = [];
  let start: Date | null = range.first;
  for (const tick of taken) {
    if (start === null) break;
    if (tick.getTime() > start.getTime()) {
      const before = cron.previousTicks(1, new Date(tick.getTime() - 1))[0];
      if (before && before.getTime() >= start.getTime()) ranges.push({ first: start, last: before });
    }
    start = cron.next(tick);
  }
  if (start !== null && start.getTime() <= range.last.getTime())
    ranges.push({ first: start, last: range.last });
  return ranges;
}

/**
 * The scheduler's command: the ticks due by now fire (ScheduleFired, naming the deterministic task id the caller
 * queues first) or are skipped (ScheduleTicksSkipped), and the next tick moves past now. With overlap "skip", at
 * most the newest due tick fires, and none while the previous task runs. Nothing when nothing is due.
 */
export function fireDueTicks(command: FireDueTicks, state: Schedule): ScheduleEvent[] {
  if (!state.exists || state.status !== 'active' || state.nextFireAt === null) return [];
  const nextFireAt = new Date(state.nextFireAt);
  if (nextFireAt.getTime() > command.now.getTime()) return [];
  const cron = parseCron(state.cron, state.timezone);
  const plan = planTicks(cron, nextFireAt, command.now, command);
  const nextIso = iso(plan.next);
  const now = command.now.toISOString();
  const events: ScheduleEvent[] = [];
  const skip = (reason: 'missed' | 'overlap', first: Date, last: Date): ScheduleTicksSkipped => ({
    type: 'ScheduleTicksSkipped',
    data: {
      scheduleId: state.id!,
      reason,
      firstTick: first.toISOString(),
      lastTick: last.toISOString(),
      skippedAt: now,
      nextFireAt: nextIso,
    },
  });
  let fire = plan.fire;
  const skipped: Array<{ reason: 'missed' | 'overlap'; first: Date; last: Date }> = [];
  if (plan.skipped) skipped.push({ reason: 'missed', ...plan.skipped });
  if (state.overlap === 'skip' && fire.length > 0) {
    const overlapping = command.previousRunning ? fire : fire.slice(0, -1);
    if (overlapping.length > 0)
      skipped.push({ reason: 'overlap', first: overlapping[0]!, last: overlapping.at(-1)! });
    fire = command.previousRunning ? [] : fire.slice(-1);
  }
  // Ticks whose tasks a killed scheduler queued: recorded as fired when they were, and skipped by no range.
  const firing = new Set(fire.map((tick) => tick.getTime()));
  const queued = [...(command.queued ?? [])]
    .map(([tick, queuedAt]) => ({ tick: new Date(tick), queuedAt }))
    .filter(
      ({ tick }) =>
        !firing.has(tick.getTime()) && skipped.some((range) => tick >= range.first && tick <= range.last),
    )
    .sort((a, b) => a.tick.getTime() - b.tick.getTime());
  const fired = (tick: Date, firedAt: string): ScheduleFired => {
    const tickIso = tick.toISOString();
    return {
      type: 'ScheduleFired',
      data: {
        scheduleId: state.id!,
        tick: tickIso,
        taskId: scheduledTaskId(state.id!, tickIso),
        manual: false,
        firedAt,
        nextFireAt: nextIso,
      },
    };
  };
  for (const { tick, queuedAt } of queued) events.push(fired(tick, queuedAt));
  for (const range of skipped) {
    const inside = queued.map(({ tick }) => tick).filter((tick) => tick >= range.first && tick <= range.last);
    for (const { first, last } of rangesWithout(cron, range, inside))
      events.push(skip(range.reason, first, last));
  }
  for (const tick of fire) events.push(fired(tick, now));
  // Nothing fired nor skipped (an expression that stopped matching): still move the next tick on.
  if (events.length === 0) events.push(skip('missed', nextFireAt, nextFireAt));
  return events;
}

/**
 * After a firing lost the race at the schedule's revision: the ticks whose tasks this decision had queued that the
 * stream (now `state`, with these `recorded` task ids among its ScheduleFired) does not record, as ScheduleFired
 * events that leave the next tick as the stream has it. Usually another scheduler recorded the same ticks, and this is
 * empty; after a pause, an edit or a delete that came between the task's append and the firing's, it records that
 * the tick's task was queued, so every scheduled task has its ScheduleFired.
 */
export function recordQueuedTicks(
  queued: readonly ScheduleFired[],
  recorded: ReadonlySet<string>,
  state: Schedule,
  now: Date,
): ScheduleFired[] {
  if (!state.exists) return [];
  return queued
    .filter((event) => !recorded.has(event.data.taskId))
    .map((event) => ({
      type: 'ScheduleFired',
      data: { ...event.data, firedAt: now.toISOString(), nextFireAt: state.nextFireAt },
    }));
}
