import type { Pool } from '../infra/db/pool.js';
import type { Position } from '../infra/eventStore/eventStore.js';
import { RELAY_CHECKPOINT } from '../infra/bus/kafka/relay.js';

/**
 * Has `projection` applied every event at or before `position`? On the direct bus there is one ordered log, so
 * the projection's position says it. With Kafka, events reach the projection over several partitions, each in
 * log order, so it must hold in every partition: the relay has published past P, and in each partition p the
 * projection has applied at least min(P, the newest position the relay published to p).
 */
export async function projectionReached(
  pool: Pool,
  projection: string,
  position: Position,
  bus: 'kafka' | 'direct',
): Promise<boolean> {
  const applied = new Map(
    (
      await pool.query<{ partition: number; position: string }>(
        'SELECT partition, position FROM projection_partition_positions WHERE projection = $1',
        [projection],
      )
    ).rows.map((row) => [row.partition, row.position]),
  );
  if (bus === 'direct') return (applied.get(0) ?? '') >= position;

  const { rows } = await pool.query<{
    relay: string | null;
    heads: Array<{ partition: number; position: string }> | null;
  }>(
    `SELECT (SELECT position FROM log_checkpoints WHERE name = $1) AS relay,
            (SELECT json_agg(json_build_object('partition', partition, 'position', position)) FROM relay_partition_heads) AS heads`,
    [RELAY_CHECKPOINT],
  );
  const { relay, heads } = rows[0]!;
  if (!relay || relay < position) return false;
  return (heads ?? []).every(
    (head) => (applied.get(head.partition) ?? '') >= (head.position < position ? head.position : position),
  );
}
