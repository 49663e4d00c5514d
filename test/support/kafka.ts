import { randomBytes } from 'node:crypto';
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
