/**
 * src/infra/bus/direct: the bus without a broker, for one process: each consumer group reads the event store's
 * log itself, from its own checkpoint.
 */
import type { EventStore, Position, RecordedEvent } from '../../eventStore/eventStore.js';
import type { Logger } from '../../logger.js';
import { asyncBatches } from '../../asyncBatches.js';
import type { LogCheckpoints } from '../checkpoints.js';
import {
  handleUntilDone,
  retryUntilDone,
  type ConsumeBatchesOptions,
  type ConsumeOptions,
  type EventBus,
  type RunningConsumer,
} from '../bus.js';

export interface DirectBusOptions {
  store: EventStore;
  checkpoints: LogCheckpoints;
  logger: Logger;
  /** How often a consumer records its checkpoint while busy; at most this much is redelivered after a crash. */
  checkpointEveryMs?: number;
}

/**
 * The embedded default's bus: each consumer group reads the event store's global log itself, from its own
 * checkpoint. No broker, same contract: at least once, in log order (so in stream order too).
 * One process per group: without a broker there is nothing to share a group's work between processes.
 */
export class DirectBus implements EventBus {
  readonly name = 'direct' as const;
  private readonly running = new Set<RunningConsumer>();

  constructor(private readonly options: DirectBusOptions) {}

  consume({ group, handle }: ConsumeOptions): Promise<RunningConsumer> {
    return this.run(group, async function* (events, signal, onFailure) {
      for await (const event of events) {
        const done = await handleUntilDone(handle, event, { partition: 0 }, signal, (error, attempt) =>
          onFailure(error, attempt, event),
        );
        if (!done) return;
        yield event.position;
      }
    });
  }

  consumeBatches({
    group,
    handleBatch,
    maxBatchSize,
    types,
  }: ConsumeBatchesOptions): Promise<RunningConsumer> {
    return this.run(group, async function* (events, signal, onFailure) {
      // What the log read brought at once (a page of it), up to the maximum, is one batch.
      for await (const batch of asyncBatches(events, Math.max(1, maxBatchSize))) {
        const wanted = types ? batch.filter((event) => types.has(event.type)) : batch;
        if (wanted.length > 0) {
          const done = await retryUntilDone(
            () => handleBatch(wanted, { partition: 0 }),
            signal,
            (error, attempt) => onFailure(error, attempt, wanted[0]!),
          );
          if (!done) return;
        }
        yield batch[batch.length - 1]!.position;
      }
    });
  }

  /** The subscription and its checkpoint; `handled` yields the position of each piece of work done. */
  private async run(
    group: string,
    handled: (
      events: AsyncIterable<RecordedEvent>,
      signal: AbortSignal,
      onFailure: (error: unknown, attempt: number, event: RecordedEvent) => void,
    ) => AsyncIterable<Position>,
  ): Promise<RunningConsumer> {
    const { store, checkpoints, logger } = this.options;
    const checkpointEveryMs = this.options.checkpointEveryMs ?? 200;
    const checkpointName = `consumer:${group}`;
    const controller = new AbortController();
    let checkpoint = await checkpoints.load(checkpointName);
    let saved = checkpoint;
    let lastSaveAt = Date.now();

    const flush = async () => {
      if (checkpoint && checkpoint !== saved) {
        await checkpoints.save(checkpointName, checkpoint);
        saved = checkpoint;
      }
      lastSaveAt = Date.now();
    };

    const onFailure = (error: unknown, attempt: number, event: RecordedEvent) =>
      logger.warn(
        { err: error, group, position: event.position, type: event.type, attempt },
        'event handler failed; retrying',
      );
    const loop = (async () => {
      const events = store.subscribeToAll({ after: checkpoint, signal: controller.signal });
      for await (const position of handled(events, controller.signal, onFailure)) {
        checkpoint = position;
        if (Date.now() - lastSaveAt >= checkpointEveryMs) {
          await flush().catch((error) =>
            logger.warn({ err: error, group }, 'checkpoint save failed; will retry'),
          );
        }
      }
    })();
    loop.catch((error) => logger.error({ err: error, group }, 'direct consumer stopped'));

    const consumer: RunningConsumer = {
      stop: async () => {
        controller.abort();
        await loop.catch(() => undefined);
        await flush().catch((error) => logger.warn({ err: error, group }, 'final checkpoint save failed'));
        this.running.delete(consumer);
      },
    };
    this.running.add(consumer);
    return consumer;
  }

  /** One ordered log: a consumer has everything up to P once its own position is P. */
  partitionTargets(position: Position): Promise<ReadonlyMap<number, Position>> {
    return Promise.resolve(new Map([[0, position]]));
  }

  async ping(): Promise<void> {
    await this.options.store.ping();
  }

  async close(): Promise<void> {
    await Promise.all([...this.running].map((consumer) => consumer.stop()));
  }
}
