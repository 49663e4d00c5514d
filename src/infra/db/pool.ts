/**
 * src/infra/db: PostgreSQL connections (this file), migrations, prepared statements, the embedded server.
 */
import pg from 'pg';
import type { Logger } from '../logger.js';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export interface PoolOptions {
  connectionString: string;
  max: number;
  statementTimeoutMs: number;
  applicationName?: string;
  /**
   * Connections that plan each prepared statement once, whatever its parameters (`plan_cache_mode =
   * force_generic_plan`). Only for a pool whose statements all have plans that do not depend on their values:
   * unnamed statements on such a connection get the generic plan too (a claim's LIMIT would not be known), and so
   * do the PL/pgSQL statements of the triggers its writes fire.
   */
  genericPlans?: boolean;
  /** How long an idle connection is kept (default 30 s); 0 keeps it. */
  idleTimeoutMs?: number;
}

/**
 * The connection string with a server setting added to its `options` startup parameter. In the string, not beside
 * it: node-postgres lets an `options` in the string replace the one in the config.
 */
export function withServerSetting(connectionString: string, setting: string): string {
  const url = new URL(connectionString);
  const options = url.searchParams.get('options');
  url.searchParams.set('options', options ? `${options} -c ${setting}` : `-c ${setting}`);
  return url.toString();
}

// bigint columns come back as strings by default; revisions and counts fit in a double.
pg.types.setTypeParser(pg.types.builtins.INT8, (value: string) => {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`int8 ${value} exceeds Number.MAX_SAFE_INTEGER`);
  return n;
});

export function createPool(options: PoolOptions, logger: Logger): Pool {
  const pool = new pg.Pool({
    connectionString: options.genericPlans
      ? withServerSetting(options.connectionString, 'plan_cache_mode=force_generic_plan')
      : options.connectionString,
    max: options.max,
    statement_timeout: options.statementTimeoutMs,
    application_name: options.applicationName ?? 'task-manager',
    connectionTimeoutMillis: 5000,
    idleTimeoutMillis: options.idleTimeoutMs ?? 30000,
  });
  // An idle client whose server connection dies emits 'error' on the pool; unhandled, it would crash the process.
  pool.on('error', (error) => logger.warn({ err: error }, 'idle PostgreSQL client lost'));
  // A client in use (inside a transaction, say) whose connection is killed also emits 'error'; without a
  // listener that would crash the process. The query in flight fails anyway, and the caller answers 503.
  pool.on('connect', (client) =>
    client.on('error', (error) => logger.warn({ err: error }, 'PostgreSQL connection lost')),
  );
  return pool;
}

/**
 * Runs `work` in one transaction on one client, rolling back on any error. `begin` may ask for more than the
 * default (`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`: one snapshot for reads that must agree).
 */
export async function inTransaction<T>(
  pool: Pool,
  work: (client: PoolClient) => Promise<T>,
  begin = 'BEGIN',
): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query(begin);
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true; // the connection itself is gone: do not hand it back to the pool
    }
    throw error;
  } finally {
    client.release(broken);
  }
}

/** Reads in one snapshot, so writes committed meanwhile cannot make two of its reads disagree. */
export const inSnapshot = <T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> =>
  inTransaction(pool, work, 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');

export const isUniqueViolation = (error: unknown, constraint?: string): boolean =>
  (error as { code?: string }).code === '23505' &&
  (constraint === undefined || (error as { constraint?: string }).constraint === constraint);

/** Errors that mean "PostgreSQL cannot be reached right now" rather than "the query is wrong". */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: string }).code ?? '';
  const message = (error as Error)?.message ?? '';
  return (
    [
      'ECONNREFUSED',
      'ECONNRESET',
      'ETIMEDOUT',
      'EPIPE',
      'ENOTFOUND',
      '57P01',
      '57P02',
      '57P03',
      '08000',
      '08003',
      '08006',
      '08001',
      '08004',
      // The database does not accept connections now; too many clients. Both pass, neither is the request's fault.
      '55000',
      '53300',
    ].includes(code) ||
    /Connection terminated|connection timeout|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(
      message,
    )
  );
}
