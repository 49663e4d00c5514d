import { sleep } from '../infra/abort.js';
import { inTransaction, type Pool, type PoolClient } from '../infra/db/pool.js';
import type { EventStore, Position, RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import { applyEvents } from './applyEvents.js';
import type { Projection, ReadModelTable } from './readModel.js';
import {
  PROGRESS_TABLES,
  allTableNames,
  assertSameShape,
  createTables,
  ident,
  type DeferredIndex,
  qualified,
  readModelTables,
} from './rebuildTables.js';
import { compareTable, countStreamsBehind, type TableDifference } from './rebuildCompare.js';

export type { ReadModelTable } from './readModel.js';
export { describeDifference, type RowDifference, type TableDifference } from './rebuildCompare.js';

export interface RebuildReport {
  /** The schema the read models were built in; after a swap its tables are the live ones and it is gone. */
  schema: string;
  /** Log events read (the ones no projection handles included). */
  events: number;
  /** The last log position the rebuilt tables contain. */
  position: Position | null;
  durationMs: number;
  /** Of the bulk phase: reading the log, applying it and building the deferred indexes; not verify and swap. */
  eventsPerSecond: number;
  verified: boolean;
  /** Tables that differ from the live ones; empty when they are equal or verify was off. */
  differences: TableDifference[];
  /** Streams the live projector had not reached at the comparison; their rows were left out of it. */
  streamsBehind: number;
  swapped: boolean;
  /** Where the previous live tables were moved, kept for rollback (dropOldSchemas removes it). */
  oldSchema?: string;
}

export interface RebuildOptions {
  pool: Pool;
  store: EventStore;
  projections: readonly Projection[];
  verify: boolean;
  swap: boolean;
  logger: Logger;
  onProgress?: (progress: { events: number; total: number | null }) => void;
  /**
   * Events per log read (5000). Large pages matter most: each page costs a few statements per lane whatever
   * its size, and fewer streams straddle two pages. 60,000 task events on 2 cores: about 11,000 events/s with
   * pages of 1000, 22,000 to 26,000 with 5000.
   */
  pageSize?: number;
  /**
   * Transactions applying a page at once, each for its own share of the streams, and indexes built at once after.
   * 3, measured on 2 cores (not derived from the core count): a lane more than the cores keeps PostgreSQL busy
   * while this process folds the next share. An 87,000-event log rebuilt alternately: 15,500 to 19,300 events/s
   * with 2 lanes (5 runs, mean 16,900), 19,100 to 22,900 with 3 (7 runs, mean 20,800); 4 no better (4 runs). Each
   * index build takes at least 128 MB of maintenance_work_mem, so 3 at once take 384 MB on the server.
   */
  concurrency?: number;
  /** Differing rows reported per table. */
  sampleLimit?: number;
  /** How long one attempt waits for the live tables' locks before it lets others through and tries again. */
  lockTimeoutMs?: number;
  /** Runs just before the swap's transaction, after everything else: tests append events here. */
  beforeSwap?: () => Promise<void>;
}

// One rebuild at a time: two swaps racing would move each other's tables. dropOldSchemas takes it too, so it never
// drops the schema of a rebuild in progress.
const REBUILD_LOCK = 7_265_437_018;
const REBUILD_SCHEMA = /^rebuild_\d{8}_\d{6}_\d{3}$/;
const OLD_SCHEMA = /^rebuild_old_\d{8}_\d{6}_\d{3}$/;

/**
 * Builds every read model from the log in a new schema beside the live one, through the projections' own code,
 * while the service keeps running; optionally compares it with the live tables; optionally swaps it in, keeping
 * the old tables in `rebuild_old_<timestamp>` for rollback.
 */
export async function rebuildReadModels(options: RebuildOptions): Promise<RebuildReport> {
  const { pool, store, projections, logger } = options;
  const started = Date.now();
  const tables = readModelTables(projections);
  const control = await pool.connect();
  let broken = false;
  let lockHeld = false;
  let schema: string | null = null;
  let swapped = false;
  try {
    const { rows } = await control.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [
      REBUILD_LOCK,
    ]);
    lockHeld = rows[0]!.locked;
    if (!lockHeld) throw new Error('another read-model rebuild is running on this database');

    const stamp = new Date()
      .toISOString()
      .replace(/[-:]/g, '')
      .replace('T', '_')
      .replace('.', '_')
      .slice(0, 19);
    schema = `rebuild_${stamp}`;
    const oldSchema = `rebuild_old_${stamp}`;
    const deferredIndexes = await createTables(control, schema, tables);
    logger.info({ schema, tables }, 'rebuilding read models from the log');

    const context: ApplyContext = {
      pool,
      store,
      projections,
      logger,
      schema,
      pageSize: options.pageSize ?? 5000,
    };
    const total = await countEvents(pool, store);
    const bulkStarted = Date.now();
    const lanes = Math.max(1, Math.floor(options.concurrency ?? 3));
    const bulk = await applyLogInParallel(context, lanes, (events) =>
      options.onProgress?.({ events, total: total === null ? null : Math.max(total, events) }),
    );
    // Part of the bulk phase's time: the tables are not whole without them.
    logger.info({ schema, indexes: deferredIndexes.length }, "log applied; building the new tables' indexes");
    await buildIndexes(pool, deferredIndexes, lanes);
    const bulkMs = Math.max(1, Date.now() - bulkStarted);
    let events = bulk.events;
    let position = bulk.position;
    logger.info({ schema, events, position, ms: bulkMs }, 'read models rebuilt; catching up');

    let differences: TableDifference[] = [];
    let streamsBehind = 0;
    if (options.verify) {
      const verified = await verifyAgainstLive(control, context, tables, position, options);
      events += verified.events;
      position = verified.position;
      differences = verified.differences;
      streamsBehind = verified.streamsBehind;
    }

    if (options.swap) {
      // Most of what came in meanwhile is applied here, outside the locks, so the swap holds them briefly.
      const early = await inTransaction(pool, (client) => catchUp(client, context, position));
      events += early.events;
      position = early.position;
      await options.beforeSwap?.();
      const late = await swapIn(control, context, tables, position, oldSchema, options.lockTimeoutMs ?? 5000);
      events += late.events;
      position = late.position;
      swapped = true;
      logger.info(
        { oldSchema, position },
        'rebuilt read models swapped in; the old ones are kept for rollback',
      );
    }

    return {
      schema,
      events,
      position,
      durationMs: Date.now() - started,
      eventsPerSecond: Math.round((bulk.events * 1000) / bulkMs),
      verified: options.verify,
      differences,
      streamsBehind,
      swapped,
      ...(swapped ? { oldSchema } : {}),
    };
  } catch (error) {
    if (schema && !swapped)
      await control.query(`DROP SCHEMA IF EXISTS ${ident(schema)} CASCADE`).catch((dropError) => {
        broken = true;
        logger.warn({ err: dropError, schema }, 'could not drop the unfinished rebuild schema');
      });
    throw error;
  } finally {
    if (lockHeld && !broken)
      await control.query('SELECT pg_advisory_unlock($1)', [REBUILD_LOCK]).catch(() => (broken = true));
    // Destroying the connection also ends a session lock that could not be released.
    control.release(broken);
  }
}

