/**
 * The bench's load generator: a child process of bench/run.ts, so its CPU and memory are not the service's
 * (the service runs in the parent, in-process, as `task-manager start` runs it). The parent calls the
 * operations below over the IPC channel; each answers once.
 */
import { bullmqBaseline, kafkaBaseline, pgInsertBaseline } from './baselines.js';
import { runE2e } from './e2e.js';
import { httpLoad } from './httpLoad.js';
import { measureRebuild } from './rebuild.js';
import { microBenchmarks } from './micro.js';
import { appendBaseline } from './appendBaseline.js';
import { graphileBaseline, pgBossBaseline } from './pgQueueBaselines.js';

export const operations = {
  pgInsert: pgInsertBaseline,
  kafka: kafkaBaseline,
  bullmq: bullmqBaseline,
  graphile: graphileBaseline,
  pgboss: pgBossBaseline,
  http: httpLoad,
  e2e: runE2e,
  rebuild: measureRebuild,
  micro: microBenchmarks,
  append: appendBaseline,
  memory: async () => process.memoryUsage().rss,
};

export type Operations = typeof operations;

export interface CallMessage {
  id: number;
  op: keyof Operations;
  args: unknown;
}

export type ReplyMessage =
  { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

if (process.send) {
  process.on('message', (message: CallMessage) => {
    const operation = operations[message.op] as (args: unknown) => Promise<unknown>;
    const reply = (answer: ReplyMessage) => process.send?.(answer);
    Promise.resolve()
      .then(() => operation(message.args))
      .then(
        (value) => reply({ id: message.id, ok: true, value }),
        (error: unknown) =>
          reply({
            id: message.id,
            ok: false,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error),
          }),
      );
  });
  // A stray error (a connection the server closed, say) must not take the whole bench down: the operation it
  // belonged to fails or times out on its own, and is reported as failed.
  process.on('uncaughtException', (error) =>
    process.stderr.write(`[load] uncaught: ${error.stack ?? error}\n`),
  );
  process.on('unhandledRejection', (error) =>
    process.stderr.write(`[load] unhandled rejection: ${String(error)}\n`),
  );
  // The parent is gone (finished, killed): nothing left to do here.
  process.on('disconnect', () => process.exit(0));
}
