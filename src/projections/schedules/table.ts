/**
 * The `schedules` table, the schedules read model: its row as node-postgres returns it, the columns read, the mapping
 * back to the domain state, and the reads (the API's lists and the scheduler's look for due schedules). The
 * projection beside it is its only writer.
 */
import type { Pool } from '../../infra/db/pool.js';
import type { CatchUpPolicy, OverlapPolicy, ScheduleStatus } from '../../domain/schedules/events.js';
import type { Schedule } from '../../domain/schedules/state.js';
import type { TaskSpec } from '../../domain/tasks/events.js';

/** A row of the `schedules` table as node-postgres returns it (timestamptz as Date, jsonb parsed). */
export interface ScheduleRow {
  id: string;
  owner_id: string;
  name: string;
  cron: string;
  timezone: string;
  task: TaskSpec;
  overlap: OverlapPolicy;
  catch_up: CatchUpPolicy;
  status: ScheduleStatus;
  next_fire_at: Date | null;
  last_tick: Date | null;
  last_task_id: string | null;
  fired_count: number;
  created_at: Date;
  updated_at: Date;
  revision: number;
  last_position: string;
}

export const SCHEDULE_COLUMNS =
  'id, owner_id, name, cron, timezone, task, overlap, catch_up, status, next_fire_at, last_tick, last_task_id, ' +
  'fired_count, created_at, updated_at, revision, last_position';

const iso = (date: Date | null): string | null => (date === null ? null : date.toISOString());

/** The domain state a row stands for. */
export function rowToSchedule(row: ScheduleRow): Schedule {
  return {
    exists: true,
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    cron: row.cron,
    timezone: row.timezone,
    task: row.task,
    overlap: row.overlap,
    catchUp: row.catch_up,
    status: row.status,
    nextFireAt: iso(row.next_fire_at),
    lastTick: iso(row.last_tick),
    lastTaskId: row.last_task_id,
    firedCount: row.fired_count,
    createdAt: iso(row.created_at),
    updatedAt: iso(row.updated_at),
  };
}

/** One schedule's row (deleted ones included), or null when there is none. */
export async function selectScheduleRow(pool: Pool, id: string): Promise<ScheduleRow | null> {
  const { rows } = await pool.query<ScheduleRow>(`SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE id = $1`, [
    id,
  ]);
  return rows[0] ?? null;
}

/** Schedules not deleted, newest first, after the (created_at, id) of the previous page; null owner = everyone's. */
export async function selectListedScheduleRows(
  pool: Pool,
  filter: { ownerId: string | null; after: { createdAt: string; id: string } | null },
  limit: number,
): Promise<ScheduleRow[]> {
  const where = [`status <> 'deleted'`];
  const values: unknown[] = [];
  if (filter.ownerId !== null) {
    values.push(filter.ownerId);
    where.push(`owner_id = $${values.length}`);
  }
  if (filter.after) {
    values.push(filter.after.createdAt, filter.after.id);
    where.push(`(created_at, id) < ($${values.length - 1}::timestamptz, $${values.length}::uuid)`);
  }
  values.push(limit);
  const { rows } = await pool.query<ScheduleRow>(
    `SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE ${where.join(' AND ')}
     ORDER BY created_at DESC, id DESC LIMIT $${values.length}`,
    values,
  );
  return rows;
}

/**
 * Active schedules whose next tick is due by `now`, the most overdue first: candidates only, since the row may lag
 * the log; the scheduler decides from the schedule's stream.
 */
export async function selectDueScheduleRows(
  pool: Pool,
  now: Date,
  limit: number,
): Promise<Array<Pick<ScheduleRow, 'id' | 'revision'>>> {
  const { rows } = await pool.query<Pick<ScheduleRow, 'id' | 'revision'>>(
    `SELECT id, revision FROM schedules WHERE status = 'active' AND next_fire_at <= $1
      ORDER BY next_fire_at LIMIT $2`,
    [now, limit],
  );
  return rows;
}
