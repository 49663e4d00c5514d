/**
 * src/projections/tasks: the tasks read model: its projection (this file, the table's only writer) and the
 * module that owns the table (table.ts: columns, row, mapping, cache key, reads).
 */
import { checkColumn, defineProjection, type ColumnType, type StatementSink } from '../readModel.js';
import { TASK_EVENT_TYPES, taskStreamId, type TaskEvent } from '../../domain/tasks/events.js';
import { evolveTask, initialTask, type Task } from '../../domain/tasks/state.js';
import { rowToTask, TASK_COLUMNS, taskCacheKey, type TaskRow } from './table.js';

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
  ['group_key', 'text', true, (s) => s.task.spec!.groupKey],
  ['schedule_id', 'uuid', true, (s) => s.task.origin?.scheduleId ?? null],
  ['schedule_tick', 'timestamptz', true, (s) => s.task.origin?.tick ?? null],
  // In the table's order (migrations 0016, 0017, 0018), which a rebuilt table's shape is compared by.
  ['dependencies', 'jsonb', true, (s) => s.task.spec!.dependencies],
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

async function upsertTasks(client: StatementSink, states: readonly TaskState[]): Promise<void> {
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
  rowPerStream: true, // keyOf checks the event's stream is its row's
  keyOf(recorded) {
    const taskId = (recorded as unknown as TaskEvent).data.taskId;
    // TypeErrors count as bad data: logged and skipped, never a stuck pipeline.
    if (typeof taskId !== 'string' || recorded.streamId !== taskStreamId(taskId))
      throw new TypeError(`${recorded.type} in ${recorded.streamId} names task ${String(taskId)}`);
    return taskId;
  },
  async load(client, taskIds, lock) {
    const { rows } = await client.query<TaskRow>(
      `SELECT ${TASK_COLUMNS} FROM tasks WHERE id = ANY ($1::uuid[])${lock ? ' FOR UPDATE' : ''}`,
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
  },
  cacheKeyOf: taskCacheKey,
});
