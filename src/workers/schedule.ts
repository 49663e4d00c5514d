import { inSnapshot, type Pool } from '../infra/db/pool.js';
import { prepared } from '../infra/db/prepared.js';
import {
  WrongExpectedRevisionError,
  type EventContext,
  type EventStore,
  type Position,
} from '../infra/eventStore/eventStore.js';
import { IllegalStateError } from '../errors.js';
import { foldEvents } from '../domain/decider.js';
import { TASK_STREAM_PREFIX, taskStreamId, type TaskEvent, type TaskStatus } from '../domain/tasks/events.js';
import { task, type Task } from '../domain/tasks/state.js';
import { startTask } from '../domain/tasks/workerCommands.js';
import { isManaged, type QueueLimits } from '../domain/queues/queueSettings.js';

/**
 * The `task_schedule` table (migrations/0010): an inline projection of the task streams, written by a trigger in
 * the transaction of every append to them, so a claim never reads a row that lags the log. This module owns every
 * statement on it. PostgreSQL event store only: with EventStoreDB the worker claims from the tasks read model.
 */

/**
 * A row's status: the task's; or `claimed` (a worker's claim marked it; its TaskStarted is not appended yet); or,
 * for a pending task with dependencies, `waiting` (one is not done yet) or `dependency_failed` (one ended failed or
 * canceled, so the reaper fails this one: see `gatedStatus`).
 */
export type ScheduleStatus =
  'pending' | 'claimed' | 'running' | 'failed' | 'canceled' | 'waiting' | 'dependency_failed';

/** A task's row as a fold of its stream implies it (never `claimed`, a worker's lock marker); times ISO 8601. */
export interface ScheduleRow {
  taskId: string;
  queue: string;
  /** '' when the task has none. */
  groupKey: string;
  priority: number;
  status: Exclude<ScheduleStatus, 'claimed'>;
  runAt: string;
  attempt: number;
  workerId: string | null;
  leaseUntil: string | null;
  createdAt: string;
  /** With status `dependency_failed`: the dependency that ended failed or canceled. */
  failedDependency: string | null;
}

/**
 * Where a pending task with dependencies stands, given each task's status now (as task_schedule_gate computes it
 * in SQL): a dependency failed or canceled fails it (`onFailure: 'fail'`); one unfinished (with 'fail': not done)
 * makes it wait; otherwise it may start. Rows that are not pending are left as they are.
 */
export function gatedRow(
  row: ScheduleRow,
  state: Task,
  statusOf: (taskId: string) => TaskStatus | undefined,
): ScheduleRow {
  const dependencies = state.spec?.dependencies;
  if (!dependencies || row.status !== 'pending') return row;
  const statuses = dependencies.taskIds.map((id) => ({ id, status: statusOf(id) ?? 'pending' }));
  const failed = statuses
    .filter(({ status }) => status === 'failed' || status === 'canceled')
    .map(({ id }) => id)
    .sort()[0];
  const finished = (status: TaskStatus) => status === 'done' || status === 'failed' || status === 'canceled';
  const unresolved = statuses.filter(({ status }) =>
    dependencies.onFailure === 'fail' ? status !== 'done' : !finished(status),
  ).length;
  if (dependencies.onFailure === 'fail' && failed)
    return { ...row, status: 'dependency_failed', failedDependency: failed };
  return { ...row, status: unresolved > 0 ? 'waiting' : 'pending' };
}

/** What the trigger keeps for a task in this state, or null when the task has left the schedule. */
export function scheduleRowOf(state: Task): ScheduleRow | null {
  if (!state.exists || state.archivedAt || state.status === 'done') return null;
  const running = state.status === 'in_progress';
  return {
    taskId: state.id!,
    queue: state.spec!.queue,
    groupKey: state.spec!.groupKey ?? '',
    priority: state.spec!.priority,
    status: running ? 'running' : (state.status as 'pending' | 'failed' | 'canceled'),
    runAt: new Date(state.runAt!).toISOString(),
    attempt: state.attempt,
    workerId: running ? state.workerId : null,
    leaseUntil: running && state.leaseUntil ? new Date(state.leaseUntil).toISOString() : null,
    createdAt: new Date(state.createdAt!).toISOString(),
    failedDependency: null,
  };
}

/** A task this worker now runs: its state after TaskStarted, and the stream head that event made. */
export interface ClaimedTask {
  state: Task;
  revision: number;
  /** The chain hash of the TaskStarted. */
  hash: string;
  position: Position;
}

