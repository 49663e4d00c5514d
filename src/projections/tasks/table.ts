/**
 * The `tasks` table, the tasks read model: its row as node-postgres returns it, the columns read, the mapping
 * back to the domain state, the cache key of a row, and the reads (the API's, and the worker's on EventStoreDB:
 * what is due, when the next falls due, which leases expired). The projection beside it is its only writer.
 */
import type { Pool } from '../../infra/db/pool.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import { prepared } from '../../infra/db/prepared.js';
import type { TaskDependencies, TaskError, TaskStatus } from '../../domain/tasks/events.js';
import type { Task } from '../../domain/tasks/state.js';

/** The cache key of one task's row; the projection drops it whenever it writes the row. */
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
  group_key: string | null;
  dependencies: TaskDependencies | null;
  schedule_id: string | null;
  schedule_tick: Date | null;
}

export const TASK_COLUMNS =
  'id, owner_id, title, description, type, payload, priority, queue, status, attempt, max_attempts, timeout_ms, ' +
  'run_at, worker_id, lease_until, progress, result, last_error, created_at, updated_at, revision, last_position, ' +
  'attempts_before, archived_at, group_key, schedule_id, schedule_tick, dependencies';

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
      groupKey: row.group_key,
      dependencies: row.dependencies,
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
    origin: row.schedule_id === null ? null : { scheduleId: row.schedule_id, tick: iso(row.schedule_tick)! },
  };
}

/** One task's row, or null when there is none. */
export async function selectTaskRow(pool: Pool, id: string): Promise<TaskRow | null> {
  const { rows } = await pool.query<TaskRow>(
    prepared(`SELECT ${TASK_COLUMNS} FROM tasks WHERE id = $1`, [id]),
  );
  return rows[0] ?? null;
}

/** What a list of tasks may be narrowed by; `after` is the (created_at, id) of the previous page's last row. */
export interface ListedTaskFilter {
  /** null = every owner's tasks. */
  ownerId: string | null;
  status?: TaskStatus;
  type?: string;
  queue?: string;
  groupKey?: string;
  /** Queued by this schedule (index tasks_by_schedule, migration 0017). */
  scheduleId?: string;
  /** Submitted at or after / before these instants (RFC 3339). */
  createdAfter?: string;
  createdBefore?: string;
  /** Lower-case letters and digits only (see `titleWords`): each must begin a word of the title (migration 0013). */
  titleWords?: string[];
  after?: { createdAt: string; id: string } | null;
}

// created_at is kept to the microsecond: a cursor rounded to JavaScript's milliseconds could skip or repeat rows.
const CURSOR_CREATED_AT = `to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_created_at`;

/** The expression of the GIN index tasks_title_words (migration 0013), word for word, or PostgreSQL would not use it. */
export const titleMatches = (placeholder: string): string =>
  `to_tsvector('simple', title) @@ to_tsquery('simple', ${placeholder})`;

/** Every word, as a prefix: `rep q3` finds "Quarterly report Q3". */
export const titleQuery = (words: readonly string[]): string => words.map((word) => `${word}:*`).join(' & ');

/** Listed (not archived) tasks matching the filter, newest first, at most `limit` rows, each with its cursor time. */
export async function selectListedTaskRows(
  pool: Pool,
  filter: ListedTaskFilter,
  limit: number,
): Promise<Array<TaskRow & { cursor_created_at: string }>> {
  const where: string[] = ['archived_at IS NULL'];
  const values: unknown[] = [];
  const add = (condition: (placeholder: string) => string, value: unknown) => {
    values.push(value);
    where.push(condition(`$${values.length}`));
  };
  if (filter.ownerId !== null) add((p) => `owner_id = ${p}`, filter.ownerId);
  if (filter.status !== undefined) add((p) => `status = ${p}`, filter.status);
  if (filter.type !== undefined) add((p) => `type = ${p}`, filter.type);
  if (filter.queue !== undefined) add((p) => `queue = ${p}`, filter.queue);
  if (filter.groupKey !== undefined) add((p) => `group_key = ${p}`, filter.groupKey);
  if (filter.scheduleId !== undefined) add((p) => `schedule_id = ${p}`, filter.scheduleId);
  if (filter.createdAfter !== undefined) add((p) => `created_at >= ${p}::timestamptz`, filter.createdAfter);
  if (filter.createdBefore !== undefined) add((p) => `created_at < ${p}::timestamptz`, filter.createdBefore);
  if (filter.titleWords !== undefined) add(titleMatches, titleQuery(filter.titleWords));
  if (filter.after) {
    values.push(filter.after.createdAt, filter.after.id);
    // A row-value comparison, so PostgreSQL can start the index scan right after the cursor.
    where.push(`(created_at, id) < ($${values.length - 1}::timestamptz, $${values.length}::uuid)`);
  }
  values.push(limit);
  const { rows } = await pool.query<TaskRow & { cursor_created_at: string }>(
    `SELECT ${TASK_COLUMNS}, ${CURSOR_CREATED_AT} FROM tasks WHERE ${where.join(' AND ')}
     ORDER BY created_at DESC, id DESC LIMIT $${values.length}`,
    values,
  );
  return rows;
}

