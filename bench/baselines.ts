import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { Queue, Worker } from 'bullmq';
import {
  createKafka,
  defaultPartitioner,
  ensureTopic,
  partitionFor,
  toMessage,
} from '../src/infra/bus/kafka/kafkaClient.js';
import type { RecordedEvent } from '../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../src/infra/logger.js';
import { taskSpec } from '../test/support/fixtures.js';
import { round, summarize, type LatencySummary } from './stats.js';

/** About the size of a TaskQueued event as stored (data plus metadata). */
const ROW_PAYLOAD = JSON.stringify({
  taskId: randomUUID(),
  ownerId: randomUUID(),
  spec: taskSpec({ title: 'bench' }),
  idempotencyKey: null,
  queuedAt: new Date().toISOString(),
  metadata: {
    correlationId: randomUUID(),
    causationId: null,
    userId: randomUUID(),
    timestamp: new Date().toISOString(),
    hash: randomBytes(32).toString('hex'),
  },
});

export interface PgInsertResult extends LatencySummary {
  concurrency: number;
  per_s: number;
  seconds: number;
  error?: string;
}

export interface ScratchDatabase {
  name: string;
  url: string;
  /** Drops it, closing whatever connections are still open to it. Never throws. */
  drop(): Promise<void>;
}

/**
 * An empty database of its own on the server of `adminUrl`. Its name starts with `tm_bench_scratch_`, which is
 * how the bench's CPU figures tell its backends from other people's (bench/run.ts, pgOwners).
 */
export async function createScratchDatabase(adminUrl: string): Promise<ScratchDatabase> {
  const name = `tm_bench_scratch_${randomBytes(4).toString('hex')}`;
  const admin = () => {
    const client = new pg.Client({ connectionString: adminUrl, application_name: 'bench-pg' });
    client.on('error', () => undefined);
    return client;
  };
  const creator = admin();
  await creator.connect();
  try {
    await creator.query(`CREATE DATABASE ${name}`);
  } finally {
    await creator.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    drop: async () => {
      const dropper = admin();
      try {
        await dropper.connect();
        await dropper.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } catch {
        // best effort: a scratch database left behind is named for what it is
      } finally {
        await dropper.end().catch(() => undefined);
      }
    },
  };
}

/**
 * The physical limit of a durable append here: single-row INSERTs, each its own transaction (autocommit, so one
 * WAL flush per row with the server's synchronous_commit), `concurrency` connections in parallel, into a table
 * of a scratch database that is dropped afterwards.
 */
