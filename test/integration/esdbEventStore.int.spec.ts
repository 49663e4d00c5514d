import { eventStoreContract } from '../contract/eventStore.contract.js';
import { skipSuiteUnless } from '../support/skips.js';
import { EsdbEventStore } from '../../src/infra/eventStore/esdb/esdbEventStore.js';
import { silentLogger } from '../../src/infra/logger.js';

const url = process.env.EVENTSTORE_URL;
let store: EsdbEventStore | undefined;

// The contract calls setUp without Mocha's context, so the loud skip is registered by this enclosing suite.
describe('EventStoreDB adapter', function () {
  before(function () {
    skipSuiteUnless(this, Boolean(url), 'EVENTSTORE_URL is not set: no EventStoreDB server on this machine');
  });

  eventStoreContract(
    'EventStoreDB',
    async () => {
      if (!url) return null;
      store = new EsdbEventStore({ connectionString: url, logger: silentLogger() });
      await store.ping();
      // Subscriptions are pushed by the server, so a short settle is enough for a live subscriber to have seen
      // an append.
      return { store, settleMs: 300 };
    },
    async () => {
      await store?.close();
      store = undefined;
    },
  );
});