/** What one claim asks for: how many tasks, from which queues, for which worker, with what lease and metadata. */
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
  /** config.yml's limits for queues nobody has configured (PUT /queues/{name} settings take precedence). */
  queueDefaults?: Readonly<Record<string, QueueLimits>>;
}

interface StreamEventRow {
  stream_id: string;
  revision: string;
  type: string;
  data: string;
  hash: string;
}

/** A managed queue that had due work this round and gave none: held by a limit, and when to look again. */
export interface HeldQueue {
  queue: string;
  /**
   * `rate`: the window is full until `retryAt`; `limit`: concurrency or group caps, until a task of it ends;
   * `busy`: another worker was claiming from it at that moment (look again at `retryAt`, a moment later).
   */
  heldBy: 'rate' | 'limit' | 'busy';
  retryAt: Date | null;
}

/** What one claim round did: the attempts it started, and the managed queues whose limits held work back. */
export interface ClaimRound {
  claimed: ClaimedTask[];
  held: HeldQueue[];
  /**
   * The round took as many rows as it asked for, so more may be due at once: look again now. False when the
   * schedule had fewer due rows than the worker's free slots: nothing more is due until something new wakes it.
   */
  mayHaveMore: boolean;
  /** When the earliest pending task of the worker's queues not due yet falls due, read in the claim's own statement. */
  nextDueAt: Date | null;
}

/** The claim statement's last row: not a task nor a held queue, but when the next pending task falls due. */
const NEXT_DUE = 'next_due';

/**
 * The claim, in two steps. First one statement takes the most urgent due rows this worker has room for, marks
 * them `claimed` and returns their streams: queues without limits by one SELECT (highest priority, then the
 * earliest due; FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint rows), managed queues (any limit, see
 * src/domain/queues) through task_schedule_claim_limited (migrations/0016), which counts and claims under a lock of
 * each queue so its limits hold across every worker process, and serves group keys round robin. Then their
 * TaskStarted events are appended at the revisions just read, through the store's group commit with everything
 * else being appended. An append that conflicts (a cancel or an edit came in between) gives that row back; a
 * worker that dies between the steps leaves rows `claimed` until their lease_until passes, when
 * `releaseAbandonedClaims` puts them back. Two workers never run one attempt: the row lock keeps them apart, and
 * the expected revision would anyway.
 */
export async function claimDueTasks(
  pool: Pool,
  store: Pick<EventStore, 'append'>,
  request: ClaimRequest,
): Promise<ClaimedTask[]> {
  return (await claimRound(pool, store, request)).claimed;
}

/** As `claimDueTasks`, and also which managed queues held work back (the worker's cue for when to look again). */
export async function claimRound(
  pool: Pool,
  store: Pick<EventStore, 'append'>,
  request: ClaimRequest,
): Promise<ClaimRound> {
  if (request.limit <= 0) return { claimed: [], held: [], mayHaveMore: false, nextDueAt: null };
  const { rows } = await pool.query<ClaimStatementRow>(claimStatement(request));
  const held: HeldQueue[] = rows
    .filter((row) => row.task_id === null && row.held_by !== NEXT_DUE)
    .map((row) => ({ queue: row.queue, heldBy: row.held_by as HeldQueue['heldBy'], retryAt: row.retry_at }));
  const nextDueAt = rows.find((row) => row.held_by === NEXT_DUE)?.retry_at ?? null;
  const claimedRows = rows.filter((row) => row.task_id !== null);
  const claimed = await startClaimed(pool, store, request, claimedRows);
  const taken = new Set(claimedRows.map((row) => row.task_id)).size;
  return { claimed, held, mayHaveMore: taken >= request.limit, nextDueAt };
}

/** A row of the claim statement: a claimed task's event, a managed queue's claim or hold, or the next due time. */
type ClaimStatementRow = StreamEventRow & {
  task_id: string | null;
  queue: string;
  held_by: string | null;
  retry_at: Date | null;
};

/**
 * The claim's one statement (see claimRound): managed queues through task_schedule_claim_limited, the rest by
 * an ordered walk of the schedule's index by priority, then when the next pending task falls due, looked up only
 * when the round took fewer rows than asked (else the worker looks again at once and does not need it).
 */
