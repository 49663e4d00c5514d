import type { QueryConfig } from 'pg';
import type { PoolClient } from '../infra/db/pool.js';
import { isUuid } from '../infra/uuid.js';
import type { StaleEntry } from '../infra/cache/cache.js';
import type { Position, RecordedEvent } from '../infra/eventStore/eventStore.js';

/** A table a projection owns: what rebuild creates beside the live one, fills, compares and swaps in. */
export interface ReadModelTable {
  name: string;
  /**
   * SQL naming the stream a row of this table was built from, over the row alias `r`. Verify leaves out the rows
   * of streams the live projector has not reached yet, so a projector that is merely behind is not reported as
   * a difference.
   */
  streamOf: string;
}

/** Called for an event whose data the projection cannot use; the event is left out, the others go on. */
export type OnBadEvent = (event: RecordedEvent, error: unknown) => void;

/**
 * A read model built from the log, and the one registry of read models: rebuild takes its tables from here.
 * The runner (applyEvents, applyEventsInOneWrite) owns idempotency: `project` and `fold` are only given events not
 * applied yet, each stream's in revision order, inside the transaction (or before the one statement) that also
 * records the guards and positions, so they must only use `client`.
 */
export interface Projection {
  readonly name: string;
  readonly eventTypes: ReadonlySet<string>;
  readonly tables: readonly ReadModelTable[];
  /** Each row is built from one stream's events only (see FoldDefinition.rowPerStream). */
  readonly rowPerStream: boolean;
  /**
   * Folds the events onto the rows they touch, in memory, and writes each changed row once. Returns the cache
   * entries the change makes stale, each with the position of the last event its row now reflects. Events whose
   * data it cannot use go to `onBadEvent` and change nothing; database errors (data errors the database reports
   * included) throw.
   */
  project(
    client: PoolClient,
    events: readonly RecordedEvent[],
    onBadEvent: OnBadEvent,
    options?: ProjectOptions,
  ): Promise<StaleEntry[]>;
  /**
   * As `project`, but the changed rows' writes are returned, not run: the caller runs them in one statement with
   * the guards' compare-and-set (applyEventsInOneWrite). The rows the batch touches are read through `client`.
   */
  fold(
    client: Queryable,
    events: readonly RecordedEvent[],
    onBadEvent: OnBadEvent,
    options?: ProjectOptions,
  ): Promise<FoldedBatch>;
}

/** What reads rows: a pooled client inside a transaction, or the pool itself for one statement. */
export type Queryable = Pick<PoolClient, 'query'>;

/** What a fold's write is given: statements go to it one after the other (run at once, or recorded). */
export interface StatementSink {
  query(text: string, values: unknown[]): Promise<unknown>;
}

/** A batch folded in memory: the statements that write its changed rows, in order, and the cache entries they make stale. */
export interface FoldedBatch {
  writes: QueryConfig[];
  stale: StaleEntry[];
}

export interface ProjectOptions {
  /**
   * The caller created these tables empty and gives them each event of the log once, in log order (a rebuild):
   * a stream whose revision 0 is in the batch has nothing in them yet. The live projector never says so: a bus
   * may give it an event twice (its revision 0 would reset the row), and its rows also guard themselves against
   * old events, should the tables and the guards ever be restored apart.
   */
  exclusive?: boolean;
  /**
   * Read the rows without locking them: the caller compares-and-sets the streams' guards in the statement that
   * writes the rows, which covers rows built from one stream each (`rowPerStream`). Exclusive appliers never lock.
   */
  unlocked?: boolean;
}

/**
 * How a read model folds: rows keyed by something every event names, loaded once per batch, evolved in memory
 * by a pure function, written back once. `null` is "no row" (never created, or deleted).
 */
export interface FoldDefinition<Row> {
  name: string;
  eventTypes: ReadonlySet<string>;
  tables: readonly ReadModelTable[];
  /** The row the event is about. Throws (a TypeError) on an event that does not name one properly. */
  keyOf(event: RecordedEvent): string;
  /**
   * True when each row is built from one stream's events only, and keyOf throws on an event whose key is not its
   * stream's. Then, for an exclusive applier (see {@link ProjectOptions}), a stream's first event (revision 0)
   * finds no row, and its key is not loaded.
   */
  rowPerStream?: boolean;
  /**
   * The current rows of these keys; a key without a row is left out. With `lock`, each row read is locked FOR
   * UPDATE until the transaction ends, so another applier of a different stream that touches the same row waits.
   */
  load(client: Queryable, keys: readonly string[], lock: boolean): Promise<Map<string, Row>>;
  /** Pure. Returns `row` itself when nothing changes. Throws a TypeError or RangeError on data it cannot use. */
  evolve(row: Row | null, event: RecordedEvent): Row | null;
  /**
   * Writes the changed rows (`null`: delete it) in as few statements as it can. It must not read what it wrote:
   * its statements may be recorded and run later as parts of one statement, which sees none of the others' writes.
   */
  write(sink: StatementSink, changed: ReadonlyArray<{ key: string; row: Row | null }>): Promise<void>;
  /** The query cache's key for a row, when queries cache this read model's rows. */
  cacheKeyOf?(key: string): string;
}

