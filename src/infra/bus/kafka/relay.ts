import pg from 'pg';
import type { Kafka, Producer } from 'kafkajs';
import type { EventStore, JsonObject, Position, RecordedEvent } from '../../eventStore/eventStore.js';
import type { Pool } from '../../db/pool.js';
import type { Logger } from '../../logger.js';
import type { LogCheckpoints } from '../checkpoints.js';
import { asyncBatches } from '../../asyncBatches.js';
import { Counter, type Registry } from 'prom-client';
import { prepared } from '../../db/prepared.js';
import { backoffMs, sleep } from '../../abort.js';
import {
  defaultPartitioner,
  ensureTopic,
  partitionFor,
  toMessage,
  topicPartitionCount,
  type KafkaSettings,
} from './kafkaClient.js';

// Any fixed 64-bit number distinct from the service's other advisory locks.
const RELAY_LOCK_KEY = 7_426_002;

/**
 * An idempotent producer can wedge after its broker restarts (its sequence state no longer matches the broker's;
 * seen in several Kafka clients), and then a send never settles. A send that has not settled by then counts as
 * failed: the relay starts again from its checkpoint with a new producer. At worst a batch is published twice,
 * which consumers absorb.
 */
const SEND_TIMEOUT_MS = 30_000;

/** A Kafka call the relay gave up waiting for (see SEND_TIMEOUT_MS). */
export class KafkaCallTimeoutError extends Error {
  override name = 'KafkaCallTimeoutError';
}

