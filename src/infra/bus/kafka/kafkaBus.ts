/**
 * src/infra/bus/kafka: the Kafka adapter of the bus: consumer groups (this file), the relay that publishes the
 * event store's log (relay.ts), and the client and topic set-up (kafkaClient.ts).
 */
import type { Consumer, Kafka, KafkaMessage } from 'kafkajs';
import type { Position, RecordedEvent } from '../../eventStore/eventStore.js';
import type { Pool } from '../../db/pool.js';
import { publishedPartitionTargets } from './relay.js';
import type { Logger } from '../../logger.js';
import {
  handleUntilDone,
  retryUntilDone,
  type ConsumeBatchesOptions,
  type ConsumeOptions,
  type EventBus,
  type RunningConsumer,
} from '../bus.js';
import { ensureTopic, fromMessage, type KafkaSettings } from './kafkaClient.js';
import { backoffMs, sleep } from '../../abort.js';

export interface KafkaBusOptions {
  kafka: Kafka;
  settings: KafkaSettings;
  logger: Logger;
  /** The database the relay records what it published in (for `partitionTargets`). */
  pool: Pool;
  /** How long a fetch waits for data on a quiet topic; lower means less latency, more requests. */
  maxWaitTimeInMs?: number;
  /**
   * Partitions a batch consumer handles at once (each in order); more means more database connections busy.
   * Default: the configured partition count.
   */
  partitionsConsumedConcurrently?: number;
}

/** False only when the message's `type` header names a type not wanted; a message without one is decoded to tell. */
function wanted(types: ReadonlySet<string>, message: KafkaMessage): boolean {
  const header = message.headers?.type;
  if (header === undefined) return true;
  const type = Array.isArray(header) ? header[0] : header;
  return type === undefined || types.has(type.toString());
}

/** What a gathering consumer's fetch waits for at most, in bytes (about a thousand events): see `gatherMs`. */
const GATHER_BYTES = 1 << 20;

class StoppedError extends Error {
  override name = 'StoppedError';
}

/**
 * Consumers read the topic the relay publishes, as members of Kafka consumer groups (partitions are spread over
 * a group's members; a stream's events share a key, so a partition, so their order). An offset is resolved only
 * after the handler returned, and committed after that, so a crash redelivers and never skips.
 */
export class KafkaBus implements EventBus {
  readonly name = 'kafka' as const;
  private readonly running = new Set<RunningConsumer>();
  private topicReady: Promise<void> | null = null;

  constructor(private readonly options: KafkaBusOptions) {}

  private ensureTopicOnce(): Promise<void> {
    this.topicReady ??= (async () => {
      const admin = this.options.kafka.admin();
      await admin.connect();
      try {
        await ensureTopic(admin, this.options.settings, this.options.logger);
      } finally {
        await admin.disconnect();
      }
    })().catch((error) => {
      this.topicReady = null;
      throw error;
    });
    return this.topicReady;
  }

  /**
   * A member of the group, subscribed from the beginning; resolves once it has joined. kafkajs restarts a crashed
   * consumer only when the crash's root cause is a retriable Kafka error; after any other crash the member stays
   * stopped for good and its partitions go unread, silently (seen after broker restarts: the projector stuck where
   * the broker went down while the relay published everything). Such a member is replaced by a new one here.
   */
  private async join(
    group: string,
    run: (consumer: Consumer, signal: AbortSignal) => Promise<void>,
    beforeDisconnect: (consumer: Consumer) => Promise<void> = async () => {},
    gatherMs?: number,
  ): Promise<RunningConsumer> {
    const { kafka, settings, logger } = this.options;
    await this.ensureTopicOnce();
    const controller = new AbortController();
    let current: Consumer;
    const start = async (): Promise<void> => {
      const consumer: Consumer = kafka.consumer({
        // Namespaced by topic, so deployments (and test runs) that share a broker never share a group.
        groupId: `${settings.topic}.${group}`,
        sessionTimeout: settings.sessionTimeoutMs,
        heartbeatInterval: settings.heartbeatIntervalMs,
        maxWaitTimeInMs: gatherMs ?? this.options.maxWaitTimeInMs ?? 100,
        // A gathering consumer's fetch is answered when GATHER_BYTES have come or its wait is over.
        ...(gatherMs !== undefined ? { minBytes: GATHER_BYTES } : {}),
        allowAutoTopicCreation: false,
      });
      current = consumer;
      consumer.on(consumer.events.CRASH, ({ payload }) => {
        if (payload.restart || controller.signal.aborted) return;
        logger.error({ err: payload.error, group }, 'Kafka consumer stopped for good; starting a new member');
        void (async () => {
          await consumer.disconnect().catch(() => undefined);
          for (let attempt = 1; !controller.signal.aborted; attempt++) {
            try {
              await start();
              return;
            } catch (error) {
              logger.warn(
                { err: error, group, attempt },
                'new Kafka consumer member did not start; retrying',
              );
              await current.disconnect().catch(() => undefined);
              await sleep(backoffMs(attempt, 500, 10000), controller.signal);
            }
          }
        })();
      });
      const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
      await consumer.connect();
      await consumer.subscribe({ topic: settings.topic, fromBeginning: true });
      await run(consumer, controller.signal);
      await joined;
    };
    await start();
    const running: RunningConsumer = {
      stop: async () => {
        controller.abort();
        await beforeDisconnect(current);
        await current.disconnect();
        this.running.delete(running);
      },
    };
    this.running.add(running);
    return running;
  }

