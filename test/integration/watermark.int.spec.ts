import { expect } from 'chai';
import { projectionReached } from '../../src/projections/watermark.js';
import { encodePosition } from '../../src/infra/eventStore/eventStore.js';
import { RELAY_CHECKPOINT } from '../../src/infra/bus/kafka/relay.js';
import { KafkaBus } from '../../src/infra/bus/kafka/kafkaBus.js';
import { createKafka } from '../../src/infra/bus/kafka/kafkaClient.js';
import { DirectBus } from '../../src/infra/bus/direct/directBus.js';
import { LogCheckpoints } from '../../src/infra/bus/checkpoints.js';
import { silentLogger } from '../../src/infra/logger.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { testKafkaSettings } from '../support/kafka.js';

const p = (n: number) => encodePosition(BigInt(n), BigInt(n));

describe('read-model watermark (has a projection reached position P?)', () => {
  let db: TestDatabase;
  // The buses' own answers: neither reaches a broker (the Kafka one reads what the relay recorded).
  let direct: DirectBus;
  let kafka: KafkaBus;
  before(async () => {
    db = await createTestDatabase('wm');
    const logger = silentLogger();
    const store = testEventStore(db, { logger });
    direct = new DirectBus({ store, checkpoints: new LogCheckpoints(db.pool), logger });
    const settings = testKafkaSettings(['127.0.0.1:9']);
    kafka = new KafkaBus({ kafka: createKafka(settings, logger), settings, logger, pool: db.pool });
  });
  after(async () => db?.drop());

  const setApplied = (rows: Array<[number, number]>) =>
    Promise.all(
      rows.map(([partition, n]) =>
        db.pool.query(
          `INSERT INTO projection_partition_positions (projection, partition, position) VALUES ('tasks', $1, $2)
           ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position`,
          [partition, p(n)],
        ),
      ),
    );

  it('on the direct bus, compares the single ordered position', async () => {
    await setApplied([[0, 10]]);
    expect(await projectionReached(db.pool, 'tasks', p(10), direct)).to.equal(true);
    expect(await projectionReached(db.pool, 'tasks', p(11), direct)).to.equal(false);
  });

  it('with Kafka, needs the relay past P and every partition caught up to min(P, its head)', async () => {
    await db.pool.query('DELETE FROM projection_partition_positions');
    await db.pool.query(`INSERT INTO log_checkpoints (name, position) VALUES ($1, $2)`, [
      RELAY_CHECKPOINT,
      p(50),
    ]);
    // Partition 0 last got event 40, partition 1 event 50, partition 2 event 20.
    await db.pool.query(
      `INSERT INTO relay_partition_heads (partition, position) VALUES (0, $1), (1, $2), (2, $3)`,
      [p(40), p(50), p(20)],
    );

    await setApplied([
      [0, 40],
      [1, 30],
      [2, 20],
    ]);
    expect(await projectionReached(db.pool, 'tasks', p(30), kafka), 'partition 1 has applied 30').to.equal(
      true,
    );
    expect(await projectionReached(db.pool, 'tasks', p(45), kafka), 'partition 1 is behind 45').to.equal(
      false,
    );

    await setApplied([[1, 50]]);
    expect(await projectionReached(db.pool, 'tasks', p(45), kafka)).to.equal(true);

    // Reaching P in one partition is not enough: partition 2 is behind its head of 20.
    await setApplied([[2, 10]]);
    expect(await projectionReached(db.pool, 'tasks', p(15), kafka)).to.equal(false);
    await setApplied([[2, 20]]);
    expect(await projectionReached(db.pool, 'tasks', p(15), kafka)).to.equal(true);

    expect(
      await projectionReached(db.pool, 'tasks', p(51), kafka),
      'the relay has not published 51',
    ).to.equal(false);
  });
});
