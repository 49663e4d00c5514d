import { withoutCredentials } from './domain/identity/credentials.js';
import type { Config } from './config.js';
import type { Logger } from './infra/logger.js';
import { createPool, type Pool } from './infra/db/pool.js';
import { migrate } from './infra/db/migrate.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from './infra/db/embeddedPostgres.js';
import type { EventStore } from './infra/eventStore/eventStore.js';
import { PostgresEventStore } from './infra/eventStore/postgres/postgresEventStore.js';
import type { EventBus } from './infra/bus/bus.js';
import { DirectBus } from './infra/bus/direct/directBus.js';
import { KafkaBus } from './infra/bus/kafka/kafkaBus.js';
import { KafkaRelay, relayMetrics } from './infra/bus/kafka/relay.js';
import { createKafka } from './infra/bus/kafka/kafkaClient.js';
import { LogCheckpoints } from './infra/bus/checkpoints.js';
import { cacheMetrics, type Cache } from './infra/cache/cache.js';
import { MemoryCache } from './infra/cache/memoryCache.js';
import { NoCache } from './infra/cache/noCache.js';
import { RedisCache } from './infra/cache/redisCache.js';
import { Api } from './infra/http/api.js';
import { createHttpApp, createMetrics, listen } from './infra/http/app.js';
import type { Registry } from 'prom-client';
import { randomUUID } from 'node:crypto';
import { MemoryRateLimiter, RedisRateLimiter, type RateLimiter } from './infra/rateLimit/rateLimiter.js';
import { registerIdentityRoutes } from './commands/identity/routes.js';
import { accessTokenVerifier } from './commands/identity/tokens.js';
import { bearerAuthenticator } from './infra/http/auth.js';
import { projectionMetrics, runProjections } from './projections/projectionRunner.js';
import { PROJECTIONS } from './projections/index.js';
import { projectionReached } from './projections/watermark.js';
import { ensureReadModelClaimIndexes } from './projections/tasks/table.js';
import { createHandlerRegistry } from './workers/handlers/index.js';
import { TASK_TYPES, TaskTypes } from './domain/tasks/taskTypes.js';
import { registerTaskCommandRoutes } from './commands/tasks/routes.js';
import { registerTaskQueryRoutes } from './queries/tasks/route.js';
import { registerScheduleCommandRoutes } from './commands/schedules/routes.js';
import { registerScheduleQueryRoutes } from './queries/schedules/route.js';
import { TaskWorker } from './workers/taskWorker.js';
import { CronScheduler, schedulerMetrics } from './workers/cronScheduler.js';
import { registerAuditRoutes } from './queries/audit/route.js';
import { registerQueueCommandRoutes } from './commands/queues/routes.js';
import { registerQueueQueryRoutes } from './queries/queues/route.js';
import { startAnchorSchedule } from './audit/anchors.js';
import { registerGoServiceRoutes } from './compat/goService/routes.js';
import { resolveDeploymentSecret } from './infra/secrets/deploymentSecret.js';
import { sleep } from './infra/abort.js';
import { parseMasterKey, PostgresPersonalData, type PersonalData } from './infra/secrets/personalData.js';

export const ROLES = ['api', 'relay', 'projector', 'worker', 'scheduler'] as const;
export type Role = (typeof ROLES)[number];

/** The adapters, chosen by config: the one place that knows which implementation backs each port. */
export interface Infrastructure {
  config: Config;
  logger: Logger;
  databaseUrl: string;
  /** Null when PostgreSQL comes from DATABASE_URL; else where the embedded default keeps its state. */
  embeddedDataDir: string | null;
  pool: Pool;
  store: EventStore;
  bus: EventBus;
  cache: Cache;
  rateLimiter: RateLimiter;
  checkpoints: LogCheckpoints;
  /** Seals personal data with a key per person; the keyed email hash accounts are found by. */
  personalData: PersonalData;
  metrics: Registry;
  /** Kafka mode only: the relay that publishes the log. */
  makeRelay: (() => KafkaRelay) | null;
  close(): Promise<void>;
}

export async function connectDatabase(
  config: Config,
  logger: Logger,
): Promise<{ databaseUrl: string; embedded: EmbeddedPostgres | null }> {
  if (config.databaseUrl) return { databaseUrl: config.databaseUrl, embedded: null };
  const embedded = await startEmbeddedPostgres({
    dataDir: config.embedded.dataDir,
    port: config.embedded.postgresPort,
    logger,
  });
  return { databaseUrl: embedded.connectionString, embedded };
}