/** Drops all but the newest `keep` old schemas, and rebuild schemas never swapped in. Returns what it dropped. */
export async function dropOldSchemas(pool: Pool, keep = 1): Promise<string[]> {
  const client = await pool.connect();
  try {
    const { rows: lock } = await client.query<{ locked: boolean }>(
      'SELECT pg_try_advisory_lock($1) AS locked',
      [REBUILD_LOCK],
    );
    if (!lock[0]!.locked) throw new Error('a read-model rebuild is running; try again when it has finished');
    try {
      const { rows } = await client.query<{ name: string }>(
        `SELECT nspname AS name FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%' ORDER BY nspname DESC`,
      );
      const old = rows.map((row) => row.name).filter((name) => OLD_SCHEMA.test(name));
      const unfinished = rows.map((row) => row.name).filter((name) => REBUILD_SCHEMA.test(name));
      const doomed = [...old.slice(Math.max(0, keep)), ...unfinished];
      for (const name of doomed) await client.query(`DROP SCHEMA ${ident(name)} CASCADE`);
      return doomed;
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [REBUILD_LOCK]);
    }
  } finally {
    client.release();
  }
}

interface ApplyContext {
  pool: Pool;
  store: EventStore;
  projections: readonly Projection[];
  logger: Logger;
  schema: string;
  pageSize: number;
}

