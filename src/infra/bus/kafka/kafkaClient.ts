import { createHash } from 'node:crypto';
import { Kafka, logLevel as KafkaLogLevel, Partitioners, type Admin, type Message } from 'kafkajs';
import type { Logger } from '../../logger.js';
import type { RecordedEvent } from '../../eventStore/eventStore.js';

export interface KafkaSettings {
  brokers: string[];
  clientId: string;
  topic: string;
  partitions: number;
  replicationFactor: number;
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
}

/** kafkajs logs through pino, at warn and above: its info lines are per-connection chatter. */
export function createKafka(settings: KafkaSettings, logger: Logger): Kafka {
  const log = logger.child({ component: 'kafkajs' });
  return new Kafka({
    clientId: settings.clientId,
    brokers: settings.brokers,
    connectionTimeout: 3000,
    requestTimeout: 10000,
    retry: { initialRetryTime: 200, retries: 8, maxRetryTime: 5000 },
    logLevel: KafkaLogLevel.WARN,
    logCreator:
      () =>
      ({ level, log: entry }) => {
        const { message, ...rest } = entry;
        if (level <= KafkaLogLevel.ERROR) log.error(rest, message);
        else log.warn(rest, message);
      },
  });
}

export const defaultPartitioner = Partitioners.DefaultPartitioner;

/**
 * Topics are created explicitly, with the configured partition count, before anyone produces or subscribes:
 * auto-created topics race with subscriptions in KRaft, and get the broker's default partition count.
 */
export async function ensureTopic(admin: Admin, settings: KafkaSettings, logger: Logger): Promise<void> {
  const existing = await admin.listTopics();
  if (!existing.includes(settings.topic)) {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic: settings.topic,
          numPartitions: settings.partitions,
          replicationFactor: settings.replicationFactor,
          configEntries: [
            { name: 'min.insync.replicas', value: String(Math.min(2, settings.replicationFactor)) },
          ],
        },
      ],
    });
    logger.info({ topic: settings.topic, partitions: settings.partitions }, 'Kafka topic created');
    return;
  }
  const [metadata] = (await admin.fetchTopicMetadata({ topics: [settings.topic] })).topics;
  if (metadata && metadata.partitions.length !== settings.partitions)
    logger.warn(
      { topic: settings.topic, configured: settings.partitions, actual: metadata.partitions.length },
      'Kafka topic has a different partition count than configured; keeping it (changing it would break per-stream order)',
    );
}

/** On the wire: the recorded event with its data as the exact stored bytes, so the hash chain still verifies. */
interface WireEvent {
  streamId: string;
  revision: number;
  position: string;
  type: string;
  rawData: string;
  metadata: RecordedEvent['metadata'];
  recordedAt: string;
}

/**
 * The relay picks each event's partition itself (a stable hash of the stream id), so it knows where every event
 * went: that is what lets readers tell when a read model has caught up in every partition.
 */
export const partitionFor = (streamId: string, partitions: number): number =>
  createHash('sha1').update(streamId).digest().readUInt32BE(0) % partitions;

/** The topic's real partition count (it may differ from the configured one if the topic already existed). */
export async function topicPartitionCount(admin: Admin, topic: string): Promise<number> {
  const [metadata] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
  if (!metadata || metadata.partitions.length === 0) throw new Error(`topic ${topic} has no partitions`);
  return metadata.partitions.length;
}

/** `redacted`: the relay published the event's public form (see RelayOptions.publicData). */
export function toMessage(event: RecordedEvent & { redacted?: true }, partition: number): Message {
  const wire: WireEvent = {
    streamId: event.streamId,
    revision: event.revision,
    position: event.position,
    type: event.type,
    rawData: event.rawData,
    metadata: event.metadata,
    recordedAt: event.recordedAt,
  };
  return {
    key: event.streamId,
    partition,
    value: JSON.stringify(wire),
    headers: { type: event.type, position: event.position, ...(event.redacted ? { redacted: '1' } : {}) },
  };
}

export function fromMessage(value: Buffer): RecordedEvent {
  const wire = JSON.parse(value.toString('utf8')) as WireEvent;
  return { ...wire, data: JSON.parse(wire.rawData) };
}
