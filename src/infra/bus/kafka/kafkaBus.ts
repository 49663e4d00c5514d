import type { Consumer, Kafka } from 'kafkajs';
import type { Logger } from '../../logger.js';
import { handleUntilDone, type ConsumeOptions, type EventBus, type RunningConsumer } from '../bus.js';
import { ensureTopic, fromMessage, type KafkaSettings } from './kafkaClient.js';

export interface KafkaBusOptions {
  kafka: Kafka;
  settings: KafkaSettings;
  logger: Logger;
  /** How long a fetch waits for data on a quiet topic; lower means less latency, more requests. */
  maxWaitTimeInMs?: number;
}

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

  async consume({ group, handle }: ConsumeOptions): Promise<RunningConsumer> {
    const { kafka, settings, logger } = this.options;
    await this.ensureTopicOnce();
    const controller = new AbortController();
    const consumer: Consumer = kafka.consumer({
      // Namespaced by topic, so deployments (and test runs) that share a broker never share a group.
      groupId: `${settings.topic}.${group}`,
      sessionTimeout: settings.sessionTimeoutMs,
      heartbeatInterval: settings.heartbeatIntervalMs,
      maxWaitTimeInMs: this.options.maxWaitTimeInMs ?? 100,
      allowAutoTopicCreation: false,
    });
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    await consumer.connect();
    await consumer.subscribe({ topic: settings.topic, fromBeginning: true });
    await consumer.run({
      autoCommit: true,
      autoCommitInterval: 500,
      eachMessage: async ({ message, partition, heartbeat }) => {
        if (!message.value) return;
        let event;
        try {
          event = fromMessage(message.value);
        } catch (error) {
          // Not ours to repair, and throwing would stall the partition for ever: log it and move on.
          logger.error(
            { err: error, group, partition, offset: message.offset },
            'undecodable Kafka message skipped',
          );
          return;
        }
        const done = await handleUntilDone(
          handle,
          event,
          { partition },
          controller.signal,
          (error, attempt) =>
            logger.warn(
              { err: error, group, position: event.position, type: event.type, attempt },
              'event handler failed; retrying',
            ),
          heartbeat,
        );
        // Leave the offset unresolved so the next member of the group gets this event again.
        if (!done) throw new StoppedError(`consumer ${group} stopping`);
      },
    });
    await joined;
    const running: RunningConsumer = {
      stop: async () => {
        controller.abort();
        await consumer.disconnect(); // commits the offsets resolved so far
        this.running.delete(running);
      },
    };
    this.running.add(running);
    return running;
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