export function claimStatement(request: ClaimRequest): { text: string; values: unknown[] } {
  const fullQueues = [...request.roomByQueue].filter(([, room]) => room <= 0).map(([queue]) => queue);
  const claimLeaseUntil = new Date(request.now.getTime() + CLAIM_LEASE_MS);
  const queues = queueScope(request.onlyQueues, '$3');
  const defaults = request.queueDefaults ?? {};
  const managedByConfig = Object.entries(defaults)
    .filter(([, limits]) => isManaged(limits))
    .map(([queue]) => queue);
  // The plan must walk an index in the claim's order and stop at the LIMIT: sorting the due rows makes each claim
  // cost as much as the whole backlog (35-45 ms a claim with 25,000 due, measured, before this was so). Hence:
  // - not prepared: a generic plan does not know the LIMIT and sorts (17 ms against 1.5 ms, 50,000 due);
  // - `due` is limited by the plain parameter $4, which a custom plan knows; the managed queues' share is taken
  //   off after (`taken`), so a round that also claimed from managed queues locks a few rows it then leaves, for
  //   the moment of this statement. A LIMIT computed from `limited` is unknown to the planner, which then
  //   assumes a tenth of the rows are read and may prefer to sort;
  // - managed queues are left out by filters the planner cannot estimate, so it takes them to keep half the rows.
  //   As NOT EXISTS (an anti-join) or NOT (queue = ANY(array read from queue_settings)), PostgreSQL estimated
  //   them to keep one row when one queue holds most of the schedule (`<>` a value it does not know, with one
  //   distinct queue, keeps nothing), so a seq scan and a sort looked as cheap as anything.
  //   schedule.int.spec.ts checks the plan with one queue's backlog.
  // A worker of some queues only names them plainly, so the index by queue (migrations/0012) reads only theirs.
  // Managed queues first (the function takes its share of the limit); the plain SELECT leaves them alone: those
  // with settings that limit anything, and those the config limits that have no settings of their own.
  return {
    text: `WITH limited AS MATERIALIZED (
       SELECT * FROM task_schedule_claim_limited($1, $5, $6, $4, $7::text[], $8::jsonb, $9, $10::jsonb)
     ), due AS (
       SELECT task_id, priority, run_at, created_at FROM task_schedule
        WHERE status = 'pending' AND run_at <= $1 AND NOT (queue = ANY($2::text[]))
          AND ${queues.condition}
          AND CASE WHEN queue = ANY (ARRAY(SELECT q.queue FROM queue_settings q WHERE q.managed))
                   THEN false ELSE true END
          AND CASE WHEN queue = ANY($11::text[]) AND NOT (queue = ANY (ARRAY(SELECT q.queue FROM queue_settings q)))
                   THEN false ELSE true END
        ORDER BY priority DESC, run_at, created_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED
     ), claimed AS (
       UPDATE task_schedule s SET status = 'claimed', worker_id = $5, lease_until = $6
         FROM (SELECT task_id FROM due ORDER BY priority DESC, run_at, created_at
                LIMIT greatest(0, $4 - (SELECT count(DISTINCT task_id) FROM limited))) taken
        WHERE s.task_id = taken.task_id
       RETURNING s.task_id, s.queue
     )
     SELECT c.task_id, c.queue, e.stream_id, e.revision::text AS revision, e.type, e.data,
            e.metadata->>'hash' AS hash, NULL::text AS held_by, NULL::timestamptz AS retry_at
       FROM claimed c JOIN events e ON e.stream_id = 'task-' || c.task_id::text
     UNION ALL
     SELECT task_id, queue, stream_id, revision::text, type, data, hash, held_by, retry_at FROM limited
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, '${NEXT_DUE}',
            CASE WHEN (SELECT count(*) FROM claimed) + (SELECT count(DISTINCT task_id) FROM limited) < $4
                 THEN (SELECT min(run_at) FROM task_schedule
                        WHERE status = 'pending' AND run_at > $1 AND ${queues.condition}) END
      ORDER BY stream_id, revision`,
    values: [
      request.now,
      fullQueues,
      queues.value,
      request.limit,
      request.workerId,
      claimLeaseUntil,
      request.onlyQueues,
      JSON.stringify(Object.fromEntries(request.roomByQueue)),
      request.defaultRoom,
      JSON.stringify(defaults),
      managedByConfig,
    ],
  };
}

