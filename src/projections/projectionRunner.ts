import { Counter, type Registry } from 'prom-client';
import type { EventBus, RunningConsumer } from '../infra/bus/bus.js';
import type { Cache } from '../infra/cache/cache.js';
import { inTransaction, type Pool, type PoolClient } from '../infra/db/pool.js';
import type { RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';

/**
 * A read model built from the log. `apply` runs inside the transaction that also records the stream's revision,
 * so it must only use `client`. It returns the cache keys its change makes stale.
 */
export interface Projection {
  name: string;
  eventTypes: ReadonlySet<string>;
  apply(client: PoolClient, event: RecordedEvent): Promise<string[]>;
}

export interface ProjectionMetrics {
  applied: Counter<'projection'>;
  skipped: Counter<'projection' | 'reason'>;
}

const metricsByRegistry = new WeakMap<Registry, ProjectionMetrics>();

export function projectionMetrics(registry: Registry): ProjectionMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (!metrics) {
    metrics = {
      applied: new Counter({
        name: 'projection_events_applied_total',
        help: 'Events applied to read models',
        labelNames: ['projection'],
        registers: [registry],
      }),
      skipped: new Counter({
        name: 'projection_events_skipped_total',
        help: 'Events a projection skipped: already applied (duplicate delivery) or unusable data',
        labelNames: ['projection', 'reason'],
        registers: [registry],
      }),
    };
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

export type ApplyOutcome = 'applied' | 'duplicate' | 'ignored' | 'bad_data';

/**
 * Applies one event exactly once: the stream-revision guard, the read-model change and the newest position
 * commit together. Data the projection cannot use is logged, counted and skipped (inside a savepoint), so one
 * bad event never stops the pipeline; database failures throw, and the bus redelivers.
 */
export async function applyOnce(
  pool: Pool,
  projection: Projection,
  event: RecordedEvent,
  logger: Logger,
  partition = 0,
): Promise<{ outcome: ApplyOutcome; staleKeys: string[] }> {
  if (!projection.eventTypes.has(event.type)) return { outcome: 'ignored', staleKeys: [] };
  return inTransaction(pool, async (client) => {
    const guard = await client.query(
      `INSERT INTO projection_stream_progress (projection, stream_id, revision, position) VALUES ($1, $2, $3, $4)
       ON CONFLICT (projection, stream_id) DO UPDATE SET revision = excluded.revision, position = excluded.position
       WHERE projection_stream_progress.revision < excluded.revision`,
      [projection.name, event.streamId, event.revision, event.position],
    );
    if (guard.rowCount === 0) return { outcome: 'duplicate' as const, staleKeys: [] };
    await recordPartitionPosition(client, projection.name, partition, event.position);
    await client.query('SAVEPOINT apply_event');
    try {
      const staleKeys = await projection.apply(client, event);
      await client.query('RELEASE SAVEPOINT apply_event');
      return { outcome: 'applied' as const, staleKeys };
    } catch (error) {
      if (isDataError(error)) {
        await client.query('ROLLBACK TO SAVEPOINT apply_event');
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
        return { outcome: 'bad_data' as const, staleKeys: [] };
      }
      throw error;
    }
  });
}

const recordPartitionPosition = (
  client: Pool | PoolClient,
  projection: string,
  partition: number,
  position: string,
) =>
  client.query(
    `INSERT INTO projection_partition_positions (projection, partition, position) VALUES ($1, $2, $3)
     ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position
     WHERE projection_partition_positions.position < excluded.position`,
    [projection, partition, position],
  );

/** Errors about the event's content (bad JSON shapes, constraint or type violations), not about the database being down. */
export function isDataError(error: unknown): boolean {
  if (error instanceof TypeError || error instanceof RangeError || error instanceof SyntaxError) return true;
  const code = (error as { code?: string }).code ?? '';
  return code.startsWith('22') || code.startsWith('23'); // data exceptions, integrity constraint violations
}

export async function runProjection(options: {
  bus: EventBus;
  pool: Pool;
  cache: Cache;
  projection: Projection;
  logger: Logger;
  metrics: ProjectionMetrics;
}): Promise<RunningConsumer> {
  const { bus, pool, cache, projection, logger, metrics } = options;
  // Events this projection ignores still move its per-partition position (so readers waiting for a position are
  // not kept waiting by someone else's events), but lazily: at most one write per partition every 100 ms.
  // That is safe because a partition is consumed in order: everything before an ignored event is applied.
  const ignoredUpTo = new Map<number, string>();
  let flushTimer: NodeJS.Timeout | null = null;
  const flushIgnored = async () => {
    flushTimer = null;
    const pending = [...ignoredUpTo];
    ignoredUpTo.clear();
    for (const [partition, position] of pending)
      await recordPartitionPosition(pool, projection.name, partition, position).catch((error) =>
        logger.warn({ err: error, projection: projection.name }, 'could not record a projection position'),
      );
  };
  const consumer = await bus.consume({
    group: `projection.${projection.name}`,
    handle: async (event, { partition }) => {
      const { outcome, staleKeys } = await applyOnce(pool, projection, event, logger, partition);
      if (outcome === 'ignored') {
        ignoredUpTo.set(partition, event.position);
        flushTimer ??= setTimeout(() => void flushIgnored(), 100);
      }
      if (outcome === 'applied') metrics.applied.inc({ projection: projection.name });
      else if (outcome !== 'ignored') metrics.skipped.inc({ projection: projection.name, reason: outcome });
      // After the commit: a reader between commit and delete sees the old cached value for an instant, never
      // a value that outlives the change.
      if (staleKeys.length > 0) await cache.delete(...staleKeys);
    },
  });
  return {
    stop: async () => {
      await consumer.stop();
      if (flushTimer) clearTimeout(flushTimer);
      await flushIgnored();
    },
  };
}
