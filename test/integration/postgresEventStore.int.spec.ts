import { eventStoreContract } from '../contract/eventStore.contract.js';
import { createTestDatabase, type TestDatabase } from '../support/postgres.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { silentLogger } from '../../src/infra/logger.js';

let database: TestDatabase;
let store: PostgresEventStore;

eventStoreContract(
  'PostgreSQL',
  async () => {
    database = await createTestDatabase('es');
    // A long poll interval: only NOTIFY or the xmin horizon moving can make these tests pass quickly, and the
    // out-of-order test waits past it so the subscriber certainly polls while a transaction is open.
    store = new PostgresEventStore({
      pool: database.pool,
      connectionString: database.url,
      logger: silentLogger(),
      pollIntervalMs: 100,
      batchSize: 50,
    });
    return { store, settleMs: 400 };
  },
  async () => {
    await store?.close();
    await database?.drop();
  },
);
