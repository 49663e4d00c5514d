import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  WrongExpectedRevisionError,
  comparePositions,
  type EventStore,
  type NewEvent,
  type Position,
  type RecordedEvent,
} from '../../src/infra/eventStore/eventStore.js';
import { chainHash, GENESIS_HASH } from '../../src/infra/eventStore/hashChain.js';
import { sleep } from '../support/wait.js';

export interface EventStoreHarness {
  store: EventStore;
  /** The interval after which a polling subscriber has certainly looked at the log again. */
  settleMs: number;
}

const category = () => `ct${randomBytes(4).toString('hex')}`;

export const newEvent = (
  type: string,
  data: Record<string, unknown> = {},
  userId: string | null = null,
): NewEvent => ({
  eventId: randomUUID(),
  type,
  data: data as NewEvent['data'],
  metadata: { correlationId: randomUUID(), causationId: null, userId, timestamp: '2026-01-01T00:00:00.000Z' },
});

/** Reads the live subscription until `count` events pass the filter, or fails after `timeoutMs`. */
async function collect(
  store: EventStore,
  after: Position | null,
  keep: (event: RecordedEvent) => boolean,
  count: number,
  timeoutMs = 20000,
): Promise<RecordedEvent[]> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const seen: RecordedEvent[] = [];
  try {
    for await (const event of store.subscribeToAll({ after, signal: controller.signal })) {
      if (keep(event)) seen.push(event);
      if (seen.length >= count) break;
    }
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  return seen;
}

async function expectConflict(promise: Promise<unknown>): Promise<WrongExpectedRevisionError> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(WrongExpectedRevisionError);
    return error as WrongExpectedRevisionError;
  }
  expect.fail('expected a WrongExpectedRevisionError');
}

