import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import type { BatchHandler, EventBus, RunningConsumer } from '../../src/infra/bus/bus.js';
import {
  decodePosition,
  encodePosition,
  type EventStore,
  type RecordedEvent,
} from '../../src/infra/eventStore/eventStore.js';
import type { KafkaRelay } from '../../src/infra/bus/kafka/relay.js';
import { newEvent } from './eventStore.contract.js';
import { sleep, waitFor } from '../support/wait.js';

export interface BusHarness {
  store: EventStore;
  bus: EventBus;
  /** Kafka only: makes a relay; `crashOnce` makes its first batch fail after the acks, before the checkpoint. */
  makeRelay?: (options?: { crashOnce?: boolean }) => KafkaRelay;
}

const uniqueName = (label: string) => `${label}${randomBytes(4).toString('hex')}`;

/** Consumes until `until` holds for the events of our streams, or fails after `timeoutMs`. */
class Collector {
  readonly events: RecordedEvent[] = [];
  private waiters: Array<() => void> = [];
  constructor(private readonly prefix: string) {}

  readonly handle = async (event: RecordedEvent) => {
    if (!event.streamId.startsWith(this.prefix)) return;
    this.events.push(event);
    this.waiters.forEach((wake) => wake());
  };

  /** Sizes of the batches given to `handleBatch`, ours or not. */
  readonly batchSizes: number[] = [];
  /** Our events per batch, for batches that had some. */
  readonly ourBatchSizes: number[] = [];

  readonly handleBatch = async (events: RecordedEvent[]) => {
    this.batchSizes.push(events.length);
    const ours = events.filter((event) => event.streamId.startsWith(this.prefix));
    if (ours.length > 0) this.ourBatchSizes.push(ours.length);
    for (const event of ours) await this.handle(event);
  };

  get uniqueIds(): Set<string> {
    return new Set(this.events.map((e) => e.metadata.eventId));
  }

  async waitFor(until: (c: Collector) => boolean, timeoutMs = 30000): Promise<void> {
    await waitFor('our events', () => (until(this) ? true : undefined), {
      timeoutMs,
      describe: () => `Got ${this.events.length} events (${this.uniqueIds.size} unique).`,
      // Looks again as soon as an event arrives, or after 200 ms.
      pause: async () => {
        await new Promise<void>((resolve) => {
          this.waiters.push(resolve);
          setTimeout(resolve, 200);
        });
        this.waiters = [];
      },
    });
  }
}

async function appendSteps(
  store: EventStore,
  prefix: string,
  streams: number,
  perStream: number,
  offset = 0,
) {
  for (let r = offset; r < offset + perStream; r++)
    await Promise.all(
      Array.from({ length: streams }, (_, s) =>
        store.append(`${prefix}-${s}`, [newEvent('Step', { s, r })], {
          expectedRevision: r === 0 ? 'no_stream' : r - 1,
        }),
      ),
    );
}

/** Per stream, the revisions in the order first delivered (duplicates removed). */
function firstDeliveryOrder(events: RecordedEvent[], streamId: string): number[] {
  const seen = new Set<number>();
  return events
    .filter((e) => e.streamId === streamId && !seen.has(e.revision) && seen.add(e.revision))
    .map((e) => e.revision);
}

