import { expect } from 'chai';
import net from 'node:net';
import { tmpdir } from 'node:os';
import pg from 'pg';
import { loadConfig, type Config } from '../../src/config.js';
import { createKafka } from '../../src/infra/bus/kafka/kafkaClient.js';
import { silentLogger } from '../../src/infra/logger.js';
import { ROLES, startService } from '../../src/main.js';
import { adminDatabaseUrl, createTestDatabase, type TestDatabase } from '../support/postgres.js';
import { KAFKA_MISSING, kafkaBrokers, testKafkaSettings } from '../support/kafka.js';

/** A port something else already listens on, so the api role cannot start. */
async function takenPort(): Promise<net.Server & { port: number }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(server, { port: (server.address() as net.AddressInfo).port });
}

describe('starting the roles', function () {
  this.timeout(60000);
  let db: TestDatabase;
  let config: Config;
  before(async function () {
    if (!kafkaBrokers()) this.skip();
    db = await createTestDatabase('life');
    config = loadConfig({ env: { LOG_LEVEL: 'silent' }, cwd: tmpdir() });
    config.host = '127.0.0.1';
    config.databaseUrl = db.url;
    config.kafka = { ...config.kafka, ...testKafkaSettings(kafkaBrokers() ?? []) };
  });
  after(async () => {
    if (!db) return;
    // The test ended the database's pool itself (so its sessions are not counted): drop without it.
    const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${db.name} WITH (FORCE)`).finally(() => admin.end());
  });

  /** Sessions any process still holds on the test's database (the test's own pool is ended first). */
  const openSessions = async (): Promise<string[]> => {
    const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ application_name: string }>(
        'SELECT application_name FROM pg_stat_activity WHERE datname = $1',
        [db.name],
      );
      return rows.map((row) => row.application_name);
    } finally {
      await admin.end();
    }
  };

  /** Members still in the consumer groups of the test's topic. */
  const groupMembers = async (): Promise<string[]> => {
    const admin = createKafka(config.kafka, silentLogger()).admin();
    await admin.connect();
    try {
      const groups = (await admin.listGroups()).groups
        .map((group) => group.groupId)
        .filter((id) => id.startsWith(`${config.kafka.topic}.`));
      if (groups.length === 0) return [];
      const described = await admin.describeGroups(groups);
      return described.groups.flatMap((group) =>
        group.members.map((member) => `${group.groupId}:${member.clientId}`),
      );
    } finally {
      await admin.disconnect();
    }
  };

  it('stops the roles already started when a later one fails, and can start again', async () => {
    if (!kafkaBrokers()) throw new Error(KAFKA_MISSING);
    await db.pool.end();
    const blocker = await takenPort();
    try {
      // The api role starts last: relay, projector and worker are running when its port turns out taken.
      const failed = await startService({ ...config, port: blocker.port }, ROLES, silentLogger()).then(
        () => null,
        (error: unknown) => error,
      );
      expect(failed).to.have.property('code', 'EADDRINUSE');
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
    expect(await openSessions()).to.deep.equal([]);
    expect(await groupMembers()).to.deep.equal([]);

    const again = await startService({ ...config, port: 0 }, ROLES, silentLogger());
    try {
      expect(again.url).to.be.a('string');
      const health = await fetch(`${again.url!.replace('localhost', '127.0.0.1')}/ready`);
      expect(health.status).to.equal(200);
    } finally {
      await again.stop();
    }
    expect(await openSessions()).to.deep.equal([]);
    expect(await groupMembers()).to.deep.equal([]);
  });
});
