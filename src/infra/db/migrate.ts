import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Umzug } from 'umzug';
import type { Pool } from './pool.js';
import type { Logger } from '../logger.js';

export const MIGRATIONS_DIR = path.resolve(import.meta.dirname, '../../../migrations');

// Any fixed 64-bit number; it only has to differ from the other advisory locks the service takes.
const MIGRATION_LOCK_KEY = 7_426_001;

/**
 * Applies the numbered SQL files in migrations/, forward only. Each file and its record in schema_migrations
 * commit in one transaction, and an advisory lock makes processes that start together take turns, so the
 * second one finds everything applied.
 */
export async function migrate(pool: Pool, logger: Logger, dir = MIGRATIONS_DIR): Promise<string[]> {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    await client.query(
      'CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())',
    );
    const umzug = new Umzug({
      migrations: {
        glob: ['[0-9]*.sql', { cwd: dir }],
        resolve: ({ name, path: file }) => ({
          name,
          up: async () => {
            const sql = await readFile(file!, 'utf8');
            await client.query('BEGIN');
            try {
              await client.query(sql);
              await client.query('INSERT INTO schema_migrations (name) VALUES ($1)', [name]);
              await client.query('COMMIT');
            } catch (error) {
              await client.query('ROLLBACK');
              throw new Error(`migration ${name} failed: ${(error as Error).message}`, { cause: error });
            }
          },
        }),
      },
      storage: {
        executed: async () =>
          (await client.query<{ name: string }>('SELECT name FROM schema_migrations ORDER BY name')).rows.map(
            (row) => row.name,
          ),
        // Recorded inside the migration's own transaction (above), so a crash cannot separate the two.
        logMigration: async () => {},
        unlogMigration: async () => {
          throw new Error('migrations are forward only');
        },
      },
      logger: undefined,
    });
    const applied = await umzug.up();
    for (const migration of applied) logger.info({ migration: migration.name }, 'migration applied');
    return applied.map((migration) => migration.name);
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch(() => undefined);
    client.release();
  }
}