export function busContract(
  adapterName: string,
  capabilities: { relay: boolean },
  setUp: (context: Mocha.Context) => Promise<BusHarness | null>,
  tearDown: () => Promise<void>,
) {
  describe(`bus contract: ${adapterName}`, function () {
    this.timeout(90000);
    let harness: BusHarness;
    let relay: KafkaRelay | undefined;
    const consumers: RunningConsumer[] = [];

    before(async function () {
      const made = await setUp(this);
      if (!made) return this.skip();
      harness = made;
      relay = harness.makeRelay?.();
      relay?.start();
    });
    afterEach(async () => {
      await Promise.all(consumers.splice(0).map((c) => c.stop()));
    });
    after(async () => {
      await relay?.stop();
      await tearDown();
    });

    const consume = async (group: string, handle: (e: RecordedEvent) => Promise<void>) => {
      const consumer = await harness.bus.consume({ group, handle });
      consumers.push(consumer);
      return consumer;
    };

    const consumeBatches = async (group: string, handleBatch: BatchHandler, maxBatchSize = 10) => {
      const consumer = await harness.bus.consumeBatches({ group, handleBatch, maxBatchSize });
      consumers.push(consumer);
      return consumer;
    };

    /**
     * A new group's consumer (started by `start`) takes 20 events and stops cleanly; 20 more are appended and the
     * group starts again: together they saw all 40, and the second saw none of the first's again.
     */
    const expectResumedAfterCleanStop = async (
      start: (group: string, collector: Collector) => Promise<RunningConsumer>,
    ) => {
      const prefix = uniqueName('bus');
      const group = uniqueName('g');
      const before = new Collector(prefix);
      const consumer = await start(group, before);
      await appendSteps(harness.store, prefix, 2, 10);
      await before.waitFor((c) => c.uniqueIds.size === 20);
      await consumer.stop();
      consumers.splice(consumers.indexOf(consumer), 1);

      await appendSteps(harness.store, prefix, 2, 10, 10);
      const after = new Collector(prefix);
      await start(group, after);
      await after.waitFor((c) => c.uniqueIds.size >= 20);
      expect(new Set([...before.uniqueIds, ...after.uniqueIds]).size).to.equal(40);
      const repeated = [...after.uniqueIds].filter((id) => before.uniqueIds.has(id));
      expect(repeated, 'events redelivered after a clean stop').to.deep.equal([]);
    };

    it('delivers every event in batches of at most the maximum, what is ready together, each stream in order', async () => {
      const prefix = uniqueName('bus');
      await appendSteps(harness.store, prefix, 5, 8);
      const collector = new Collector(prefix);
      await consumeBatches(uniqueName('g'), collector.handleBatch, 10);
      await collector.waitFor((c) => c.uniqueIds.size === 40);
      for (let s = 0; s < 5; s++)
        expect(firstDeliveryOrder(collector.events, `${prefix}-${s}`)).to.deep.equal([
          0, 1, 2, 3, 4, 5, 6, 7,
        ]);
      expect(Math.max(...collector.batchSizes)).to.be.at.most(10);
      expect(collector.batchSizes).to.not.include(0);
      // Appended before the consumer started, so they were ready together: not one event per call.
      expect(Math.max(...collector.ourBatchSizes)).to.be.greaterThan(1);
    });

    it('retries a failed batch as a whole, losing nothing and keeping each stream in order', async () => {
      const prefix = uniqueName('bus');
      const collector = new Collector(prefix);
      let failuresLeft = 2;
      await consumeBatches(uniqueName('g'), async (events) => {
        if (events.some((e) => e.streamId === `${prefix}-0` && e.revision === 3) && failuresLeft-- > 0)
          throw new Error('database briefly down');
        await collector.handleBatch(events);
      });
      await appendSteps(harness.store, prefix, 2, 6);
      await collector.waitFor((c) => c.uniqueIds.size === 12);
      expect(firstDeliveryOrder(collector.events, `${prefix}-0`)).to.deep.equal([0, 1, 2, 3, 4, 5]);
      expect(firstDeliveryOrder(collector.events, `${prefix}-1`)).to.deep.equal([0, 1, 2, 3, 4, 5]);
      expect(failuresLeft).to.be.at.most(0);
      // The failed batches were not taken as done: each event was handled (collected) once.
      expect(collector.events.length).to.equal(12);
    });

    it('gives a batch consumer only the event types it asks for, each stream in order', async () => {
      const prefix = uniqueName('bus');
      for (let s = 0; s < 3; s++)
        await harness.store.append(
          `${prefix}-${s}`,
          [newEvent('Wanted', { s, n: 0 }), newEvent('Unwanted', { s }), newEvent('Wanted', { s, n: 1 })],
          { expectedRevision: 'no_stream' },
        );
      const collector = new Collector(prefix);
      const consumer = await harness.bus.consumeBatches({
        group: uniqueName('g'),
        types: new Set(['Wanted']),
        maxBatchSize: 100,
        handleBatch: collector.handleBatch,
      });
      consumers.push(consumer);
      await collector.waitFor((c) => c.uniqueIds.size === 6);
      // Time for an Unwanted event to arrive if it were passed on (the batch it came in has been delivered).
      await sleep(300);
      expect(new Set(collector.events.map((e) => e.type))).to.deep.equal(new Set(['Wanted']));
      for (let s = 0; s < 3; s++)
        expect(firstDeliveryOrder(collector.events, `${prefix}-${s}`)).to.deep.equal([0, 2]);
    });

    it('resumes a restarted batch consumer where it left off, nothing repeated after a clean stop', async () => {
      await expectResumedAfterCleanStop((group, collector) => consumeBatches(group, collector.handleBatch));
    });

    it('delivers every event to a consumer group, each stream in order', async () => {
      const prefix = uniqueName('bus');
      const collector = new Collector(prefix);
      await consume(uniqueName('g'), collector.handle);
      await appendSteps(harness.store, prefix, 5, 8);
      await collector.waitFor((c) => c.uniqueIds.size === 40);
      for (let s = 0; s < 5; s++)
        expect(firstDeliveryOrder(collector.events, `${prefix}-${s}`)).to.deep.equal([
          0, 1, 2, 3, 4, 5, 6, 7,
        ]);
    });

    it('names per partition how far a consumer must be to have seen everything up to a position it carried', async () => {
      const prefix = uniqueName('bus');
      const ours: Array<{ event: RecordedEvent; partition: number }> = [];
      await consumeBatches(uniqueName('g'), async (events, delivery) => {
        for (const event of events)
          if (event.streamId.startsWith(prefix)) ours.push({ event, partition: delivery.partition });
      });
      await appendSteps(harness.store, prefix, 3, 4);
      const deadline = Date.now() + 30000;
      await waitFor(
        'our 12 events',
        () => new Set(ours.map((o) => o.event.metadata.eventId)).size >= 12 || undefined,
        { timeoutMs: 30000 },
      );
      const last = ours.reduce((max, o) => (o.event.position > max ? o.event.position : max), '');

      // The relay records what it published after the broker's acks, so shortly after a consumer has it.
      const targets: ReadonlyMap<number, string> | null = await waitFor(
        'targets once the bus carried the position',
        async () => (await harness.bus.partitionTargets(last)) ?? undefined,
        { timeoutMs: Math.max(0, deadline - Date.now()) },
      );
      expect(targets, 'targets once the bus carried the position').to.not.equal(null);
      // A reader at these targets includes each of our events, in the partition it came through.
      for (const { event, partition } of ours)
        expect(
          (targets!.get(partition) ?? '') >= event.position,
          `${event.streamId}@${event.revision}`,
        ).to.equal(true);
      for (const target of targets!.values())
        expect(target <= last, 'no target past the position').to.equal(true);
      if (capabilities.relay) {
        const beyond = encodePosition(decodePosition(last).high + 1n, 0n);
        expect(await harness.bus.partitionTargets(beyond), 'a position not yet published').to.equal(null);
      }
    });

    it('gives every group every event', async () => {
      const prefix = uniqueName('bus');
      const first = new Collector(prefix);
      const second = new Collector(prefix);
      await consume(uniqueName('g'), first.handle);
      await consume(uniqueName('g'), second.handle);
      await appendSteps(harness.store, prefix, 3, 4);
      await first.waitFor((c) => c.uniqueIds.size === 12);
      await second.waitFor((c) => c.uniqueIds.size === 12);
    });

    it('resumes a restarted consumer where it left off: nothing missed, nothing repeated after a clean stop', async () => {
      await expectResumedAfterCleanStop((group, collector) => consume(group, collector.handle));
    });

    it('redelivers an event whose handler failed, so a passing outage loses nothing', async () => {
      const prefix = uniqueName('bus');
      const collector = new Collector(prefix);
      let failuresLeft = 2;
      await consume(uniqueName('g'), async (event) => {
        if (event.streamId === `${prefix}-0` && event.revision === 3 && failuresLeft-- > 0)
          throw new Error('database briefly down');
        await collector.handle(event);
      });
      await appendSteps(harness.store, prefix, 2, 6);
      await collector.waitFor((c) => c.uniqueIds.size === 12);
      expect(firstDeliveryOrder(collector.events, `${prefix}-0`)).to.deep.equal([0, 1, 2, 3, 4, 5]);
      expect(failuresLeft).to.be.at.most(0);
    });

    if (capabilities.relay) {
      it('absorbs the duplicates of a relay killed between produce and checkpoint, and misses nothing', async () => {
        await relay!.stop();
        const prefix = uniqueName('bus');
        const collector = new Collector(prefix);
        await consume(uniqueName('g'), collector.handle);
        await appendSteps(harness.store, prefix, 3, 5);
        const crashing = harness.makeRelay!({ crashOnce: true });
        crashing.start();
        try {
          await collector.waitFor((c) => c.uniqueIds.size === 15);
          // The crashed batch was published twice: the duplicates really happened, and dedupe absorbs them.
          await collector.waitFor((c) => c.events.length > 15, 10000);
          expect(collector.uniqueIds.size).to.equal(15);
        } finally {
          await crashing.stop();
          relay = harness.makeRelay!();
          relay.start();
        }
      });

      it('lets only one of two relays publish; the other takes over when the first stops', async () => {
        const second = harness.makeRelay!();
        second.start();
        try {
          await sleep(1500);
          expect([relay!.state, second.state].sort()).to.deep.equal(['publishing', 'waiting_for_lock']);
          const [active, standby] = relay!.state === 'publishing' ? [relay!, second] : [second, relay!];
          await active.stop();
          const prefix = uniqueName('bus');
          const collector = new Collector(prefix);
          await consume(uniqueName('g'), collector.handle);
          await appendSteps(harness.store, prefix, 1, 3);
          await collector.waitFor((c) => c.uniqueIds.size === 3);
          expect(standby.state).to.equal('publishing');
          relay = standby;
        } finally {
          if (second !== relay) await second.stop();
        }
      });
    }
  });
}