/** For the progress line; null when the store is not this database's events table. */
async function countEvents(pool: Pool, store: EventStore): Promise<number | null> {
  if (store.name !== 'postgres') return null;
  try {
    const { rows } = await pool.query<{ count: number }>('SELECT count(*) AS count FROM events');
    return rows[0]!.count;
  } catch {
    return null;
  }
}

/**
 * The bulk of the log, page by page (the next page is read while this one is applied). A page is split by stream
 * over `lanes` transactions: a stream's events stay in order in one of them, and no read model row depends
 * on two streams, so the transactions cannot conflict. Stops at the first short page: whatever arrives after
 * that is caught up by verify or the swap.
 */
async function applyLogInParallel(
  context: ApplyContext,
  lanes: number,
  onPage: (events: number) => void,
): Promise<{ events: number; position: Position | null }> {
  let position: Position | null = null;
  let events = 0;
  let next = context.store.readAll({ after: null, limit: context.pageSize });
  for (;;) {
    const page = await next;
    if (page.length === 0) break;
    position = page[page.length - 1]!.position;
    const short = page.length < context.pageSize;
    if (!short) {
      next = context.store.readAll({ after: position, limit: context.pageSize });
      // Awaited on the next turn; this only keeps a failure while applying from leaving it unhandled.
      next.catch(() => undefined);
    }
    const shares: RecordedEvent[][] = Array.from({ length: lanes }, () => []);
    for (const event of page) shares[laneOf(event.streamId, lanes)]!.push(event);
    const results = await Promise.allSettled(
      shares
        .filter((share) => share.length > 0)
        .map((share) =>
          inTransaction(context.pool, async (client) => {
            await useSchema(client, context.schema);
            // Derived rows, redone from the log if lost; the swap's own commit is synchronous, and flushing the
            // log up to it flushes these too.
            await client.query(`SELECT set_config('synchronous_commit', 'off', true)`);
            await applyBatch(client, context, share);
          }),
        ),
    );
    const failure = results.find((result) => result.status === 'rejected');
    if (failure) throw failure.reason;
    events += page.length;
    onPage(events);
    if (short) break;
  }
  if (position)
    await inTransaction(context.pool, async (client) => {
      await useSchema(client, context.schema);
      await recordPosition(client, context, position!);
    });
  return { events, position };
}

/**
 * The secondary indexes createTables left out, built from the filled tables, `lanes` at a time (CREATE INDEX takes
 * a SHARE lock, which does not block another CREATE INDEX, even on the same table).
 */
async function buildIndexes(pool: Pool, indexes: readonly DeferredIndex[], lanes: number): Promise<void> {
  const queue = [...indexes];
  let failed = false;
  const lane = async () => {
    for (let index = queue.shift(); index && !failed; index = queue.shift()) {
      const { definition } = index;
      await inTransaction(pool, async (client) => {
        // One index of a large table may outlast the pool's statement timeout, as verify and swap may. Memory for
        // the sort: at least 128MB, never less than the server gives.
        await client.query(
          `SELECT set_config('statement_timeout', '0', true),
                  set_config('maintenance_work_mem',
                    CASE WHEN pg_size_bytes(current_setting('maintenance_work_mem')) < 134217728
                         THEN '128MB' ELSE current_setting('maintenance_work_mem') END, true)`,
        );
        await client.query(definition);
      }).catch((error: unknown) => {
        failed = true; // the other lanes take no further index
        throw error;
      });
    }
  };
  // Settled, not all: the caller drops the schema on a failure, after every lane has stopped building.
  const results = await Promise.allSettled(Array.from({ length: Math.min(lanes, queue.length) }, lane));
  const failure = results.find((result) => result.status === 'rejected');
  if (failure) throw failure.reason;
}

