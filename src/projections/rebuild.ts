import { isDeepStrictEqual } from 'node:util';
import { sleep } from '../infra/abort.js';
import { inTransaction, type Pool, type PoolClient } from '../infra/db/pool.js';
import type { EventStore, JsonValue, Position, RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import { isDataError, type Projection } from './projectionRunner.js';

export interface ReadModelTable {
  name: string;
  /**
   * SQL naming the stream a row of this table was built from, over the row alias `r`. Verify leaves out the rows
   * of streams the live projector has not reached yet, so a projector that is merely behind is not reported as
   * a difference.
   */
  streamOf: string;
  /** Shown as "[redacted]" in differences: the CLI prints them, and secrets do not belong in a terminal. */
  secretColumns?: readonly string[];
}

/**
 * The tables each projection writes, by projection name. A new projection must be listed here: the rebuild
 * refuses to run without it, and because the rebuild's search_path holds only the new schema, a table missing
 * from its list fails loudly instead of being written in the live schema.
 */
export const READ_MODEL_TABLES: Readonly<Record<string, readonly ReadModelTable[]>> = {
  // Stored emails are already normalised, so their hash is the account stream's (accountStreamId).
  users: [{ name: 'users', streamOf: `'account-' || encode(sha256(convert_to(r.email, 'UTF8')), 'hex')` }],
  refresh_tokens: [
    { name: 'refresh_tokens', streamOf: `'session-' || r.session_id`, secretColumns: ['token_hash'] },
  ],
  tasks: [{ name: 'tasks', streamOf: `'task-' || r.id` }],
};

/** Rebuilt beside the read models: the new tables must carry their own guards and positions into the swap. */
const PROGRESS_TABLES = ['projection_stream_progress', 'projection_partition_positions'] as const;

export interface RowDifference {
  key: Record<string, JsonValue>;
  /** `missingInLive`: only the rebuild has this key; `missingInRebuild`: only live has it; `changed`: both, unequal. */
  kind: 'missingInLive' | 'missingInRebuild' | 'changed';
  /** The columns whose values differ (every column for a missing row), in table order. */
  columns: string[];
  live: Record<string, JsonValue> | null;
  rebuild: Record<string, JsonValue> | null;
}

export interface TableDifference {
  table: string;
  /** Rebuilt rows live does not have as they are (a changed row counts here and in missingInRebuild). */
  missingInLive: number;
  /** Live rows the rebuild does not have as they are. */
  missingInRebuild: number;
  /** Keys present on both sides with different values. */
  changed: number;
  /** The first differing rows by key, at most `sampleLimit`. */
  samples: RowDifference[];
}

export interface RebuildReport {
  /** The schema the read models were built in; after a swap its tables are the live ones and it is gone. */
  schema: string;
  /** Log events read (the ones no projection handles included). */
  events: number;
  /** The last log position the rebuilt tables contain. */
  position: Position | null;
  durationMs: number;
  /** Of the bulk phase: reading the log and applying it, without verify and swap. */
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
  /** Events per log read. */
  pageSize?: number;
  /** Transactions applying a page at once, each for its own share of the streams. */
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

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;
const qualified = (schema: string, table: string): string => `${ident(schema)}.${ident(table)}`;

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
    await createTables(control, schema, tables);
    logger.info({ schema, tables }, 'rebuilding read models from the log');

    const context: ApplyContext = {
      pool,
      store,
      projections,
      logger,
      schema,
      pageSize: options.pageSize ?? 1000,
    };
    const total = await countEvents(pool, store);
    const bulkStarted = Date.now();
    const bulk = await applyLogInParallel(context, options.concurrency ?? 4, (events) =>
      options.onProgress?.({ events, total: total === null ? null : Math.max(total, events) }),
    );
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

/** One line for a terminal: the row's key and what differs. */
export function describeDifference(table: string, difference: RowDifference): string {
  const key = Object.entries(difference.key)
    .map(([column, value]) => `${column}=${String(value)}`)
    .join(' ');
  if (difference.kind === 'missingInLive') return `${table} ${key}: missing in live`;
  if (difference.kind === 'missingInRebuild') return `${table} ${key}: in live, not in the log`;
  const changes = difference.columns.map(
    (column) =>
      `${column} live ${JSON.stringify(difference.live?.[column])}, rebuilt ${JSON.stringify(difference.rebuild?.[column])}`,
  );
  return `${table} ${key}: ${changes.join('; ')}`;
}

interface ApplyContext {
  pool: Pool;
  store: EventStore;
  projections: readonly Projection[];
  logger: Logger;
  schema: string;
  pageSize: number;
}

function readModelTables(projections: readonly Projection[]): ReadModelTable[] {
  const tables: ReadModelTable[] = [];
  for (const projection of projections) {
    const own = READ_MODEL_TABLES[projection.name];
    if (!own) throw new Error(`projection ${projection.name} has no tables listed in READ_MODEL_TABLES`);
    for (const table of own) if (!tables.some((t) => t.name === table.name)) tables.push(table);
  }
  return tables;
}

const allTableNames = (tables: readonly ReadModelTable[]): string[] => [
  ...PROGRESS_TABLES,
  ...tables.map((table) => table.name),
];

async function createTables(
  client: PoolClient,
  schema: string,
  tables: readonly ReadModelTable[],
): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(`CREATE SCHEMA ${ident(schema)}`);
    for (const name of allTableNames(tables)) {
      await client.query(
        `CREATE TABLE ${qualified(schema, name)} (LIKE ${qualified('public', name)} INCLUDING ALL)`,
      );
      await alignNames(client, schema, name);
      await assertSameShape(client, schema, name);
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

interface Shape {
  columns: string[];
  /** name -> definition without its name and table */
  indexes: Record<string, string>;
  constraints: Record<string, string>;
}

async function shapeOf(client: PoolClient, schema: string, table: string): Promise<Shape> {
  const relation = qualified(schema, table);
  const columns = await client.query<{ column: string }>(
    `SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
            || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || a.attidentity::text || a.attgenerated::text AS column
       FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [relation],
  );
  const indexes = await client.query<{ name: string; definition: string }>(
    `SELECT c.relname AS name,
            regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON (ONLY )?\\S+ ', 'CREATE \\1INDEX ON ') AS definition
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      WHERE i.indrelid = $1::regclass`,
    [relation],
  );
  const constraints = await client.query<{ name: string; definition: string }>(
    `SELECT conname AS name, contype::text || ' ' || pg_get_constraintdef(oid) AS definition
       FROM pg_constraint WHERE conrelid = $1::regclass`,
    [relation],
  );
  return {
    columns: columns.rows.map((row) => row.column),
    indexes: Object.fromEntries(indexes.rows.map((row) => [row.name, row.definition])),
    constraints: Object.fromEntries(constraints.rows.map((row) => [row.name, row.definition])),
  };
}

/**
 * LIKE names copied indexes by the default rule (`tasks_queue_priority_run_at_created_at_idx`, not
 * `tasks_dispatch`); after the swap they are the live ones, and later migrations refer to them by name.
 */
async function alignNames(client: PoolClient, schema: string, table: string): Promise<void> {
  const rename = async (kind: 'constraints' | 'indexes', statement: (from: string, to: string) => string) => {
    const live = await shapeOf(client, 'public', table);
    const rebuilt = await shapeOf(client, schema, table);
    for (const [name, definition] of Object.entries(live[kind])) {
      if (name in rebuilt[kind]) continue;
      const twin = Object.keys(rebuilt[kind]).find(
        (candidate) => rebuilt[kind][candidate] === definition && !(candidate in live[kind]),
      );
      if (twin) {
        await client.query(statement(twin, name));
        delete rebuilt[kind][twin];
      }
    }
  };
  // Renaming a constraint renames its index too, so constraints go first.
  await rename(
    'constraints',
    (from, to) => `ALTER TABLE ${qualified(schema, table)} RENAME CONSTRAINT ${ident(from)} TO ${ident(to)}`,
  );
  await rename('indexes', (from, to) => `ALTER INDEX ${qualified(schema, from)} RENAME TO ${ident(to)}`);
}

async function assertSameShape(client: PoolClient, schema: string, table: string): Promise<void> {
  const live = await shapeOf(client, 'public', table);
  const rebuilt = await shapeOf(client, schema, table);
  if (!isDeepStrictEqual(live, rebuilt))
    throw new Error(
      `${schema}.${table} does not have the shape of public.${table} (was it migrated during the rebuild?): ` +
        `live ${JSON.stringify(live)}, rebuilt ${JSON.stringify(rebuilt)}`,
    );
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
 * over `concurrency` transactions: a stream's events stay in order in one of them, and no read model row depends
 * on two streams, so the transactions cannot conflict. Stops at the first short page: whatever arrives after
 * that is caught up by verify or the swap.
 */
async function applyLogInParallel(
  context: ApplyContext,
  concurrency: number,
  onPage: (events: number) => void,
): Promise<{ events: number; position: Position | null }> {
  const lanes = Math.max(1, Math.floor(concurrency));
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

function laneOf(streamId: string, lanes: number): number {
  let hash = 2166136261; // FNV-1a
  for (let i = 0; i < streamId.length; i++) hash = Math.imul(hash ^ streamId.charCodeAt(i), 16777619);
  return (hash >>> 0) % lanes;
}

/**
 * Only the new schema, not public after it: the projections' unqualified names reach the new tables, and a table
 * missing from READ_MODEL_TABLES is an error instead of a silent write to a live one. LOCAL: the connection goes
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

interface Pending {
  projection: Projection;
  event: RecordedEvent;
}

/**
 * applyOnce's semantics for many events in one transaction: an event is applied at most once per projection (the
 * stream-revision guard, read once for the batch, kept in memory, written back at the end); data a projection
 * cannot use is logged and skipped without losing the rest. The fast path has no savepoint per event; the first
 * data error rolls the batch back and replays it the careful way, as applyOnce would.
 */
async function applyBatch(client: PoolClient, context: ApplyContext, events: RecordedEvent[]): Promise<void> {
  const pending: Pending[] = [];
  for (const event of events)
    for (const projection of context.projections)
      if (projection.eventTypes.has(event.type)) pending.push({ projection, event });
  if (pending.length === 0) return;

  const guardKey = (projection: string, stream: string) => `${projection}\u0000${stream}`;
  const { rows } = await client.query<{ projection: string; stream_id: string; revision: number }>(
    `SELECT projection, stream_id, revision FROM projection_stream_progress
      WHERE (projection, stream_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
    [pending.map((p) => p.projection.name), pending.map((p) => p.event.streamId)],
  );
  const stored = new Map(rows.map((row) => [guardKey(row.projection, row.stream_id), row.revision]));

  const run = async (careful: boolean) => {
    const guards = new Map(stored);
    const progress = new Map<
      string,
      { projection: string; stream: string; revision: number; position: string }
    >();
    for (const { projection, event } of pending) {
      const key = guardKey(projection.name, event.streamId);
      const seen = guards.get(key);
      if (seen !== undefined && seen >= event.revision) continue;
      guards.set(key, event.revision);
      progress.set(key, {
        projection: projection.name,
        stream: event.streamId,
        revision: event.revision,
        position: event.position,
      });
      if (!careful) {
        await projection.apply(client, event);
        continue;
      }
      await client.query('SAVEPOINT rebuild_event');
      try {
        await projection.apply(client, event);
        await client.query('RELEASE SAVEPOINT rebuild_event');
      } catch (error) {
        if (!isDataError(error)) throw error;
        await client.query('ROLLBACK TO SAVEPOINT rebuild_event');
        context.logger.error(
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
    return [...progress.values()];
  };

  await client.query('SAVEPOINT rebuild_batch');
  let progress;
  try {
    progress = await run(false);
  } catch (error) {
    if (!isDataError(error)) throw error;
    await client.query('ROLLBACK TO SAVEPOINT rebuild_batch');
    progress = await run(true);
  }
  await client.query(
    `INSERT INTO projection_stream_progress (projection, stream_id, revision, position)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
     ON CONFLICT (projection, stream_id) DO UPDATE SET revision = excluded.revision, position = excluded.position
     WHERE projection_stream_progress.revision < excluded.revision`,
    [
      progress.map((p) => p.projection),
      progress.map((p) => p.stream),
      progress.map((p) => p.revision),
      progress.map((p) => p.position),
    ],
  );
  await client.query('RELEASE SAVEPOINT rebuild_batch');
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
      for (const table of READ_MODEL_TABLES[projection.name]!) {
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

const behindSql = (schema: string) =>
  `SELECT n.stream_id FROM ${qualified(schema, 'projection_stream_progress')} n
     LEFT JOIN public.projection_stream_progress l ON l.projection = n.projection AND l.stream_id = n.stream_id
    WHERE n.projection = $1 AND (l.revision IS NULL OR l.revision < n.revision)`;

async function countStreamsBehind(client: PoolClient, schema: string, projection: string): Promise<number> {
  const { rows } = await client.query<{ count: number }>(
    `SELECT count(*) AS count FROM (${behindSql(schema)}) b`,
    [projection],
  );
  return rows[0]!.count;
}

async function primaryKey(client: PoolClient, table: string): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT a.attname AS name FROM pg_index i
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1::regclass AND i.indisprimary
      ORDER BY array_position(i.indkey::int2[], a.attnum)`,
    [qualified('public', table)],
  );
  if (rows.length === 0) throw new Error(`read-model table ${table} has no primary key to compare rows by`);
  return rows.map((row) => row.name);
}

/** EXCEPT both ways, on the rows of streams both sides have reached. Samples as json, not jsonb: column order kept. */
async function compareTable(
  client: PoolClient,
  schema: string,
  projection: string,
  table: ReadModelTable,
  sampleLimit: number,
): Promise<TableDifference | null> {
  const key = await primaryKey(client, table.name);
  const keyList = (alias: string) => key.map((column) => `${alias}.${ident(column)}`).join(', ');
  const sameKey = (a: string, b: string) => `ROW(${keyList(a)}) = ROW(${keyList(b)})`;
  const settled = (relation: string) =>
    `SELECT r.* FROM ${relation} r WHERE NOT EXISTS (SELECT FROM behind b WHERE b.stream_id = ${table.streamOf})`;
  const { rows } = await client.query<{
    missing_in_live: number;
    missing_in_rebuild: number;
    changed: number;
    samples: Array<{ live: Record<string, JsonValue> | null; rebuild: Record<string, JsonValue> | null }>;
  }>(
    `WITH behind AS MATERIALIZED (${behindSql(schema)}),
          rebuilt AS (${settled(qualified(schema, table.name))}),
          live AS (${settled(qualified('public', table.name))}),
          only_rebuilt AS MATERIALIZED (SELECT * FROM rebuilt EXCEPT ALL SELECT * FROM live),
          only_live AS MATERIALIZED (SELECT * FROM live EXCEPT ALL SELECT * FROM rebuilt),
          keys AS (SELECT ${keyList('x')} FROM only_rebuilt x UNION SELECT ${keyList('x')} FROM only_live x
                   ORDER BY ${key.map((_, i) => i + 1).join(', ')} LIMIT $2)
     SELECT (SELECT count(*) FROM only_rebuilt) AS missing_in_live,
            (SELECT count(*) FROM only_live) AS missing_in_rebuild,
            (SELECT count(*) FROM only_rebuilt x WHERE EXISTS (SELECT FROM only_live y WHERE ${sameKey('x', 'y')})) AS changed,
            (SELECT coalesce(json_agg(json_build_object(
                      'rebuild', (SELECT to_json(x) FROM only_rebuilt x WHERE ${sameKey('x', 'k')}),
                      'live', (SELECT to_json(x) FROM only_live x WHERE ${sameKey('x', 'k')}))
                    ORDER BY ${keyList('k')}), '[]'::json)
               FROM keys k) AS samples`,
    [projection, sampleLimit],
  );
  const result = rows[0]!;
  if (result.missing_in_live === 0 && result.missing_in_rebuild === 0) return null;
  return {
    table: table.name,
    missingInLive: result.missing_in_live,
    missingInRebuild: result.missing_in_rebuild,
    changed: result.changed,
    samples: result.samples.map(({ live, rebuild }) => describeRow(key, table, live, rebuild)),
  };
}

function describeRow(
  key: readonly string[],
  table: ReadModelTable,
  live: Record<string, JsonValue> | null,
  rebuild: Record<string, JsonValue> | null,
): RowDifference {
  const row = (rebuild ?? live)!;
  const kind = live && rebuild ? 'changed' : rebuild ? 'missingInLive' : 'missingInRebuild';
  const columns =
    live && rebuild
      ? Object.keys(rebuild).filter((column) => !isDeepStrictEqual(live[column], rebuild[column]))
      : Object.keys(row);
  const redact = (values: Record<string, JsonValue> | null) =>
    values &&
    Object.fromEntries(
      Object.entries(values).map(([column, value]) => [
        column,
        table.secretColumns?.includes(column) && value !== null ? '[redacted]' : value,
      ]),
    );
  return {
    key: Object.fromEntries(key.map((column) => [column, row[column] ?? null])),
    kind,
    columns,
    live: redact(live),
    rebuild: redact(rebuild),
  };
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
