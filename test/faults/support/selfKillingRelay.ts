/**
 * Run as a child process by the relay fault case: the service's own KafkaRelay, wired as `task-manager start
 * --roles relay` wires it, which SIGKILLs itself in its `afterProduce` hook on batch N: Kafka has acknowledged
 * the batch, the checkpoint has not moved past it.
 *
 *   CONFIG_FILE=... node --import tsx test/faults/support/selfKillingRelay.ts N
 */
import { writeSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../../src/config.js';
import { createLogger } from '../../../src/infra/logger.js';
import { buildInfrastructure } from '../../../src/main.js';
import { KafkaRelay } from '../../../src/infra/bus/kafka/relay.js';
import { createKafka } from '../../../src/infra/bus/kafka/kafkaClient.js';
import { withoutCredentials } from '../../../src/domain/identity/credentials.js';

const dieAtBatch = Number(process.argv[2]);
if (!Number.isInteger(dieAtBatch) || dieAtBatch < 1)
  throw new Error('usage: selfKillingRelay.ts <batch number>');

// cwd: the config file's directory, so a developer's .env in the checkout cannot override the test's settings.
const configFile = process.env.CONFIG_FILE!;
const config = loadConfig({ configFile, env: {}, cwd: path.dirname(configFile) });
const logger = createLogger(config.logLevel);
const infrastructure = await buildInfrastructure(config, logger);
let batches = 0;
const relay = new KafkaRelay({
  store: infrastructure.store,
  kafka: createKafka(config.kafka, logger),
  settings: config.kafka,
  checkpoints: infrastructure.checkpoints,
  connectionString: infrastructure.databaseUrl,
  logger,
  batchSize: config.relay.batchSize,
  lockRetryMs: config.relay.lockRetryMs,
  publicData: withoutCredentials,
  afterProduce: async (batch) => {
    if (++batches < dieAtBatch) return;
    // Written synchronously: nothing after this line runs.
    writeSync(
      1,
      JSON.stringify({
        fault: 'killed-between-produce-and-checkpoint',
        batch: batches,
        eventIds: batch.map((event) => event.metadata.eventId),
        first: batch[0]?.position,
        last: batch[batch.length - 1]?.position,
      }) + '\n',
    );
    process.kill(process.pid, 'SIGKILL');
    await new Promise(() => {});
  },
});
relay.start();
logger.info({ dieAtBatch }, 'task-manager started');