export async function createEventStore(
  config: Config,
  pool: Pool,
  databaseUrl: string,
  logger: Logger,
): Promise<EventStore> {
  if (config.eventStore === 'esdb') {
    const { EsdbEventStore } = await import('./infra/eventStore/esdb/esdbEventStore.js');
    // Its workers claim from the tasks read model (there is no inline schedule), through these indexes.
    await ensureReadModelClaimIndexes(pool);
    return new EsdbEventStore({ connectionString: config.eventstoreUrl!, logger });
  }
  return new PostgresEventStore({
    pool,
    connectionString: databaseUrl,
    logger,
    pollIntervalMs: config.eventLog.pollIntervalMs,
    batchSize: config.eventLog.batchSize,
    statementTimeoutMs: config.database.statementTimeoutMs,
  });
}

/**
 * Personal data's keys: the master key is DATA_KEY (or DATA_KEY_FILE) when set; otherwise (never in production,
 * which config refuses) one generated on first start and kept like the generated JWT secret.
 */
export async function createPersonalData(
  config: Config,
  pool: Pool,
  embeddedDataDir: string | null,
  logger: Logger,
): Promise<PersonalData> {
  const masterKey = await resolveDeploymentSecret({
    name: 'data-key',
    configured: config.personalData.dataKey,
    home: embeddedDataDir ? { kind: 'dataDir', dataDir: embeddedDataDir } : { kind: 'database', pool },
    logger,
  });
  return new PostgresPersonalData(pool, parseMasterKey(masterKey.value));
}