  /** The event in a message; an undecodable one is logged and skipped (throwing would stall the partition for ever). */
  private decode(group: string, partition: number, message: KafkaMessage): RecordedEvent | null {
    if (!message.value) return null;
    try {
      return fromMessage(message.value);
    } catch (error) {
      this.options.logger.error(
        { err: error, group, partition, offset: message.offset },
        'undecodable Kafka message skipped',
      );
      return null;
    }
  }

  private retryLogger(group: string) {
    return (error: unknown, attempt: number, event: RecordedEvent) =>
      this.options.logger.warn(
        { err: error, group, position: event.position, type: event.type, attempt },
        'event handler failed; retrying',
      );
  }

  consume({ group, handle }: ConsumeOptions): Promise<RunningConsumer> {
    const onFailure = this.retryLogger(group);
    return this.join(group, (consumer, signal) =>
      consumer.run({
        autoCommit: true,
        autoCommitInterval: 500,
        eachMessage: async ({ message, partition, heartbeat }) => {
          const event = this.decode(group, partition, message);
          if (!event) return;
          const done = await handleUntilDone(
            handle,
            event,
            { partition },
            signal,
            (error, attempt) => onFailure(error, attempt, event),
            heartbeat,
          );
          // Leave the offset unresolved so the next member of the group gets this event again.
          if (!done) throw new StoppedError(`consumer ${group} stopping`);
        },
      }),
    );
  }

  /**
   * eachBatch, cut into pieces of at most `maxBatchSize`; a piece's offsets are resolved only after its handler
   * returned. Partitions are handled in parallel (each in order), which keeps every stream in order.
   */
  consumeBatches({
    group,
    handleBatch,
    maxBatchSize,
    types,
    gatherMs,
  }: ConsumeBatchesOptions): Promise<RunningConsumer> {
    const onFailure = this.retryLogger(group);
    const size = Math.max(1, maxBatchSize);
    const { topic } = this.options.settings;
    /**
     * The last offset handled per partition, committed by the stop: the run commits at most every 500 ms, and only
     * when a batch comes, so a partition quiet since its last batch may hold a handled offset not yet committed.
     */
    const handled = new Map<number, string>();
    return this.join(
      group,
      (consumer, signal) => {
        // A partition the group gave to another member is not ours to commit at the stop.
        consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
          const assigned = new Set(payload.memberAssignment[topic] ?? []);
          for (const partition of handled.keys()) if (!assigned.has(partition)) handled.delete(partition);
        });
        return consumer.run({
          // Not kafkajs's auto-commit: it sends an OffsetCommit after every batch of every partition, whatever the
          // interval (1.2 commits per task at 200 tasks/s, each a round trip to the broker). Offsets are only where
          // a restarted member resumes; consumers are idempotent, so a later commit costs a few redeliveries.
          autoCommit: false,
          autoCommitInterval: 500,
          eachBatchAutoResolve: false,
          // Every partition at once by default: a batch's time is mostly round trips, so partitions taken in turns
          // add their times up in the latency of the last one.
          partitionsConsumedConcurrently:
            this.options.partitionsConsumedConcurrently ?? this.options.settings.partitions,
          eachBatch: async ({
            batch,
            resolveOffset,
            heartbeat,
            commitOffsetsIfNecessary,
            uncommittedOffsets,
            isRunning,
            isStale,
          }) => {
            const { partition, messages } = batch;
            for (let start = 0; start < messages.length; start += size) {
              // A rebalance took the partition away: its next owner starts from the last resolved offset.
              if (!isRunning() || isStale()) return;
              const piece = messages.slice(start, start + size);
              const events = piece.flatMap((message) => {
                if (types && !wanted(types, message)) return [];
                const event = this.decode(group, partition, message);
                return event && (!types || types.has(event.type)) ? [event] : [];
              });
              if (events.length > 0) {
                const done = await retryUntilDone(
                  () => handleBatch(events, { partition }),
                  signal,
                  (error, attempt) => onFailure(error, attempt, events[0]!),
                  heartbeat,
                );
                if (!done) throw new StoppedError(`consumer ${group} stopping`);
              }
              const last = piece[piece.length - 1]!.offset;
              resolveOffset(last);
              handled.set(partition, last);
              // A batch still running at the stop commits what it resolved: the stop's own commit went out before.
              await commitOffsetsIfNecessary(signal.aborted ? uncommittedOffsets() : undefined);
              await heartbeat();
            }
          },
        });
      },
      (consumer) =>
        consumer
          .commitOffsets(
            [...handled].map(([partition, offset]) => ({
              topic,
              partition,
              offset: (BigInt(offset) + 1n).toString(),
            })),
          )
          .catch((error: unknown) =>
            this.options.logger.warn(
              { err: error, group },
              'offsets not committed at stop; they will be redelivered',
            ),
          ),
      gatherMs,
    );
  }

  /** The relay records, per partition, the newest position it published there; see publishedPartitionTargets. */
  partitionTargets(position: Position): Promise<ReadonlyMap<number, Position> | null> {
    return publishedPartitionTargets(this.options.pool, position);
  }

  async ping(): Promise<void> {
    const admin = this.options.kafka.admin();
    await admin.connect();
    try {
      await admin.describeCluster();
    } finally {
      await admin.disconnect();
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.running].map((consumer) => consumer.stop()));
  }
}
