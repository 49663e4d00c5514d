/**
 * src/domain/tasks: the task aggregate: its events (this file), state and evolve (state.ts), the pure deciders
 * (submitTask, ownerCommands, workerCommands, workerControl, idempotency), the catalogue of task types
 * (taskTypes.ts) and the task as the API shows it (representation.ts).
 */
import type { DomainEvent } from '../decider.js';
import type { JsonObject, JsonValue } from '../../infra/eventStore/eventStore.js';

/** Stream `task-<taskId>`: one task's whole life. */
export const taskStreamId = (taskId: string): string => `task-${taskId}`;
export const TASK_STREAM_PREFIX = 'task-';

export type TaskStatus = 'pending' | 'in_progress' | 'done' | 'failed' | 'canceled';

/** What the submitter chose; `priority` is 0 (lowest) to 10 (highest). */
export interface TaskSpec extends JsonObject {
  title: string;
  description: string | null;
  type: string;
  payload: JsonValue;
  priority: number;
  queue: string;
  /** Not before this time; null = as soon as a worker is free. */
  runAt: string | null;
  maxAttempts: number;
  timeoutMs: number;
  /**
   * Who the task is for (a tenant, a customer): a queue's group_concurrency caps how many of one key run at once,
   * and its claims go round robin between keys. Null when none was given; tasks queued before keys existed have
   * no such field, which evolve reads as null.
   */
  groupKey: string | null;
  /**
   * Tasks of the same owner, existing at submit time, that must be done before this one starts; null when none
   * (and on tasks older than dependencies, which evolve reads as null).
   */
  dependencies: TaskDependencies | null;
}

/**
 * `onFailure: 'fail'`: a dependency that ends failed or canceled fails this task, with a reason naming it;
 * `'ignore'`: this task waits only for its dependencies to finish, however they end. (A type alias, so that it is
 * assignable to JsonObject.)
 */
export type TaskDependencies = {
  taskIds: string[];
  onFailure: 'fail' | 'ignore';
};

export interface TaskError extends JsonObject {
  message: string;
  /**
   * `error`: the handler threw; `timeout`: timeout_ms passed; `lease_expired`: its worker vanished; `dependency`:
   * a task it depends on ended failed or canceled.
   */
  kind: 'error' | 'timeout' | 'lease_expired' | 'unrecoverable' | 'dependency';
}

/** Where a task came from when a schedule queued it: the schedule and the tick (for "run now", the request's time). */
export interface TaskOrigin extends JsonObject {
  scheduleId: string;
  tick: string;
}

/** `origin` is only present on tasks a schedule queued; older events and submitted tasks have none. */
export type TaskQueued = DomainEvent<
  'TaskQueued',
  {
    taskId: string;
    ownerId: string;
    spec: TaskSpec;
    queuedAt: string;
    idempotencyKey: string | null;
    origin?: TaskOrigin;
  }
>;
export type TaskUpdated = DomainEvent<
  'TaskUpdated',
  {
    taskId: string;
    changes: { title?: string; description?: string | null; priority?: number };
    updatedAt: string;
  }
>;
/** The claim: appended with the expected revision, so two workers never run one attempt. */
export type TaskStarted = DomainEvent<
  'TaskStarted',
  { taskId: string; attempt: number; workerId: string; leaseUntil: string; startedAt: string }
>;
export type TaskProgressed = DomainEvent<
  'TaskProgressed',
  { taskId: string; attempt: number; progress: number; message: string | null; progressedAt: string }
>;
export type TaskSucceeded = DomainEvent<
  'TaskSucceeded',
  { taskId: string; attempt: number; result: JsonValue; resultTruncated: boolean; finishedAt: string }
>;
export type TaskAttemptFailed = DomainEvent<
  'TaskAttemptFailed',
  { taskId: string; attempt: number; error: TaskError; nextRunAt: string; failedAt: string }
>;
/** Attempts used up, or an unrecoverable error: the dead-letter state. */
export type TaskFailed = DomainEvent<
  'TaskFailed',
  { taskId: string; attempt: number; error: TaskError; failedAt: string }
>;
export type TaskCanceled = DomainEvent<
  'TaskCanceled',
  { taskId: string; canceledBy: string; wasRunning: boolean; canceledAt: string }
>;
/** A failed or canceled task queued again, with fresh attempts. */
export type TaskRequeued = DomainEvent<
  'TaskRequeued',
  { taskId: string; requeuedBy: string; requeuedAt: string }
>;
/**
 * A finished task hidden from lists ("gone from my list", the Go service's DELETE). Its stream stays, so auditors
 * and time travel still see its whole history.
 */
export type TaskArchived = DomainEvent<
  'TaskArchived',
  { taskId: string; archivedBy: string; archivedAt: string }
>;
/** Handed back by a stopping worker before it finished: the attempt does not count. */
export type TaskReleased = DomainEvent<
  'TaskReleased',
  { taskId: string; attempt: number; workerId: string; reason: string; releasedAt: string }
>;

export type TaskEvent =
  | TaskQueued
  | TaskUpdated
  | TaskStarted
  | TaskProgressed
  | TaskSucceeded
  | TaskAttemptFailed
  | TaskFailed
  | TaskCanceled
  | TaskRequeued
  | TaskReleased
  | TaskArchived;

export const TASK_EVENT_TYPES: ReadonlySet<TaskEvent['type']> = new Set([
  'TaskQueued',
  'TaskUpdated',
  'TaskStarted',
  'TaskProgressed',
  'TaskSucceeded',
  'TaskAttemptFailed',
  'TaskFailed',
  'TaskCanceled',
  'TaskRequeued',
  'TaskReleased',
  'TaskArchived',
]);
