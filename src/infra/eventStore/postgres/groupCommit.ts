import type { Pool } from '../../db/pool.js';
import { isConnectionError, isUniqueViolation } from '../../db/pool.js';
import { prepared } from '../../db/prepared.js';
import { ServiceUnavailableError } from '../../../errors.js';
import { chainHashes } from '../hashChain.js';
import { encodePosition, type AppendResult, type NewEvent } from '../eventStore.js';

/** One caller's append, with everything needed to write it without reading first. */
export interface BatchedAppend {
  streamId: string;
  events: NewEvent[];
  /** The stream's last revision the caller read; null = the stream must not exist. */
  expectedHead: number | null;
  /** The chain hash of the event at expectedHead (GENESIS_HASH for a new stream). */
  previousHash: string;
}

/** What happened to one append of a batch. Only that append's own outcome: the others are independent. */
export type BatchedAppendOutcome =
  | { kind: 'appended'; result: AppendResult }
  /** The stream's head is not the expected one (null: no stream). */
  | { kind: 'conflict'; actualHead: number | null }
  /** Some of its event ids are already stored: the caller checks whether it is a retry of the same append. */
  | { kind: 'duplicate' };

/** The events of many appends as column arrays for `unnest`, each chained to the previous hash its caller read. */
function eventRows(appends: readonly BatchedAppend[]) {
  const columns = {
    /** Per append: the chain hash of its last event. */
    lastHashes: [] as string[],
    appendIndex: [] as number[],
    streamIds: [] as string[],
    revisions: [] as number[],
    eventIds: [] as string[],
    types: [] as string[],
    data: [] as string[],
    metadata: [] as string[],
  };
  appends.forEach((append, index) => {
    const firstRevision = append.expectedHead === null ? 0 : append.expectedHead + 1;
    const rawData = append.events.map((event) => JSON.stringify(event.data));
    const hashes = chainHashes(
      append.streamId,
      firstRevision,
      append.previousHash,
      append.events.map((event, i) => ({ type: event.type, rawData: rawData[i]! })),
    );
    columns.lastHashes.push(hashes.at(-1)!);
    append.events.forEach((event, i) => {
      columns.appendIndex.push(index);
      columns.streamIds.push(append.streamId);
      columns.revisions.push(firstRevision + i);
      columns.eventIds.push(event.eventId);
      columns.types.push(event.type);
      columns.data.push(rawData[i]!);
      columns.metadata.push(JSON.stringify({ ...event.metadata, hash: hashes[i] }));
    });
  });
  return columns;
}

/**
 * The group commit's one statement: it refuses the appends whose stream head is not the expected one, skips those
 * whose event ids are stored, and inserts the rest. Each connection plans it once (a prepared statement on a
 * connection with generic plans, see PostgresEventStore): its plan must not depend on the arrays' sizes or on how
 * large `events` was when it was planned. So every look-up in `events` is a per-row subquery on a unique index (the
 * stream's head, an event id's presence); a join of the batch to `events` would be planned as a hash join over a
 * sequential scan while the log is small, and that plan would then be kept. `OFFSET 0` keeps the EXISTS a per-row
 * subquery instead of a join.
 */
export const GROUP_COMMIT_STATEMENT = `WITH appends AS (
     SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[]) AS a(idx, stream_id, expected_head)
   ), heads AS (
     SELECT a.idx, a.expected_head,
            (SELECT max(e.revision) FROM events e WHERE e.stream_id = a.stream_id) AS head
       FROM appends a
   ), duplicates AS (
     SELECT DISTINCT r.idx FROM unnest($4::int[], $5::uuid[]) AS r(idx, event_id)
      WHERE EXISTS (SELECT FROM events e WHERE e.event_id = r.event_id OFFSET 0)
   ), refused AS (
     SELECT idx, head FROM heads
      WHERE head IS DISTINCT FROM expected_head AND idx NOT IN (SELECT idx FROM duplicates)
   ), inserted AS (
     INSERT INTO events (stream_id, revision, event_id, type, data, metadata)
     SELECT r.stream_id, r.revision, r.event_id, r.type, r.data, r.metadata::jsonb
       FROM unnest($4::int[], $6::text[], $7::bigint[], $5::uuid[], $8::text[], $9::text[], $10::text[])
            WITH ORDINALITY AS r(idx, stream_id, revision, event_id, type, data, metadata, ord)
      WHERE r.idx NOT IN (SELECT idx FROM refused) AND r.idx NOT IN (SELECT idx FROM duplicates)
      ORDER BY r.ord
     RETURNING stream_id, transaction_id, sequence
   )
   SELECT 'inserted' AS kind, NULL::int AS idx, stream_id, transaction_id::text AS transaction_id,
          max(sequence)::text AS sequence, NULL::text AS head
     FROM inserted GROUP BY stream_id, transaction_id
   UNION ALL SELECT 'refused', idx, NULL, NULL, NULL, head::text FROM refused
   UNION ALL SELECT 'duplicate', idx, NULL, NULL, NULL, NULL FROM duplicates`;

export interface GroupCommitSettings {
  /** The most appends one statement carries. */
  maxBatch: number;
  /** Statements in flight at once (each on its own connection). */
  maxInFlight: number;
}

export const DEFAULT_GROUP_COMMIT: GroupCommitSettings = { maxBatch: 500, maxInFlight: 2 };

