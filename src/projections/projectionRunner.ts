import { Counter, type Registry } from 'prom-client';
import type { EventBus, RunningConsumer } from '../infra/bus/bus.js';
import type { Cache, StaleEntry } from '../infra/cache/cache.js';
import { inTransaction, type Pool } from '../infra/db/pool.js';
import type { Position, RecordedEvent } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import {
  applyEvents,
  applyEventsInOneWrite,
  BatchRefusedError,
  GuardMovedError,
  positionsByPartition,
  recordPartitionPositions,
  type AppliedBatch,
  type ApplyOutcome,
} from './applyEvents.js';
import type { Projection } from './readModel.js';
import { PartitionBatchCombiner, type PartitionBatch } from './partitionBatchCombiner.js';

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

/**
 * A batch applied exactly once: the read-model change, the stream guards and the partition positions commit
 * together, in one statement for folds with a row per stream (applyEventsInOneWrite), else in one transaction.
 */
export async function applyBatchOnce(
  pool: Pool,
  projection: Projection,
  events: readonly RecordedEvent[],
  logger: Logger,
  partitionPositions: ReadonlyMap<number, Position> = positionsByPartition([{ partition: 0, events }]),
): Promise<AppliedBatch> {
  const carefully = () =>
    inTransaction(pool, (client) =>
      applyEvents(client, projection, events, { logger, partitionPositions, onRefusal: 'savepoint' }),
    );
  const inOneTransaction = async () => {
    try {
      // Without a savepoint first: a batch the database refuses is rare, and then applied again, carefully.
      return await inTransaction(pool, (client) =>
        applyEvents(client, projection, events, { logger, partitionPositions, onRefusal: 'throw' }),
      );
    } catch (error) {
      if (!(error instanceof BatchRefusedError)) throw error;
      return carefully();
    }
  };
  if (!projection.rowPerStream) return inOneTransaction();
  try {
    return await applyEventsInOneWrite(pool, projection, events, { logger, partitionPositions });
  } catch (error) {
    if (error instanceof BatchRefusedError) return carefully();
    // Another consumer applied some of these events meanwhile: under the guards' locks they are found applied.
    if (error instanceof GuardMovedError) return inOneTransaction();
    throw error;
  }
}

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
): Promise<{ outcome: ApplyOutcome; stale: StaleEntry[] }> {
  if (!projection.eventTypes.has(event.type)) return { outcome: 'ignored', stale: [] };
  const { outcomes, stale } = await applyBatchOnce(
    pool,
    projection,
    [event],
    logger,
    positionsByPartition([{ partition, events: [event] }]),
  );
  return { outcome: outcomes[0]!, stale };
}

/**
 * The projector: one consumer for every read model, so each event is fetched and decoded once, not once per read
 * model. A batch goes to each projection that wants any of its events, in parallel (each in its own statement or
 * transaction, see applyBatchOnce, with its own guards and positions); the others record the batch's position
 * lazily. A failure of any one makes the bus redeliver the batch to all: those that applied it already skip it by
 * their guards.
 *
 * The consumer group is named for the set of projections (`projection.refresh_tokens+tasks+users`), so every
 * member of a group runs the same set; a single projection keeps its old group name, `projection.<name>`.
 */
export async function runProjections(options: {
  bus: EventBus;
  pool: Pool;
  cache: Cache;
  projections: readonly Projection[];
  logger: Logger;
  metrics: ProjectionMetrics;
  /** Events per transaction at most. */
  maxBatchSize?: number;
}): Promise<RunningConsumer> {
  const { bus, pool, cache, projections, logger, metrics } = options;
  if (projections.length === 0) throw new Error('runProjections needs at least one projection');
  // A batch of events a projection ignores still moves its per-partition position (so readers waiting for a
  // position are not kept waiting by someone else's events), but lazily: at most one write per projection every
  // 250 ms, every partition in one statement. That is safe because a partition is consumed in order: everything
  // before an ignored event is applied.
  const ignoredUpTo = new Map(projections.map((projection) => [projection.name, new Map<number, string>()]));
  let flushTimer: NodeJS.Timeout | null = null;
  const flushIgnored = async () => {
    flushTimer = null;
    await Promise.all(
      projections.map(async ({ name }) => {
        const positions = ignoredUpTo.get(name)!;
        if (positions.size === 0) return;
        const pending = new Map(positions);
        positions.clear();
        await recordPartitionPositions(pool, name, pending).catch((error) =>
          logger.warn({ err: error, projection: name }, 'could not record a projection position'),
        );
      }),
    );
  };

  const applyTo = async (projection: Projection, parts: readonly PartitionBatch[]) => {
    const positions = positionsByPartition(parts);
    const events = parts.length === 1 ? parts[0]!.events : parts.flatMap((part) => part.events);
    if (!events.some((event) => projection.eventTypes.has(event.type))) {
      const ignored = ignoredUpTo.get(projection.name)!;
      for (const [partition, position] of positions) ignored.set(partition, position);
      flushTimer ??= setTimeout(() => void flushIgnored(), 250);
      return;
    }
    const { outcomes, stale } = await applyBatchOnce(pool, projection, events, logger, positions);
    const counts = { applied: 0, duplicate: 0, bad_data: 0, ignored: 0 };
    for (const outcome of outcomes) counts[outcome]++;
    if (counts.applied > 0) metrics.applied.inc({ projection: projection.name }, counts.applied);
    if (counts.duplicate > 0)
      metrics.skipped.inc({ projection: projection.name, reason: 'duplicate' }, counts.duplicate);
    if (counts.bad_data > 0)
      metrics.skipped.inc({ projection: projection.name, reason: 'bad_data' }, counts.bad_data);
    // After the commit, in one round trip: a reader between commit and invalidation sees the old cached value for
    // an instant; a reader that read the old row before the commit cannot store it afterwards (see Cache).
    if (stale.length > 0) await cache.invalidate(stale);
  };

  // Every projection is given the batch even when one fails (allSettled), so a retry redoes only what failed.
  const applyToAll = async (parts: readonly PartitionBatch[]) => {
    const results = await Promise.allSettled(projections.map((projection) => applyTo(projection, parts)));
    const failed = results.find((result) => result.status === 'rejected');
    if (failed) throw failed.reason;
  };
  const combiner = new PartitionBatchCombiner(applyToAll);

  const names = projections.map((projection) => projection.name).sort();
  const consumer = await bus.consumeBatches({
    group: `projection.${names.join('+')}`,
    maxBatchSize: options.maxBatchSize ?? 500,
    handleBatch: (events, { partition }) => combiner.apply({ partition, events }),
  });
  return {
    stop: async () => {
      await consumer.stop();
      if (flushTimer) clearTimeout(flushTimer);
      await flushIgnored();
    },
  };
}
