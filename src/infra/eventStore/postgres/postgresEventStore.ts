/**
 * src/infra/eventStore/postgres: the PostgreSQL adapter of the event store (this file: append, read, the log
 * below the safe horizon) and the group commit that appends many commands in one statement (groupCommit.ts).
 */
import pg from 'pg';
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { createPool, isUniqueViolation, type Pool } from '../../db/pool.js';
import type { Logger } from '../../logger.js';
import { backoffMs, sleep } from '../../abort.js';
import { chainHashes, GENESIS_HASH } from '../hashChain.js';
import { DEFAULT_GROUP_COMMIT, GroupCommitAppender, type GroupCommitSettings } from './groupCommit.js';
import {
  assertStreamId,
  decodePosition,
  encodePosition,
  revisionSatisfies,
  WrongExpectedRevisionError,
  type AppendOptions,
  type AppendResult,
  type AppendedEvent,
  type EventMetadata,
  type EventStore,
  type NewEvent,
  type Position,
  type ReadAllOptions,
  type RecordedEvent,
  type SubscribeOptions,
} from '../eventStore.js';
import { prepared } from '../../db/prepared.js';

const NOTIFY_CHANNEL = 'task_manager_events';
/** Appends in one process announce themselves to other processes at most this often. */
const NOTIFY_COALESCE_MS = 10;
/** What a store's LISTEN connection calls itself, so a store can tell whether another one listens. */
const LISTENER_APPLICATION_NAME = 'task-manager-listen';
/** The group commit's own connections (see appendPool). */
export const GROUP_COMMIT_APPLICATION_NAME = 'task-manager-append';

interface EventRow {
  sequence: number;
  transaction_id: string;
  stream_id: string;
  revision: number;
  event_id: string;
  type: string;
  data: string;
  metadata: Omit<EventMetadata, 'eventId'>;
  recorded_at: Date;
}

/** An already stored event an append names again, as the append's first query finds it. */
type StoredEventRef = Pick<
  EventRow,
  'stream_id' | 'revision' | 'transaction_id' | 'sequence' | 'event_id'
> & {
  hash: string;
};

/**
 * The columns of a recorded event. Caveat: `transaction_id` is selected as text under its own name, and an ORDER BY
 * of a bare name means the output column, so log order must name `events.transaction_id` (ordered as text, xid
 * 1000000 sorts before 999999: a page cut there skips events for ever, and no index serves the sort).
 */
const EVENT_COLUMNS =
  'sequence, transaction_id::text AS transaction_id, stream_id, revision, event_id, type, data, metadata, recorded_at';

function toRecordedEvent(row: EventRow): RecordedEvent {
  return {
    streamId: row.stream_id,
    revision: row.revision,
    position: encodePosition(BigInt(row.transaction_id), BigInt(row.sequence)),
    type: row.type,
    data: JSON.parse(row.data),
    rawData: row.data,
    metadata: { ...row.metadata, eventId: row.event_id },
    recordedAt: row.recorded_at.toISOString(),
  };
}

export interface PostgresEventStoreOptions {
  pool: Pool;
  /** For the LISTEN connection, which lives outside the pool. */
  connectionString: string;
  logger: Logger;
  pollIntervalMs: number;
  batchSize: number;
  /** Group commit: the most appends one statement carries, and how many statements may be in flight. */
  groupCommit?: GroupCommitSettings;
  /** For the group commit's own connections; default: the pool's `statement_timeout`. */
  statementTimeoutMs?: number;
  /**
   * How long the answer to "does another process listen for appends?" is kept (default 2000 ms). A process that
   * starts listening meanwhile finds new events by polling (pollIntervalMs) until the answer is asked again.
   */
  listenersRecheckMs?: number;
}

