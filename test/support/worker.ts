import { randomUUID } from 'node:crypto';
import { Registry } from 'prom-client';
import { loadConfig, type Config } from '../../src/config.js';
import type { EventBus } from '../../src/infra/bus/bus.js';
import type { Pool } from '../../src/infra/db/pool.js';
import type { EventStore } from '../../src/infra/eventStore/eventStore.js';
import { silentLogger } from '../../src/infra/logger.js';
import { createHandlerRegistry } from '../../src/workers/handlers/index.js';
import { TaskWorker } from '../../src/workers/taskWorker.js';

/**
 * A TaskWorker with the shipped settings and handlers, claiming from `queue` only (so a test takes no other
 * test's tasks), polling every 50 ms and retrying at once; `settings` go over those. Started; the caller stops it.
 */
export async function startTestWorker(
  deps: { store: EventStore; pool: Pool; bus: EventBus },
  queue: string,
  settings: Partial<Config['workers']> = {},
): Promise<TaskWorker> {
  const config = loadConfig({ env: {} });
  const worker = new TaskWorker({
    ...deps,
    handlers: createHandlerRegistry(config.handlers),
    settings: {
      ...config.workers,
      onlyQueues: [queue],
      pollIntervalMs: 50,
      backoff: { baseMs: 10, maxMs: 10, jitter: 0 },
      ...settings,
    },
    tasks: config.tasks,
    metrics: new Registry(),
    logger: silentLogger(),
    newId: randomUUID,
  });
  await worker.start();
  return worker;
}