/** Step two: the TaskStarted of each claimed row, at the revision read; rows that do not start go back. */
async function startClaimed(
  pool: Pool,
  store: Pick<EventStore, 'append'>,
  request: ClaimRequest,
  rows: readonly StreamEventRow[],
): Promise<ClaimedTask[]> {
  const streams = foldStreams(rows);
  // Room per queue: rows of a queue beyond what this worker may run go straight back.
  const room = new Map(request.roomByQueue);
  const kept: typeof streams = [];
  const giveBack: string[] = [];
  for (const stream of streams) {
    const queue = stream.state.spec?.queue ?? '';
    const left = room.get(queue) ?? request.defaultRoom;
    room.set(queue, left - 1);
    if (left > 0) kept.push(stream);
    else giveBack.push(stream.state.id!);
  }
  // Settled one by one: a TaskStarted that committed is run even when another append of the round failed.
  const settled = await Promise.allSettled(
    kept.map(async ({ state, revision, hash }): Promise<ClaimedTask | null> => {
      let started: TaskEvent[];
      try {
        started = startTask(
          { workerId: request.workerId, leaseMs: request.leaseMs(state), now: request.now },
          state,
        );
      } catch (error) {
        if (error instanceof IllegalStateError) return null; // the row and the stream disagree: verify says so
        throw error;
      }
      const events = started.map((event) => ({
        eventId: request.newId(),
        type: event.type,
        data: event.data,
        metadata: request.metadata,
      }));
      try {
        const result = await store.append(taskStreamId(state.id!), events, {
          expectedRevision: revision,
          previousHash: hash,
        });
        return {
          state: started.reduce(task.evolve, state),
          revision: result.nextRevision,
          hash: result.hash,
          position: result.position,
        };
      } catch (error) {
        if (error instanceof WrongExpectedRevisionError) return null; // given back below
        throw error;
      }
    }),
  );
  const failure = settled.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected');
  const outcomes = settled.map((outcome) => (outcome.status === 'fulfilled' ? outcome.value : null));
  const claimed = outcomes.filter((outcome): outcome is ClaimedTask => outcome !== null);
  const started = new Set(claimed.map((c) => c.state.id!));
  giveBack.push(...kept.map((s) => s.state.id!).filter((id) => !started.has(id)));
  // A give-back that fails leaves rows `claimed` for the reaper; it must not lose the attempts that did start.
  if (giveBack.length > 0)
    await giveBackClaims(pool, request.workerId, giveBack).catch((error) => {
      if (claimed.length === 0) throw error;
    });
  // Nothing started and something broke (the database, say): let the dispatcher log it and back off.
  if (claimed.length === 0 && failure) throw failure.reason;
  return claimed;
}

/**
 * The queues a worker serves, as a condition on parameter `parameter` and that parameter's value: every queue (a
 * NULL the condition tests, so the parameter still has a type), one (`queue = $n`, which the planner seeks in the
 * index by queue, in order) or several (`queue = ANY($n)`).
 */
function queueScope(
  onlyQueues: readonly string[],
  parameter: string,
): { condition: string; value: string | readonly string[] | null } {
  if (onlyQueues.length === 0) return { condition: `(${parameter}::text IS NULL)`, value: null };
  if (onlyQueues.length === 1) return { condition: `queue = ${parameter}::text`, value: onlyQueues[0]! };
  return { condition: `queue = ANY(${parameter}::text[])`, value: onlyQueues };
}

/** How long a row may stay `claimed` before the reaper gives it back: far longer than a claim's two steps take. */
const CLAIM_LEASE_MS = 30_000;

/** Rows this worker marked but did not start go back to `pending`; ones the log has moved on are left alone. */
async function giveBackClaims(pool: Pool, workerId: string, taskIds: readonly string[]): Promise<void> {
  if (taskIds.length === 0) return;
  await pool.query(
    `UPDATE task_schedule SET status = 'pending', worker_id = NULL, lease_until = NULL
      WHERE task_id = ANY($1::uuid[]) AND status = 'claimed' AND worker_id = $2`,
    [taskIds, workerId],
  );
}

/** Claims whose worker vanished between marking the rows and appending TaskStarted: back to `pending`. */
export async function releaseAbandonedClaims(pool: Pool, now: Date): Promise<number> {
  const { rowCount } = await pool.query(
    prepared(
      `UPDATE task_schedule SET status = 'pending', worker_id = NULL, lease_until = NULL
        WHERE status = 'claimed' AND lease_until < $1`,
      [now],
    ),
  );
  return rowCount ?? 0;
}