interface Pending {
  append: BatchedAppend;
  resolve: (outcome: BatchedAppendOutcome) => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit: appends that arrive while a write is in flight share the next statement, one INSERT for many
 * streams. The statement itself refuses the appends whose stream head is not the expected one, and skips the
 * ones whose event ids are stored, so each caller gets its own outcome. A concurrent writer can still take a
 * revision between the check and the insert; PostgreSQL then refuses the whole statement (unique key) and it is
 * simply run again, when the check sees that writer's row. No NOTIFY here: a notifying transaction takes a
 * cluster-wide lock at commit, which would make every append commit one at a time.
 */
export class GroupCommitAppender {
  private readonly queue: Pending[] = [];
  private readonly streamsInFlight = new Set<string>();
  private inFlight = 0;
  private closing = false;
  /** Called once nothing is queued or in flight (see close). */
  private readonly onIdle: Array<() => void> = [];

  constructor(
    private readonly pool: Pool,
    private readonly settings: GroupCommitSettings = DEFAULT_GROUP_COMMIT,
  ) {}

  append(append: BatchedAppend): Promise<BatchedAppendOutcome> {
    // A process that is stopping answers 503, as when the database is away.
    if (this.closing)
      return Promise.reject(new ServiceUnavailableError(1, 'The event store is closing: try again.'));
    return new Promise((resolve, reject) => {
      this.queue.push({ append, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.settings.maxInFlight && this.queue.length > 0) {
      // One append per stream per statement, and none for a stream another statement is writing: they would
      // collide on the stream's next revision and refuse each other's whole batch.
      const batch: Pending[] = [];
      const streams = new Set<string>();
      for (let index = 0; index < this.queue.length && batch.length < this.settings.maxBatch;) {
        const { streamId } = this.queue[index]!.append;
        if (streams.has(streamId) || this.streamsInFlight.has(streamId)) {
          index++;
          continue;
        }
        streams.add(streamId);
        batch.push(this.queue.splice(index, 1)[0]!);
      }
      if (batch.length === 0) return;
      this.inFlight++;
      for (const stream of streams) this.streamsInFlight.add(stream);
      void this.flush(batch).finally(() => {
        this.inFlight--;
        for (const stream of streams) this.streamsInFlight.delete(stream);
        this.pump();
        if (this.idle) for (const idle of this.onIdle.splice(0)) idle();
      });
    }
  }

  /** Nothing queued, nothing in flight. */
  private get idle(): boolean {
    return this.inFlight === 0 && this.queue.length === 0;
  }

  /** Refuses new appends and resolves once those already given are written (or failed), before its pool ends. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.idle) return;
    await new Promise<void>((resolve) => this.onIdle.push(resolve));
  }

  private async flush(batch: Pending[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        const outcomes = await this.write(batch.map((pending) => pending.append));
        batch.forEach((pending, index) => pending.resolve(outcomes[index]!));
        return;
      } catch (error) {
        // Lost a race for some revision or event id to a writer outside this batch: the next run's check sees it.
        // A deadlock (a claim holding the schedule row this append's trigger updates) is retried the same way.
        if ((isUniqueViolation(error) || (error as { code?: string }).code === '40P01') && attempt < 5)
          continue;
        // One append PostgreSQL refuses (bad bytes, say) must not fail the others: write them one by one, so
        // each caller gets its own answer. When the database itself is away, every one of them fails alike.
        if (batch.length > 1 && !isConnectionError(error)) {
          await Promise.all(batch.map((pending) => this.flush([pending])));
          return;
        }
        for (const pending of batch) pending.reject(error);
        return;
      }
    }
  }

  /** The batch as one statement (autocommit, so one WAL flush for all of it). */
  private async write(appends: BatchedAppend[]): Promise<BatchedAppendOutcome[]> {
    const columns = eventRows(appends);
    const { rows } = await this.pool.query<{
      kind: 'inserted' | 'refused' | 'duplicate';
      idx: number | null;
      stream_id: string | null;
      transaction_id: string | null;
      sequence: string | null;
      head: string | null;
    }>(
      prepared(GROUP_COMMIT_STATEMENT, [
        appends.map((_, index) => index),
        appends.map((append) => append.streamId),
        appends.map((append) => append.expectedHead),
        columns.appendIndex,
        columns.eventIds,
        columns.streamIds,
        columns.revisions,
        columns.types,
        columns.data,
        columns.metadata,
      ]),
    );
    const outcomes: Array<BatchedAppendOutcome | undefined> = new Array(appends.length);
    const byStream = new Map(appends.map((append, index) => [append.streamId, index]));
    for (const row of rows) {
      if (row.kind === 'inserted') {
        const index = byStream.get(row.stream_id!)!;
        const append = appends[index]!;
        const first = append.expectedHead === null ? 0 : append.expectedHead + 1;
        outcomes[index] = {
          kind: 'appended',
          result: {
            nextRevision: first + append.events.length - 1,
            position: encodePosition(BigInt(row.transaction_id!), BigInt(row.sequence!)),
            hash: columns.lastHashes[index]!,
          },
        };
      } else if (row.kind === 'refused') {
        outcomes[row.idx!] = { kind: 'conflict', actualHead: row.head === null ? null : Number(row.head) };
      } else {
        outcomes[row.idx!] = { kind: 'duplicate' };
      }
    }
    return outcomes.map((outcome, index) => {
      if (!outcome) throw new Error(`group commit: no outcome for the append to ${appends[index]!.streamId}`);
      return outcome;
    });
  }
}
