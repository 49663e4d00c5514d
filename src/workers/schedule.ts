import type { Pool, PoolClient } from '../infra/db/pool.js';
import { encodePosition, type EventContext, type Position } from '../infra/eventStore/eventStore.js';
import { eventRows, type BatchedAppend } from '../infra/eventStore/postgres/groupCommit.js';
import { IllegalStateError } from '../errors.js';
import { foldEvents } from '../commands/commandHandler.js';
import { TASK_STREAM_PREFIX, taskStreamId, type TaskEvent } from '../commands/tasks/events.js';
import { task, type Task } from '../commands/tasks/state.js';
import { startTask } from '../commands/tasks/workerCommands.js';

/**
 * The `task_schedule` table (migrations/0010): an inline projection of the task streams, written by a trigger in
 * the transaction of every append to them, so a claim never reads a row that lags the log. This module owns every
 * statement on it. PostgreSQL event store only: with EventStoreDB the worker claims from the tasks read model.
 */

export type ScheduleStatus = 'pending' | 'running' | 'failed' | 'canceled';

export interface ScheduleRow {
  taskId: string;
  queue: string;
  priority: number;
  status: ScheduleStatus;
  runAt: string;
  attempt: number;
  workerId: string | null;
  leaseUntil: string | null;
  createdAt: string;
}

/** What the trigger keeps for a task in this state, or null when the task has left the schedule. */
export function scheduleRowOf(state: Task): ScheduleRow | null {
  if (!state.exists || state.archivedAt || state.status === 'done') return null;
  const running = state.status === 'in_progress';
  return {
    taskId: state.id!,
    queue: state.spec!.queue,
    priority: state.spec!.priority,
    status: running ? 'running' : (state.status as 'pending' | 'failed' | 'canceled'),
    runAt: new Date(state.runAt!).toISOString(),
    attempt: state.attempt,
    workerId: running ? state.workerId : null,
    leaseUntil: running && state.leaseUntil ? new Date(state.leaseUntil).toISOString() : null,
    createdAt: new Date(state.createdAt!).toISOString(),
  };
}

/** A task this worker now runs: its state after TaskStarted, and the stream head that event made. */
export interface ClaimedTask {
  state: Task;
  revision: number;
  hash: string;
  position: Position;
}

export interface ClaimRequest {
  /** How many to claim at most: the worker's free slots. */
  limit: number;
  now: Date;
  /** Room left per queue in this worker; a queue not listed has `defaultRoom`. */
  roomByQueue: ReadonlyMap<string, number>;
  defaultRoom: number;
  /** Serve only these queues (empty = all). */
  onlyQueues: readonly string[];
  workerId: string;
  leaseMs: (state: Task) => number;
  metadata: EventContext;
  newId: () => string;
}

interface StreamEventRow {
  stream_id: string;
  revision: string;
  type: string;
  data: string;
  hash: string;
}

/**
 * The claim, in one transaction: the most urgent due tasks this worker has room for (highest priority, then the
 * earliest due), locked with SKIP LOCKED so concurrent workers take disjoint rows; their streams read and folded;
 * a TaskStarted appended for each at the revision read. A stream another writer extended meanwhile (a cancel)
 * keeps its row: ON CONFLICT skips that one claim alone.
 */