/** One suite for every EventStore adapter: what the rest of the system relies on. */
export function eventStoreContract(
  adapterName: string,
  setUp: () => Promise<EventStoreHarness | null>,
  tearDown: () => Promise<void>,
) {
  describe(`event store contract: ${adapterName}`, function () {
    this.timeout(60000);
    let harness: EventStoreHarness;
    let store: EventStore;

    before(async function () {
      const made = await setUp();
      if (!made) return this.skip();
      harness = made;
      store = made.store;
    });
    after(tearDown);

    describe('append and read a stream', () => {
      it('appends a new stream at revision 0 and reads back data, metadata and position', async () => {
        const streamId = `${category()}-1`;
        const event = newEvent(
          'Created',
          { title: 'ünïcode ✓', nested: { n: 1, list: [1, 'two'] } },
          randomUUID(),
        );
        const result = await store.append(streamId, [event], { expectedRevision: 'no_stream' });
        expect(result.nextRevision).to.equal(0);

        const [read] = await store.readStream(streamId);
        expect(read).to.include({ streamId, revision: 0, type: 'Created', position: result.position });
        expect(read!.data).to.deep.equal(event.data);
        expect(read!.metadata).to.include({ ...event.metadata, eventId: event.eventId });
      });

      it('returns [] for a stream that does not exist', async () => {
        expect(await store.readStream(`${category()}-missing`)).to.deep.equal([]);
      });

      it('reads a stream from a revision', async () => {
        const streamId = `${category()}-1`;
        await store.append(streamId, [newEvent('A'), newEvent('B'), newEvent('C')], {
          expectedRevision: 'no_stream',
        });
        const tail = await store.readStream(streamId, { fromRevision: 1 });
        expect(tail.map((e) => [e.revision, e.type])).to.deep.equal([
          [1, 'B'],
          [2, 'C'],
        ]);
      });

      it('chains each event to the one before it with a SHA-256 over stream, revision, type, data bytes and previous hash', async () => {
        const streamId = `${category()}-1`;
        await store.append(streamId, [newEvent('A', { a: 1 }), newEvent('B', { b: 'x' })], {
          expectedRevision: 'no_stream',
        });
        await store.append(streamId, [newEvent('C', { c: [true, null] })], { expectedRevision: 1 });
        const events = await store.readStream(streamId);
        let previousHash = GENESIS_HASH;
        for (const event of events) {
          expect(JSON.parse(event.rawData)).to.deep.equal(event.data);
          const expected = chainHash({
            streamId,
            revision: event.revision,
            type: event.type,
            rawData: event.rawData,
            previousHash,
          });
          expect(event.metadata.hash).to.equal(expected);
          previousHash = expected;
        }
      });
    });

    describe('optimistic concurrency', () => {
      it('honours every kind of expected revision', async () => {
        const streamId = `${category()}-1`;
        await expectConflict(store.append(streamId, [newEvent('X')], { expectedRevision: 'stream_exists' }));
        await expectConflict(store.append(streamId, [newEvent('X')], { expectedRevision: 0 }));
        await store.append(streamId, [newEvent('A')], { expectedRevision: 'no_stream' });
        const conflict = await expectConflict(
          store.append(streamId, [newEvent('X')], { expectedRevision: 'no_stream' }),
        );
        expect(conflict.actual).to.equal(0);
        await expectConflict(store.append(streamId, [newEvent('X')], { expectedRevision: 5 }));
        expect(
          (await store.append(streamId, [newEvent('B')], { expectedRevision: 0 })).nextRevision,
        ).to.equal(1);
        expect(
          (await store.append(streamId, [newEvent('C')], { expectedRevision: 'stream_exists' })).nextRevision,
        ).to.equal(2);
        expect(
          (await store.append(streamId, [newEvent('D')], { expectedRevision: 'any' })).nextRevision,
        ).to.equal(3);
        expect((await store.readStream(streamId)).map((e) => e.type)).to.deep.equal(['A', 'B', 'C', 'D']);
      });

      it('lets exactly one of two writers racing on one stream win; the other gets a conflict', async () => {
        for (let round = 0; round < 10; round++) {
          const streamId = `${category()}-1`;
          await store.append(streamId, [newEvent('Created')], { expectedRevision: 'no_stream' });
          const outcomes = await Promise.allSettled([
            store.append(streamId, [newEvent('ByWriterOne')], { expectedRevision: 0 }),
            store.append(streamId, [newEvent('ByWriterTwo')], { expectedRevision: 0 }),
          ]);
          const winners = outcomes.filter((o) => o.status === 'fulfilled');
          const losers = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
          expect(winners, `round ${round}`).to.have.length(1);
          expect(losers[0]!.reason).to.be.instanceOf(WrongExpectedRevisionError);
          expect(await store.readStream(streamId)).to.have.length(2);
        }
      });

      it('serialises concurrent appends with "any" without losing one', async () => {
        const streamId = `${category()}-1`;
        await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            store.append(streamId, [newEvent('E', { i })], { expectedRevision: 'any' }),
          ),
        );
        const events = await store.readStream(streamId);
        expect(events.map((e) => e.revision)).to.deep.equal(Array.from({ length: 20 }, (_, i) => i));
        expect(new Set(events.map((e) => (e.data as { i: number }).i)).size).to.equal(20);
      });
    });

    describe('appends that arrive together (group commit where the adapter has it)', () => {
      /** Appends after the head the caller read, as the command handler does: revision and hash known. */
      const appendAfterRead = async (streamId: string, events: NewEvent[]) => {
        const history = await store.readStream(streamId);
        const head = history.at(-1)!;
        return {
          head,
          append: () =>
            store.append(streamId, events, {
              expectedRevision: head.revision,
              previousHash: head.metadata.hash,
            }),
        };
      };

      it('fails only the appends that conflict; the others in the same moment succeed', async () => {
        const streams = Array.from({ length: 30 }, (_, i) => `${category()}-${i}`);
        await Promise.all(
          streams.map((id) => store.append(id, [newEvent('Created')], { expectedRevision: 'no_stream' })),
        );
        const reads = await Promise.all(streams.map((id) => appendAfterRead(id, [newEvent('Next')])));
        const outcomes = await Promise.allSettled(
          streams.map((id, i) => {
            if (i === 7)
              return store.append(id, [newEvent('Stale')], {
                expectedRevision: 5,
                previousHash: reads[i]!.head.metadata.hash,
              });
            if (i === 12) return store.append(id, [newEvent('Stale')], { expectedRevision: 'no_stream' });
            return reads[i]!.append();
          }),
        );
        outcomes.forEach((outcome, i) => {
          if (i === 7 || i === 12) {
            expect(outcome.status, `append ${i}`).to.equal('rejected');
            const reason = (outcome as PromiseRejectedResult).reason;
            expect(reason, `append ${i}`).to.be.instanceOf(WrongExpectedRevisionError);
            expect((reason as WrongExpectedRevisionError).actual, `append ${i}`).to.equal(0);
          } else {
            expect(outcome.status, `append ${i}`).to.equal('fulfilled');
            expect((outcome as PromiseFulfilledResult<{ nextRevision: number }>).value.nextRevision).to.equal(
              1,
            );
          }
        });
        const stored = await Promise.all(streams.map((id) => store.readStream(id)));
        stored.forEach((events, i) =>
          expect(
            events.map((e) => e.type),
            `stream ${i}`,
          ).to.deep.equal(i === 7 || i === 12 ? ['Created'] : ['Created', 'Next']),
        );
      });

      it('chains hashes from the previous hash the caller read, and lets one of two racing writers win', async () => {
        for (let round = 0; round < 10; round++) {
          const streamId = `${category()}-1`;
          await store.append(streamId, [newEvent('Created')], { expectedRevision: 'no_stream' });
          const [one, two] = await Promise.all([
            appendAfterRead(streamId, [newEvent('ByWriterOne'), newEvent('AndMore')]),
            appendAfterRead(streamId, [newEvent('ByWriterTwo')]),
          ]);
          const outcomes = await Promise.allSettled([one!.append(), two!.append()]);
          expect(
            outcomes.filter((o) => o.status === 'fulfilled'),
            `round ${round}`,
          ).to.have.length(1);
          const loser = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')!;
          expect(loser.reason).to.be.instanceOf(WrongExpectedRevisionError);
          const events = await store.readStream(streamId);
          let previous = GENESIS_HASH;
          for (const event of events) {
            expect(event.metadata.hash).to.equal(
              chainHash({
                streamId,
                revision: event.revision,
                type: event.type,
                rawData: event.rawData,
                previousHash: previous,
              }),
            );
            previous = event.metadata.hash;
          }
        }
      });

      it('answers a retried append idempotently while the appends around it are written', async () => {
        const streams = Array.from({ length: 10 }, (_, i) => `${category()}-${i}`);
        const firstEvents = streams.map(() => [newEvent('Created')]);
        const first = await store.append(streams[0]!, firstEvents[0]!, { expectedRevision: 'no_stream' });
        const results = await Promise.all(
          streams.map((id, i) => store.append(id, firstEvents[i]!, { expectedRevision: 'no_stream' })),
        );
        expect(results[0]).to.deep.equal(first);
        for (const id of streams) expect(await store.readStream(id)).to.have.length(1);
      });
      it('answers each append with the chain hash of its last event, to continue the chain from', async () => {
        const streamId = `${category()}-1`;
        const first = await store.append(streamId, [newEvent('A'), newEvent('B')], {
          expectedRevision: 'no_stream',
        });
        const next = await store.append(streamId, [newEvent('C')], {
          expectedRevision: first.nextRevision,
          previousHash: first.hash,
        });
        const any = await store.append(streamId, [newEvent('D')], { expectedRevision: 'any' });
        const stored = await store.readStream(streamId);
        expect([first.hash, next.hash, any.hash]).to.deep.equal(
          [stored[1]!, stored[2]!, stored[3]!].map((event) => event.metadata.hash),
        );
      });
    });

    describe('idempotency by event id', () => {
      it('answers a repeated append with the first result and stores the events once', async () => {
        const streamId = `${category()}-1`;
        const events = [newEvent('A'), newEvent('B')];
        const first = await store.append(streamId, events, { expectedRevision: 'no_stream' });
        const again = await store.append(streamId, events, { expectedRevision: 'no_stream' });
        expect(again).to.deep.equal(first);
        expect(await store.readStream(streamId)).to.have.length(2);
      });
    });

    describe('the global log', () => {
      it('pages through the log in order without gaps or repeats, and positions match the appends', async () => {
        const start = await store.headPosition();
        const prefix = category();
        const appended: string[] = [];
        for (let i = 0; i < 7; i++) {
          const result = await store.append(`${prefix}-${i % 3}`, [newEvent('E', { i })], {
            expectedRevision: 'any',
          });
          appended.push(result.position);
        }
        const read: RecordedEvent[] = [];
        let after = start;
        const last = appended[appended.length - 1]!;
        // An empty page is not the end: the PostgreSQL store withholds committed events while an older
        // transaction anywhere on the server is open (it could still commit before them). Page up to our last one.
        const deadline = Date.now() + 30000;
        while (after === null || after < last) {
          const page = await store.readAll({ after, limit: 2 });
          if (page.length === 0) {
            if (Date.now() > deadline) expect.fail(`the log stayed short of ${last}`);
            await sleep(20);
            continue;
          }
          read.push(...page);
          after = page[page.length - 1]!.position;
        }
        const ours = read.filter((e) => e.streamId.startsWith(prefix));
        expect(ours.map((e) => (e.data as { i: number }).i)).to.deep.equal([0, 1, 2, 3, 4, 5, 6]);
        expect(ours.map((e) => e.position)).to.deep.equal(appended);
        const positions = read.map((e) => e.position);
        expect([...positions].sort(comparePositions)).to.deep.equal(positions);
        expect(new Set(positions).size).to.equal(positions.length);
        expect(comparePositions((await store.headPosition())!, appended[6]!)).to.be.at.least(0);
      });

      it('never lets a subscriber skip an event whose transaction commits after a later one', async () => {
        const prefix = category();
        const start = await store.headPosition();
        const received = collect(store, start, (e) => e.streamId.startsWith(prefix), 2);
        let releaseSlow!: () => void;
        const slowHeld = new Promise<void>((resolve) => (releaseSlow = resolve));
        let slowReachedCommit!: () => void;
        const slowReady = new Promise<void>((resolve) => (slowReachedCommit = resolve));
        // The slow writer starts first (lower transaction id and sequence) but commits last.
        const slow = store.append(`${prefix}-slow`, [newEvent('Slow')], {
          expectedRevision: 'no_stream',
          beforeCommit: async () => {
            slowReachedCommit();
            await slowHeld;
          },
        });
        await slowReady;
        await store.append(`${prefix}-fast`, [newEvent('Fast')], { expectedRevision: 'no_stream' });
        await sleep(harness.settleMs); // the subscriber polls while the slow transaction is still open
        releaseSlow();
        await slow;
        const events = await received;
        expect(events.map((e) => e.type).sort()).to.deep.equal(['Fast', 'Slow']);
      });

      it('delivers every event exactly once, in stream order, to a subscriber reading while many writers commit out of order', async () => {
        const prefix = category();
        const streams = 12;
        const perStream = 15;
        const start = await store.headPosition();
        const received = collect(
          store,
          start,
          (e) => e.streamId.startsWith(prefix),
          streams * perStream,
          45000,
        );
        await Promise.all(
          Array.from({ length: streams }, async (_, s) => {
            for (let r = 0; r < perStream; r++) {
              await store.append(`${prefix}-${s}`, [newEvent('Step', { s, r })], {
                expectedRevision: r === 0 ? 'no_stream' : r - 1,
                // Random hold-ups before commit make transaction order and commit order disagree.
                beforeCommit: () => sleep(Math.random() < 0.3 ? Math.random() * 30 : 0),
              });
            }
          }),
        );
        const events = await received;
        expect(events).to.have.length(streams * perStream);
        expect(new Set(events.map((e) => e.metadata.eventId)).size).to.equal(streams * perStream);
        for (let s = 0; s < streams; s++) {
          const revisions = events.filter((e) => e.streamId === `${prefix}-${s}`).map((e) => e.revision);
          expect(revisions, `stream ${s}`).to.deep.equal(Array.from({ length: perStream }, (_, r) => r));
        }
      });

      it('resumes a subscription after a checkpoint with nothing repeated and nothing missed', async () => {
        const prefix = category();
        const start = await store.headPosition();
        for (let i = 0; i < 10; i++)
          await store.append(`${prefix}-${i % 2}`, [newEvent('E', { i })], { expectedRevision: 'any' });
        const firstPart = await collect(store, start, (e) => e.streamId.startsWith(prefix), 4);
        const checkpoint = firstPart[3]!.position;
        const live = collect(store, checkpoint, (e) => e.streamId.startsWith(prefix), 8);
        for (let i = 10; i < 12; i++)
          await store.append(`${prefix}-${i % 2}`, [newEvent('E', { i })], { expectedRevision: 'any' });
        const rest = await live;
        const all = [...firstPart, ...rest].map((e) => (e.data as { i: number }).i);
        expect(all).to.deep.equal(Array.from({ length: 12 }, (_, i) => i));
      });
    });
  });
}
