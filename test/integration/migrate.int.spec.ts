import { expect } from 'chai';
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { createPool } from '../../src/infra/db/pool.js';
import { migrate, MIGRATIONS_DIR } from '../../src/infra/db/migrate.js';
import { silentLogger } from '../../src/infra/logger.js';
import { adminDatabaseUrl } from '../support/postgres.js';

describe('migrations', () => {
  const name = `tm_mig_${randomBytes(4).toString('hex')}`;
  let url: string;

  before(async () => {
    const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    const parsed = new URL(adminDatabaseUrl());
    parsed.pathname = `/${name}`;
    url = parsed.toString();
  });

  after(async () => {
    const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  });

  it('applies every file once when two processes migrate at the same moment, and nothing on a second run', async () => {
    const files = readdirSync(MIGRATIONS_DIR)
      .filter((f) => /^\d.*\.sql$/.test(f))
      .sort();
    const pools = [0, 1].map(() =>
      createPool({ connectionString: url, max: 2, statementTimeoutMs: 30000 }, silentLogger()),
    );
    try {
      const results = await Promise.all(pools.map((pool) => migrate(pool, silentLogger())));
      expect([...results[0]!, ...results[1]!].sort()).to.deep.equal(files);
      expect(await migrate(pools[0]!, silentLogger())).to.deep.equal([]);
      const { rows } = await pools[0]!.query<{ name: string }>(
        'SELECT name FROM schema_migrations ORDER BY name',
      );
      expect(rows.map((r) => r.name)).to.deep.equal(files);
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });

  it('keeps the event log append-only', async () => {
    const pool = createPool({ connectionString: url, max: 1, statementTimeoutMs: 30000 }, silentLogger());
    try {
      await pool.query(
        `INSERT INTO events (stream_id, revision, event_id, type, data, metadata) VALUES ('x-1', 0, gen_random_uuid(), 'T', '{}', '{}')`,
      );
      let refused = '';
      await pool
        .query(`UPDATE events SET data = '{"changed":true}'`)
        .catch((e: Error) => (refused += e.message));
      await pool.query(`DELETE FROM events`).catch((e: Error) => (refused += e.message));
      expect(refused).to.include('append-only (UPDATE refused)').and.include('append-only (DELETE refused)');
      expect((await pool.query('SELECT data FROM events')).rows).to.deep.equal([{ data: '{}' }]);
    } finally {
      await pool.end();
    }
  });
});
