import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { eventStoreContract } from '../contract/eventStore.contract.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import {
  GROUP_COMMIT_APPLICATION_NAME,
  PostgresEventStore,
} from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import type { AppendedEvent } from '../../src/infra/eventStore/eventStore.js';
import { waitFor } from '../support/wait.js';
import { planNodes, planRoot } from '../support/plans.js';
import { createPool, type Pool } from '../../src/infra/db/pool.js';
import { silentLogger } from '../../src/infra/logger.js';
import { GENESIS_HASH } from '../../src/infra/eventStore/hashChain.js';
import {
  GROUP_COMMIT_STATEMENT,
  GroupCommitAppender,
} from '../../src/infra/eventStore/postgres/groupCommit.js';

let database: TestDatabase;
let store: PostgresEventStore;

eventStoreContract(
  'PostgreSQL',
  async () => {
    database = await createTestDatabase('es');
    // A long poll interval: only NOTIFY or the xmin horizon moving can make these tests pass quickly, and the
    // out-of-order test waits past it so the subscriber certainly polls while a transaction is open.
    store = testEventStore(database, { batchSize: 50 });
    return { store, settleMs: 400 };
  },
  async () => {
    await store?.close();
    await database?.drop();
  },
);

/** An event of the given type with empty data and plain metadata. */
const event = (type: string) => ({
  eventId: randomUUID(),
  type,
  data: {},
  metadata: {
    correlationId: randomUUID(),
    causationId: null,
    userId: null,
    timestamp: new Date().toISOString(),
  },
});

describe('the PostgreSQL log order', function () {
  this.timeout(30_000);
  let db: TestDatabase;
  let orderStore: PostgresEventStore;
  before(async () => {
    db = await createTestDatabase('order');
    orderStore = testEventStore(db, { batchSize: 50 });
  });
  after(async () => {
    await orderStore?.close();
    await db?.drop();
  });

  it('orders the log by transaction id as a number, so a page cut across a power of ten skips nothing', async () => {
    // Transaction ids on either side of the largest power of ten already behind the server's counter, so all four
    // are below the safe horizon. As text, '100000' sorts before '99998': a reader paged by two would take the
    // two larger ids first, move its checkpoint past the smaller ones and never read them.
    const { rows } = await db.pool.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
    const current = BigInt(rows[0]!.xid);
    let boundary = 10n ** BigInt(current.toString().length - 1);
    if (boundary + 10n > current) boundary /= 10n;
    expect(
      boundary >= 100n,
      `the server's transaction counter (${current}) is too young for this test`,
    ).to.equal(true);
    const ids = [boundary - 2n, boundary - 1n, boundary, boundary + 1n];
    for (const xid of ids)
      await db.pool.query(
        `INSERT INTO events (transaction_id, stream_id, revision, event_id, type, data, metadata)
         VALUES ($1::text::xid8, $2, 0, $3, 'Probed', '{}', $4::jsonb)`,
        [
          xid.toString(),
          `order-${xid}`,
          randomUUID(),
          JSON.stringify({ ...event('Probed').metadata, hash: 'x' }),
        ],
      );
    const read: string[] = [];
    let after: string | null = null;
    for (let page = 0; page < 5; page++) {
      const events = await orderStore.readAll({ after, limit: 2 });
      if (events.length === 0) break;
      read.push(...events.map((e) => e.streamId));
      after = events[events.length - 1]!.position;
    }
    expect(read).to.deep.equal(ids.map((xid) => `order-${xid}`));
    expect(await orderStore.headPosition()).to.equal(after);
  });
});

