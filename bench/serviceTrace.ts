import { Kafka } from 'kafkajs';
import { KafkaBus } from '../src/infra/bus/kafka/kafkaBus.js';
import type { ConsumeBatchesOptions, ConsumeOptions } from '../src/infra/bus/bus.js';
import { TaskWorker } from '../src/workers/taskWorker.js';
import { PostgresEventStore } from '../src/infra/eventStore/postgres/postgresEventStore.js';
import type { RecordedEvent } from '../src/infra/eventStore/eventStore.js';
import { round, summarize, type LatencySummary } from './stats.js';

/**
 * Timings inside the service, taken by wrapping a few of its methods at run time (the service runs in this
 * process; nothing under src/ changes): the worker's dispatch rounds and claims, each consumer group's handler
 * (for a projection: the apply transaction and the cache invalidation) and how long after the append an event
 * reached it, and the relay's sends to Kafka. Install before the service starts.
 */
export interface ServiceTraceReport {
  worker: {
    dispatch_rounds: number;
    dispatch_round_mean_ms: number | null;
    claim_attempts: number;
    claims_won: number;
    claim_mean_ms: number | null;
  };
  consumers: Array<{
    group: string;
    events: number;
    /** The handler's time: per event for one-by-one consumers, per batch for batch consumers (the projector). */
    handle: LatencySummary;
    /** Append (recorded_at) -> the handler starts: relay, Kafka, and waiting behind earlier events. */
    since_append: LatencySummary;
  }>;
  relay: {
    sends: number;
    messages: number;
    mean_batch: number | null;
    send: LatencySummary;
    /** Append (recorded_at) -> the event read from the log by the relay's poller. */
    append_to_read: LatencySummary;
    /** Append -> Kafka acknowledged the send that carried it. */
    append_to_acked: LatencySummary;
  };
}

type AnyFn = (...args: unknown[]) => Promise<unknown>;
const MAX_SAMPLES = 50_000;

export class ServiceTrace {
  private worker = { rounds: 0, roundMs: 0, claims: 0, won: 0, claimMs: 0 };
  private consumers = new Map<string, { handle: number[]; sinceAppend: number[] }>();
  private relay = {
    sends: 0,
    messages: 0,
    sendMs: [] as number[],
    read: [] as number[],
    acked: [] as number[],
  };
  private installed = false;