function laneOf(streamId: string, lanes: number): number {
  let hash = 2166136261; // FNV-1a
  for (let i = 0; i < streamId.length; i++) hash = Math.imul(hash ^ streamId.charCodeAt(i), 16777619);
  return (hash >>> 0) % lanes;
}

/**
 * Only the new schema, not public after it: the projections' unqualified names reach the new tables, and a table
 * missing from its projection's `tables` is an error instead of a silent write to a live one. LOCAL: the connection goes
 * back to the pool as it came.
 */
const useSchema = (client: PoolClient, schema: string) =>
  client.query(`SELECT set_config('search_path', $1, true)`, [ident(schema)]);

/**
 * Applies the log after `after` up to what is readable now, on `client`, inside the caller's transaction. It
 * reads until a short page: a full one may have more behind it.
 */
async function catchUp(
  client: PoolClient,
  context: ApplyContext,
  after: Position | null,
): Promise<{ events: number; position: Position | null }> {
  await useSchema(client, context.schema);
  let position = after;
  let events = 0;
  for (;;) {
    const page = await context.store.readAll({ after: position, limit: context.pageSize });
    if (page.length === 0) break;
    await applyBatch(client, context, page);
    position = page[page.length - 1]!.position;
    events += page.length;
    if (page.length < context.pageSize) break;
  }
  if (position && events > 0) await recordPosition(client, context, position);
  return { events, position };
}

/**
 * The projections' own batch apply (applyEvents), as the live projector runs it, inside the caller's
 * transaction: each stream's events folded in memory and each row written once, guards read and written once.
 * Positions are recorded apart (recordPosition), once for everything applied.
 */
async function applyBatch(client: PoolClient, context: ApplyContext, events: RecordedEvent[]): Promise<void> {
  for (const projection of context.projections)
    if (events.some((event) => projection.eventTypes.has(event.type)))
      await applyEvents(client, projection, events, {
        logger: context.logger,
        partitionPositions: null,
        exclusive: true,
      });
}

/**
 * Every event up to `position` is in the new tables, whichever projection (if any) handles it; partition 0 is the
 * direct bus's. Kafka's partitions are merged from the live table at the swap.
 */
async function recordPosition(client: PoolClient, context: ApplyContext, position: Position): Promise<void> {
  await client.query(
    `INSERT INTO projection_partition_positions (projection, partition, position)
     SELECT unnest($1::text[]), 0, $2
     ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position
     WHERE projection_partition_positions.position < excluded.position`,
    [context.projections.map((p) => p.name), position],
  );
}

/**
 * Locks the live tables in the projector's own order (stream progress, partition positions, read models), so the
 * live projector waits behind us rather than deadlocking with us. Short lock timeouts, retried: while we wait in
 * the lock queue, the queries queued behind us wait too.
 */
async function lockLive(
  client: PoolClient,
  names: readonly string[],
  mode: 'SHARE' | 'ACCESS EXCLUSIVE',
  lockTimeoutMs: number,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    await client.query('SAVEPOINT rebuild_lock');
    try {
      await client.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
      await client.query(
        `LOCK TABLE ${names.map((name) => qualified('public', name)).join(', ')} IN ${mode} MODE`,
      );
      await client.query(`SELECT set_config('lock_timeout', '0', true)`);
      await client.query('RELEASE SAVEPOINT rebuild_lock');
      return;
    } catch (error) {
      const code = (error as { code?: string }).code;
      // lock_not_available, deadlock_detected
      if ((code !== '55P03' && code !== '40P01') || attempt >= 5) throw error;
      await client.query('ROLLBACK TO SAVEPOINT rebuild_lock');
      await sleep(200 * attempt);
    }
  }
}

/**
 * Compares at one checkpoint. The live read models are locked against writes (readers carry on), the new ones
 * are caught up to the log as readable now, and so every event the live projector has applied is in both. The
 * live projector may still be behind (Kafka lag): the rows of streams whose revision in the live guard table is
 * below the rebuilt one are left out and counted, not reported.
 */
