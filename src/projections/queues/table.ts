/**
 * The `queue_settings` table (migrations/0016): each queue's limits as its stream's last QueueConfigured says,
 * written by a trigger in the append's transaction (an inline projection, like task_schedule), read by the claim's
 * SQL and by GET /queues. This module owns every statement on it from TypeScript: the reads, and verify and
 * rebuild against the log.
 */
import { inSnapshot, type Pool } from '../../infra/db/pool.js';
import { foldEvents } from '../../domain/decider.js';
import {
  QUEUE_STREAM_PREFIX,
  queueSettings,
  type QueueEvent,
  type QueueLimits,
} from '../../domain/queues/queueSettings.js';

/** A queue's row: its limits, and who set them when. */
export interface QueueSettingsRow {
  queue: string;
  limits: QueueLimits;
  configuredAt: string;
  configuredBy: string;
}

interface Row {
  queue: string;
  concurrency: number | null;
  rate_limit: number | null;
  rate_interval_ms: number | null;
  group_concurrency: number | null;
  paused: boolean;
  configured_at: Date;
  configured_by: string;
}

const fromRow = (row: Row): QueueSettingsRow => ({
  queue: row.queue,
  limits: {
    concurrency: row.concurrency,
    rate:
      row.rate_limit === null || row.rate_interval_ms === null
        ? null
        : { limit: row.rate_limit, intervalMs: row.rate_interval_ms },
    groupConcurrency: row.group_concurrency,
    paused: row.paused,
  },
  configuredAt: row.configured_at.toISOString(),
  configuredBy: row.configured_by,
});

/** Every configured queue's settings, by name; or only `queue`'s. */
export async function selectQueueSettings(pool: Pool, queue?: string): Promise<QueueSettingsRow[]> {
  const { rows } = await pool.query<Row>(
    `SELECT queue, concurrency, rate_limit, rate_interval_ms, group_concurrency, paused, configured_at, configured_by
       FROM queue_settings WHERE $1::text IS NULL OR queue = $1 ORDER BY queue`,
    [queue ?? null],
  );
  return rows.map(fromRow);
}

/** A queue on which the table and the fold of its stream disagree; null where that side has none. */
export interface QueueSettingsDifference {
  queue: string;
  expected: QueueSettingsRow | null;
  actual: QueueSettingsRow | null;
}

/** Compares the table with a fold of every queue stream (in one snapshot): [] when they agree. */
export async function verifyQueueSettings(pool: Pool): Promise<QueueSettingsDifference[]> {
  const { events, rows } = await inSnapshot(pool, async (client) => ({
    events: (
      await client.query<{ stream_id: string; type: string; data: string }>(
        `SELECT stream_id, type, data FROM events WHERE stream_id LIKE $1 ORDER BY stream_id, revision`,
        [`${QUEUE_STREAM_PREFIX}%`],
      )
    ).rows,
    rows: (await client.query<Row>('SELECT * FROM queue_settings')).rows,
  }));
  const byStream = new Map<string, QueueEvent[]>();
  for (const event of events) {
    const list = byStream.get(event.stream_id) ?? [];
    list.push({ type: event.type, data: JSON.parse(event.data) } as QueueEvent);
    byStream.set(event.stream_id, list);
  }
  const expected = new Map<string, QueueSettingsRow>();
  for (const [streamId, history] of byStream) {
    const state = foldEvents(queueSettings, history);
    if (!state.configured) continue;
    const queue = streamId.slice(QUEUE_STREAM_PREFIX.length);
    expected.set(queue, {
      queue,
      limits: state.limits,
      configuredAt: new Date(state.configuredAt!).toISOString(),
      configuredBy: state.configuredBy!,
    });
  }
  const differences: QueueSettingsDifference[] = [];
  for (const row of rows) {
    const actual = fromRow(row);
    const wanted = expected.get(row.queue) ?? null;
    expected.delete(row.queue);
    if (JSON.stringify(wanted) !== JSON.stringify(actual))
      differences.push({ queue: row.queue, expected: wanted, actual });
  }
  for (const [queue, wanted] of expected) differences.push({ queue, expected: wanted, actual: null });
  return differences;
}

/** Recomputes the table from the log (the trigger's own function, replayed), in one transaction. */
export async function rebuildQueueSettings(pool: Pool): Promise<number> {
  const { rows } = await pool.query<{ count: string }>('SELECT queue_settings_rebuild()::text AS count');
  return Number(rows[0]!.count);
}
