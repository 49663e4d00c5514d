import { createPool } from '../src/infra/db/pool.js';
import { PostgresEventStore } from '../src/infra/eventStore/postgres/postgresEventStore.js';
import { silentLogger } from '../src/infra/logger.js';
import { PROJECTIONS } from '../src/projections/index.js';
import { dropOldSchemas, rebuildReadModels } from '../src/projections/rebuild.js';
import { round } from './stats.js';

export interface RebuildResult {
  events: number;
  /** Of the bulk phase (read the log, apply it), as `rebuildReadModels` reports it. */
  per_s: number;
  duration_s: number;
  verified: boolean;
  /** Tables whose rebuilt rows differ from the live ones (0 = equal). */
  differing_tables: number;
}

/**
 * What `task-manager projections rebuild --verify` does, without the swap: every read model rebuilt from the log
 * the run made, in a schema beside the live tables, through the projections' own code, then compared with the
 * live tables. Run from the load process, as the CLI would run beside the service; the new schema is dropped.
 */
export async function measureRebuild(options: { databaseUrl: string }): Promise<RebuildResult> {
  const logger = silentLogger();
  const pool = createPool({ connectionString: options.databaseUrl, max: 8, statementTimeoutMs: 0 }, logger);
  const store = new PostgresEventStore({
    pool,
    connectionString: options.databaseUrl,
    logger,
    pollIntervalMs: 250,
    batchSize: 500,
  });
  try {
    const report = await rebuildReadModels({
      pool,
      store,
      projections: PROJECTIONS,
      verify: true,
      swap: false,
      logger,
    });
    await dropOldSchemas(pool, 1).catch(() => undefined);
    return {
      events: report.events,
      per_s: report.eventsPerSecond,
      duration_s: round(report.durationMs / 1000, 2)!,
      verified: report.verified,
      differing_tables: report.differences.length,
    };
  } finally {
    await store.close();
    await pool.end();
  }
}
