import type { Decider } from '../decider.js';
import type { CatchUpPolicy, OverlapPolicy, ScheduleEvent, ScheduleStatus } from './events.js';
import type { TaskSpec } from '../tasks/events.js';

export interface Schedule {
  exists: boolean;
  id: string | null;
  ownerId: string | null;
  name: string;
  cron: string;
  timezone: string;
  task: TaskSpec | null;
  overlap: OverlapPolicy;
  catchUp: CatchUpPolicy;
  status: ScheduleStatus;
  /** The next tick to fire; null while paused or deleted, or when the expression never fires again. */
  nextFireAt: string | null;
  /** The tick of the last firing (manual runs included) and the task it queued. */
  lastTick: string | null;
  lastTaskId: string | null;
  firedCount: number;
  createdAt: string | null;
  updatedAt: string | null;
}

export const initialSchedule: Schedule = {
  exists: false,
  id: null,
  ownerId: null,
  name: '',
  cron: '',
  timezone: 'UTC',
  task: null,
  overlap: 'allow',
  catchUp: 'none',
  status: 'active',
  nextFireAt: null,
  lastTick: null,
  lastTaskId: null,
  firedCount: 0,
  createdAt: null,
  updatedAt: null,
};

export function evolveSchedule(state: Schedule, event: ScheduleEvent): Schedule {
  switch (event.type) {
    case 'ScheduleCreated': {
      const { scheduleId, ownerId, createdAt, nextFireAt, name, cron, timezone, task, overlap, catchUp } =
        event.data;
      return {
        ...initialSchedule,
        exists: true,
        id: scheduleId,
        ownerId,
        name,
        cron,
        timezone,
        task,
        overlap,
        catchUp,
        nextFireAt,
        createdAt,
        updatedAt: createdAt,
      };
    }
    case 'ScheduleUpdated':
      return {
        ...state,
        ...event.data.changes,
        nextFireAt: state.status === 'active' ? event.data.nextFireAt : null,
        updatedAt: event.data.updatedAt,
      };
    case 'SchedulePaused':
      return { ...state, status: 'paused', nextFireAt: null, updatedAt: event.data.pausedAt };
    case 'ScheduleResumed':
      return {
        ...state,
        status: 'active',
        nextFireAt: event.data.nextFireAt,
        updatedAt: event.data.resumedAt,
      };
    case 'ScheduleDeleted':
      return { ...state, status: 'deleted', nextFireAt: null, updatedAt: event.data.deletedAt };
    case 'ScheduleFired': {
      // A firing recorded late (recordQueuedTicks) may be older than the last one: the newest stays the last.
      const newest = state.lastTick === null || event.data.tick >= state.lastTick;
      return {
        ...state,
        nextFireAt: state.status === 'active' ? event.data.nextFireAt : state.nextFireAt,
        lastTick: newest ? event.data.tick : state.lastTick,
        lastTaskId: newest ? event.data.taskId : state.lastTaskId,
        firedCount: state.firedCount + 1,
        updatedAt: event.data.firedAt,
      };
    }
    case 'ScheduleTicksSkipped':
      return { ...state, nextFireAt: event.data.nextFireAt, updatedAt: event.data.skippedAt };
    default:
      return state;
  }
}

export const schedule: Decider<Schedule, ScheduleEvent> = {
  initialState: initialSchedule,
  evolve: evolveSchedule,
};
