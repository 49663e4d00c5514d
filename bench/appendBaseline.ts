import { randomUUID } from 'node:crypto';
import { createPool } from '../src/infra/db/pool.js';
import { PostgresEventStore } from '../src/infra/eventStore/postgres/postgresEventStore.js';
import type { JsonObject } from '../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../src/infra/logger.js';
import { createTestDatabase } from '../test/support/postgres.js';
import { taskSpec } from '../test/support/fixtures.js';
import { round, summarize, type LatencySummary } from './stats.js';

export interface AppendRate extends LatencySummary {
  concurrency: number;
  per_s: number;
}

export interface AppendBaselineResult {
  pool_size: number;
  /** PostgresEventStore.append of one TaskQueued-like event to a new stream: the service's append, no HTTP. */
  store: AppendRate[];
  /** The append's statements as plain SQL (head, INSERT, pg_notify, COMMIT), at the middle concurrency. */
  sql_with_notify: AppendRate | null;
  /** The same without pg_notify: what the NOTIFY costs (notifying transactions commit one at a time). */
  sql_without_notify: AppendRate | null;
}

async function lanes(
  concurrency: number,
  seconds: number,
  work: () => Promise<unknown>,
): Promise<AppendRate> {
  const latencies: number[] = [];
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await work();
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  return { concurrency, per_s: round(latencies.length / elapsed, 1)!, ...summarize(latencies) };
}

const eventData = (): JsonObject => ({
  taskId: randomUUID(),
  ownerId: randomUUID(),
  spec: taskSpec({ title: 'bench' }),
  idempotencyKey: null,
  queuedAt: new Date().toISOString(),
});

/**
 * Where the submit's time goes below HTTP: the event store's append on its own (same pool size as the service),
 * in a scratch database migrated like the service's, and its SQL with and without the NOTIFY that wakes the
 * log readers.
 */
export async function appendBaseline(options: {
  concurrencies: number[];
  seconds: number;
  poolSize: number;
}): Promise<AppendBaselineResult> {
  const db = await createTestDatabase('bench_scratch');
  const logger = silentLogger();
  const pool = createPool(
    { connectionString: db.url, max: options.poolSize, statementTimeoutMs: 30000 },
    logger,
  );
  const store = new PostgresEventStore({
    pool,
    connectionString: db.url,
    logger,
    pollIntervalMs: 250,
    batchSize: 500,
  });
  const metadata = { correlationId: randomUUID(), causationId: null, userId: randomUUID(), timestamp: '' };
  try {
    const result: AppendBaselineResult = {
      pool_size: options.poolSize,
      store: [],
      sql_with_notify: null,
      sql_without_notify: null,
    };
    for (const concurrency of options.concurrencies)
      result.store.push(
        await lanes(concurrency, options.seconds, () =>
          store.append(
            `task-${randomUUID()}`,
            [
              {
                eventId: randomUUID(),
                type: 'TaskQueued',
                data: eventData(),
                metadata: { ...metadata, timestamp: new Date().toISOString() },
              },
            ],
            { expectedRevision: 'no_stream' },
          ),
        ),
      );
    const middle = options.concurrencies[Math.floor(options.concurrencies.length / 2)]!;
    const sqlAppend = (notify: boolean) => async () => {
      const client = await pool.connect();
      try {
        const streamId = `task-${randomUUID()}`;
        await client.query('BEGIN');
        await client.query(
          'SELECT revision FROM events WHERE stream_id = $1 ORDER BY revision DESC LIMIT 1',
          [streamId],
        );
        await client.query(
          `INSERT INTO events (stream_id, revision, event_id, type, data, metadata) VALUES ($1, 0, $2, 'TaskQueued', $3, $4)`,
          [streamId, randomUUID(), JSON.stringify(eventData()), JSON.stringify(metadata)],
        );
        if (notify) await client.query('SELECT pg_notify($1, $2)', ['bench_append_probe', streamId]);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    };
    result.sql_with_notify = await lanes(middle, options.seconds, sqlAppend(true));
    result.sql_without_notify = await lanes(middle, options.seconds, sqlAppend(false));
    return result;
  } finally {
    await store.close();
    await pool.end();
    await db.drop();
  }
}
