import type { PoolClient } from '../infra/db/pool.js';
import { prepared } from '../infra/db/prepared.js';
import type { StaleEntry } from '../infra/cache/cache.js';
import type { Position, RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import { isDataError, type Projection, type Queryable } from './readModel.js';

export type ApplyOutcome = 'applied' | 'duplicate' | 'ignored' | 'bad_data';

export interface AppliedBatch {
  /** One per event given, in the same order. */
  outcomes: ApplyOutcome[];
  /** The cache entries the batch made stale, each key once at its newest position; invalidate them after the commit. */
  stale: StaleEntry[];
}

export interface ApplyEventsOptions {
  logger: Logger;
  /**
   * The partitions the events came from, each with the newest position of its events, moved in the batch's own
   * transaction; null leaves positions to the caller (rebuild records one position for everything it has applied).
   * See {@link positionsByPartition}.
   */
  partitionPositions: ReadonlyMap<number, Position> | null;
  /**
   * The caller's promise of `ProjectOptions.exclusive` in readModel.ts (a rebuild; never a bus consumer, which
   * may be given an event twice): the guards are read, not locked, and written in one upsert, and a stream whose
   * revision 0 is in the batch has no guard to read.
   */
  exclusive?: boolean;
  /**
   * How a write the database refuses (a constraint, a bad value) is handled. `savepoint` (the default): the
   * batch's writes run in a savepoint, and a refusal is answered by applying the batch again one event at a time.
   * `throw`: no savepoint (two round trips fewer), and a refusal throws a {@link BatchRefusedError}, which has
   * left the transaction aborted: the caller rolls back and applies the batch again with `savepoint`.
   */
  onRefusal?: 'savepoint' | 'throw';
}

/** The database refused a batch applied without a savepoint: roll back, and apply it again with one. */
export class BatchRefusedError extends Error {
  override name = 'BatchRefusedError';
  constructor(refusal: unknown) {
    super('the database refused a projection batch; apply it again event by event', { cause: refusal });
  }
}

/**
 * Applies a batch of events to one projection, exactly once, inside the caller's transaction: the stream-revision
 * guards are locked and read in one statement and written in one, the partition position in one, and the
 * projection folds each stream's new events in memory and writes each row once.
 *
 * A bad event never stops the batch. Data the projection rejects itself is left out by the fold; when the
 * database rejects the batch's writes (a constraint, a bad value), the batch is rolled back to its savepoint and
 * applied again one event at a time, each in its own savepoint, so exactly the bad events are skipped, as if the
 * events had come one by one. Other errors throw, and the caller retries the whole transaction.
 */
export async function applyEvents(
  client: PoolClient,
  projection: Projection,
  events: readonly RecordedEvent[],
  options: ApplyEventsOptions,
): Promise<AppliedBatch> {
  const outcomes: ApplyOutcome[] = events.map((event) =>
    projection.eventTypes.has(event.type) ? 'applied' : 'ignored',
  );
  const handled = events.flatMap((event, index) => (outcomes[index] === 'applied' ? [index] : []));
  let stale: StaleEntry[] = [];

  if (handled.length > 0) {
    const streams = handled.map((i) => events[i]!.streamId);
    const revisions = options.exclusive
      ? await readGuards(client, projection.name, streamsSeenBefore(handled.map((i) => events[i]!)))
      : await lockGuards(client, projection.name, streams);
    const { fresh, newest } = freshEvents(events, handled, revisions, outcomes);

    if (fresh.length > 0) {
      const bad = new Map<number, unknown>();
      const indexOf = new Map(fresh.map((index) => [events[index]!, index]));
      const onBadEvent = (event: RecordedEvent, error: unknown) => bad.set(indexOf.get(event)!, error);
      const batch = fresh.map((i) => events[i]!);
      const projectOptions = { exclusive: options.exclusive ?? false };
      if (options.onRefusal === 'throw') {
        try {
          stale = await projection.project(client, batch, onBadEvent, projectOptions);
        } catch (error) {
          throw isDataError(error) ? new BatchRefusedError(error) : error;
        }
      } else {
        await client.query('SAVEPOINT apply_batch');
        try {
          stale = await projection.project(client, batch, onBadEvent, projectOptions);
          await client.query('RELEASE SAVEPOINT apply_batch');
        } catch (error) {
          if (!isDataError(error)) throw error;
          await client.query('ROLLBACK TO SAVEPOINT apply_batch');
          bad.clear();
          stale = await applyOneByOne(client, projection, fresh, events, bad, onBadEvent);
        }
      }
      markBadEvents(options.logger, projection, events, bad, outcomes);
      // A bad event still moves its stream's guard: it would be just as bad when delivered again. The partition's
      // position moves in the same statement.
      await writeGuards(
        client,
        projection.name,
        [...newest.values()],
        options.exclusive ?? false,
        options.partitionPositions,
      );
      return { outcomes, stale: newestPerKey(stale) };
    }
  }

  if (options.partitionPositions)
    await recordPartitionPositions(client, projection.name, options.partitionPositions);
  return { outcomes, stale: newestPerKey(stale) };
}

/**
 * The handled events after their stream's guard and after anything earlier in this batch (Kafka can deliver an
 * event twice in one batch when the relay republished it), and each stream's newest of them; the others are
 * marked duplicates in `outcomes`.
 */
function freshEvents(
  events: readonly RecordedEvent[],
  handled: readonly number[],
  revisions: ReadonlyMap<string, number>,
  outcomes: ApplyOutcome[],
): { fresh: number[]; newest: Map<string, RecordedEvent> } {
  const fresh: number[] = [];
  const newest = new Map<string, RecordedEvent>();
  for (const index of handled) {
    const event = events[index]!;
    const seen = newest.get(event.streamId)?.revision ?? revisions.get(event.streamId) ?? -1;
    if (event.revision <= seen) {
      outcomes[index] = 'duplicate';
      continue;
    }
    newest.set(event.streamId, event);
    fresh.push(index);
  }
  return { fresh, newest };
}

/** Marks and logs the events the projection could not use (by index into `events`). */
function markBadEvents(
  logger: Logger,
  projection: Projection,
  events: readonly RecordedEvent[],
  bad: ReadonlyMap<number, unknown>,
  outcomes: ApplyOutcome[],
): void {
  for (const [index, error] of bad) {
    outcomes[index] = 'bad_data';
    const event = events[index]!;
    logger.error(
      {
        err: error,
        projection: projection.name,
        stream: event.streamId,
        revision: event.revision,
        type: event.type,
      },
      'projection skipped an event it cannot use',
    );
  }
}

/** Some stream guards moved between their read and the one-statement write: apply the batch the careful way. */
export class GuardMovedError extends Error {
  override name = 'GuardMovedError';
  constructor(cause: unknown) {
    super('projection guards moved since they were read; apply the batch again under their locks', { cause });
  }
}

/**
 * The live projector's common case, in three round trips and no transaction of its own: read the batch's stream
 * guards, read the rows its fresh events touch (both without locks), then one statement writes the changed rows,
 * sets each guard to its stream's newest event only where it still holds the revision read (compare-and-set), and
 * moves the partitions' positions; if any guard moved in between (another consumer was given these events: a
 * rebalance), `projection_guards_unmoved` (migrations/0019) fails the whole statement and nothing is written.
 *
 * Only for folds whose rows are each built from one stream (`rowPerStream`): the guard's compare-and-set then
 * covers its stream's row, which the careful path (applyEvents, in a transaction) covers by locking guards and
 * rows. Events the fold rejects are left out and still move their guards, as there.
 *
 * Throws GuardMovedError when a guard moved, BatchRefusedError when the database refused a write: the caller then
 * applies the batch with applyEvents, which sorts out duplicates and bad events. Other errors throw as they are.
 */
export async function applyEventsInOneWrite(
  pool: Queryable,
  projection: Projection,
  events: readonly RecordedEvent[],
  options: Pick<ApplyEventsOptions, 'logger' | 'partitionPositions'>,
): Promise<AppliedBatch> {
  if (!projection.rowPerStream) throw new TypeError(`${projection.name} has rows built from several streams`);
  const outcomes: ApplyOutcome[] = events.map((event) =>
    projection.eventTypes.has(event.type) ? 'applied' : 'ignored',
  );
  const handled = events.flatMap((event, index) => (outcomes[index] === 'applied' ? [index] : []));
  const positions = options.partitionPositions ?? new Map<number, Position>();
  const streams = [...new Set(handled.map((i) => events[i]!.streamId))];
  const revisions = await readGuards(pool, projection.name, streams);
  const { fresh, newest } = freshEvents(events, handled, revisions, outcomes);
  if (fresh.length === 0) {
    if (positions.size > 0) await recordPartitionPositions(pool, projection.name, positions);
    return { outcomes, stale: [] };
  }

  const bad = new Map<number, unknown>();
  const indexOf = new Map(fresh.map((index) => [events[index]!, index]));
  const folded = await projection.fold(
    pool,
    fresh.map((i) => events[i]!),
    (event, error) => bad.set(indexOf.get(event)!, error),
    { unlocked: true },
  );
  const values: unknown[] = [projection.name];
  const parameter = (value: unknown) => `$${values.push(value)}`;
  // Each write keeps its own text, its parameters renumbered after those before it.
  const writes = folded.writes.map((write, n) => {
    const offset = values.length;
    values.push(...(write.values ?? []));
    return `write_${n} AS (${write.text.replace(/\$(\d+)/g, (_, k: string) => `$${Number(k) + offset}`)})`;
  });
  const seen = [...newest.values()].filter((event) => revisions.has(event.streamId));
  const unseen = [...newest.values()].filter((event) => !revisions.has(event.streamId));
  const guardsMoved = `guards_moved AS (
      UPDATE projection_stream_progress p SET revision = i.revision, position = i.position
        FROM unnest(${parameter(seen.map((e) => e.streamId))}::text[], ${parameter(seen.map((e) => revisions.get(e.streamId)))}::bigint[],
                    ${parameter(seen.map((e) => e.revision))}::bigint[], ${parameter(seen.map((e) => e.position))}::text[])
             AS i (stream_id, expected, revision, position)
       WHERE p.projection = $1 AND p.stream_id = i.stream_id AND p.revision = i.expected
      RETURNING 1)`;
  const guardsCreated = `guards_created AS (
      INSERT INTO projection_stream_progress (projection, stream_id, revision, position)
      SELECT $1, * FROM unnest(${parameter(unseen.map((e) => e.streamId))}::text[], ${parameter(unseen.map((e) => e.revision))}::bigint[],
                               ${parameter(unseen.map((e) => e.position))}::text[])
      ON CONFLICT (projection, stream_id) DO NOTHING
      RETURNING 1)`;
  const parts = [...writes, guardsMoved, guardsCreated];
  if (positions.size > 0)
    parts.push(
      `positions AS (${positionsUpsert(parameter([...positions.keys()]), parameter([...positions.values()]))})`,
    );
  const statement = `WITH ${parts.join(',\n')}
    SELECT projection_guards_unmoved((SELECT count(*) FROM guards_moved) + (SELECT count(*) FROM guards_created),
                                     ${parameter(newest.size)})`;
  try {
    await pool.query(statement, values);
  } catch (error) {
    if ((error as { code?: string }).code === '40001') throw new GuardMovedError(error);
    throw isDataError(error) ? new BatchRefusedError(error) : error;
  }
  markBadEvents(options.logger, projection, events, bad, outcomes);
  return { outcomes, stale: newestPerKey(folded.stale) };
}

/** The newest position of each partition's events: what a batch of them moves the partitions' positions to. */
export function positionsByPartition(
  parts: Iterable<{ partition: number; events: readonly RecordedEvent[] }>,
): Map<number, Position> {
  const positions = new Map<number, Position>();
  for (const { partition, events } of parts)
    for (const event of events) {
      const known = positions.get(partition);
      if (known === undefined || event.position > known) positions.set(partition, event.position);
    }
  return positions;
}

/** Each key once, at the newest position it was made stale at. */
function newestPerKey(entries: readonly StaleEntry[]): StaleEntry[] {
  const newest = new Map<string, Position>();
  for (const { key, position } of entries) {
    const known = newest.get(key);
    if (known === undefined || position > known) newest.set(key, position);
  }
  return [...newest].map(([key, position]) => ({ key, position }));
}

/** The careful path, as applyOnce used to go: each event in a savepoint of its own. */
async function applyOneByOne(
  client: PoolClient,
  projection: Projection,
  fresh: readonly number[],
  events: readonly RecordedEvent[],
  bad: Map<number, unknown>,
  onBadEvent: (event: RecordedEvent, error: unknown) => void,
): Promise<StaleEntry[]> {
  const stale: StaleEntry[] = [];
  for (const index of fresh) {
    const event = events[index]!;
    await client.query('SAVEPOINT apply_event');
    try {
      stale.push(...(await projection.project(client, [event], onBadEvent)));
      await client.query('RELEASE SAVEPOINT apply_event');
    } catch (error) {
      if (!isDataError(error)) throw error;
      await client.query('ROLLBACK TO SAVEPOINT apply_event');
      bad.set(index, error);
    }
  }
  return stale;
}

/**
 * Creates the missing guards and locks them all, returning each stream's applied revision (-1: none yet). The
 * no-op update is what takes the row lock and returns the newest committed revision, so two consumers given the
 * same events (a Kafka rebalance) take turns, and the second finds them applied. A placeholder row never
 * outlives the transaction: writeGuards overwrites it before the commit.
 */
async function lockGuards(
  client: PoolClient,
  projection: string,
  streams: readonly string[],
): Promise<Map<string, number>> {
  // Sorted, so two batches lock shared streams in one order.
  const unique = [...new Set(streams)].sort();
  const { rows } = await client.query<{ stream_id: string; revision: number }>(
    `INSERT INTO projection_stream_progress AS p (projection, stream_id, revision, position)
     SELECT $1, s, -1, '' FROM unnest($2::text[]) AS s
     ON CONFLICT (projection, stream_id) DO UPDATE SET revision = p.revision
     RETURNING stream_id, revision`,
    [projection, unique],
  );
  return new Map(rows.map((row) => [row.stream_id, row.revision]));
}

/**
 * The streams of these events (in log order) that may have a guard already: not those whose first event here is
 * their first event ever. Only for exclusive appliers, which are given each event of the log once and in order,
 * so a stream whose revision 0 is in this batch was never applied before.
 */
function streamsSeenBefore(events: readonly RecordedEvent[]): string[] {
  const first = new Map<string, number>();
  for (const event of events) if (!first.has(event.streamId)) first.set(event.streamId, event.revision);
  return [...first].flatMap(([stream, revision]) => (revision === 0 ? [] : [stream]));
}

async function readGuards(
  client: Queryable,
  projection: string,
  streams: readonly string[],
): Promise<Map<string, number>> {
  if (streams.length === 0) return new Map();
  const { rows } = await client.query<{ stream_id: string; revision: number }>(
    `SELECT stream_id, revision FROM projection_stream_progress WHERE projection = $1 AND stream_id = ANY ($2::text[])`,
    [projection, streams],
  );
  return new Map(rows.map((row) => [row.stream_id, row.revision]));
}

/** The guards, and with `positions` not null the partitions' positions too (one statement, one round trip). */
async function writeGuards(
  client: PoolClient,
  projection: string,
  newest: readonly RecordedEvent[],
  exclusive: boolean,
  positions: ReadonlyMap<number, Position> | null,
) {
  const values = [
    projection,
    newest.map((e) => e.streamId),
    newest.map((e) => e.revision),
    newest.map((e) => e.position),
  ];
  const guards = exclusive
    ? `INSERT INTO projection_stream_progress AS p (projection, stream_id, revision, position)
       SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[])
       ON CONFLICT (projection, stream_id) DO UPDATE SET revision = excluded.revision, position = excluded.position`
    : `UPDATE projection_stream_progress p SET revision = i.revision, position = i.position
         FROM unnest($2::text[], $3::bigint[], $4::text[]) AS i (stream_id, revision, position)
        WHERE p.projection = $1 AND p.stream_id = i.stream_id`;
  if (positions === null || positions.size === 0) {
    await client.query(guards, values);
    return;
  }
  // Not prepared, like every statement here that joins an array to a large table: a generic plan does not know
  // the array's size.
  await client.query(`WITH guards AS (${guards} RETURNING 1) ${positionsUpsert('$5', '$6')}`, [
    ...values,
    [...positions.keys()],
    [...positions.values()],
  ]);
}

/**
 * Moves partitions' positions of projection $1, each only ever forward: partitions are consumed in order, but a
 * lazy write of an older position may come late.
 */
const positionsUpsert = (partitions: string, positions: string) =>
  `INSERT INTO projection_partition_positions (projection, partition, position)
   SELECT $1, partition, position FROM unnest(${partitions}::int[], ${positions}::text[]) AS p(partition, position)
   ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position
   WHERE projection_partition_positions.position < excluded.position`;

/** Several partitions' positions of one projection in one statement, each only ever moving forward. */
export async function recordPartitionPositions(
  client: Queryable,
  projection: string,
  positions: ReadonlyMap<number, string>,
): Promise<void> {
  if (positions.size === 0) return;
  await client.query(
    prepared(positionsUpsert('$2', '$3'), [projection, [...positions.keys()], [...positions.values()]]),
  );
}