/** Rows of many streams (ordered by stream, then revision), each folded: state, head revision, head's hash. */
function foldStreams(
  rows: readonly StreamEventRow[],
): Array<{ state: Task; revision: number; hash: string }> {
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

/** A task on which the table and the fold of the log disagree; null where that side has no row. */
export interface ScheduleDifference {
  taskId: string;
  expected: ScheduleRow | null;
  actual: ScheduleRow | null;
}

/**
 * Compares the table with a fold of every task stream in the log (the TypeScript evolve, not the trigger's SQL):
 * the differences, [] when they agree. Reads in one snapshot so concurrent appends cannot make them disagree.
 */
export function verifySchedule(pool: Pool): Promise<ScheduleDifference[]> {
  return inSnapshot(pool, async (client) => {
    const expected = new Map<string, ScheduleRow>();
    // Every task's status, for the rows of tasks that wait for others; and the states of those (few) tasks.
    const statuses = new Map<string, TaskStatus>();
    const gated: Task[] = [];
    let currentStream: string | null = null;
    let state: Task = task.initialState;
    const keep = (folded: Task) => {
      if (folded.id) statuses.set(folded.id, folded.status);
      const row = scheduleRowOf(folded);
      if (row) expected.set(row.taskId, row);
      if (row && folded.spec?.dependencies) gated.push(folded);
    };
    // Streams in order, folded one at a time, so only one stream's state is held (and the status of each).
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
    for (const waiting of gated)
      expected.set(
        waiting.id!,
        gatedRow(expected.get(waiting.id!)!, waiting, (id) => statuses.get(id)),
      );
    const { rows: actualRows } = await client.query<{
      task_id: string;
      queue: string;
      group_key: string;
      priority: number;
      status: ScheduleStatus;
      run_at: Date;
      attempt: number;
      worker_id: string | null;
      lease_until: Date | null;
      created_at: Date;
      failed_dependency: string | null;
    }>('SELECT * FROM task_schedule');
    const differences: ScheduleDifference[] = [];
    const seen = new Set<string>();
    for (const row of actualRows) {
      // A `claimed` row is a worker's lock marker over a task the log still has pending.
      const claimed = row.status === 'claimed';
      const actual: ScheduleRow = {
        taskId: row.task_id,
        queue: row.queue,
        groupKey: row.group_key,
        priority: row.priority,
        status: claimed ? 'pending' : (row.status as ScheduleRow['status']),
        runAt: row.run_at.toISOString(),
        attempt: row.attempt,
        workerId: claimed ? null : row.worker_id,
        leaseUntil: claimed ? null : (row.lease_until?.toISOString() ?? null),
        createdAt: row.created_at.toISOString(),
        failedDependency: row.failed_dependency,
      };
      seen.add(row.task_id);
      const wanted = expected.get(row.task_id) ?? null;
      if (JSON.stringify(wanted) !== JSON.stringify(actual))
        differences.push({ taskId: row.task_id, expected: wanted, actual });
    }
    for (const [taskId, wanted] of expected)
      if (!seen.has(taskId)) differences.push({ taskId, expected: wanted, actual: null });
    return differences;
  });
}

/** Tasks whose dependency ended failed or canceled: each to be failed by the reaper (`failForDependency`). */
export async function dependencyFailures(
  pool: Pool,
  limit = 100,
): Promise<Array<{ taskId: string; dependencyId: string }>> {
  const { rows } = await pool.query<{ task_id: string; failed_dependency: string }>(
    `SELECT task_id, failed_dependency FROM task_schedule WHERE status = 'dependency_failed' LIMIT $1`,
    [limit],
  );
  return rows.map((row) => ({ taskId: row.task_id, dependencyId: row.failed_dependency }));
}

/**
 * Gates every waiting task again against its dependencies' statuses now. The trigger does this whenever a
 * dependency's status changes, but a task queued in a transaction that commits after its dependency's outcome
 * looked for waiting tasks is not found by it; this sweep, run with the lease reaper, catches those.
 */
export async function regateWaitingTasks(pool: Pool): Promise<number> {
  const { rows } = await pool.query<{ count: string }>('SELECT task_schedule_regate()::text AS count');
  return Number(rows[0]!.count);
}

/** Recomputes the table from the log (the trigger's own function, replayed), in one transaction. */
export async function rebuildSchedule(pool: Pool): Promise<number> {
  const { rows } = await pool.query<{ count: string }>('SELECT task_schedule_rebuild()::text AS count');
  return Number(rows[0]!.count);
}