/** The column types read models use, as the bulk writes name them. */
export type ColumnType =
  'uuid' | 'text' | 'integer' | 'bigint' | 'double precision' | 'timestamptz' | 'jsonb';

/**
 * Throws a TypeError when the database would reject `value` for the column. A fold checks every row it makes, so
 * a bad event is rejected where it happens, as one-by-one writes would reject it, even when a later event of the
 * batch overwrites the bad value before the row is written: the outcome never depends on where batches are cut.
 */
export function checkColumn(column: string, type: ColumnType, nullable: boolean, value: unknown): void {
  if (value === null || value === undefined) {
    if (!nullable) throw notA(column, type, value);
    return;
  }
  // No closure here: this runs for every column of every event a projection folds (rebuild included).
  let ok: boolean;
  switch (type) {
    case 'uuid':
      ok = typeof value === 'string' && isUuid(value);
      break;
    case 'text':
      ok = typeof value === 'string' && !value.includes('\u0000');
      break;
    case 'integer':
      ok = Number.isInteger(value) && Math.abs(value as number) <= 2 ** 31 - 1;
      break;
    case 'bigint':
      ok = Number.isSafeInteger(value);
      break;
    case 'double precision':
      ok = typeof value === 'number' && Number.isFinite(value);
      break;
    case 'timestamptz':
      ok = typeof value === 'string' && Number.isFinite(Date.parse(value));
      break;
    case 'jsonb':
      ok = true;
      break;
  }
  if (!ok) throw notA(column, type, value);
}

function notA(column: string, type: ColumnType, value: unknown): TypeError {
  return new TypeError(`${column}: ${JSON.stringify(value) ?? String(value)} is not a ${type}`);
}

/** Errors about the event's content (bad JSON shapes, constraint or type violations), not about the database being down. */
export function isDataError(error: unknown): boolean {
  if (error instanceof TypeError || error instanceof RangeError || error instanceof SyntaxError) return true;
  const code = (error as { code?: string }).code ?? '';
  return code.startsWith('22') || code.startsWith('23'); // data exceptions, integrity constraint violations
}

const NOTHING_FOLDED: FoldedBatch = { writes: [], stale: [] };

const uniqueKeys = (keyed: ReadonlyArray<{ key: string }>): string[] => [...new Set(keyed.map((k) => k.key))];

/** For an exclusive applier of a rowPerStream fold: the keys whose first event here is not their stream's first. */
function keysSeenBefore(keyed: ReadonlyArray<{ event: RecordedEvent; key: string }>): string[] {
  const firstRevision = new Map<string, number>();
  for (const { event, key } of keyed) if (!firstRevision.has(key)) firstRevision.set(key, event.revision);
  return [...firstRevision].flatMap(([key, revision]) => (revision === 0 ? [] : [key]));
}

/** A projection from a fold: one read of the rows a batch touches, one write of the rows it changed. */
export function defineProjection<Row>(definition: FoldDefinition<Row>): Projection {
  const { name, eventTypes, tables } = definition;
  const fold: Projection['fold'] = async (client, events, onBadEvent, options) => {
    const keyed: Array<{ event: RecordedEvent; key: string }> = [];
    for (const event of events) {
      try {
        keyed.push({ event, key: definition.keyOf(event) });
      } catch (error) {
        if (!isDataError(error)) throw error;
        onBadEvent(event, error);
      }
    }
    if (keyed.length === 0) return NOTHING_FOLDED;
    const toLoad = options?.exclusive && definition.rowPerStream ? keysSeenBefore(keyed) : uniqueKeys(keyed);
    const lock = !(options?.exclusive || options?.unlocked);
    const rows = toLoad.length > 0 ? await definition.load(client, toLoad, lock) : new Map<string, Row>();
    // Each changed row, and the position of the last event that changed it (a Map keeps first-touch order).
    const changed = new Map<string, Position>();
    for (const { event, key } of keyed) {
      const before = rows.get(key) ?? null;
      let after: Row | null;
      try {
        after = definition.evolve(before, event);
      } catch (error) {
        if (!isDataError(error)) throw error;
        onBadEvent(event, error);
        continue;
      }
      if (after === before) continue;
      if (after === null) rows.delete(key);
      else rows.set(key, after);
      changed.set(key, event.position);
    }
    if (changed.size === 0) return NOTHING_FOLDED;
    const writes: QueryConfig[] = [];
    await definition.write(
      {
        query: (text, values) => {
          writes.push({ text, values });
          return Promise.resolve();
        },
      },
      [...changed.keys()].map((key) => ({ key, row: rows.get(key) ?? null })),
    );
    const { cacheKeyOf } = definition;
    const stale = cacheKeyOf
      ? [...changed].map(([key, position]) => ({ key: cacheKeyOf(key), position }))
      : [];
    return { writes, stale };
  };
  return {
    name,
    eventTypes,
    tables,
    rowPerStream: definition.rowPerStream ?? false,
    fold,
    async project(client, events, onBadEvent, options) {
      const { writes, stale } = await fold(client, events, onBadEvent, options);
      for (const write of writes) await client.query(write);
      return stale;
    },
  };
}