/**
 * The event store on PostgreSQL. Concurrency comes from the unique (stream_id, revision) key; the global log is
 * read in (transaction id, sequence) order and only below the oldest running transaction that may write events
 * (events_safe_horizon() in migrations/0011), so an event that commits late is never skipped by a reader that has moved on. NOTIFY only wakes
 * pollers early.
 */
export class PostgresEventStore implements EventStore {
  readonly name = 'postgres' as const;
  private readonly wakeups = new EventEmitter();
  private wakeupCount = 0;
  private listener: pg.Client | null = null;
  /** The server process of this store's own LISTEN connection, which `othersListen` leaves out. */
  private listenerPid: number | null = null;
  private othersListening: { answer: boolean; askedAt: number } | null = null;
  private listenerStarting: Promise<void> | null = null;
  private closed = false;
  private notifyPending = false;
  private notifyTimer: NodeJS.Timeout | undefined;
  /** Sent as the NOTIFY payload, so this store's listener can tell its own notifications from other processes'. */
  private readonly instanceId = randomUUID();
  private readonly groupCommit: GroupCommitAppender;
  /**
   * The group commit's own connections, one per statement it may have in flight. They plan its statement once
   * (generic plans) instead of on every call: at a few appends per statement, planning cost PostgreSQL more than
   * the write (0.9 ms of CPU an append planned each time, 0.36 prepared, one append per statement on a log of
   * 60,000 events). The other statements stay on the shared pool, where a claim's LIMIT must be planned per call.
   */
  private readonly appendPool: Pool;

  constructor(private readonly options: PostgresEventStoreOptions) {
    this.wakeups.setMaxListeners(0);
    const groupCommit = options.groupCommit ?? DEFAULT_GROUP_COMMIT;
    this.appendPool = createPool(
      {
        connectionString: options.connectionString,
        max: groupCommit.maxInFlight,
        statementTimeoutMs: options.statementTimeoutMs ?? (options.pool.options.statement_timeout || 0),
        applicationName: GROUP_COMMIT_APPLICATION_NAME,
        genericPlans: true,
        // Kept open: a connection opened again would parse and plan the statement again.
        idleTimeoutMs: 0,
      },
      options.logger,
    );
    this.groupCommit = new GroupCommitAppender(this.appendPool, groupCommit);
  }

