/**
 * src/infra/bus: the bus port (this file) and its adapters, Kafka (a relay publishes the log) and direct.
 */
import type { Position, RecordedEvent } from '../eventStore/eventStore.js';
import { backoffMs, sleep } from '../abort.js';

/**
 * The bus port: how projections and workers receive the log. Delivery is at least once, in per-stream order;
 * handlers must be idempotent. Two adapters: Kafka (a relay publishes the log; consumer groups read it) and
 * direct (each consumer group reads the event store's log itself, from its own checkpoint).
 */
/** Where an event came from: the Kafka partition (always 0 on the direct bus, which has one ordered log). */
export interface Delivery {
  partition: number;
}

export type EventHandler = (event: RecordedEvent, delivery: Delivery) => Promise<void>;

export interface ConsumeOptions {
  /** Members of one group share the work; each group sees every event. */
  group: string;
  handle: EventHandler;
}

/** Events from one partition, in log order; on the direct bus, a run of the log read at once. */
export type BatchHandler = (events: RecordedEvent[], delivery: Delivery) => Promise<void>;

export interface ConsumeBatchesOptions {
  group: string;
  /**
   * Called again with the same events (and maybe more) until it returns, so it must apply them all or none:
   * one transaction. Never called with an empty batch.
   */
  handleBatch: BatchHandler;
  /** Events per call at most. */
  maxBatchSize: number;
  /**
   * Only these event types are wanted (all when absent). The others are passed over, and the Kafka adapter does
   * so from the message's `type` header without decoding the message: a consumer that needs a few types of a
   * busy log, like the workers' wake-up, then costs little per event it does not want.
   */
  types?: ReadonlySet<string>;
  /**
   * How long events may gather before the handler sees them, for a consumer that something else reaches first
   * (the workers on PostgreSQL, which the store's own append signal wakes): with Kafka, each fetch waits this
   * long or for a large batch, instead of coming back for every send of the relay, so such a consumer costs the
   * broker a few requests a second instead of one per send. Absent: as soon as events arrive.
   */
  gatherMs?: number;
}

export interface RunningConsumer {
  /** Stops after the event in hand, recording how far it got. */
  stop(): Promise<void>;
}

export interface EventBus {
  readonly name: 'kafka' | 'direct';
  /** Resolves once the consumer is receiving (for Kafka: it has joined its group). */
  consume(options: ConsumeOptions): Promise<RunningConsumer>;
  /**
   * The batch form, for consumers whose per-event cost is a round trip (projections): whatever is ready, up to
   * `maxBatchSize`, in one call. A failed batch is retried as a whole, and its position is recorded only after it
   * succeeded.
   */
  consumeBatches(options: ConsumeBatchesOptions): Promise<RunningConsumer>;
  /**
   * What a consumer must have applied in each partition to have seen every event up to `position`; null while
   * the bus has not carried `position` yet. A read model that records its position per partition compares with
   * this to answer "have I reached P" (read-your-writes), without knowing how the bus spreads the log.
   */
  partitionTargets(position: Position): Promise<ReadonlyMap<number, Position> | null>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Runs a handler until it succeeds or the consumer stops: an event is never skipped because a dependency was
 * briefly down. A handler that must give up on bad data logs and returns instead of throwing.
 */
export async function handleUntilDone(
  handle: EventHandler,
  event: RecordedEvent,
  delivery: Delivery,
  signal: AbortSignal,
  onFailure: (error: unknown, attempt: number) => void,
  /** Kafka only sends heartbeats between messages: a long retry must send them itself or lose its partitions. */
  beforeRetry?: () => Promise<void>,
): Promise<boolean> {
  return retryUntilDone(() => handle(event, delivery), signal, onFailure, beforeRetry);
}

/** handleUntilDone for any piece of work (a batch, say). */
export async function retryUntilDone(
  work: () => Promise<void>,
  signal: AbortSignal,
  onFailure: (error: unknown, attempt: number) => void,
  beforeRetry?: () => Promise<void>,
): Promise<boolean> {
  for (let attempt = 1; !signal.aborted; attempt++) {
    try {
      await work();
      return true;
    } catch (error) {
      onFailure(error, attempt);
      await sleep(backoffMs(attempt, 100, 5000), signal);
      await beforeRetry?.().catch(() => undefined);
    }
  }
  return false;
}