describe('the PostgreSQL log horizon', function () {
  this.timeout(30_000);
  let db: TestDatabase;
  let horizonStore: PostgresEventStore;
  before(async () => {
    db = await createTestDatabase('horizon');
    horizonStore = testEventStore(db, { batchSize: 50 });
  });
  after(async () => {
    await horizonStore?.close();
    await db?.drop();
  });

  it('is not held back by an open transaction that does not write events (a projection, say)', async () => {
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      // A transaction with an id of its own, open while the append happens, writing elsewhere.
      await other.query('BEGIN');
      await other.query('CREATE TEMP TABLE scratch (n int)');
      await other.query('INSERT INTO scratch VALUES (1)');
      const streamId = `horizon-${randomUUID()}`;
      const { position } = await horizonStore.append(streamId, [event('Appended')], {
        expectedRevision: 'no_stream',
      });
      const read = await horizonStore.readAll({ after: null, limit: 1000 });
      expect(read.map((e) => e.position)).to.include(position);
      await other.query('COMMIT');
    } finally {
      await other.end();
    }
  });

  it('holds back behind an open transaction that has written events, and delivers its events once it commits', async () => {
    const slowStream = `horizon-${randomUUID()}`;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let reachedCommit!: () => void;
    const atCommit = new Promise<void>((resolve) => (reachedCommit = resolve));
    const slow = horizonStore.append(slowStream, [event('Slow')], {
      expectedRevision: 'no_stream',
      beforeCommit: async () => {
        reachedCommit();
        await released;
      },
    });
    await atCommit;
    const before = (await horizonStore.readAll({ after: null, limit: 10_000 })).at(-1)?.position ?? null;
    const fast = await horizonStore.append(`horizon-${randomUUID()}`, [event('Fast')], {
      expectedRevision: 'no_stream',
    });
    const whileOpen = await horizonStore.readAll({ after: before, limit: 1000 });
    expect(
      whileOpen.map((e) => e.position),
      'nothing after the open writer is read yet',
    ).not.to.include(fast.position);
    release();
    const slowResult = await slow;
    const after = await horizonStore.readAll({ after: before, limit: 1000 });
    expect(after.map((e) => e.position)).to.include.members([slowResult.position, fast.position]);
  });
});