export async function buildInfrastructure(
  config: Config,
  logger: Logger,
  /** processLocalCache false: without Redis, cache nothing (a process whose cache no projection invalidates). */
  options: { processLocalCache?: boolean } = {},
): Promise<Infrastructure> {
  const { databaseUrl, embedded } = await connectDatabase(config, logger);
  const pool = createPool(
    {
      connectionString: databaseUrl,
      max: config.database.poolSize,
      statementTimeoutMs: config.database.statementTimeoutMs,
    },
    logger,
  );
  const closers: Array<() => Promise<void>> = [async () => embedded?.stop(), () => pool.end()];
  const close = async () => {
    for (const closer of closers.splice(0).reverse())
      await closer().catch((error) => logger.warn({ err: error }, 'error while closing'));
  };
  try {
    await migrate(pool, logger);
    const metrics = createMetrics();
    const checkpoints = new LogCheckpoints(pool);
    const embeddedDataDir = embedded ? config.embedded.dataDir : null;
    const personalData = await createPersonalData(config, pool, embeddedDataDir, logger);

    const store = await createEventStore(config, pool, databaseUrl, logger);
    closers.push(() => store.close());

    let bus: EventBus;
    let makeRelay: Infrastructure['makeRelay'] = null;
    if (config.kafka.brokers.length > 0) {
      const kafka = createKafka(config.kafka, logger);
      bus = new KafkaBus({ kafka, settings: config.kafka, logger, pool });
      makeRelay = () =>
        new KafkaRelay({
          store,
          kafka,
          settings: config.kafka,
          checkpoints,
          connectionString: databaseUrl,
          logger,
          batchSize: config.relay.batchSize,
          lockRetryMs: config.relay.lockRetryMs,
          publicData: withoutCredentials,
          metrics: relayMetrics(metrics),
        });
    } else {
      bus = new DirectBus({ store, checkpoints, logger });
    }
    closers.push(() => bus.close());

    let cache: Cache;
    if (config.redisUrl) {
      const redisCache = new RedisCache({
        url: config.redisUrl,
        keyPrefix: config.cache.keyPrefix,
        defaultTtlSeconds: config.cache.ttlSeconds,
        commandTimeoutMs: config.cache.commandTimeoutMs,
        metrics: cacheMetrics(metrics),
        logger,
      });
      if (!(await redisCache.waitUntilReady(3000)))
        logger.warn('Redis is not reachable yet; starting with the cache bypassed');
      cache = redisCache;
    } else if (options.processLocalCache === false) {
      cache = new NoCache();
    } else {
      cache = new MemoryCache({
        maxEntries: config.cache.memoryMaxEntries,
        defaultTtlSeconds: config.cache.ttlSeconds,
        metrics: cacheMetrics(metrics),
      });
    }
    closers.push(() => cache.close());

    const rateLimiter: RateLimiter = config.redisUrl
      ? new RedisRateLimiter({
          url: config.redisUrl,
          keyPrefix: config.cache.keyPrefix,
          commandTimeoutMs: config.cache.commandTimeoutMs,
          logger,
        })
      : new MemoryRateLimiter();
    closers.push(() => rateLimiter.close());

    return {
      config,
      logger,
      databaseUrl,
      embeddedDataDir,
      pool,
      store,
      bus,
      cache,
      rateLimiter,
      checkpoints,
      personalData,
      metrics,
      makeRelay,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

const FORGOTTEN_KEYS_SWEEP_MS = 60_000;

/**
 * Every minute (and at start), destroys the data keys of users the read model shows forgotten that still have one.
 * A forget whose process died between its UserForgotten and the key's destruction is finished here, within about a
 * minute of the projector applying the event.
 */
async function sweepForgottenKeys(infra: Infrastructure, signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    try {
      const destroyed = await infra.personalData.destroyKeysOfForgottenUsers();
      if (destroyed > 0)
        infra.logger.warn({ destroyed }, 'destroyed the data keys of users forgotten before their keys were');
    } catch (error) {
      infra.logger.warn({ err: error }, 'sweep of forgotten users’ keys failed; trying again later');
    }
    await sleep(FORGOTTEN_KEYS_SWEEP_MS, signal);
  }
}

/** A role running in this process: stopping it ends its work and lets go of what it holds. */
interface StartedRole {
  name: string;
  stop(): Promise<void>;
}

export interface RunningService {
  url: string | null;
  infrastructure: Infrastructure;
  stop(): Promise<void>;
}

/**
 * The secret access tokens are signed with: JWT_SECRET (or JWT_SECRET_FILE) when set; otherwise one generated
 * on first start and kept with the deployment's state (the embedded data directory, or the shared database),
 * never a value written in the repository.
 */
export async function resolveJwtSecret(infra: Infrastructure): Promise<string> {
  const resolved = await resolveDeploymentSecret({
    name: 'jwt-secret',
    configured: infra.config.jwt.secret,
    home: infra.embeddedDataDir
      ? { kind: 'dataDir', dataDir: infra.embeddedDataDir }
      : { kind: 'database', pool: infra.pool },
    logger: infra.logger,
  });
  return resolved.value;
}

/** Builds the HTTP app on the given infrastructure: used by `start` and by the end-to-end tests alike. */
export function buildHttpApp(infra: Infrastructure, jwtSecret: string, clock: () => Date = () => new Date()) {
  const { config } = infra;
  const tokens = { ...config.jwt, secret: jwtSecret };
  const api = new Api({ authenticate: bearerAuthenticator(accessTokenVerifier(tokens, clock)) });
  const identity = registerIdentityRoutes(api, {
    store: infra.store,
    personalData: infra.personalData,
    pool: infra.pool,
    tokens,
    auth: config.auth,
    rateLimiter: infra.rateLimiter,
    clock,
    newId: randomUUID,
    logger: infra.logger,
  });
  const taskCommands = registerTaskCommandRoutes(api, {
    store: infra.store,
    taskTypes: new TaskTypes(TASK_TYPES),
    settings: config.tasks,
    batchBodyLimit: config.http.batchBodyLimit,
    clock,
    newId: randomUUID,
  });
  const taskQueries = registerTaskQueryRoutes(api, {
    pool: infra.pool,
    cache: infra.cache,
    store: infra.store,
    readModelReached: (position) => projectionReached(infra.pool, 'tasks', position, infra.bus),
    minPositionWaitMs: config.tasks.minPositionWaitMs,
    clock,
  });
  registerQueueCommandRoutes(api, { store: infra.store, clock, newId: randomUUID });
  registerQueueQueryRoutes(api, { pool: infra.pool, queueLimits: config.workers.queueLimits });
  registerScheduleCommandRoutes(api, {
    store: infra.store,
    taskTypes: new TaskTypes(TASK_TYPES),
    settings: config.tasks,
    clock,
    newId: randomUUID,
  });
  registerScheduleQueryRoutes(api, {
    pool: infra.pool,
    readModelReached: (position) => projectionReached(infra.pool, 'schedules', position, infra.bus),
    minPositionWaitMs: config.tasks.minPositionWaitMs,
  });
  registerAuditRoutes(api, { store: infra.store });
  // The replaced Go service's paths, served by the same commands and queries.
  registerGoServiceRoutes(api, {
    identity,
    taskCommands,
    taskQueries,
    listCap: config.tasks.compatListCap,
    clock,
  });
  const readiness = [
    { name: 'postgres', check: async () => void (await infra.pool.query('SELECT 1')) },
    { name: `event_store_${infra.store.name}`, check: () => infra.store.ping() },
    { name: `bus_${infra.bus.name}`, check: () => infra.bus.ping() },
    { name: `cache_${infra.cache.name}`, check: () => infra.cache.ping() },
  ];
  return createHttpApp({
    logger: infra.logger,
    bodyLimit: infra.config.http.bodyLimit,
    trustProxy: infra.config.http.trustProxy,
    api,
    readiness,
    metrics: infra.metrics,
    info: { title: 'task-manager', version: '0.1.0' },
  });
}

/**
 * Starts the chosen roles in this process. The data flow reads top to bottom:
 * HTTP commands -> event store -> (relay -> Kafka) -> projections / workers -> read models -> cache -> queries.
 */
export async function startService(
  config: Config,
  roles: readonly Role[],
  logger: Logger,
  options: { clock?: () => Date; processLocalCache?: boolean } = {},
): Promise<RunningService> {
  const infrastructure = await buildInfrastructure(config, logger, {
    processLocalCache: options.processLocalCache,
  });
  // One lifecycle for every role: each start leaves a stop, and stopping runs them last in, first out (HTTP stops
  // taking work first, then the consumers), then closes the connections. A start that fails runs the same stop,
  // so the roles started before it do not outlive the connections they run on.
  const started: StartedRole[] = [];
  const startRole = async (name: string, start: () => Promise<() => Promise<void>>) => {
    started.push({ name, stop: await start() });
  };
  const stop = async () => {
    for (const role of started.splice(0).reverse())
      await role
        .stop()
        .catch((error) => logger.warn({ err: error, role: role.name }, 'error while stopping'));
    await infrastructure.close();
  };
  let url: string | null = null;
  try {
    const { makeRelay } = infrastructure;
    if (roles.includes('relay') && makeRelay) {
      await startRole('relay', async () => {
        const relay = makeRelay();
        relay.start();
        return () => relay.stop();
      });
    }
    if (roles.includes('projector')) {
      await startRole('projector', async () => {
        const metrics = projectionMetrics(infrastructure.metrics);
        const consumer = await runProjections({ ...infrastructure, projections: PROJECTIONS, metrics });
        return () => consumer.stop();
      });
    }
    // Forgetting is an event, then the key's destruction: a process that died in between left a key to destroy.
    if (roles.includes('projector')) {
      await startRole('forgotten-keys sweep', async () => {
        const sweeping = new AbortController();
        const sweep = sweepForgottenKeys(infrastructure, sweeping.signal);
        return async () => {
          sweeping.abort();
          await sweep;
        };
      });
    }
    // Signed anchors of the log, on a schedule. Several processes doing it is harmless (expected revisions).
    const privateKey = config.audit.privateKey;
    if (roles.includes('projector') && privateKey) {
      await startRole('anchors', async () => {
        const anchoring = new AbortController();
        const schedule = startAnchorSchedule({
          store: infrastructure.store,
          privateKey,
          intervalSeconds: config.audit.anchorIntervalSeconds,
          logger: logger.child({ role: 'anchors' }),
          signal: anchoring.signal,
        });
        return async () => {
          anchoring.abort();
          await schedule;
        };
      });
    }
    if (roles.includes('worker')) {
      await startRole('worker', async () => {
        const worker = new TaskWorker({
          store: infrastructure.store,
          pool: infrastructure.pool,
          bus: infrastructure.bus,
          handlers: createHandlerRegistry(config.handlers),
          settings: config.workers,
          tasks: config.tasks,
          metrics: infrastructure.metrics,
          logger: logger.child({ role: 'worker' }),
          clock: options.clock,
          newId: randomUUID,
        });
        await worker.start();
        return () => worker.stop();
      });
    }
    // Cron schedules: due ones found in the schedules read model, fired from their streams. Any number of scheduler
    // processes is safe (one task per tick by the deterministic task id and the expected revisions).
    if (roles.includes('scheduler')) {
      await startRole('scheduler', async () => {
        const scheduler = new CronScheduler({
          store: infrastructure.store,
          pool: infrastructure.pool,
          settings: config.scheduler,
          logger: logger.child({ role: 'scheduler' }),
          clock: options.clock,
          newId: randomUUID,
          metrics: schedulerMetrics(infrastructure.metrics),
        });
        scheduler.start();
        return () => scheduler.stop();
      });
    }
    if (roles.includes('api')) {
      await startRole('api', async () => {
        const app = buildHttpApp(infrastructure, await resolveJwtSecret(infrastructure), options.clock);
        const server = await listen(app, config.port, config.host);
        url = server.url;
        return () => server.close(config.http.shutdownGraceMs);
      });
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, infrastructure, stop };
}