  install(): void {
    if (this.installed) return;
    this.installed = true;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const trace = this;

    const worker = TaskWorker.prototype as unknown as { claim: AnyFn; claimDueTasks: AnyFn };
    const claim = worker.claim;
    worker.claim = async function (this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      const won = await claim.apply(this, args);
      trace.worker.claims++;
      trace.worker.claimMs += performance.now() - t0;
      if (won === true) trace.worker.won++;
      return won;
    };
    const claimDueTasks = worker.claimDueTasks;
    worker.claimDueTasks = async function (this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      const result = await claimDueTasks.apply(this, args);
      trace.worker.rounds++;
      trace.worker.roundMs += performance.now() - t0;
      return result;
    };

    const bus = KafkaBus.prototype as unknown as { consume: (options: ConsumeOptions) => Promise<unknown> };
    const consume = bus.consume;
    bus.consume = function (this: unknown, options: ConsumeOptions) {
      const { group, handle } = options;
      return consume.call(this, {
        ...options,
        handle: async (event, delivery) => {
          const t0 = performance.now();
          const sinceAppend = Date.now() - Date.parse(event.recordedAt);
          try {
            await handle(event, delivery);
          } finally {
            const entry = trace.consumers.get(group) ?? { handle: [], sinceAppend: [] };
            if (entry.handle.length < MAX_SAMPLES) {
              entry.handle.push(performance.now() - t0);
              entry.sinceAppend.push(sinceAppend);
            }
            trace.consumers.set(group, entry);
          }
        },
      });
    };

    const batches = KafkaBus.prototype as unknown as {
      consumeBatches: (options: ConsumeBatchesOptions) => Promise<unknown>;
    };
    const consumeBatches = batches.consumeBatches;
    batches.consumeBatches = function (this: unknown, options: ConsumeBatchesOptions) {
      const { group, handleBatch } = options;
      return consumeBatches.call(this, {
        ...options,
        handleBatch: async (events, delivery) => {
          const t0 = performance.now();
          const now = Date.now();
          try {
            await handleBatch(events, delivery);
          } finally {
            const entry = trace.consumers.get(group) ?? { handle: [], sinceAppend: [] };
            if (entry.sinceAppend.length < MAX_SAMPLES) {
              entry.handle.push(performance.now() - t0);
              for (const event of events) entry.sinceAppend.push(now - Date.parse(event.recordedAt));
            }
            trace.consumers.set(group, entry);
          }
        },
      });
    };

    const store = PostgresEventStore.prototype as unknown as { readAll: AnyFn };
    const readAll = store.readAll;
    store.readAll = async function (this: unknown, ...args: unknown[]) {
      const events = (await readAll.apply(this, args)) as RecordedEvent[];
      const now = Date.now();
      for (const event of events) {
        if (trace.relay.read.length >= MAX_SAMPLES) break;
        trace.relay.read.push(now - Date.parse(event.recordedAt));
      }
      return events;
    };

    const client = Kafka.prototype as unknown as { producer: (...args: unknown[]) => { send: AnyFn } };
    const producer = client.producer;
    client.producer = function (this: unknown, ...args: unknown[]) {
      const made = producer.apply(this, args);
      const send = made.send.bind(made);
      made.send = async (...sendArgs: unknown[]) => {
        const t0 = performance.now();
        const result = await send(...sendArgs);
        const record = sendArgs[0] as { messages?: Array<{ value?: unknown }> };
        trace.relay.sends++;
        trace.relay.messages += record.messages?.length ?? 0;
        if (trace.relay.sendMs.length < MAX_SAMPLES) trace.relay.sendMs.push(performance.now() - t0);
        const acked = Date.now();
        for (const message of record.messages ?? []) {
          if (trace.relay.acked.length >= MAX_SAMPLES || typeof message.value !== 'string') break;
          const recordedAt = /"recordedAt":"([^"]+)"/.exec(message.value)?.[1];
          if (recordedAt) trace.relay.acked.push(acked - Date.parse(recordedAt));
        }
        return result;
      };
      return made;
    };
  }

  /** What was recorded since the last call. */
  take(): ServiceTraceReport {
    const w = this.worker;
    const report: ServiceTraceReport = {
      worker: {
        dispatch_rounds: w.rounds,
        dispatch_round_mean_ms: w.rounds ? round(w.roundMs / w.rounds, 2) : null,
        claim_attempts: w.claims,
        claims_won: w.won,
        claim_mean_ms: w.claims ? round(w.claimMs / w.claims, 2) : null,
      },
      consumers: [...this.consumers]
        .map(([group, entry]) => ({
          group,
          events: entry.sinceAppend.length,
          handle: summarize(entry.handle),
          since_append: summarize(entry.sinceAppend),
        }))
        .sort((a, b) => a.group.localeCompare(b.group)),
      relay: {
        sends: this.relay.sends,
        messages: this.relay.messages,
        mean_batch: this.relay.sends ? round(this.relay.messages / this.relay.sends, 1) : null,
        send: summarize(this.relay.sendMs),
        append_to_read: summarize(this.relay.read),
        append_to_acked: summarize(this.relay.acked),
      },
    };
    this.worker = { rounds: 0, roundMs: 0, claims: 0, won: 0, claimMs: 0 };
    this.consumers = new Map();
    this.relay = { sends: 0, messages: 0, sendMs: [], read: [], acked: [] };
    return report;
  }
}
