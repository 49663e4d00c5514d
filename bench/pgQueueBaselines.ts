import { EventEmitter } from 'node:events';
import { Logger, makeWorkerUtils, run, type LogLevel, type WorkerEvents } from 'graphile-worker';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { createScratchDatabase } from './baselines.js';
import { round, sleep } from './stats.js';

/**
 * The two PostgreSQL-backed queues a Node user would pick instead, on the bench's PostgreSQL, each in a scratch
 * database of its own (dropped afterwards). Shaped like the BullMQ baseline: a warm-up, then `jobs` no-op jobs
 * added in bulks of `bulk`, then processed; per_s = jobs / (add time + process time). Both run with their own
 * defaults except what is named here, and they log only warnings and errors (collected in `warnings`), as the
 * service runs with LOG_LEVEL=silent.
 */
export interface PgQueueResult {
  jobs: number;
  bulk: number;
  add_per_s: number;
  process_per_s: number;
  /** jobs / (add time + process time). */
  per_s: number;
  /** What the run set; everything else is the library's default. */
  settings: Record<string, unknown>;
  warnings: string[];
}

export interface PgBossResult extends PgQueueResult {
  /**
   * The same jobs processed by `work()` instead of fetch loops: its workers wait out the polling interval (at
   * least 0.5 s) after every batch, full or not, so 4 workers of 50 top out near 400 jobs/s whatever PostgreSQL
   * does. Not the headline: it measures the interval, not the queue.
   */
  work: { add_per_s: number; process_per_s: number; per_s: number; polling_interval_s: number } | null;
}

interface Options {
  adminUrl: string;
  jobs: number;
  warmup: number;
  bulk: number;
}

const PROCESS_TIMEOUT_MS = 120_000;

async function addInBulks(
  count: number,
  bulk: number,
  add: (from: number, size: number) => Promise<unknown>,
) {
  const started = performance.now();
  for (let added = 0; added < count;) {
    const size = Math.min(bulk, count - added);
    await add(added, size);
    added += size;
  }
  return (performance.now() - started) / 1000;
}

function timeout(
  what: string,
  progress: () => number,
  count: number,
): { promise: Promise<never>; clear(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `${what} processed only ${progress()} of ${count} jobs in ${PROCESS_TIMEOUT_MS / 1000} s`,
          ),
        ),
      PROCESS_TIMEOUT_MS,
    );
  });
  promise.catch(() => undefined);
  return { promise, clear: () => clearTimeout(timer) };
}

/**
 * Graphile Worker (graphile-worker): jobs added through WorkerUtils.addJobs, then a runner at `concurrency`
 * with its other defaults (a pool of 10, LISTEN/NOTIFY, a 2 s poll) until every job has succeeded. The runner is
 * started after the adds, as BullMQ's worker is, so its start-up counts in the process time.
 */
export async function graphileBaseline(options: Options & { concurrency: number }): Promise<PgQueueResult> {
  const warnings: string[] = [];
  const logger = new Logger(() => (level: LogLevel, message: string) => {
    const severity = String(level);
    if (severity === 'error' || severity === 'warning') warnings.push(`${severity}: ${message}`);
  });
  const db = await createScratchDatabase(options.adminUrl);
  // Pools of our own, the size Graphile Worker would make (10), so that they are closed before the drop.
  const pools: pg.Pool[] = [];
  const newPool = () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 10 });
    pool.on('error', (error) => warnings.push(`pool: ${error.message}`));
    pool.on('connect', (client) => client.on('error', (error) => warnings.push(`client: ${error.message}`)));
    pools.push(pool);
    return pool;
  };
  const utils = await makeWorkerUtils({ pgPool: newPool(), logger });
  const processJobs = async (count: number) => {
    const events: WorkerEvents = new EventEmitter();
    let succeeded = 0;
    let allDone: () => void = () => {};
    const done = new Promise<void>((resolve) => (allDone = resolve));
    events.on('job:success', () => {
      if (++succeeded >= count) allDone();
    });
    const started = performance.now();
    const runner = await run({
      pgPool: newPool(),
      concurrency: options.concurrency,
      noHandleSignals: true,
      logger,
      events,
      taskList: { bench: async () => {} },
    });
    const limit = timeout('Graphile Worker', () => succeeded, count);
    try {
      await Promise.race([done, limit.promise]);
      return (performance.now() - started) / 1000;
    } finally {
      limit.clear();
      await runner.stop();
    }
  };
  const addJobs = (count: number) =>
    addInBulks(count, options.bulk, (from, size) =>
      utils.addJobs(
        Array.from({ length: size }, (_, i) => ({ identifier: 'bench', payload: { idx: from + i } })),
      ),
    );
  try {
    await utils.migrate();
    await addJobs(options.warmup);
    await processJobs(options.warmup);
    const addSeconds = await addJobs(options.jobs);
    const processSeconds = await processJobs(options.jobs);
    return {
      jobs: options.jobs,
      bulk: options.bulk,
      add_per_s: round(options.jobs / addSeconds, 1)!,
      process_per_s: round(options.jobs / processSeconds, 1)!,
      per_s: round(options.jobs / (addSeconds + processSeconds), 1)!,
      settings: { concurrency: options.concurrency, add: 'WorkerUtils.addJobs' },
      warnings: [...new Set(warnings)],
    };
  } finally {
    await Promise.resolve()
      .then(() => utils.release())
      .catch(() => undefined);
    await Promise.all(pools.map((pool) => pool.end().catch(() => undefined)));
    await db.drop();
  }
}

