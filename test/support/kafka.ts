import { randomBytes, randomUUID } from 'node:crypto';
import { Kafka, logLevel } from 'kafkajs';
import { waitFor } from './wait.js';
import type { KafkaSettings } from '../../src/infra/bus/kafka/kafkaClient.js';

/** Brokers started by the test command (scripts/services.sh), or null when Kafka could not be had. */
export const kafkaBrokers = (): string[] | null => {
  const brokers = process.env.KAFKA_BROKERS?.split(',')
    .map((b) => b.trim())
    .filter(Boolean);
  return brokers && brokers.length > 0 ? brokers : null;
};

export const KAFKA_MISSING =
  'KAFKA_BROKERS is not set: no Kafka broker could be started (see the services log above)';

/** Settings for a topic of the test's own, so suites and runs never read each other's events. */
export const testKafkaSettings = (brokers: string[]): KafkaSettings => ({
  brokers,
  clientId: 'task-manager-test',
  topic: `tm-test-${randomBytes(4).toString('hex')}`,
  partitions: 3,
  replicationFactor: 1,
  sessionTimeoutMs: 6000,
  heartbeatIntervalMs: 500,
});

export interface TopicMessage {
  key: string;
  headers: Record<string, string>;
  value: string;
}

/** Every message of the topic, read as any team with the topic's ACL would: a plain consumer of a group of its own. */
export async function readTopicAsOutsider(
  brokers: string[],
  topic: string,
  expected: number,
): Promise<TopicMessage[]> {
  const kafka = new Kafka({ clientId: 'an-outsider', brokers, logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: `outsider-${randomUUID()}` });
  const messages: TopicMessage[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        messages.push({
          key: message.key?.toString() ?? '',
          headers: Object.fromEntries(
            Object.entries(message.headers ?? {}).map(([name, value]) => [name, String(value)]),
          ),
          value: message.value?.toString() ?? '',
        });
      },
    });
    await waitFor(`${expected} messages on the topic`, () => messages.length >= expected || undefined, {
      timeoutMs: 30000,
    });
  } finally {
    await consumer.disconnect();
  }
  return messages;
}
