import { createSecretKey, randomBytes } from 'node:crypto';
import jwt from 'jsonwebtoken';
import pg from 'pg';
import { round, summarize, type LatencySummary } from './stats.js';

/**
 * Small measurements that explain the big ones: what one PostgreSQL round trip costs on this machine right now
 * (everything in the service is a chain of them), and the price of two things the CPU profile of POST /tasks
 * points at. Run in the load process, beside the service, with the same Node options (`--import tsx`).
 */
export interface MicroResult {
  /** `SELECT 1` on one idle connection, one after another. */
  pg_round_trip: LatencySummary;
  /**
   * After a transaction commits, how long until the commit-safe log reader may read it: until the server's
   * oldest running transaction (pg_snapshot_xmin, over every database of the server) is past it.
   */
  xmin_wait: LatencySummary;
  /** `await import()` of a module already loaded, as handleUntilDone does for every delivered event. */
  dynamic_import_us: number;
  /** jsonwebtoken.verify with the secret as a string (as tokens.ts passes it), and as a KeyObject made once. */
  jwt_verify_string_secret_us: number;
  jwt_verify_key_object_us: number;
}

async function timeEach(n: number, work: () => unknown): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await work();
  return ((performance.now() - t0) * 1000) / n;
}

export async function microBenchmarks(options: { databaseUrl: string }): Promise<MicroResult> {
  const client = new pg.Client({ connectionString: options.databaseUrl, application_name: 'bench-micro' });
  client.on('error', () => undefined);
  await client.connect();
  const trips: number[] = [];
  const xmin: number[] = [];
  try {
    for (let i = 0; i < 50; i++) await client.query('SELECT 1');
    for (let i = 0; i < 1000; i++) {
      const t0 = performance.now();
      await client.query('SELECT 1');
      trips.push(performance.now() - t0);
    }
    // Each probe: a transaction with an id, committed, then polled every 0.5 ms until the horizon passes it.
    for (let i = 0; i < 100; i++) {
      await client.query('BEGIN');
      const { rows } = await client.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
      await client.query('COMMIT');
      const committed = performance.now();
      for (;;) {
        const visible = await client.query<{ ok: boolean }>(
          'SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8 AS ok',
          [rows[0]!.xid],
        );
        if (visible.rows[0]!.ok || performance.now() - committed > 5000) break;
        await new Promise((resolve) => setTimeout(resolve, 0.5));
      }
      xmin.push(performance.now() - committed);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    await client.end();
  }

  const target = new URL('../src/infra/abort.js', import.meta.url).href;
  await import(target);
  const dynamicImport = await timeEach(1000, () => import(target));

  const secret = randomBytes(32).toString('hex');
  const token = jwt.sign({ sub: 'bench', role: 'user' }, secret, { algorithm: 'HS256', expiresIn: 300 });
  const key = createSecretKey(Buffer.from(secret));
  const verify = (s: string | ReturnType<typeof createSecretKey>) => () =>
    jwt.verify(token, s, { algorithms: ['HS256'] });
  await timeEach(200, verify(secret));
  await timeEach(200, verify(key));
  const withString = await timeEach(2000, verify(secret));
  const withKey = await timeEach(2000, verify(key));

  return {
    pg_round_trip: summarize(trips),
    xmin_wait: summarize(xmin),
    dynamic_import_us: round(dynamicImport, 1)!,
    jwt_verify_string_secret_us: round(withString, 1)!,
    jwt_verify_key_object_us: round(withKey, 1)!,
  };
}