/** What the worker's claim on EventStoreDB may take: due pending tasks outside these queues and ids. */
export interface DueTaskFilter {
  now: Date;
  /** Queues this worker has no room left in. */
  fullQueues: readonly string[];
  /** Tasks this worker already runs. */
  runningIds: readonly string[];
  /** Serve only these queues (empty = all). */
  onlyQueues: readonly string[];
  limit: number;
}

/**
 * The indexes the worker's claims and lease reaper read on EventStoreDB, where they work from this read model. On
 * PostgreSQL the workers read the schedule instead, and these indexes would keep every update of a task row from
 * being heap-only (migrations/0020), so only the EventStoreDB path creates them, when it starts.
 */
export async function ensureReadModelClaimIndexes(pool: Pool): Promise<void> {
  await pool.query(
    `CREATE INDEX IF NOT EXISTS tasks_dispatch ON tasks (queue, priority DESC, run_at, created_at) WHERE status = 'pending'`,
  );
  await pool.query(
    `CREATE INDEX IF NOT EXISTS tasks_lease_expiry ON tasks (lease_until) WHERE status = 'in_progress'`,
  );
}

/**
 * Pending tasks due by `now` (the worker's claim on EventStoreDB), highest priority first, then the earliest due:
 * candidates only, as the row may lag the log; the claim's append at the row's revision decides.
 */
export async function selectDueTaskRows(
  pool: Pool,
  filter: DueTaskFilter,
): Promise<Array<Pick<TaskRow, 'id' | 'queue'>>> {
  const { rows } = await pool.query<Pick<TaskRow, 'id' | 'queue'>>(
    `SELECT id, queue FROM tasks
      WHERE status = 'pending' AND run_at <= $1 AND NOT (queue = ANY($2::text[])) AND NOT (id = ANY($3::uuid[]))
        AND (cardinality($5::text[]) = 0 OR queue = ANY($5::text[]))
      ORDER BY priority DESC, run_at, created_at
      LIMIT $4`,
    [filter.now, filter.fullQueues, filter.runningIds, filter.limit, filter.onlyQueues],
  );
  return rows;
}

/** Milliseconds until the next pending task of these queues (empty = all) falls due, or null when none waits. */
export async function msUntilNextDueTask(
  pool: Pool,
  now: Date,
  onlyQueues: readonly string[],
): Promise<number | null> {
  const { rows } = await pool.query<{ run_at: Date | null }>(
    `SELECT min(run_at) AS run_at FROM tasks WHERE status = 'pending' AND run_at > $1
        AND (cardinality($2::text[]) = 0 OR queue = ANY($2::text[]))`,
    [now, onlyQueues],
  );
  const runAt = rows[0]?.run_at;
  return runAt ? runAt.getTime() - now.getTime() : null;
}

/** Tasks in progress whose lease ended before `now` (the lease reaper on EventStoreDB), at most 100. */
export async function selectExpiredLeaseTaskIds(pool: Pool, now: Date): Promise<string[]> {
  const { rows } = await pool.query<{ id: string }>(
    `SELECT id FROM tasks WHERE status = 'in_progress' AND lease_until < $1 LIMIT 100`,
    [now],
  );
  return rows.map((row) => row.id);
}

/** Tasks counted by queue and status (archived ones included: they are still the queue's history), one queue or all. */
export async function countTasksByQueue(
  pool: Pool,
  queue?: string,
): Promise<Map<string, Partial<Record<TaskStatus, number>>>> {
  const { rows } = await pool.query<{ queue: string; status: TaskStatus; count: string }>(
    `SELECT queue, status, count(*)::text AS count FROM tasks
      WHERE $1::text IS NULL OR queue = $1 GROUP BY queue, status`,
    [queue ?? null],
  );
  const counts = new Map<string, Partial<Record<TaskStatus, number>>>();
  for (const row of rows) {
    const byStatus = counts.get(row.queue) ?? {};
    byStatus[row.status] = Number(row.count);
    counts.set(row.queue, byStatus);
  }
  return counts;
}

/** The status of each of these tasks that has a row (for `waiting_for`: the dependencies a task still waits for). */
export async function selectTaskStatuses(
  pool: Pool,
  ids: readonly string[],
): Promise<Map<string, TaskStatus>> {
  if (ids.length === 0) return new Map();
  const { rows } = await pool.query<{ id: string; status: TaskStatus }>(
    'SELECT id, status FROM tasks WHERE id = ANY($1::uuid[])',
    [ids],
  );
  return new Map(rows.map((row) => [row.id, row.status]));
}