export async function pgInsertBaseline(options: {
  adminUrl: string;
  concurrencies: number[];
  seconds: number;
}): Promise<PgInsertResult[]> {
  const scratch = await createScratchDatabase(options.adminUrl);
  const url = new URL(scratch.url);
  const results: PgInsertResult[] = [];
  try {
    const setup = new pg.Client({ connectionString: url.toString(), application_name: 'bench-pg' });
    setup.on('error', () => undefined);
    await setup.connect();
    await setup.query(`CREATE TABLE bench_inserts (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      stream_id text NOT NULL,
      data text NOT NULL,
      recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
    await setup.end();
    for (const concurrency of options.concurrencies) {
      // The server is shared: when it has no room for this many connections, say so and go on.
      const opened = await Promise.allSettled(
        Array.from({ length: concurrency }, async () => {
          const client = new pg.Client({ connectionString: url.toString(), application_name: 'bench-pg' });
          client.on('error', () => undefined);
          await client.connect();
          return client;
        }),
      );
      const clients = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
      const failed = opened.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed) {
        await Promise.all(clients.map((client) => client.end().catch(() => undefined)));
        results.push({
          concurrency,
          per_s: 0,
          seconds: 0,
          error: `could not open ${concurrency} connections: ${String(failed.reason)}`,
          ...summarize([]),
        });
        continue;
      }
      const latencies: number[] = [];
      const started = performance.now();
      const end = started + options.seconds * 1000;
      await Promise.all(
        clients.map(async (client) => {
          while (performance.now() < end) {
            const t0 = performance.now();
            await client.query('INSERT INTO bench_inserts (stream_id, data) VALUES ($1, $2)', [
              `task-${randomUUID()}`,
              ROW_PAYLOAD,
            ]);
            latencies.push(performance.now() - t0);
          }
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      await Promise.all(clients.map((client) => client.end()));
      results.push({
        concurrency,
        per_s: round(latencies.length / seconds, 1)!,
        seconds: round(seconds, 1)!,
        ...summarize(latencies),
      });
    }
  } finally {
    await scratch.drop();
  }
  return results;
}

export interface KafkaProduceResult {
  batch_size: number;
  messages: number;
  /** Messages per second, sends of `batch_size` one after another (the relay under load). */
  per_s: number;
  /** One message per send, one after another (the relay when each poll finds one event). */
  single: LatencySummary & { per_s: number };
  message_bytes: number;
}

/**
 * kafkajs with the relay's settings: the same client options (createKafka), an idempotent producer with one
 * request in flight, acks -1, the relay's batch size, the partition picked like the relay picks it, messages
 * shaped like the relay's. To a scratch topic with the service's partition count, deleted afterwards.
 */
export async function kafkaBaseline(options: {
  brokers: string[];
  messages: number;
  singleSends: number;
  batchSize: number;
  partitions: number;
}): Promise<KafkaProduceResult> {
  const settings = {
    brokers: options.brokers,
    clientId: 'task-manager-bench',
    topic: `tm-bench-scratch-${randomBytes(4).toString('hex')}`,
    partitions: options.partitions,
    replicationFactor: 1,
    sessionTimeoutMs: 10000,
    heartbeatIntervalMs: 1000,
  };
  const kafka = createKafka(settings, silentLogger());
  const admin = kafka.admin();
  await admin.connect();
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: defaultPartitioner,
    allowAutoTopicCreation: false,
  });
  try {
    await ensureTopic(admin, settings, silentLogger());
    await producer.connect();
    let position = 0;
    const message = () => {
      const streamId = `task-${randomUUID()}`;
      const event: RecordedEvent = {
        streamId,
        revision: 0,
        position: `${(position++).toString(16).padStart(16, '0')}-${'0'.repeat(16)}`,
        type: 'TaskQueued',
        data: JSON.parse(ROW_PAYLOAD) as RecordedEvent['data'],
        rawData: ROW_PAYLOAD,
        metadata: {
          eventId: randomUUID(),
          correlationId: randomUUID(),
          causationId: null,
          userId: randomUUID(),
          timestamp: new Date().toISOString(),
          hash: randomBytes(32).toString('hex'),
        },
        recordedAt: new Date().toISOString(),
      };
      return toMessage(event, partitionFor(streamId, options.partitions));
    };
    const messageBytes = Buffer.byteLength(String(message().value));
    // Warm-up: metadata, producer id, connections to every partition leader.
    await producer.send({ topic: settings.topic, acks: -1, messages: [message(), message(), message()] });

    const started = performance.now();
    for (let sent = 0; sent < options.messages;) {
      const size = Math.min(options.batchSize, options.messages - sent);
      await producer.send({
        topic: settings.topic,
        acks: -1,
        messages: Array.from({ length: size }, message),
      });
      sent += size;
    }
    const batchSeconds = (performance.now() - started) / 1000;

    const singles: number[] = [];
    const singleStarted = performance.now();
    for (let i = 0; i < options.singleSends; i++) {
      const t0 = performance.now();
      await producer.send({ topic: settings.topic, acks: -1, messages: [message()] });
      singles.push(performance.now() - t0);
    }
    const singleSeconds = (performance.now() - singleStarted) / 1000;
    return {
      batch_size: options.batchSize,
      messages: options.messages,
      per_s: round(options.messages / batchSeconds, 1)!,
      single: { per_s: round(options.singleSends / singleSeconds, 1)!, ...summarize(singles) },
      message_bytes: messageBytes,
    };
  } finally {
    await producer.disconnect().catch(() => undefined);
    await admin.deleteTopics({ topics: [settings.topic] }).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}

export interface BullmqResult {
  jobs: number;
  bulk: number;
  concurrency: number;
  add_per_s: number;
  process_per_s: number;
  /** jobs / (add time + process time): add then process, like submit then run. */
  per_s: number;
}

/**
 * What a Node user would pick instead, shaped like bullmq-bench's queue-add-bulk and worker-concurrent
 * scenarios: a warm-up, then `jobs` tiny jobs added in bulks of 50, then processed by one worker at concurrency
 * 100 with a no-op processor. Its own queue name and key prefix on the same Redis; obliterated afterwards.
 */
export async function bullmqBaseline(options: {
  redisUrl: string;
  jobs: number;
  warmup: number;
  bulk: number;
  concurrency: number;
}): Promise<BullmqResult> {
  const redis = new URL(options.redisUrl);
  const connection = {
    host: redis.hostname,
    port: Number(redis.port || 6379),
    ...(redis.password ? { password: decodeURIComponent(redis.password) } : {}),
    maxRetriesPerRequest: null,
  };
  const prefix = `tm-bench-${randomBytes(4).toString('hex')}`;
  const name = 'bench';
  const queue = new Queue(name, { connection, prefix });
  const addJobs = async (count: number) => {
    for (let added = 0; added < count;) {
      const size = Math.min(options.bulk, count - added);
      await queue.addBulk(Array.from({ length: size }, (_, i) => ({ name, data: { idx: added + i } })));
      added += size;
    }
  };
  const processJobs = async (count: number) => {
    let completed = 0;
    let resolveDone: () => void = () => {};
    const done = new Promise<void>((resolve) => (resolveDone = resolve));
    const worker = new Worker(name, async () => {}, {
      connection,
      prefix,
      concurrency: options.concurrency,
      autorun: false,
    });
    worker.on('completed', () => {
      if (++completed >= count) resolveDone();
    });
    const started = performance.now();
    void worker.run();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>(
      (resolve) => (timer = setTimeout(() => resolve('timeout'), 120_000)),
    );
    const outcome = await Promise.race([done.then(() => 'done' as const), timeout]);
    clearTimeout(timer);
    const seconds = (performance.now() - started) / 1000;
    await worker.close();
    if (outcome === 'timeout')
      throw new Error(`BullMQ processed only ${completed} of ${count} jobs in 120 s`);
    return seconds;
  };
  try {
    await queue.waitUntilReady();
    await addJobs(options.warmup);
    await processJobs(options.warmup);
    const addStarted = performance.now();
    await addJobs(options.jobs);
    const addSeconds = (performance.now() - addStarted) / 1000;
    const processSeconds = await processJobs(options.jobs);
    return {
      jobs: options.jobs,
      bulk: options.bulk,
      concurrency: options.concurrency,
      add_per_s: round(options.jobs / addSeconds, 1)!,
      process_per_s: round(options.jobs / processSeconds, 1)!,
      per_s: round(options.jobs / (addSeconds + processSeconds), 1)!,
    };
  } finally {
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
  }
}
