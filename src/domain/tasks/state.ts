import type { Decider } from '../decider.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { TaskError, TaskEvent, TaskOrigin, TaskSpec, TaskStatus } from './events.js';

export interface Task {
  exists: boolean;
  id: string | null;
  ownerId: string | null;
  spec: TaskSpec | null;
  status: TaskStatus;
  /** The attempt now running, or the last one; never reused, even across retries (TaskRequeued). */
  attempt: number;
  /** Attempts made before the current round (before the last TaskRequeued): this round's are the rest. */
  attemptsBefore: number;
  /** When the task may next start (pending tasks only). */
  runAt: string | null;
  workerId: string | null;
  leaseUntil: string | null;
  progress: number | null;
  result: JsonValue | null;
  lastError: TaskError | null;
  createdAt: string | null;
  updatedAt: string | null;
  /** Set once the task is archived: hidden from lists, never changed again. */
  archivedAt: string | null;
  /** The schedule and tick that queued it; null for a submitted task. */
  origin: TaskOrigin | null;
}

export const initialTask: Task = {
  exists: false,
  id: null,
  ownerId: null,
  spec: null,
  status: 'pending',
  attempt: 0,
  attemptsBefore: 0,
  runAt: null,
  workerId: null,
  leaseUntil: null,
  progress: null,
  result: null,
  lastError: null,
  createdAt: null,
  updatedAt: null,
  archivedAt: null,
  origin: null,
};

const notRunning = { workerId: null, leaseUntil: null } as const;

export function evolveTask(state: Task, event: TaskEvent): Task {
  switch (event.type) {
    case 'TaskQueued':
      return {
        ...initialTask,
        exists: true,
        id: event.data.taskId,
        ownerId: event.data.ownerId,
        // Tasks queued before group keys and dependencies existed have no such fields.
        spec: {
          ...event.data.spec,
          groupKey: event.data.spec.groupKey ?? null,
          dependencies: event.data.spec.dependencies ?? null,
        },
        runAt: event.data.spec.runAt ?? event.data.queuedAt,
        createdAt: event.data.queuedAt,
        updatedAt: event.data.queuedAt,
        origin: event.data.origin ?? null,
      };
    case 'TaskUpdated':
      return { ...state, spec: { ...state.spec!, ...event.data.changes }, updatedAt: event.data.updatedAt };
    case 'TaskStarted':
      return {
        ...state,
        status: 'in_progress',
        attempt: event.data.attempt,
        workerId: event.data.workerId,
        leaseUntil: event.data.leaseUntil,
        progress: null,
        updatedAt: event.data.startedAt,
      };
    case 'TaskProgressed':
      return { ...state, progress: event.data.progress, updatedAt: event.data.progressedAt };
    case 'TaskSucceeded':
      return {
        ...state,
        ...notRunning,
        status: 'done',
        result: event.data.result,
        updatedAt: event.data.finishedAt,
      };
    case 'TaskAttemptFailed':
      return {
        ...state,
        ...notRunning,
        status: 'pending',
        runAt: event.data.nextRunAt,
        lastError: event.data.error,
        updatedAt: event.data.failedAt,
      };
    case 'TaskFailed':
      return {
        ...state,
        ...notRunning,
        status: 'failed',
        lastError: event.data.error,
        updatedAt: event.data.failedAt,
      };
    case 'TaskCanceled':
      return { ...state, ...notRunning, status: 'canceled', updatedAt: event.data.canceledAt };
    case 'TaskRequeued':
      return {
        ...state,
        ...notRunning,
        status: 'pending',
        attemptsBefore: state.attempt,
        runAt: event.data.requeuedAt,
        result: null,
        progress: null,
        updatedAt: event.data.requeuedAt,
      };
    case 'TaskReleased':
      return {
        ...state,
        ...notRunning,
        status: 'pending',
        attempt: event.data.attempt - 1,
        runAt: event.data.releasedAt,
        updatedAt: event.data.releasedAt,
      };
    case 'TaskArchived':
      return { ...state, archivedAt: event.data.archivedAt, updatedAt: event.data.archivedAt };
    default:
      return state;
  }
}

export const task: Decider<Task, TaskEvent> = { initialState: initialTask, evolve: evolveTask };

export const isFinished = (status: TaskStatus): boolean =>
  status === 'done' || status === 'failed' || status === 'canceled';