/**
 * pg-boss: jobs added with `insert` (one statement per bulk), then `workers` loops that each fetch a batch of
 * `batchSize`, run a no-op handler and complete the batch in one call, and fetch again at once while there is
 * work (what `work()` does, without its wait between batches). Then the same with `work()` itself at its
 * shortest polling interval, for the record.
 */
export async function pgBossBaseline(
  options: Options & { workers: number; batchSize: number; withWork: boolean },
): Promise<PgBossResult> {
  const warnings: string[] = [];
  const db = await createScratchDatabase(options.adminUrl);
  const boss = new PgBoss({ connectionString: db.url });
  boss.on('error', (error: Error) => warnings.push(`error: ${error.message}`));
  const name = 'bench';
  const addJobs = (count: number) =>
    addInBulks(count, options.bulk, (from, size) =>
      boss.insert(Array.from({ length: size }, (_, i) => ({ name, data: { idx: from + i } }))),
    );
  const fetchLoops = async (count: number) => {
    let processed = 0;
    const limit = timeout('pg-boss', () => processed, count);
    const started = performance.now();
    let failed: unknown = null;
    const loops = Promise.all(
      Array.from({ length: options.workers }, async () => {
        while (processed < count && failed === null) {
          const jobs = await boss.fetch(name, { batchSize: options.batchSize });
          if (jobs.length === 0) {
            // Only at the end: the last batches are held by the other loops.
            await sleep(5);
            continue;
          }
          await boss.complete(
            name,
            jobs.map((job) => job.id),
          );
          processed += jobs.length;
        }
      }),
    );
    try {
      await Promise.race([loops, limit.promise]);
    } catch (error) {
      failed = error;
      throw error;
    } finally {
      limit.clear();
    }
    return (performance.now() - started) / 1000;
  };
  const workers = async (count: number, pollingIntervalSeconds: number) => {
    let handled = 0;
    const limit = timeout('pg-boss work()', () => handled, count);
    const started = performance.now();
    const ids: string[] = [];
    for (let i = 0; i < options.workers; i++)
      ids.push(
        await boss.work(name, { batchSize: options.batchSize, pollingIntervalSeconds }, async (jobs) => {
          handled += jobs.length;
        }),
      );
    // work() completes each batch without awaiting it: done is when no job is left before `completed`.
    const finished = (async () => {
      for (;;) {
        if (handled >= count && (await boss.getQueueSize(name, { before: 'completed' })) === 0) return;
        await sleep(10);
      }
    })();
    try {
      await Promise.race([finished, limit.promise]);
      return (performance.now() - started) / 1000;
    } finally {
      limit.clear();
      for (const id of ids) await boss.offWork({ id }).catch(() => undefined);
    }
  };
  try {
    await boss.start();
    await boss.createQueue(name);
    await addJobs(options.warmup);
    await fetchLoops(options.warmup);
    const addSeconds = await addJobs(options.jobs);
    const processSeconds = await fetchLoops(options.jobs);
    let work: PgBossResult['work'] = null;
    if (options.withWork) {
      const pollingIntervalSeconds = 0.5;
      const workAdd = await addJobs(options.jobs);
      const workProcess = await workers(options.jobs, pollingIntervalSeconds);
      work = {
        add_per_s: round(options.jobs / workAdd, 1)!,
        process_per_s: round(options.jobs / workProcess, 1)!,
        per_s: round(options.jobs / (workAdd + workProcess), 1)!,
        polling_interval_s: pollingIntervalSeconds,
      };
    }
    return {
      jobs: options.jobs,
      bulk: options.bulk,
      add_per_s: round(options.jobs / addSeconds, 1)!,
      process_per_s: round(options.jobs / processSeconds, 1)!,
      per_s: round(options.jobs / (addSeconds + processSeconds), 1)!,
      settings: {
        workers: options.workers,
        batch_size: options.batchSize,
        add: 'insert',
        process: 'fetch + complete loops',
      },
      warnings: [...new Set(warnings)],
      work,
    };
  } finally {
    await boss.stop({ graceful: false, wait: true, timeout: 5000 }).catch(() => undefined);
    await db.drop();
  }
}
