import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { UnprocessableError } from '../../src/errors.js';
import type { CommandContext } from '../../src/commands/commandHandler.js';
import type { TaskSpec } from '../../src/domain/tasks/events.js';
import { submitIdempotently, type SubmitDeps } from '../../src/commands/tasks/submitIdempotently.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { taskSpec } from '../support/fixtures.js';

const spec = (title: string): TaskSpec => taskSpec({ title, payload: { say: title }, timeoutMs: 30000 });

describe('submitting with an Idempotency-Key', () => {
  let db: TestDatabase;
  let store: PostgresEventStore;
  let deps: SubmitDeps;
  before(async () => {
    db = await createTestDatabase('idem');
    store = testEventStore(db);
    deps = { store, clock: () => new Date(), newId: randomUUID, idempotencyKeyTtlSeconds: 3600 };
  });
  after(async () => {
    await store?.close();
    await db?.drop();
  });

  const context = (userId: string): CommandContext => ({
    now: () => new Date(),
    newId: randomUUID,
    correlationId: randomUUID(),
    causationId: null,
    userId,
  });
  const submit = (ownerId: string, key: string, body: { title: string }) =>
    submitIdempotently(deps, context(ownerId), {
      ownerId,
      spec: spec(body.title),
      idempotency: { key, request: body },
    });
  const queuedBy = async (ownerId: string) =>
    (await store.readAll({ after: null, limit: 100000 })).filter(
      (event) => event.type === 'TaskQueued' && event.data.ownerId === ownerId,
    );

  it('answers the first task again for the same key and body', async () => {
    const owner = randomUUID();
    const first = await submit(owner, 'key-1', { title: 'once' });
    const again = await submit(owner, 'key-1', { title: 'once' });
    expect(again).to.deep.equal(first);
    expect(first.resource.title).to.equal('once');
    expect(await queuedBy(owner)).to.have.length(1);
  });

  it('refuses the same key with another body as a 422 problem', async () => {
    const owner = randomUUID();
    await submit(owner, 'key-2', { title: 'first' });
    const error = await submit(owner, 'key-2', { title: 'second' }).then(
      () => null,
      (refusal: unknown) => refusal,
    );
    expect(error).to.be.instanceOf(UnprocessableError);
    expect((error as UnprocessableError).status).to.equal(422);
    expect((error as Error).message).to.equal(
      'this Idempotency-Key was already used with a different request',
    );
    expect(await queuedBy(owner)).to.have.length(1);
  });

  it('makes one task of a concurrent pair with one key', async () => {
    const owner = randomUUID();
    const [a, b] = await Promise.all([
      submit(owner, 'key-3', { title: 'race' }),
      submit(owner, 'key-3', { title: 'race' }),
    ]);
    expect(a.resource.id).to.equal(b.resource.id);
    expect(await queuedBy(owner)).to.have.length(1);
  });

  it('keeps keys apart per user: another user with the same key gets a task of their own', async () => {
    const [mine, theirs] = [randomUUID(), randomUUID()];
    const a = await submit(mine, 'key-4', { title: 'shared key' });
    const b = await submit(theirs, 'key-4', { title: 'shared key' });
    expect(a.resource.id).to.not.equal(b.resource.id);
  });
});