function withinTime<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new KafkaCallTimeoutError(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** What operators watch of the relay: how often it started again, and why. */
export interface RelayMetrics {
  restarts: Counter<'reason'>;
}

const relayMetricsByRegistry = new WeakMap<Registry, RelayMetrics>();

export function relayMetrics(registry: Registry): RelayMetrics {
  let metrics = relayMetricsByRegistry.get(registry);
  if (!metrics) {
    metrics = {
      restarts: new Counter({
        name: 'relay_restarts_total',
        help: 'Times the relay started again from its checkpoint: reason send_timeout (a Kafka call that never settled, the watchdog) or error',
        labelNames: ['reason'],
        registers: [registry],
      }),
    };
    relayMetricsByRegistry.set(registry, metrics);
  }
  return metrics;
}
export const RELAY_CHECKPOINT = 'relay:kafka';

/**
 * What the relay has published, as targets per partition for "has a consumer seen everything up to P": the relay
 * must be past P, and partition p holds, of the events up to P, those up to min(P, the newest it got).
 * Null while the relay has not published P.
 */
export async function publishedPartitionTargets(
  pool: Pool,
  position: Position,
): Promise<ReadonlyMap<number, Position> | null> {
  const { rows } = await pool.query<{
    relay: string | null;
    heads: Array<{ partition: number; position: string }> | null;
  }>(
    `SELECT (SELECT position FROM log_checkpoints WHERE name = $1) AS relay,
            (SELECT json_agg(json_build_object('partition', partition, 'position', position)) FROM relay_partition_heads) AS heads`,
    [RELAY_CHECKPOINT],
  );
  const { relay, heads } = rows[0]!;
  if (!relay || relay < position) return null;
  return new Map(
    (heads ?? []).map((head) => [head.partition, head.position < position ? head.position : position]),
  );
}

export interface RelayOptions {
  store: EventStore;
  kafka: Kafka;
  settings: KafkaSettings;
  checkpoints: LogCheckpoints;
  /** For the lock's own connection, which must outlive any pooled client. */
  connectionString: string;
  logger: Logger;
  batchSize: number;
  lockRetryMs: number;
  /**
   * The public form of an event's data, or null to publish it as recorded: what must not leave the store (the
   * composition root passes the identity domain's `withoutCredentials`). A message whose data was changed carries
   * the header `redacted: 1`, since its `rawData` is then not the bytes the hash chain covers.
   */
  publicData: (type: string, data: JsonObject) => JsonObject | null;
  metrics?: RelayMetrics;
  /** Fault injection: called after Kafka acknowledged a batch and before the checkpoint is stored. */
  afterProduce?: (batch: RecordedEvent[]) => Promise<void>;
}

export type RelayState = 'stopped' | 'waiting_for_lock' | 'publishing';

/**
 * Publishes the event store's global log to Kafka, keyed by stream id. There are no dual writes: commands only
 * append to the store, and this is the only publisher. The checkpoint is stored after Kafka's acks, so a crash
 * in between re-publishes a batch (consumers are idempotent) and never loses one.
 *
 * Exactly one relay publishes at a time: it holds a PostgreSQL advisory lock on its own connection, and stores
 * its checkpoint through that connection, so a relay that lost its lock (its connection died) cannot move the
 * checkpoint either. A second relay waits for the lock.
 */
export class KafkaRelay {
  private controller = new AbortController();
  private running: Promise<void> | null = null;
  private currentState: RelayState = 'stopped';
  private published = 0;

  constructor(private readonly options: RelayOptions) {}

  get state(): RelayState {
    return this.currentState;
  }

  get publishedCount(): number {
    return this.published;
  }

  start(): void {
    if (this.running) return;
    this.controller = new AbortController();
    this.running = this.run(this.controller.signal);
  }

  async stop(): Promise<void> {
    this.controller.abort();
    await this.running;
    this.running = null;
    this.currentState = 'stopped';
  }

  private async run(signal: AbortSignal): Promise<void> {
    const { logger } = this.options;
    for (let failures = 0; !signal.aborted;) {
      try {
        await this.publishWhileHoldingLock(signal);
        failures = 0;
      } catch (error) {
        failures++;
        const reason = error instanceof KafkaCallTimeoutError ? 'send_timeout' : 'error';
        this.options.metrics?.restarts.inc({ reason });
        logger.warn(
          { err: error, failures, reason },
          'relay interrupted; starting again from its checkpoint',
        );
        await sleep(backoffMs(failures, 250, 5000), signal);
      }
    }
  }

  /**
   * The checkpoint and the per-partition heads move together, in one statement (so one round trip, and atomic
   * without a BEGIN and a COMMIT of their own), through the lock's connection. Both only ever move forward.
   */
  private async recordPublished(
    client: pg.Client,
    heads: Map<number, string>,
    checkpoint: string,
  ): Promise<void> {
    await client.query(
      prepared(
        `WITH heads AS (
           INSERT INTO relay_partition_heads (partition, position) SELECT * FROM unnest($1::int[], $2::text[])
           ON CONFLICT (partition) DO UPDATE SET position = excluded.position
           WHERE relay_partition_heads.position < excluded.position
           RETURNING 1)
         INSERT INTO log_checkpoints (name, position) VALUES ($3, $4)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()
         WHERE log_checkpoints.position < excluded.position`,
        [[...heads.keys()], [...heads.values()], RELAY_CHECKPOINT, checkpoint],
      ),
    );
  }

  private publicForm(event: RecordedEvent): RecordedEvent & { redacted?: true } {
    const data = this.options.publicData(event.type, event.data);
    return data ? { ...event, data, rawData: JSON.stringify(data), redacted: true } : event;
  }

  private async publishWhileHoldingLock(signal: AbortSignal): Promise<void> {
    const { logger, settings, checkpoints, store } = this.options;
    const lockClient = new pg.Client({
      connectionString: this.options.connectionString,
      application_name: 'task-manager-relay',
    });
    // If the lock's connection dies, PostgreSQL releases the lock: stop publishing at once.
    const lost = new AbortController();
    lockClient.on('error', (error) => {
      logger.warn({ err: error }, 'relay lock connection lost');
      lost.abort();
    });
    const stop = AbortSignal.any([signal, lost.signal]);
    let producer: Producer | null = null;
    try {
      await lockClient.connect();
      this.currentState = 'waiting_for_lock';
      while (!stop.aborted) {
        const { rows } = await lockClient.query<{ locked: boolean }>(
          'SELECT pg_try_advisory_lock($1) AS locked',
          [RELAY_LOCK_KEY],
        );
        if (rows[0]?.locked) break;
        await sleep(this.options.lockRetryMs, stop);
      }
      if (stop.aborted) return;
      logger.info('relay holds the lock; publishing');

      const admin = this.options.kafka.admin();
      await admin.connect();
      let partitions: number;
      try {
        await ensureTopic(admin, settings, logger);
        partitions = await topicPartitionCount(admin, settings.topic);
      } finally {
        await admin.disconnect();
      }
      producer = this.options.kafka.producer({
        idempotent: true,
        maxInFlightRequests: 1,
        createPartitioner: defaultPartitioner,
        allowAutoTopicCreation: false,
      });
      await producer.connect();
      this.currentState = 'publishing';

      const after = await checkpoints.load(RELAY_CHECKPOINT, lockClient);
      const reading = new AbortController();
      const stopReading = () => reading.abort();
      stop.addEventListener('abort', stopReading, { once: true });
      // The checkpoint of a batch is written while the next one is read and sent: in order, each only after its
      // own acks, and a failure stops the relay (it restarts from the last checkpoint written, so at worst a
      // batch is published twice, which consumers absorb).
      let recording: Promise<void> = Promise.resolve();
      try {
        for await (const batch of asyncBatches(
          store.subscribeToAll({ after, signal: reading.signal }),
          this.options.batchSize,
        )) {
          // acks -1: every in-sync replica has the batch before we move the checkpoint past it.
          const heads = new Map<number, string>();
          const messages = batch.map((event) => {
            const partition = partitionFor(event.streamId, partitions);
            heads.set(partition, event.position); // the batch is in log order, so the last one wins
            return toMessage(this.publicForm(event), partition);
          });
          await withinTime(
            producer.send({ topic: settings.topic, acks: -1, messages }),
            SEND_TIMEOUT_MS,
            'Kafka send',
          );
          await this.options.afterProduce?.(batch);
          if (stop.aborted) break; // lock possibly lost: do not store a checkpoint through a dead connection
          await recording; // the previous batch's checkpoint, so they are written in order
          const checkpoint = batch[batch.length - 1]!.position;
          recording = this.recordPublished(lockClient, heads, checkpoint).then(() => {
            this.published += batch.length;
          });
          // Surfaced at the next batch or when the loop ends, not as an unhandled rejection in between.
          recording.catch(() => undefined);
        }
        await recording;
      } finally {
        stop.removeEventListener('abort', stopReading);
        reading.abort();
      }
    } finally {
      this.currentState = signal.aborted ? 'stopped' : 'waiting_for_lock';
      if (producer)
        await withinTime(producer.disconnect(), 5000, 'producer disconnect').catch(() => undefined);
      // Ending the connection releases the advisory lock.
      await lockClient.end().catch(() => undefined);
    }
  }
}
