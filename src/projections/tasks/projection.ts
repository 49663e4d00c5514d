import type { Projection } from '../projectionRunner.js';
import type { PoolClient } from '../../infra/db/pool.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import {
  TASK_EVENT_TYPES,
  taskStreamId,
  type TaskError,
  type TaskEvent,
  type TaskStatus,
} from '../../commands/tasks/events.js';
import { evolveTask, initialTask, type Task } from '../../commands/tasks/state.js';

export const taskCacheKey = (taskId: string): string => `task:${taskId}`;

/** A row of the `tasks` table as node-postgres returns it (timestamptz as Date, jsonb parsed, bigint as number). */
export interface TaskRow {
  id: string;
  owner_id: string;
  title: string;
  description: string | null;
  type: string;
  payload: JsonValue;
  priority: number;
  queue: string;
  status: TaskStatus;
  attempt: number;
  attempts_before: number;
  max_attempts: number;
  timeout_ms: number;
  run_at: Date | null;
  worker_id: string | null;
  lease_until: Date | null;
  progress: number | null;
  result: JsonValue | null;
  last_error: TaskError | null;
  created_at: Date;
  updated_at: Date;
  revision: number;
  last_position: string;
}

export const TASK_COLUMNS =
  'id, owner_id, title, description, type, payload, priority, queue, status, attempt, max_attempts, timeout_ms, ' +
  'run_at, worker_id, lease_until, progress, result, last_error, created_at, updated_at, revision, last_position, ' +
  'attempts_before';

const iso = (date: Date | null): string | null => (date === null ? null : date.toISOString());

/**
 * The domain state a row stands for. `spec.runAt` (the submitter's original "not before") is not kept: evolveTask
 * only reads it in TaskQueued, which starts from scratch, and the row's `run_at` is the state's current one.
 */
export function rowToTask(row: TaskRow): Task {
  return {
    exists: true,
    id: row.id,
    ownerId: row.owner_id,
    spec: {
      title: row.title,
      description: row.description,
      type: row.type,
      payload: row.payload,
      priority: row.priority,
      queue: row.queue,
      runAt: null,
      maxAttempts: row.max_attempts,
      timeoutMs: row.timeout_ms,
    },
    status: row.status,
    attempt: row.attempt,
    attemptsBefore: row.attempts_before,
    runAt: iso(row.run_at),
    workerId: row.worker_id,
    leaseUntil: iso(row.lease_until),
    progress: row.progress,
    result: row.result,
    lastError: row.last_error,
    createdAt: iso(row.created_at),
    updatedAt: iso(row.updated_at),
  };
}

// Passed as text: node-postgres would turn a JS array into a PostgreSQL array, not a JSON one. SQL NULL for null
// keeps `result IS NULL` meaningful.
const jsonb = (value: JsonValue | null | undefined): string | null =>
  value === null || value === undefined ? null : JSON.stringify(value);

async function upsertTask(client: PoolClient, task: Task, revision: number, position: string): Promise<void> {
  const spec = task.spec!;
  await client.query(
    `INSERT INTO tasks (${TASK_COLUMNS})
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)
     ON CONFLICT (id) DO UPDATE SET
       owner_id = excluded.owner_id, title = excluded.title, description = excluded.description,
       type = excluded.type, payload = excluded.payload, priority = excluded.priority, queue = excluded.queue,
       status = excluded.status, attempt = excluded.attempt, max_attempts = excluded.max_attempts,
       timeout_ms = excluded.timeout_ms, run_at = excluded.run_at, worker_id = excluded.worker_id,
       lease_until = excluded.lease_until, progress = excluded.progress, result = excluded.result,
       last_error = excluded.last_error, created_at = excluded.created_at, updated_at = excluded.updated_at,
       revision = excluded.revision, last_position = excluded.last_position, attempts_before = excluded.attempts_before`,
    [
      task.id,
      task.ownerId,
      spec.title,
      spec.description,
      spec.type,
      jsonb(spec.payload),
      spec.priority,
      spec.queue,
      task.status,
      task.attempt,
      spec.maxAttempts,
      spec.timeoutMs,
      task.runAt,
      task.workerId,
      task.leaseUntil,
      task.progress,
      jsonb(task.result),
      jsonb(task.lastError),
      task.createdAt,
      task.updatedAt,
      revision,
      position,
      task.attemptsBefore,
    ],
  );
}

/**
 * Row in, domain state out, the domain's own evolveTask, row back: the read model cannot disagree with what a
 * command sees when it folds the same stream.
 */
export const tasksProjection: Projection = {
  name: 'tasks',
  eventTypes: TASK_EVENT_TYPES,
  async apply(client, recorded) {
    const event = recorded as unknown as TaskEvent;
    const taskId = event.data.taskId;
    // TypeErrors count as bad data in applyOnce: logged and skipped, never a stuck pipeline.
    if (typeof taskId !== 'string' || recorded.streamId !== taskStreamId(taskId))
      throw new TypeError(`${recorded.type} in ${recorded.streamId} names task ${String(taskId)}`);

    const { rows } = await client.query<TaskRow>(
      `SELECT ${TASK_COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE`,
      [taskId],
    );
    const row = rows[0];
    // The runner's stream guard already skips duplicates; this also holds if that table and this one were
    // restored or rebuilt apart, so an old event never rolls a row back.
    if (row && row.revision >= recorded.revision) return [];
    if (!row && event.type !== 'TaskQueued')
      throw new TypeError(`${event.type} for task ${taskId}, whose TaskQueued was never applied`);

    const next = evolveTask(row ? rowToTask(row) : initialTask, event);
    await upsertTask(client, next, recorded.revision, recorded.position);
    return [taskCacheKey(taskId)];
  },
};
