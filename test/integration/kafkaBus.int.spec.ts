import { busContract } from '../contract/bus.contract.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { kafkaBrokers, KAFKA_MISSING, testKafkaSettings } from '../support/kafka.js';
import { skipSuiteUnless } from '../support/skips.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { KafkaBus } from '../../src/infra/bus/kafka/kafkaBus.js';
import { KafkaRelay } from '../../src/infra/bus/kafka/relay.js';
import { createKafka } from '../../src/infra/bus/kafka/kafkaClient.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import { silentLogger } from '../../src/infra/logger.js';
import { withoutCredentials } from '../../src/domain/identity/credentials.js';

let database: TestDatabase | undefined;
let store: PostgresEventStore | undefined;
let bus: KafkaBus | undefined;

busContract(
  'Kafka',
  { relay: true },
  async (context) => {
    const brokers = kafkaBrokers();
    skipSuiteUnless(context, brokers !== null, KAFKA_MISSING);
    database = await createTestDatabase('kafka');
    const logger = silentLogger();
    const settings = testKafkaSettings(brokers!);
    const kafka = createKafka(settings, logger);
    const checkpoints = new LogCheckpoints(database.pool);
    const eventStore = testEventStore(database, { logger });
    store = eventStore;
    bus = new KafkaBus({ kafka, settings, logger, pool: database.pool });
    const url = database.url;
    return {
      store: eventStore,
      bus,
      makeRelay: ({ crashOnce = false } = {}) => {
        let crashed = !crashOnce;
        return new KafkaRelay({
          store: eventStore,
          kafka,
          settings,
          checkpoints,
          connectionString: url,
          logger,
          batchSize: 100,
          lockRetryMs: 200,
          publicData: withoutCredentials,
          afterProduce: async () => {
            if (crashed) return;
            crashed = true;
            throw new Error('simulated crash between produce and checkpoint');
          },
        });
      },
    };
  },
  async () => {
    await bus?.close();
    await store?.close();
    await database?.drop();
  },
);
