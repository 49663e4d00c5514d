import { Counter, type Registry } from 'prom-client';
import type { EventBus, RunningConsumer } from '../infra/bus/bus.js';
import type { Cache } from '../infra/cache/cache.js';
import { inTransaction, type Pool } from '../infra/db/pool.js';
import type { RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import {
  applyEvents,
  recordPartitionPositions,
  type AppliedBatch,
  type ApplyOutcome,
} from './applyEvents.js';
import type { Projection } from './readModel.js';

export type { Projection } from './readModel.js';
export { isDataError } from './readModel.js';
export type { ApplyOutcome } from './applyEvents.js';

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

/** A batch in one transaction: the read-model change, the stream guards and the partition position commit together. */
export const applyBatchOnce = (
  pool: Pool,
  projection: Projection,
  events: readonly RecordedEvent[],
  logger: Logger,
  partition = 0,
): Promise<AppliedBatch> =>
  inTransaction(pool, (client) => applyEvents(client, projection, events, { logger, partition }));

/**
 * Applies one event exactly once (a batch of one): data the projection cannot use is logged, counted and skipped,
 * so one bad event never stops the pipeline; database failures throw, and the bus redelivers.
 */
export async function applyOnce(
  pool: Pool,
  projection: Projection,
  event: RecordedEvent,
  logger: Logger,
  partition = 0,
): Promise<{ outcome: ApplyOutcome; staleKeys: string[] }> {
  if (!projection.eventTypes.has(event.type)) return { outcome: 'ignored', staleKeys: [] };
  const { outcomes, staleKeys } = await applyBatchOnce(pool, projection, [event], logger, partition);
  return { outcome: outcomes[0]!, staleKeys };
}

export async function runProjection(options: {
  bus: EventBus;
  pool: Pool;
  cache: Cache;
  projection: Projection;
  logger: Logger;
  metrics: ProjectionMetrics;
  /** Events per transaction at most. */
  maxBatchSize?: number;
}): Promise<RunningConsumer> {
  const { bus, pool, cache, projection, logger, metrics } = options;
  // A batch of events this projection ignores still moves its per-partition position (so readers waiting for a
  // position are not kept waiting by someone else's events), but lazily: at most one write per partition every
  // 250 ms, every partition in one statement. That is safe because a partition is consumed in order: everything
  // before an ignored event is applied.
  const ignoredUpTo = new Map<number, string>();
  let flushTimer: NodeJS.Timeout | null = null;
  const flushIgnored = async () => {
    flushTimer = null;
    const pending = new Map(ignoredUpTo);
    ignoredUpTo.clear();
    await recordPartitionPositions(pool, projection.name, pending).catch((error) =>
      logger.warn({ err: error, projection: projection.name }, 'could not record a projection position'),
    );
  };
  const consumer = await bus.consumeBatches({
    group: `projection.${projection.name}`,
    maxBatchSize: options.maxBatchSize ?? 500,
    handleBatch: async (events, { partition }) => {
      if (!events.some((event) => projection.eventTypes.has(event.type))) {
        ignoredUpTo.set(partition, events[events.length - 1]!.position);
        flushTimer ??= setTimeout(() => void flushIgnored(), 250);
        return;
      }
      const { outcomes, staleKeys } = await applyBatchOnce(pool, projection, events, logger, partition);
      const counts = { applied: 0, duplicate: 0, bad_data: 0, ignored: 0 };
      for (const outcome of outcomes) counts[outcome]++;
      if (counts.applied > 0) metrics.applied.inc({ projection: projection.name }, counts.applied);
      if (counts.duplicate > 0)
        metrics.skipped.inc({ projection: projection.name, reason: 'duplicate' }, counts.duplicate);
      if (counts.bad_data > 0)
        metrics.skipped.inc({ projection: projection.name, reason: 'bad_data' }, counts.bad_data);
      // After the commit, in one round trip: a reader between commit and delete sees the old cached value for an
      // instant, never a value that outlives the change.
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