async function verifyAgainstLive(
  client: PoolClient,
  context: ApplyContext,
  tables: readonly ReadModelTable[],
  after: Position | null,
  options: RebuildOptions,
): Promise<{
  events: number;
  position: Position | null;
  differences: TableDifference[];
  streamsBehind: number;
}> {
  await client.query('BEGIN');
  try {
    await client.query(`SELECT set_config('statement_timeout', '0', true)`);
    await lockLive(
      client,
      ['projection_stream_progress', ...tables.map((t) => t.name)],
      'SHARE',
      options.lockTimeoutMs ?? 5000,
    );
    const caughtUp = await catchUp(client, context, after);
    const differences: TableDifference[] = [];
    let streamsBehind = 0;
    for (const projection of context.projections) {
      streamsBehind += await countStreamsBehind(client, context.schema, projection.name);
      for (const table of projection.tables) {
        const difference = await compareTable(
          client,
          context.schema,
          projection.name,
          table,
          options.sampleLimit ?? 20,
        );
        if (difference) differences.push(difference);
      }
    }
    await client.query('COMMIT');
    context.logger.info(
      { differences: differences.map((d) => d.table), streamsBehind },
      differences.length === 0
        ? 'rebuilt read models equal the live ones'
        : 'rebuilt read models differ from the live ones',
    );
    return { ...caughtUp, differences, streamsBehind };
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

/**
 * The swap, in one transaction. Why no event is lost: the live tables are locked ACCESS EXCLUSIVE first, so from
 * then on the live projector applies nothing. Everything it applied before committed before our lock, and it
 * had read each of those events from the log, so each is readable now and at or before the position the
 * catch-up below reaches (the log is read in commit-safe order, so nothing readable later can sort before it).
 * The new tables therefore hold every event the old ones hold, and more. The projector's own checkpoint is at
 * or before the last event it applied, so whatever it has not applied yet it will still be given, and it lands in
 * the swapped-in tables; what it is given again is skipped by the stream guards, which move with the tables.
 */
async function swapIn(
  client: PoolClient,
  context: ApplyContext,
  tables: readonly ReadModelTable[],
  after: Position | null,
  oldSchema: string,
  lockTimeoutMs: number,
): Promise<{ events: number; position: Position | null }> {
  const { schema } = context;
  const names = allTableNames(tables);
  const rebuilt = context.projections.map((p) => p.name);
  await client.query('BEGIN');
  try {
    await client.query(`SELECT set_config('statement_timeout', '0', true)`);
    await lockLive(client, names, 'ACCESS EXCLUSIVE', lockTimeoutMs);
    for (const name of names) await assertSameShape(client, schema, name);
    const caughtUp = await catchUp(client, context, after);

    // Projections not rebuilt keep their guards and positions: those tables move as a whole.
    for (const name of PROGRESS_TABLES)
      await client.query(
        `INSERT INTO ${qualified(schema, name)} SELECT * FROM ${qualified('public', name)} WHERE projection <> ALL ($1)`,
        [rebuilt],
      );
    // Kafka's partitions: everything up to the catch-up position is applied, whichever partition carried it.
    await client.query(
      `INSERT INTO ${qualified(schema, 'projection_partition_positions')} AS p (projection, partition, position)
       SELECT projection, partition, CASE WHEN $2::text > position THEN $2::text ELSE position END
         FROM public.projection_partition_positions WHERE projection = ANY ($1)
       ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position
       WHERE p.position < excluded.position`,
      [rebuilt, caughtUp.position ?? ''],
    );

    await client.query(`CREATE SCHEMA ${ident(oldSchema)}`);
    for (const name of names)
      await client.query(`ALTER TABLE ${qualified('public', name)} SET SCHEMA ${ident(oldSchema)}`);
    for (const name of names) await client.query(`ALTER TABLE ${qualified(schema, name)} SET SCHEMA public`);
    await client.query(`DROP SCHEMA ${ident(schema)}`);
    await client.query('COMMIT');
    return caughtUp;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}
