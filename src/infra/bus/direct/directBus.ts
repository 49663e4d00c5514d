import type { EventStore } from '../../eventStore/eventStore.js';
import type { Logger } from '../../logger.js';
import type { LogCheckpoints } from '../checkpoints.js';
import { handleUntilDone, type ConsumeOptions, type EventBus, type RunningConsumer } from '../bus.js';

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

  async consume({ group, handle }: ConsumeOptions): Promise<RunningConsumer> {
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

    const loop = (async () => {
      for await (const event of store.subscribeToAll({ after: checkpoint, signal: controller.signal })) {
        const done = await handleUntilDone(
          handle,
          event,
          { partition: 0 },
          controller.signal,
          (error, attempt) =>
            logger.warn(
              { err: error, group, position: event.position, type: event.type, attempt },
              'event handler failed; retrying',
            ),
        );
        if (!done) break;
        checkpoint = event.position;
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

  async ping(): Promise<void> {
    await this.options.store.ping();
  }

  async close(): Promise<void> {
    await Promise.all([...this.running].map((consumer) => consumer.stop()));
  }
}
