import type { Pool } from '../infra/db/pool.js';
import type { Position } from '../infra/eventStore/eventStore.js';
import type { EventBus } from '../infra/bus/bus.js';

/**
 * Has `projection` applied every event at or before `position`? The projection records its position per
 * partition of the bus (projection_partition_positions, in each batch's transaction); the bus says what each
 * partition must have reached for P to be included (one ordered log on the direct bus; with Kafka, the relay
 * must be past P, and each partition as far as it carried events up to P).
 */
export async function projectionReached(
  pool: Pool,
  projection: string,
  position: Position,
  bus: Pick<EventBus, 'partitionTargets'>,
): Promise<boolean> {
  const [targets, applied] = await Promise.all([
    bus.partitionTargets(position),
    pool.query<{ partition: number; position: string }>(
      'SELECT partition, position FROM projection_partition_positions WHERE projection = $1',
      [projection],
    ),
  ]);
  if (!targets) return false;
  const reached = new Map(applied.rows.map((row) => [row.partition, row.position]));
  return [...targets].every(([partition, target]) => (reached.get(partition) ?? '') >= target);
}
