import type pg from 'pg';
import type { Pool } from '../db/pool.js';
import { prepared } from '../db/prepared.js';

type Queryable = Pool | pg.ClientBase;
import type { Position } from '../eventStore/eventStore.js';

/** Where each reader of the global log has got to (table log_checkpoints). */
export class LogCheckpoints {
  constructor(private readonly pool: Pool) {}

  async load(name: string, client: Queryable = this.pool): Promise<Position | null> {
    const { rows } = await client.query<{ position: string }>(
      'SELECT position FROM log_checkpoints WHERE name = $1',
      [name],
    );
    return rows[0]?.position ?? null;
  }

  /** Only moves forward, so a slow, stale writer cannot drag a checkpoint back. */
  async save(name: string, position: Position, client: Queryable = this.pool): Promise<void> {
    await client.query(
      prepared(
        `INSERT INTO log_checkpoints (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()
         WHERE log_checkpoints.position < excluded.position`,
        [name, position],
      ),
    );
  }
}
