import type { RecordedEvent } from '../infra/eventStore/eventStore.js';

/** Events of one partition, in order. */
export interface PartitionBatch {
  partition: number;
  events: readonly RecordedEvent[];
}

/**
 * The read side's group commit. The bus hands over the batches of all partitions at once (one Kafka fetch holds
 * them all), each waiting for its own answer; applied one transaction each, a quiet period of 200 tasks/s made six
 * transactions of about four events where one would do, and their BEGINs, guard statements and COMMITs were most
 * of the projector's work. So batches that arrive together, or while a transaction runs, are applied together in
 * the next one: each partition's events stay in order, and different partitions hold different streams, so
 * their order against each other does not matter. A partition never has two batches in flight (the bus waits for
 * an answer before handing over the next), so no two transactions share a partition. A failure fails every batch
 * of the transaction, and each is handed over again by the bus; the guards make the redelivery a no-op for what
 * was applied.
 */
export class PartitionBatchCombiner {
  private waiting: Array<{ batch: PartitionBatch; resolve: () => void; reject: (error: unknown) => void }> =
    [];
  private running = false;

  constructor(
    private readonly applyTogether: (parts: readonly PartitionBatch[]) => Promise<void>,
    /** Events in one transaction at most (a batch is never split, so one larger batch still goes whole). */
    private readonly maxEvents = 2000,
  ) {}

  apply(batch: PartitionBatch): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ batch, resolve, reject });
      if (this.running) return;
      this.running = true;
      // The other partitions of the same fetch are handed over in the same turn of the event loop: wait for them.
      setImmediate(() => void this.drain());
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.waiting.length > 0) {
        let events = 0;
        let count = 0;
        while (count < this.waiting.length && (count === 0 || events < this.maxEvents))
          events += this.waiting[count++]!.batch.events.length;
        const taken = this.waiting.splice(0, count);
        try {
          await this.applyTogether(taken.map((entry) => entry.batch));
          for (const entry of taken) entry.resolve();
        } catch (error) {
          for (const entry of taken) entry.reject(error);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