  async append(streamId: string, events: NewEvent[], options: AppendOptions): Promise<AppendResult> {
    assertStreamId(streamId);
    if (events.length === 0) throw new Error('append needs at least one event');
    const { expectedRevision, previousHash } = options;
    // The fast path: the caller read the stream, so it knows the head and its hash, and the append is one
    // statement shared with whatever else is appending now. The unique (stream, revision) key is the check.
    if (
      !options.beforeCommit &&
      (expectedRevision === 'no_stream' ||
        (typeof expectedRevision === 'number' && previousHash !== undefined))
    ) {
      const outcome = await this.groupCommit.append({
        streamId,
        events,
        expectedHead: expectedRevision === 'no_stream' ? null : expectedRevision,
        previousHash: expectedRevision === 'no_stream' ? GENESIS_HASH : previousHash!,
      });
      if (outcome.kind === 'appended') {
        this.announce(events);
        return outcome.result;
      }
      if (outcome.kind === 'conflict')
        throw new WrongExpectedRevisionError(streamId, expectedRevision, outcome.actualHead);
      // A duplicate: the transactional path below tells a retried append (answered as the first time) from an
      // event id reused elsewhere.
    }
    // With "any", a concurrent writer taking our revision is not a conflict: read the new head and go again.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.tryAppend(streamId, events, options);
      } catch (error) {
        const retryable =
          (options.expectedRevision === 'any' && isUniqueViolation(error, 'events_stream_revision_key')) ||
          isUniqueViolation(error, 'events_event_id_key');
        if (!retryable || attempt >= 20) {
          if (isUniqueViolation(error, 'events_stream_revision_key'))
            throw new WrongExpectedRevisionError(
              streamId,
              options.expectedRevision,
              await this.head(streamId),
            );
          throw error;
        }
      }
    }
  }

  private async tryAppend(
    streamId: string,
    events: NewEvent[],
    options: AppendOptions,
  ): Promise<AppendResult> {
    const client = await this.options.pool.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      const { rows } = await client.query<{
        existing: StoredEventRef[] | null;
        head_revision: number | null;
        head_hash: string | null;
      }>(
        `SELECT
           (SELECT json_agg(json_build_object('stream_id', stream_id, 'revision', revision, 'event_id', event_id,
                   'transaction_id', transaction_id::text, 'sequence', sequence, 'hash', metadata->>'hash')
                   ORDER BY revision)
              FROM events WHERE event_id = ANY($2::uuid[])) AS existing,
           head.revision AS head_revision, head.hash AS head_hash
         FROM (SELECT 1) AS one
         LEFT JOIN LATERAL (SELECT revision, metadata->>'hash' AS hash FROM events
                            WHERE stream_id = $1 ORDER BY revision DESC LIMIT 1) AS head ON true`,
        [streamId, events.map((event) => event.eventId)],
      );
      const { existing, head_revision: headRevision, head_hash: headHash } = rows[0]!;
      if (existing && existing.length > 0) {
        await client.query('ROLLBACK');
        return this.idempotentResult(streamId, events, existing);
      }
      if (!revisionSatisfies(options.expectedRevision, headRevision)) {
        await client.query('ROLLBACK');
        throw new WrongExpectedRevisionError(streamId, options.expectedRevision, headRevision);
      }
      const firstRevision = headRevision === null ? 0 : headRevision + 1;
      const rawData = events.map((event) => JSON.stringify(event.data));
      const hashes = chainHashes(
        streamId,
        firstRevision,
        headHash ?? GENESIS_HASH,
        events.map((event, index) => ({ type: event.type, rawData: rawData[index]! })),
      );
      const metadata = events.map((event, index) =>
        JSON.stringify({ ...event.metadata, hash: hashes[index] }),
      );
      const inserted = await client.query<{ transaction_id: string; sequence: number }>(
        `INSERT INTO events (stream_id, revision, event_id, type, data, metadata)
         SELECT $1, $2::bigint + ordinality - 1, event_id, type, data, metadata::jsonb
           FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[])
                WITH ORDINALITY AS e(event_id, type, data, metadata)
          ORDER BY ordinality
         RETURNING transaction_id::text AS transaction_id, sequence`,
        [streamId, firstRevision, events.map((e) => e.eventId), events.map((e) => e.type), rawData, metadata],
      );
      if (options.beforeCommit) await options.beforeCommit();
      await client.query('COMMIT');
      this.announce(events);
      const last = inserted.rows.reduce((a, b) => (a.sequence > b.sequence ? a : b));
      return {
        nextRevision: firstRevision + events.length - 1,
        position: encodePosition(BigInt(last.transaction_id), BigInt(last.sequence)),
        hash: hashes.at(-1)!,
      };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => (broken = true));
      throw error;
    } finally {
      client.release(broken);
    }
  }

  /**
   * Wakes this process's subscribers at once, and other processes' through one NOTIFY sent outside any append,
   * at most every few milliseconds. A lost notification costs a reader at most its poll interval.
   */
  private announce(events: readonly NewEvent[]): void {
    this.wakeupCount++;
    this.wakeups.emit('wake', events);
    if (this.notifyPending || this.closed) return;
    this.notifyPending = true;
    this.notifyTimer = setTimeout(() => void this.notifyOthers(), NOTIFY_COALESCE_MS);
    this.notifyTimer.unref();
  }

  private async notifyOthers(): Promise<void> {
    clearTimeout(this.notifyTimer);
    if (!this.notifyPending) return;
    this.notifyPending = false;
    try {
      if (!(await this.othersListen())) return;
      await this.options.pool.query(prepared('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, this.instanceId]));
    } catch (error) {
      this.options.logger.debug({ err: error }, 'NOTIFY failed; other processes poll');
    }
  }

  /**
   * Whether another store (another process) listens on this database: when none does (one process runs every
   * role, the default), an append sends no NOTIFY, which would only come back to this store's own listener.
   * Asked at most every `listenersRecheckMs`; any failure to ask counts as yes.
   */
  private async othersListen(): Promise<boolean> {
    const now = Date.now();
    const known = this.othersListening;
    if (known && now - known.askedAt < (this.options.listenersRecheckMs ?? 2000)) return known.answer;
    const { rows } = await this.options.pool
      .query<{ listening: boolean }>(
        prepared(
          `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                           WHERE datname = current_database() AND application_name = $1 AND pid <> $2) AS listening`,
          [LISTENER_APPLICATION_NAME, this.listenerPid ?? 0],
        ),
      )
      .catch(() => ({ rows: [{ listening: true }] }));
    this.othersListening = { answer: rows[0]?.listening ?? true, askedAt: now };
    return this.othersListening.answer;
  }

  /** The same events appended again (a retried request): answer as the first append did, write nothing. */
  private idempotentResult(streamId: string, events: NewEvent[], existing: StoredEventRef[]): AppendResult {
    const sameAppend =
      existing.length === events.length &&
      existing.every((row, index) => row.stream_id === streamId && row.event_id === events[index]!.eventId);
    if (!sameAppend)
      throw new Error(`stream ${streamId}: some of these event ids are already stored elsewhere in the log`);
    const last = existing[existing.length - 1]!;
    return {
      nextRevision: last.revision,
      position: encodePosition(BigInt(last.transaction_id), BigInt(last.sequence)),
      hash: last.hash,
    };
  }

  private async head(streamId: string): Promise<number | null> {
    const { rows } = await this.options.pool.query<{ revision: number | null }>(
      prepared('SELECT max(revision) AS revision FROM events WHERE stream_id = $1', [streamId]),
    );
    return rows[0]?.revision ?? null;
  }

  async readStream(streamId: string, options: { fromRevision?: number } = {}): Promise<RecordedEvent[]> {
    const { rows } = await this.options.pool.query<EventRow>(
      prepared(
        `SELECT ${EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND revision >= $2 ORDER BY revision`,
        [streamId, options.fromRevision ?? 0],
      ),
    );
    return rows.map(toRecordedEvent);
  }

  async readAll({ after, limit }: ReadAllOptions): Promise<RecordedEvent[]> {
    const { high, low } = after ? decodePosition(after) : { high: 0n, low: 0n };
    const { rows } = await this.options.pool.query<EventRow>(
      // Only below every transaction that may still commit events "in the past": events_safe_horizon()
      // (migrations/0011) is pg_snapshot_xmin without the running transactions that cannot write events. The
      // limit is in the text, not a parameter, so the prepared statement's plan knows it (pages are a few sizes).
      prepared(
        `SELECT ${EVENT_COLUMNS} FROM events
          WHERE (transaction_id, sequence) > ($1::text::xid8, $2::bigint)
            AND transaction_id < (SELECT events_safe_horizon())
          ORDER BY events.transaction_id, events.sequence
          LIMIT ${Math.max(1, Math.floor(limit))}`,
        [high.toString(), low.toString()],
      ),
    );
    return rows.map(toRecordedEvent);
  }

  async *subscribeToAll({ after, signal }: SubscribeOptions): AsyncGenerator<RecordedEvent> {
    let checkpoint: Position | null = after;
    let failures = 0;
    let wakeupsSeen = this.wakeupCount;
    let quickPolls = 0;
    while (!signal.aborted) {
      let batch: RecordedEvent[];
      // Noted before reading, so a commit between the read and the wait is not slept through.
      const wakeupsBeforeRead = this.wakeupCount;
      try {
        await this.ensureListening();
        batch = await this.readAll({ after: checkpoint, limit: this.options.batchSize });
        failures = 0;
      } catch (error) {
        failures++;
        this.options.logger.warn({ err: error, failures }, 'event log read failed; retrying');
        await sleep(backoffMs(failures, 200, 5000), signal);
        continue;
      }
      for (const event of batch) {
        if (signal.aborted) return;
        yield event;
        checkpoint = event.position;
      }
      if (batch.length < this.options.batchSize && this.wakeupCount === wakeupsBeforeRead) {
        // Woken, yet nothing to read: the new event sits behind an older transaction that is still open (below
        // the xmin horizon). That one usually ends within milliseconds, so look again soon instead of waiting
        // out the poll interval.
        if (batch.length === 0 && wakeupsBeforeRead !== wakeupsSeen) quickPolls = 4;
        wakeupsSeen = wakeupsBeforeRead;
        const waitMs = quickPolls > 0 ? 5 * 2 ** (4 - quickPolls--) : this.options.pollIntervalMs;
        await this.waitForWakeup(waitMs, signal);
      }
    }
  }

  /** Resolves on the next NOTIFY, after `ms`, or on abort, whichever is first, leaving no listener behind. */
  private waitForWakeup(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakeups.off('wake', done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeups.on('wake', done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** One LISTEN connection per store; if it dies, polling carries on and the next read re-opens it. */
  private async ensureListening(): Promise<void> {
    if (this.listener || this.closed) return;
    this.listenerStarting ??= (async () => {
      const client = new pg.Client({
        connectionString: this.options.connectionString,
        application_name: LISTENER_APPLICATION_NAME,
      });
      client.on('notification', (message) => {
        // Our own NOTIFY coming back: this process's readers were woken at the append already. Waking them again
        // costs each an empty read (and the relay's quick re-polls after it) for every append.
        if (message.payload === this.instanceId) return;
        this.wakeupCount++;
        this.wakeups.emit('wake', null);
      });
      client.on('error', (error) => {
        this.options.logger.warn(
          { err: error },
          'event log LISTEN connection lost; polling until it is back',
        );
        if (this.listener === client) {
          this.listener = null;
          this.listenerPid = null;
        }
        client.end().catch(() => undefined);
      });
      try {
        await client.connect();
        await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
        const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        if (this.closed) await client.end();
        else {
          this.listener = client;
          this.listenerPid = rows[0]!.pid;
        }
      } catch (error) {
        client.end().catch(() => undefined);
        this.options.logger.debug({ err: error }, 'LISTEN failed; polling only');
      }
    })().finally(() => (this.listenerStarting = null));
    await this.listenerStarting;
  }

  onAppended(listener: (appended: readonly AppendedEvent[] | null) => void): () => void {
    this.wakeups.on('wake', listener);
    void this.ensureListening().catch(() => undefined);
    return () => this.wakeups.off('wake', listener);
  }

  async headPosition(): Promise<Position | null> {
    const { rows } = await this.options.pool.query<{ transaction_id: string; sequence: number }>(
      'SELECT transaction_id::text AS transaction_id, sequence FROM events ORDER BY events.transaction_id DESC, events.sequence DESC LIMIT 1',
    );
    const row = rows[0];
    return row ? encodePosition(BigInt(row.transaction_id), BigInt(row.sequence)) : null;
  }

  async ping(): Promise<void> {
    await this.options.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    // Appends already given to the group commit are written first; then the last appends of a stopping process
    // (a worker handing back its tasks) still tell the others.
    await this.groupCommit.close();
    await this.notifyOthers();
    this.closed = true;
    await this.listenerStarting;
    const listener = this.listener;
    this.listener = null;
    await listener?.end().catch(() => undefined);
    await this.appendPool.end().catch(() => undefined);
    this.wakeups.emit('wake', null);
  }
}