/** Stores whose LISTEN connection is up: their last statement, after LISTEN, asked for the backend's pid. */
async function storesListening(db: TestDatabase): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = 'task-manager-listen'
        AND query LIKE 'SELECT pg_backend_pid%'`,
  );
  return rows[0]!.n;
}

describe('NOTIFY only when another process listens', function () {
  this.timeout(30_000);
  let db: TestDatabase;
  let alone: PostgresEventStore;
  let later: PostgresEventStore | null = null;
  let observer: pg.Client;
  const notified: string[] = [];
  before(async () => {
    db = await createTestDatabase('notifyalone');
    alone = testEventStore(db, { listenersRecheckMs: 50 });
    // Hears every NOTIFY on the channel, but is not a store's listener (another application_name): it counts for nothing.
    observer = new pg.Client({ connectionString: db.url, application_name: 'notify-observer' });
    await observer.connect();
    observer.on('notification', (message) => notified.push(message.payload ?? ''));
    await observer.query('LISTEN task_manager_events');
  });
  after(async () => {
    await observer?.end();
    await alone?.close();
    await later?.close();
    await db?.drop();
  });

  it('sends none while its own listener is the only one, and does once another store listens', async () => {
    const stopAlone = alone.onAppended(() => undefined);
    try {
      await waitFor('its own listener', async () => ((await storesListening(db)) === 1 ? true : undefined));
      await alone.append(`alone-${randomUUID()}`, [event('TaskQueued')], { expectedRevision: 'no_stream' });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(notified).to.deep.equal([]);

      later = testEventStore(db); // another process's store
      const heardLater: Array<readonly AppendedEvent[] | null> = [];
      const stopLater = later.onAppended((appended) => heardLater.push(appended));
      await waitFor('both listeners', async () => ((await storesListening(db)) === 2 ? true : undefined));
      await new Promise((resolve) => setTimeout(resolve, 100)); // past the 50 ms the answer is kept
      await alone.append(`alone-${randomUUID()}`, [event('TaskQueued')], { expectedRevision: 'no_stream' });
      await waitFor('the other store to hear the NOTIFY', () => (heardLater.length > 0 ? true : undefined));
      expect(notified).to.have.length(1);
      stopLater();
    } finally {
      stopAlone();
    }
  });
});

describe('append wake-ups (onAppended)', function () {
  this.timeout(30_000);
  let db: TestDatabase;
  let here: PostgresEventStore;
  let there: PostgresEventStore;
  before(async () => {
    db = await createTestDatabase('wakeups');
    here = testEventStore(db);
    there = testEventStore(db); // another process's store: it hears of appends only through NOTIFY
  });
  after(async () => {
    await here?.close();
    await there?.close();
    await db?.drop();
  });

  it("tells this process's listeners the appended events at once, other processes through NOTIFY, and not itself twice", async () => {
    const heardHere: Array<readonly AppendedEvent[] | null> = [];
    const heardThere: Array<readonly AppendedEvent[] | null> = [];
    const stopHere = here.onAppended((appended) => heardHere.push(appended));
    const stopThere = there.onAppended((appended) => heardThere.push(appended));
    try {
      // Both LISTEN connections open before the append, so a missed NOTIFY cannot pass for an ignored one.
      await waitFor('both stores listening', async () => (await storesListening(db)) >= 2 || undefined);
      const appended = { ...event('TaskQueued'), data: { spec: { queue: 'q1' } } };
      await here.append(`wake-${randomUUID()}`, [appended], { expectedRevision: 'no_stream' });
      // Type and data, which a worker of some queues reads a TaskQueued's queue from.
      expect(heardHere.map((events) => events?.map(({ type, data }) => ({ type, data })))).to.deep.equal([
        [{ type: 'TaskQueued', data: appended.data }],
      ]);
      await waitFor('the other store to hear the NOTIFY', () => heardThere.length > 0 || undefined);
      expect(heardThere).to.deep.equal([null]);
      // Its own NOTIFY came back to this store too; it must not count as another append.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(heardHere).to.have.length(1);
    } finally {
      stopHere();
      stopThere();
    }
  });
});

describe("the group commit's statement, planned once per connection", function () {
  this.timeout(60_000);
  let db: TestDatabase;
  before(async () => {
    db = await createTestDatabase('gcplan');
  });
  after(async () => {
    await db?.drop();
  });

  /** One connection of the kind the group commit runs on (genericPlans). */
  const genericPlanPool = (connectionString = db.url) =>
    createPool({ connectionString, max: 1, statementTimeoutMs: 30000, genericPlans: true }, silentLogger());

  /** Two new streams of one event each, as the group commit's ten column arrays. */
  const twoNewStreams = () => {
    const streams = [`plan-${randomUUID()}`, `plan-${randomUUID()}`];
    return [
      [0, 1],
      streams,
      [null, null],
      [0, 1],
      [randomUUID(), randomUUID()],
      streams,
      [0, 0],
      ['PlanChecked', 'PlanChecked'],
      ['{}', '{}'],
      ['{}', '{}'],
    ];
  };

  /** The scans of `events` in the generic plan (the one a group-commit connection keeps) of the statement. */
  const eventScansOfGenericPlan = async () => {
    const genericPool = genericPlanPool();
    const client = await genericPool.connect();
    try {
      await client.query('BEGIN');
      await client.query(
        `PREPARE group_commit (int[], text[], bigint[], int[], uuid[], text[], bigint[], text[], text[], text[])
         AS ${GROUP_COMMIT_STATEMENT}`,
      );
      // EXPLAIN takes no parameters: the arrays are written out as literals.
      const literal = (items: unknown[]) =>
        `'{${items.map((item) => (item === null ? 'NULL' : JSON.stringify(String(item)))).join(',')}}'`;
      const { rows } = await client.query<Record<string, unknown>>(
        `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE group_commit (${twoNewStreams().map(literal).join(', ')})`,
      );
      return planNodes(planRoot(rows)).filter(
        (node) => node['Relation Name'] === 'events' && node['Node Type'] !== 'ModifyTable',
      );
    } finally {
      await client.query('ROLLBACK');
      client.release();
      await genericPool.end();
    }
  };

  it('probes the indexes whether it was planned on an empty log or a large one', async () => {
    // A plan is kept until the table's statistics change. Planned on an empty log, a join of the batch to
    // `events` became a hash join over a sequential scan, which a large log would then pay on every append.
    for (const size of ['empty', 'large']) {
      if (size === 'large') {
        await db.pool.query(
          `INSERT INTO events (stream_id, revision, event_id, type, data, metadata)
           SELECT 'filler-' || i, 0, gen_random_uuid(), 'Filler', '{}', '{}' FROM generate_series(1, 30000) i`,
        );
        await db.pool.query('ANALYZE events');
      }
      const scans = await eventScansOfGenericPlan();
      expect(scans.length, `${size} log: reads of events in the plan`).to.be.above(0);
      for (const scan of scans)
        expect(scan['Node Type'], `${size} log: every read of events`).to.be.oneOf([
          'Index Scan',
          'Index Only Scan',
        ]);
    }
  });

  it("runs on the store's own connections, which reuse one generic plan", async () => {
    const store = testEventStore(db);
    try {
      for (let i = 0; i < 3; i++)
        await store.append(`plan-${randomUUID()}`, [event('TaskQueued')], { expectedRevision: 'no_stream' });
      const { rows } = await db.pool.query<{ application_name: string }>(
        // pg_stat_activity keeps the first track_activity_query_size bytes of a statement.
        `SELECT application_name FROM pg_stat_activity
          WHERE datname = current_database() AND query <> '' AND starts_with($1, query)`,
        [GROUP_COMMIT_STATEMENT],
      );
      expect(rows.length, 'connections that ran the group commit').to.be.above(0);
      for (const row of rows) expect(row.application_name).to.equal(GROUP_COMMIT_APPLICATION_NAME);
      // Its connections are the generic-plan kind (the store's private pool, read here only).
      const appendPool = (store as unknown as { appendPool: Pool }).appendPool;
      const mode = await appendPool.query<{ plan_cache_mode: string }>('SHOW plan_cache_mode');
      expect(mode.rows[0]!.plan_cache_mode).to.equal('force_generic_plan');
    } finally {
      await store.close();
    }
    // Such connections (genericPlans) plan it once and keep that plan.
    const genericPool = genericPlanPool();
    try {
      const appender = new GroupCommitAppender(genericPool);
      for (let i = 0; i < 8; i++) {
        const outcome = await appender.append({
          streamId: `plan-${randomUUID()}`,
          events: [event('TaskQueued')],
          expectedHead: null,
          previousHash: GENESIS_HASH,
        });
        expect(outcome.kind).to.equal('appended');
      }
      const { rows } = await genericPool.query<{ generic_plans: number; custom_plans: number }>(
        `SELECT generic_plans::int, custom_plans::int FROM pg_prepared_statements WHERE statement = $1`,
        [GROUP_COMMIT_STATEMENT],
      );
      expect(rows).to.deep.equal([{ generic_plans: 8, custom_plans: 0 }]);
    } finally {
      await genericPool.end();
    }
  });

  it('keeps server settings already in the connection string beside its own', async () => {
    const url = new URL(db.url);
    url.searchParams.set('options', '-c work_mem=8MB');
    const genericPool = genericPlanPool(url.toString());
    try {
      const { rows } = await genericPool.query<{ plan_cache_mode: string; work_mem: string }>(
        `SELECT current_setting('plan_cache_mode') AS plan_cache_mode, current_setting('work_mem') AS work_mem`,
      );
      expect(rows[0]).to.deep.equal({ plan_cache_mode: 'force_generic_plan', work_mem: '8MB' });
    } finally {
      await genericPool.end();
    }
  });

  it('writes the appends given before close, and answers those after it 503', async () => {
    const store = testEventStore(db);
    const streams = Array.from({ length: 30 }, () => `closing-${randomUUID()}`);
    const given = streams.map((stream) =>
      store.append(stream, [event('TaskQueued')], { expectedRevision: 'no_stream' }),
    );
    await store.close();
    const outcomes = await Promise.allSettled(given);
    expect(outcomes.filter((outcome) => outcome.status === 'rejected')).to.deep.equal([]);
    const { rows } = await db.pool.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM events WHERE stream_id = ANY($1::text[])',
      [streams],
    );
    expect(rows[0]!.n).to.equal(30);
    const late = await store
      .append(`closing-${randomUUID()}`, [event('TaskQueued')], { expectedRevision: 'no_stream' })
      .then(
        () => null,
        (error: unknown) => error,
      );
    expect((late as { status?: number } | null)?.status).to.equal(503);
  });
});