export async function claimDueTasks(pool: Pool, request: ClaimRequest): Promise<ClaimedTask[]> {
  const fullQueues = [...request.roomByQueue].filter(([, room]) => room <= 0).map(([queue]) => queue);
  if (request.limit <= 0) return [];
  const client = await pool.connect();
  let broken = false;
  try {
    // The events lock before anything else: FOR UPDATE gives this transaction an id, and log readers pass over a
    // running transaction that does not hold this lock (see migrations/0011_log_safe_horizon.sql).
    await client.query('BEGIN; LOCK TABLE events IN ROW EXCLUSIVE MODE');
    const { rows: due } = await client.query<{ task_id: string; queue: string }>(
      `SELECT task_id, queue FROM task_schedule
        WHERE status = 'pending' AND run_at <= $1 AND NOT (queue = ANY($2::text[]))
          AND (cardinality($3::text[]) = 0 OR queue = ANY($3::text[]))
        ORDER BY priority DESC, run_at, created_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED`,
      [request.now, fullQueues, request.onlyQueues, request.limit],
    );
    const room = new Map(request.roomByQueue);
    const chosen = due.filter((row) => {
      const left = room.get(row.queue) ?? request.defaultRoom;
      room.set(row.queue, left - 1);
      return left > 0;
    });
    if (chosen.length === 0) {
      await client.query('COMMIT');
      return [];
    }
    const states = await readTaskStreams(
      client,
      chosen.map((row) => row.task_id),
    );
    const appends: Array<BatchedAppend & { after: Task }> = [];
    for (const { state, revision, hash } of states) {
      let started: TaskEvent[];
      try {
        started = startTask(
          { workerId: request.workerId, leaseMs: request.leaseMs(state), now: request.now },
          state,
        );
      } catch (error) {
        if (error instanceof IllegalStateError) continue; // the row and the stream disagree: verify reports it
        throw error;
      }
      appends.push({
        streamId: taskStreamId(state.id!),
        events: started.map((event) => ({
          eventId: request.newId(),
          type: event.type,
          data: event.data,
          metadata: request.metadata,
        })),
        expectedHead: revision,
        previousHash: hash,
        after: started.reduce(task.evolve, state),
      });
    }
    const columns = eventRows(appends);
    const { rows: inserted } = await client.query<{
      stream_id: string;
      revision: string;
      transaction_id: string;
      sequence: string;
      hash: string;
    }>(
      `INSERT INTO events (stream_id, revision, event_id, type, data, metadata)
       SELECT stream_id, revision, event_id, type, data, metadata::jsonb
         FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[])
              AS r(stream_id, revision, event_id, type, data, metadata)
       ON CONFLICT DO NOTHING
       RETURNING stream_id, revision::text, transaction_id::text, sequence::text, metadata->>'hash' AS hash`,
      [columns.streamIds, columns.revisions, columns.eventIds, columns.types, columns.data, columns.metadata],
    );
    await client.query('COMMIT');
    const byStream = new Map(appends.map((append) => [append.streamId, append]));
    return inserted.map((row) => ({
      state: byStream.get(row.stream_id)!.after,
      revision: Number(row.revision),
      hash: row.hash,
      position: encodePosition(BigInt(row.transaction_id), BigInt(row.sequence)),
    }));
  } catch (error) {
    await client.query('ROLLBACK').catch(() => (broken = true));
    throw error;
  } finally {
    client.release(broken);
  }
}

/** Many task streams in one query, each folded: the state, its head revision and the head's chain hash. */
async function readTaskStreams(
  client: PoolClient,
  taskIds: readonly string[],
): Promise<Array<{ state: Task; revision: number; hash: string }>> {
  const { rows } = await client.query<StreamEventRow>(
    `SELECT stream_id, revision::text, type, data, metadata->>'hash' AS hash FROM events
      WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, revision`,
    [taskIds.map(taskStreamId)],
  );
  const byStream = new Map<string, StreamEventRow[]>();
  for (const row of rows) {
    const list = byStream.get(row.stream_id) ?? [];
    list.push(row);
    byStream.set(row.stream_id, list);
  }
  return [...byStream.values()].map((events) => ({
    state: foldEvents(
      task,
      events.map((event) => ({ type: event.type, data: JSON.parse(event.data) })),
    ),
    revision: Number(events.at(-1)!.revision),
    hash: events.at(-1)!.hash,
  }));
}

/** Milliseconds until the next pending task of these queues falls due, or null when none waits. */
export async function msUntilNextDue(
  pool: Pool,
  now: Date,
  onlyQueues: readonly string[],
): Promise<number | null> {
  const { rows } = await pool.query<{ run_at: Date | null }>(
    `SELECT min(run_at) AS run_at FROM task_schedule WHERE status = 'pending' AND run_at > $1
       AND (cardinality($2::text[]) = 0 OR queue = ANY($2::text[]))`,
    [now, onlyQueues],
  );
  const runAt = rows[0]?.run_at;
  return runAt ? runAt.getTime() - now.getTime() : null;
}

