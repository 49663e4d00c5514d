import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { createPool, type Pool } from '../../src/infra/db/pool.js';
import { migrate } from '../../src/infra/db/migrate.js';
import { silentLogger, type Logger } from '../../src/infra/logger.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';

/** The server the test command set up (scripts/services.sh); integration tests need it. */
export const adminDatabaseUrl = (): string => {
  const url = process.env.DATABASE_URL;
  if (!url)
    throw new Error('DATABASE_URL is not set: run the tests with `npm test`, which starts the services');
  return url;
};

export interface TestDatabase {
  url: string;
  name: string;
  pool: Pool;
  drop(): Promise<void>;
}

/**
 * A fresh, migrated database of its own, so suites never see each other's rows. `migrationsDir`: migrate from another
 * directory (an upgrade test's copy of the migrations of an older version).
 */
export async function createTestDatabase(
  label = 't',
  options: { migrationsDir?: string } = {},
): Promise<TestDatabase> {
  const name = `tm_${label}_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminDatabaseUrl());
  url.pathname = `/${name}`;
  const pool = createPool(
    { connectionString: url.toString(), max: 20, statementTimeoutMs: 30000 },
    silentLogger(),
  );
  await migrate(pool, silentLogger(), options.migrationsDir);
  return {
    url: url.toString(),
    name,
    pool,
    async drop() {
      await pool.end();
      const dropper = new pg.Client({ connectionString: adminDatabaseUrl() });
      await dropper.connect();
      try {
        await dropper.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await dropper.end();
      }
    },
  };
}

/** A fresh, migrated database on the same server as `pool` (the embedded one, say), dropped by `drop()`. */
export async function createSiblingDatabase(pool: Pool, databaseUrl: string): Promise<TestDatabase> {
  const name = `tm_sibling_${randomBytes(5).toString('hex')}`;
  await pool.query(`CREATE DATABASE ${name}`);
  const url = new URL(databaseUrl);
  url.pathname = `/${name}`;
  const sibling = createPool(
    { connectionString: url.toString(), max: 5, statementTimeoutMs: 30000 },
    silentLogger(),
  );
  await migrate(sibling, silentLogger());
  return {
    url: url.toString(),
    name,
    pool: sibling,
    async drop() {
      await sibling.end();
      await pool.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** The PostgreSQL event store on a test database: silent, polling every 100 ms, reading 100 events a page. */
export function testEventStore(
  db: Pick<TestDatabase, 'pool' | 'url'>,
  options: { logger?: Logger; pollIntervalMs?: number; batchSize?: number; listenersRecheckMs?: number } = {},
): PostgresEventStore {
  return new PostgresEventStore({
    pool: db.pool,
    connectionString: db.url,
    logger: options.logger ?? silentLogger(),
    pollIntervalMs: options.pollIntervalMs ?? 100,
    batchSize: options.batchSize ?? 100,
    listenersRecheckMs: options.listenersRecheckMs,
  });
}

/**
 * A test database with the PostgreSQL event store on it for the enclosing `describe`: made in a `before` hook,
 * closed and dropped in an `after` hook. Read `db` and `store` inside tests (they are set once `before` ran).
 */
export function useTestEventStore(
  label: string,
  options: Parameters<typeof testEventStore>[1] = {},
): { db: TestDatabase; store: PostgresEventStore } {
  const holder = {} as { db: TestDatabase; store: PostgresEventStore };
  before(async () => {
    holder.db = await createTestDatabase(label);
    holder.store = testEventStore(holder.db, options);
  });
  after(async () => {
    await holder.store?.close();
    await holder.db?.drop();
  });
  return holder;
}
