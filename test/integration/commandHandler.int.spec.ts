import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { ConflictError } from '../../src/errors.js';
import { handleCommand, type CommandContext } from '../../src/commands/commandHandler.js';
import { type Decider, type DomainEvent } from '../../src/domain/decider.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';

type Counted = DomainEvent<'Counted', { value: number }>;
const counter: Decider<{ total: number }, Counted> = {
  initialState: { total: 0 },
  evolve: (state, event) => ({ total: state.total + event.data.value }),
};
const context: CommandContext = {
  now: () => new Date('2026-01-01T00:00:00Z'),
  newId: randomUUID,
  correlationId: randomUUID(),
  causationId: null,
  userId: null,
};

describe('the command handler', () => {
  let db: TestDatabase;
  let store: PostgresEventStore;
  before(async () => {
    db = await createTestDatabase('cmd');
    store = testEventStore(db);
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  /** The store, except that before each of our appends another writer appends to the same stream. */
  const withCompetingWriter = (competitions: number) => {
    let left = competitions;
    return new Proxy(store, {
      get(target, property, receiver) {
        if (property !== 'append') return Reflect.get(target, property, receiver);
        return async (...args: Parameters<PostgresEventStore['append']>) => {
          if (left-- > 0)
            await target.append(
              args[0],
              [
                {
                  eventId: randomUUID(),
                  type: 'Counted',
                  data: { value: 10 },
                  metadata: { ...context, timestamp: '2026-01-01T00:00:00Z' },
                },
              ],
              { expectedRevision: 'any' },
            );
          return target.append(...args);
        };
      },
    });
  };

  it('re-reads and decides again when another writer got there first, never merging blindly', async () => {
    const streamId = `counter-${randomUUID()}`;
    const seenTotals: number[] = [];
    const result = await handleCommand(
      withCompetingWriter(1),
      streamId,
      counter,
      (state) => {
        seenTotals.push(state.total);
        return [{ type: 'Counted' as const, data: { value: state.total + 1 } }];
      },
      context,
    );
    expect(seenTotals).to.deep.equal([0, 10]);
    expect(result.state.total).to.equal(21);
    expect((await store.readStream(streamId)).map((e) => e.data.value)).to.deep.equal([10, 11]);
  });

  it('answers 409 when the stream keeps changing for every attempt', async () => {
    const streamId = `counter-${randomUUID()}`;
    let attempts = 0;
    let error: unknown;
    await handleCommand(
      withCompetingWriter(3),
      streamId,
      counter,
      (state) => {
        attempts++;
        return [{ type: 'Counted' as const, data: { value: state.total } }];
      },
      context,
      { maxAttempts: 3 },
    ).catch((e) => (error = e));
    expect(error).to.be.instanceOf(ConflictError);
    expect(attempts).to.equal(3);
    expect(
      (await store.readStream(streamId)).map((e) => e.data.value),
      'only the competing writes landed',
    ).to.deep.equal([10, 10, 10]);
  });
});