/** Running attempts whose lease has ended: their worker stopped (killed, or lost its host). */
export async function expiredLeases(pool: Pool, now: Date, limit = 100): Promise<string[]> {
  const { rows } = await pool.query<{ task_id: string }>(
    `SELECT task_id FROM task_schedule WHERE status = 'running' AND lease_until < $1 LIMIT $2`,
    [now, limit],
  );
  return rows.map((row) => row.task_id);
}

/**
 * Of the attempts this worker runs, those the log no longer gives it (canceled, reaped, failed by someone
 * else): one query for all of them, however many run.
 */
export async function attemptsNoLongerOurs(
  pool: Pool,
  workerId: string,
  attempts: ReadonlyArray<{ taskId: string; attempt: number }>,
): Promise<string[]> {
  if (attempts.length === 0) return [];
  const { rows } = await pool.query<{ task_id: string }>(
    `SELECT r.task_id FROM unnest($1::uuid[], $2::int[]) AS r(task_id, attempt)
      WHERE NOT EXISTS (SELECT 1 FROM task_schedule s
                         WHERE s.task_id = r.task_id AND s.status = 'running' AND s.attempt = r.attempt
                           AND s.worker_id = $3)`,
    [attempts.map((a) => a.taskId), attempts.map((a) => a.attempt), workerId],
  );
  return rows.map((row) => row.task_id);
}

export interface ScheduleDifference {
  taskId: string;
  expected: ScheduleRow | null;
  actual: ScheduleRow | null;
}

/**
 * Compares the table with a fold of every task stream in the log (the TypeScript evolve, not the trigger's SQL):
 * the differences, [] when they agree. Reads in one snapshot so concurrent appends cannot make them disagree.
 */
export async function verifySchedule(pool: Pool): Promise<ScheduleDifference[]> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const expected = new Map<string, ScheduleRow>();
    let currentStream: string | null = null;
    let state: Task = task.initialState;
    const keep = (folded: Task) => {
      const row = scheduleRowOf(folded);
      if (row) expected.set(row.taskId, row);
    };
    // Streams in order, folded one at a time, so only one stream's state is held.
    const { rows } = await client.query<{ stream_id: string; type: string; data: string }>(
      `SELECT stream_id, type, data FROM events WHERE stream_id LIKE $1 ORDER BY stream_id, revision`,
      [`${TASK_STREAM_PREFIX}%`],
    );
    for (const row of rows) {
      if (currentStream !== row.stream_id) {
        if (currentStream !== null) keep(state);
        currentStream = row.stream_id;
        state = task.initialState;
      }
      state = task.evolve(state, { type: row.type, data: JSON.parse(row.data) } as TaskEvent);
    }
    if (currentStream !== null) keep(state);
    const { rows: actualRows } = await client.query<{
      task_id: string;
      queue: string;
      priority: number;
      status: ScheduleStatus;
      run_at: Date;
      attempt: number;
      worker_id: string | null;
      lease_until: Date | null;
      created_at: Date;
    }>('SELECT * FROM task_schedule');
    await client.query('COMMIT');
    const differences: ScheduleDifference[] = [];
    const seen = new Set<string>();
    for (const row of actualRows) {
      const actual: ScheduleRow = {
        taskId: row.task_id,
        queue: row.queue,
        priority: row.priority,
        status: row.status,
        runAt: row.run_at.toISOString(),
        attempt: row.attempt,
        workerId: row.worker_id,
        leaseUntil: row.lease_until?.toISOString() ?? null,
        createdAt: row.created_at.toISOString(),
      };
      seen.add(row.task_id);
      const wanted = expected.get(row.task_id) ?? null;
      if (JSON.stringify(wanted) !== JSON.stringify(actual))
        differences.push({ taskId: row.task_id, expected: wanted, actual });
    }
    for (const [taskId, wanted] of expected)
      if (!seen.has(taskId)) differences.push({ taskId, expected: wanted, actual: null });
    return differences;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/** Recomputes the table from the log (the trigger's own function, replayed), in one transaction. */
export async function rebuildSchedule(pool: Pool): Promise<number> {
  const { rows } = await pool.query<{ count: string }>('SELECT task_schedule_rebuild()::text AS count');
  return Number(rows[0]!.count);
}
