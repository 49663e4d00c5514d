import { busContract } from '../contract/bus.contract.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { DirectBus } from '../../src/infra/bus/direct/directBus.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import { silentLogger } from '../../src/infra/logger.js';

let database: TestDatabase;
let store: PostgresEventStore;
let bus: DirectBus;

busContract(
  'direct (embedded default)',
  { relay: false },
  async () => {
    database = await createTestDatabase('direct');
    const logger = silentLogger();
    store = testEventStore(database, { logger });
    bus = new DirectBus({ store, checkpoints: new LogCheckpoints(database.pool), logger });
    return { store, bus };
  },
  async () => {
    await bus?.close();
    await store?.close();
    await database?.drop();
  },
);
