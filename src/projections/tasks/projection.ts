import { checkColumn, defineProjection, type ColumnType } from '../readModel.js';
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
  archived_at: Date | null;
}

export const TASK_COLUMNS =
  'id, owner_id, title, description, type, payload, priority, queue, status, attempt, max_attempts, timeout_ms, ' +
  'run_at, worker_id, lease_until, progress, result, last_error, created_at, updated_at, revision, last_position, ' +
  'attempts_before, archived_at';

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
    archivedAt: iso(row.archived_at),
  };
}

interface TaskState {
  task: Task;
  revision: number;
  position: string;
}

/**
 * Each column with its SQL type, whether it may be null, and its value, so the bulk upsert below and the check
 * of a folded row cannot get out of step with each other.
 */
const TASK_WRITE_COLUMNS: ReadonlyArray<[string, ColumnType, boolean, (state: TaskState) => unknown]> = [
  ['id', 'uuid', false, (s) => s.task.id],
  ['owner_id', 'uuid', false, (s) => s.task.ownerId],
  ['title', 'text', false, (s) => s.task.spec!.title],
  ['description', 'text', true, (s) => s.task.spec!.description],
  ['type', 'text', false, (s) => s.task.spec!.type],
  ['payload', 'jsonb', true, (s) => s.task.spec!.payload],
  ['priority', 'integer', false, (s) => s.task.spec!.priority],
  ['queue', 'text', false, (s) => s.task.spec!.queue],
  ['status', 'text', false, (s) => s.task.status],
  ['attempt', 'integer', false, (s) => s.task.attempt],
  ['max_attempts', 'integer', false, (s) => s.task.spec!.maxAttempts],
  ['timeout_ms', 'integer', false, (s) => s.task.spec!.timeoutMs],
  ['run_at', 'timestamptz', true, (s) => s.task.runAt],
  ['worker_id', 'text', true, (s) => s.task.workerId],
  ['lease_until', 'timestamptz', true, (s) => s.task.leaseUntil],
  ['progress', 'double precision', true, (s) => s.task.progress],
  ['result', 'jsonb', true, (s) => s.task.result],
  ['last_error', 'jsonb', true, (s) => s.task.lastError],
  ['created_at', 'timestamptz', false, (s) => s.task.createdAt],
  ['updated_at', 'timestamptz', false, (s) => s.task.updatedAt],
  ['revision', 'bigint', false, (s) => s.revision],
  ['last_position', 'text', false, (s) => s.position],
  ['attempts_before', 'integer', false, (s) => s.task.attemptsBefore],
  ['archived_at', 'timestamptz', true, (s) => s.task.archivedAt],
];

/** Checks the columns an event changed (evolveTask keeps what it does not change), all of them for a new row. */
function checkTaskRow(next: TaskState, previous: TaskState | null): TaskState {
  if (!next.task.spec) throw new TypeError(`task ${next.task.id} has no spec`);
  for (const [column, type, nullable, value] of TASK_WRITE_COLUMNS) {
    const after = value(next);
    if (previous === null || after !== value(previous)) checkColumn(column, type, nullable, after);
  }
  return next;
}

const TASK_COLUMN_LIST = TASK_WRITE_COLUMNS.map(([column]) => column).join(', ');

// The rows go as one JSON array, which PostgreSQL parses into the table's row type: jsonb values nest as they are,
// and a JSON null is SQL NULL (so `result IS NULL` stays meaningful). One row per id: ON CONFLICT cannot update a
// row twice in one statement.
const UPSERT_TASKS = `INSERT INTO tasks (${TASK_COLUMN_LIST})
  SELECT ${TASK_COLUMN_LIST} FROM json_populate_recordset(NULL::tasks, $1::json)
  ON CONFLICT (id) DO UPDATE SET ${TASK_WRITE_COLUMNS.slice(1)
    .map(([column]) => `${column} = excluded.${column}`)
    .join(', ')}`;

async function upsertTasks(client: PoolClient, states: readonly TaskState[]): Promise<void> {
  const rows = states.map((state) =>
    Object.fromEntries(TASK_WRITE_COLUMNS.map(([column, , , value]) => [column, value(state) ?? null])),
  );
  await client.query(UPSERT_TASKS, [JSON.stringify(rows)]);
}

/**
 * Row in, domain state out, the domain's own evolveTask, row back: the read model cannot disagree with what a
 * command sees when it folds the same stream.
 */
export const tasksProjection = defineProjection<TaskState>({
  name: 'tasks',
  eventTypes: TASK_EVENT_TYPES,
  tables: [{ name: 'tasks', streamOf: `'task-' || r.id` }],
  keyOf(recorded) {
    const taskId = (recorded as unknown as TaskEvent).data.taskId;
    // TypeErrors count as bad data: logged and skipped, never a stuck pipeline.
    if (typeof taskId !== 'string' || recorded.streamId !== taskStreamId(taskId))
      throw new TypeError(`${recorded.type} in ${recorded.streamId} names task ${String(taskId)}`);
    return taskId;
  },
  async load(client, taskIds) {
    const { rows } = await client.query<TaskRow>(
      `SELECT ${TASK_COLUMNS} FROM tasks WHERE id = ANY ($1::uuid[]) FOR UPDATE`,
      [taskIds],
    );
    return new Map(
      rows.map((row) => [
        row.id,
        { task: rowToTask(row), revision: row.revision, position: row.last_position },
      ]),
    );
  },
  evolve(state, recorded) {
    const event = recorded as unknown as TaskEvent;
    // The runner's stream guard already skips duplicates; this also holds if that table and this one were
    // restored or rebuilt apart, so an old event never rolls a row back.
    if (state && state.revision >= recorded.revision) return state;
    if (!state && event.type !== 'TaskQueued')
      throw new TypeError(`${event.type} for task ${event.data.taskId}, whose TaskQueued was never applied`);
    return checkTaskRow(
      {
        task: evolveTask(state ? state.task : initialTask, event),
        revision: recorded.revision,
        position: recorded.position,
      },
      state,
    );
  },
  async write(client, changed) {
    // A task row is never deleted: evolve never returns null for it.
    const states = changed.flatMap(({ row }) => (row ? [row] : []));
    await upsertTasks(client, states);
    return changed.map(({ key }) => taskCacheKey(key));
  },
});
