import type { RecordedEvent } from '../eventStore/eventStore.js';
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

export interface RunningConsumer {
  /** Stops after the event in hand, recording how far it got. */
  stop(): Promise<void>;
}

export interface EventBus {
  readonly name: 'kafka' | 'direct';
  /** Resolves once the consumer is receiving (for Kafka: it has joined its group). */
  consume(options: ConsumeOptions): Promise<RunningConsumer>;
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
  for (let attempt = 1; !signal.aborted; attempt++) {
    try {
      await handle(event, delivery);
      return true;
    } catch (error) {
      onFailure(error, attempt);
      await sleep(backoffMs(attempt, 100, 5000), signal);
      await beforeRetry?.().catch(() => undefined);
    }
  }
  return false;
}
