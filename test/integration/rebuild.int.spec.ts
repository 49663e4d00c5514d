import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import type { Position } from '../../src/infra/eventStore/eventStore.js';
import type { Pool } from '../../src/infra/db/pool.js';
import { silentLogger } from '../../src/infra/logger.js';
import { handleCommand, type CommandContext } from '../../src/commands/commandHandler.js';
import { type Decider, type DomainEvent } from '../../src/domain/decider.js';
import { createHash } from 'node:crypto';
import {
  account,
  accountStreamId,
  forgetUser,
  grantRole,
  registerUser,
} from '../../src/domain/identity/account.js';
import {
  endSession,
  rotateRefreshToken,
  session,
  sessionStreamId,
  startSession,
} from '../../src/domain/identity/session.js';
import { newRefreshToken } from '../../src/commands/identity/tokens.js';
import type { UserRole } from '../../src/domain/identity/events.js';
import { taskStreamId, type TaskEvent, type TaskSpec } from '../../src/domain/tasks/events.js';
import { task, type Task } from '../../src/domain/tasks/state.js';
import { submitTask } from '../../src/domain/tasks/submitTask.js';
import { cancelTask, retryTask, updateTask } from '../../src/domain/tasks/ownerCommands.js';
import {
  finishAttempt,
  releaseTask,
  reportProgress,
  startTask,
  type AttemptOutcome,
} from '../../src/domain/tasks/workerCommands.js';
import { applyOnce, type ApplyOutcome } from '../../src/projections/projectionRunner.js';
import { PROJECTIONS } from '../../src/projections/index.js';
import { TASK_COLUMNS } from '../../src/projections/tasks/table.js';
import {
  describeDifference,
  dropOldSchemas,
  rebuildReadModels,
  type RebuildOptions,
  type RebuildReport,
} from '../../src/projections/rebuild.js';
import { waitFor } from '../support/wait.js';
import { taskSpec } from '../support/fixtures.js';

const logger = silentLogger();
const T0 = Date.parse('2025-06-01T08:00:00.000Z');
const ORDER: Record<string, string> = {
  users: 'id',
  refresh_tokens: 'session_id',
  tasks: 'id',
  projection_stream_progress: 'projection, stream_id',
};

interface Session {
  sessionId: string;
  hash: string;
  spent: string[];
}

/** A service's history, written through the deciders with a fixed clock, and a live projector applying it. */
class World {
  private tick = 0;
  /** How far the "live projector" (applyOnce into public, as runProjection does) has got. */
  private liveCheckpoint: Position | null = null;
  readonly users = new Map<string, string>();

  constructor(
    readonly db: TestDatabase,
    readonly store: PostgresEventStore,
  ) {}

  now = (): Date => new Date(T0 + this.tick++ * 1000);

  private command<State, Event extends DomainEvent>(
    streamId: string,
    decider: Decider<State, Event>,
    decide: (state: State) => Event[],
    userId: string | null = null,
  ) {
    const context: CommandContext = {
      now: this.now,
      newId: randomUUID,
      correlationId: randomUUID(),
      causationId: null,
      userId,
    };
    return handleCommand(this.store, streamId, decider, decide, context);
  }

  /** The keyed email hash stands in for PersonalData's (no projection opens what is sealed). */
  accountOf = (email: string) =>
    accountStreamId(createHash('sha256').update(`test key:${email}`).digest('hex'));

  async register(email: string): Promise<string> {
    const userId = randomUUID();
    const sealedEmail = `pd1.sealed-for-${userId}`;
    await this.command(this.accountOf(email), account, (s) =>
      registerUser({ userId, sealedEmail, passwordHash: '$2b$10$notarealhash', now: this.now() }, s),
    );
    this.users.set(email, userId);
    return userId;
  }

  grant = (email: string, role: UserRole) =>
    this.command(this.accountOf(email), account, (s) => grantRole({ role, now: this.now() }, s));

  forget = (email: string) =>
    this.command(this.accountOf(email), account, (s) =>
      forgetUser({ userId: this.users.get(email)!, by: null, now: this.now() }, s),
    );

  async login(email: string): Promise<Session> {
    const sessionId = randomUUID();
    const { hash } = newRefreshToken(sessionId);
    const now = this.now();
    await this.command(sessionStreamId(sessionId), session, (s) =>
      startSession(
        {
          sessionId,
          userId: this.users.get(email)!,
          accountStreamId: this.accountOf(email),
          refreshTokenHash: hash,
          expiresAt: new Date(now.getTime() + 7 * 86400_000),
          now,
        },
        s,
      ),
    );
    return { sessionId, hash, spent: [] };
  }

  async rotate(current: Session): Promise<void> {
    const { hash } = newRefreshToken(current.sessionId);
    const now = this.now();
    await this.command(sessionStreamId(current.sessionId), session, (s) =>
      rotateRefreshToken(
        {
          presentedTokenHash: current.hash,
          newTokenHash: hash,
          newExpiresAt: new Date(now.getTime() + 7 * 86400_000),
          now,
        },
        s,
      ),
    );
    current.spent.push(current.hash);
    current.hash = hash;
  }

  /** A spent token shown again: the session is revoked. */
  reuse = (current: Session) =>
    this.command(sessionStreamId(current.sessionId), session, (s) =>
      rotateRefreshToken(
        {
          presentedTokenHash: current.spent[0]!,
          newTokenHash: 'unused',
          newExpiresAt: this.now(),
          now: this.now(),
        },
        s,
      ),
    );

  logout = (current: Session) =>
    this.command(sessionStreamId(current.sessionId), session, (s) =>
      endSession({ presentedTokenHash: current.hash, now: this.now() }, s),
    );

  async submit(ownerEmail: string, title: string, spec: Partial<TaskSpec> = {}): Promise<string> {
    const taskId = randomUUID();
    const ownerId = this.users.get(ownerEmail)!;
    await this.task(taskId, (s) =>
      submitTask(
        {
          taskId,
          ownerId,
          spec: taskSpec({ title, payload: { title }, timeoutMs: 30000, ...spec }),
          idempotencyKey: null,
          now: this.now(),
        },
        s,
      ),
    );
    return taskId;
  }

  task = (taskId: string, decide: (state: Task) => TaskEvent[]) =>
    this.command(taskStreamId(taskId), task, decide);

  async start(taskId: string, workerId = 'worker-1'): Promise<number> {
    const result = await this.task(taskId, (s) =>
      startTask({ workerId, leaseMs: 60000, now: this.now() }, s),
    );
    return result.state.attempt;
  }

  finish = (taskId: string, attempt: number, outcome: AttemptOutcome, workerId = 'worker-1') =>
    this.task(taskId, (s) =>
      finishAttempt({ workerId, attempt, outcome, retryDelayMs: 0, now: this.now() }, s),
    );

  /** Appended without a decider: events a projection must skip or ignore. */
  raw = (streamId: string, type: string, data: Record<string, string>) =>
    this.store.append(
      streamId,
      [
        {
          eventId: randomUUID(),
          type,
          data,
          metadata: {
            correlationId: randomUUID(),
            causationId: null,
            userId: null,
            timestamp: this.now().toISOString(),
          },
        },
      ],
      { expectedRevision: 'any' },
    );

  /**
   * Waits until the newest event can be read from the log. Transaction ids are shared by every database on the
   * server, so another suite's open transaction can hold back what readAll may return for a moment.
   */
  async untilReadable(): Promise<void> {
    await waitFor(
      'the last event to be readable',
      async () => {
        const { rows } = await this.db.pool.query<{ readable: boolean }>(
          `SELECT transaction_id < pg_snapshot_xmin(pg_current_snapshot()) AS readable
             FROM events ORDER BY transaction_id DESC, sequence DESC LIMIT 1`,
        );
        return rows[0]?.readable !== false || undefined;
      },
      // As long as the suite's own timeout allows: another suite's open transaction may hold the log back.
      { timeoutMs: 60000, intervalMs: 10 },
    );
  }

  /** What the live projector does with every event it is given. */
  async projectLive(): Promise<ApplyOutcome[]> {
    await this.untilReadable();
    const outcomes: ApplyOutcome[] = [];
    for (;;) {
      const page = await this.store.readAll({ after: this.liveCheckpoint, limit: 100 });
      if (page.length === 0) return outcomes;
      for (const event of page)
        for (const projection of PROJECTIONS)
          outcomes.push((await applyOnce(this.db.pool, projection, event, logger)).outcome);
      this.liveCheckpoint = page[page.length - 1]!.position;
    }
  }

  /** Every life a task and a session can have, and users with every role. */
  async seed(): Promise<void> {
    for (const email of ['ann@example.com', 'bob@example.com', 'cat@example.com', 'dan@example.com'])
      await this.register(email);
    await this.grant('ann@example.com', 'admin');
    await this.grant('bob@example.com', 'auditor');

    const ann = await this.login('ann@example.com');
    await this.rotate(ann);
    await this.rotate(ann);
    const bob = await this.login('bob@example.com');
    await this.logout(bob);
    const cat = await this.login('cat@example.com');
    await this.rotate(cat);
    await this.reuse(cat);
    await this.login('dan@example.com');
    await this.login('dan@example.com');
    // Forgotten, with a task left behind; then the same email registers again, as a new user.
    await this.register('fay@example.com');
    await this.submit('fay@example.com', 'left behind');
    await this.forget('fay@example.com');
    await this.register('fay@example.com');
    await this.raw('loginAttempts-0123abcd', 'LoginFailed', {
      email: 'eve@example.com',
      reason: 'unknown_email',
    });

    await this.submit('ann@example.com', 'waiting');
    const done = await this.submit('ann@example.com', 'report', { description: 'monthly', payload: [1, 2] });
    const attempt = await this.start(done);
    await this.task(done, (s) =>
      reportProgress({ workerId: 'worker-1', attempt, progress: 0.5, message: 'half', now: this.now() }, s),
    );
    await this.finish(done, attempt, { kind: 'succeeded', result: { pages: 3 }, resultTruncated: false });

    const failing = await this.submit('bob@example.com', 'flaky', { maxAttempts: 2 });
    const boom = { kind: 'failed', error: { kind: 'error', message: 'boom' }, retryable: true } as const;
    await this.finish(failing, await this.start(failing), boom);
    await this.finish(failing, await this.start(failing), boom);

    const canceled = await this.submit('bob@example.com', 'never mind');
    await this.task(canceled, (s) =>
      cancelTask({ actorId: this.users.get('bob@example.com')!, now: this.now() }, s),
    );

    const edited = await this.submit('cat@example.com', 'draft', { priority: 1 });
    const catId = this.users.get('cat@example.com')!;
    await this.task(edited, (s) =>
      updateTask({ actorId: catId, changes: { title: 'final', priority: 9 }, now: this.now() }, s),
    );
    await this.start(edited);
    await this.task(edited, (s) => cancelTask({ actorId: catId, now: this.now() }, s));

    const released = await this.submit('cat@example.com', 'handed back');
    const releasedAttempt = await this.start(released);
    await this.task(released, (s) =>
      releaseTask({ workerId: 'worker-1', attempt: releasedAttempt, reason: 'shutdown', now: this.now() }, s),
    );

    const retried = await this.submit('dan@example.com', 'second chance');
    await this.finish(retried, await this.start(retried), {
      kind: 'failed',
      error: { kind: 'unrecoverable', message: 'bad input' },
      retryable: false,
    });
    await this.task(retried, (s) =>
      retryTask({ actorId: this.users.get('dan@example.com')!, now: this.now() }, s),
    );
    await this.finish(
      retried,
      await this.start(retried, 'worker-2'),
      { kind: 'succeeded', result: null, resultTruncated: false },
      'worker-2',
    );

    await this.start(await this.submit('dan@example.com', 'running'));
    await this.submit('ann@example.com', 'later', { runAt: new Date(T0 + 86400_000).toISOString() });
    // A task event whose TaskQueued never happened: the tasks projection logs and skips it, guard recorded.
    await this.raw(taskStreamId(randomUUID()), 'TaskStarted', { taskId: 'not-this-one' });
    // A second live account in ann's account stream: the database rejects it (one live account per stream), the
    // batch goes on without it.
    await this.raw(this.accountOf('ann@example.com'), 'UserRegistered', {
      userId: randomUUID(),
      email: 'pd1.sealed-for-nobody',
      passwordHash: 'x',
      role: 'user',
      registeredAt: this.now().toISOString(),
    });
  }
}

type Snapshot = Record<string, unknown>;

async function snapshot(pool: Pool, schema = 'public'): Promise<Snapshot> {
  const result: Snapshot = {};
  for (const [table, order] of Object.entries(ORDER)) {
    const { rows } = await pool.query<{ rows: unknown }>(
      `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY ${order}), '[]') AS rows FROM ${schema}.${table} t`,
    );
    result[table] = rows[0]!.rows;
  }
  return result;
}

async function schemaExists(pool: Pool, name: string): Promise<boolean> {
  const { rows } = await pool.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [name]);
  return rows.length > 0;
}

/** Indexes and constraints of the live tables, by name, and the identity of the tables a rebuild must not touch. */
async function structure(pool: Pool): Promise<unknown> {
  const { rows: indexes } = await pool.query(
    `SELECT tablename, indexname, regexp_replace(indexdef, ' ON \\S+ ', ' ON ') AS def FROM pg_indexes
      WHERE schemaname = 'public' ORDER BY tablename, indexname`,
  );
  const { rows: constraints } = await pool.query(
    `SELECT conrelid::regclass::text AS table, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
      WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2`,
  );
  const { rows: untouched } = await pool.query(
    `SELECT relname, oid::int AS oid FROM pg_class
      WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
        AND relname IN ('events', 'log_checkpoints', 'schema_migrations', 'relay_partition_heads')
      ORDER BY relname`,
  );
  // Storage parameters too (the tasks table's fillfactor, migrations/0020), which LIKE does not copy by itself.
  const { rows: storage } = await pool.query(
    `SELECT relname, reloptions FROM pg_class
      WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND reloptions IS NOT NULL ORDER BY relname`,
  );
  expect(storage).to.deep.include({ relname: 'tasks', reloptions: ['fillfactor=80'] });
  return { indexes, constraints, untouched, storage };
}

const keysOf = (report: RebuildReport) =>
  Object.fromEntries(
    report.differences.map((difference) => [
      difference.table,
      difference.samples.map((sample) => ({ key: sample.key, kind: sample.kind, columns: sample.columns })),
    ]),
  );

describe('rebuilding read models', function () {
  this.timeout(60000);
  let db: TestDatabase;
  let store: PostgresEventStore;
  let world: World;
  let original: Snapshot;

  const rebuild = (options: Partial<RebuildOptions> = {}) =>
    rebuildReadModels({
      pool: db.pool,
      store,
      projections: PROJECTIONS,
      verify: true,
      swap: true,
      logger,
      // Small pages and several lanes, so a few dozen events still cross pages and transactions.
      pageSize: 7,
      concurrency: 3,
      ...options,
    });

  beforeEach(async () => {
    db = await createTestDatabase('rebuild');
    store = testEventStore(db, { logger });
    world = new World(db, store);
    await world.seed();
    const outcomes = await world.projectLive();
    expect(outcomes).to.include('bad_data');
    original = await snapshot(db.pool);
    expect((original.tasks as unknown[]).length).to.equal(10); // fay's stays after she is forgotten
    expect((original.refresh_tokens as unknown[]).length).to.equal(3); // bob logged out, cat's reuse revoked
  });

  afterEach(async () => {
    await store.close();
    await db.drop();
  });

  it('reports no difference on an untouched system, and swaps in equal tables', async () => {
    const before = await structure(db.pool);
    const progress: Array<{ events: number; total: number | null }> = [];
    const report = await rebuild({ onProgress: (p) => progress.push(p) });

    const { rows } = await db.pool.query<{ count: number }>('SELECT count(*) AS count FROM events');
    expect(report.events).to.equal(rows[0]!.count);
    expect(report.verified).to.equal(true);
    expect(report.differences).to.deep.equal([]);
    expect(report.streamsBehind).to.equal(0);
    expect(report.swapped).to.equal(true);
    expect(progress.length).to.be.greaterThan(1);
    expect(progress[progress.length - 1]).to.deep.equal({ events: report.events, total: report.events });

    expect(await snapshot(db.pool)).to.deep.equal(original);
    expect(await schemaExists(db.pool, report.oldSchema!)).to.equal(true);
    expect(await schemaExists(db.pool, report.schema)).to.equal(false);
    // The swapped-in tables carry the live index and constraint names (tasks_listing, not a generated one), and
    // the log and the other tables are the very same relations.
    expect(await structure(db.pool)).to.deep.equal(before);
  });

  it('reports exactly the deleted and corrupted rows, and the swap brings the original back', async () => {
    const taskId = (title: string) =>
      (original.tasks as Array<{ id: string; title: string }>).find((row) => row.title === title)!.id;
    const [deletedTask, corruptedTask] = [taskId('flaky'), taskId('report')]; // 'report' is done, not canceled
    const deletedUser = world.users.get('cat@example.com')!;
    const demotedUser = world.users.get('ann@example.com')!;
    const deletedSession = (original.refresh_tokens as Array<{ session_id: string }>)[0]!.session_id;
    await db.pool.query('DELETE FROM tasks WHERE id = $1', [deletedTask]);
    await db.pool.query(`UPDATE tasks SET status = 'canceled', title = 'tampered' WHERE id = $1`, [
      corruptedTask,
    ]);
    await db.pool.query('DELETE FROM users WHERE id = $1', [deletedUser]);
    await db.pool.query(`UPDATE users SET role = 'user' WHERE id = $1`, [demotedUser]);
    await db.pool.query('DELETE FROM refresh_tokens WHERE session_id = $1', [deletedSession]);

    const report = await rebuild();

    const byKey = (a: { key: { id?: unknown } }, b: { key: { id?: unknown } }) =>
      String(a.key.id).localeCompare(String(b.key.id));
    expect(report.differences.map((d) => d.table).sort()).to.deep.equal(['refresh_tokens', 'tasks', 'users']);
    expect(keysOf(report)).to.deep.equal({
      tasks: [
        { key: { id: deletedTask }, kind: 'missingInLive', columns: TASK_COLUMNS.split(', ') },
        { key: { id: corruptedTask }, kind: 'changed', columns: ['title', 'status'] },
      ].sort(byKey),
      users: [
        {
          key: { id: deletedUser },
          kind: 'missingInLive',
          columns: ['id', 'role', 'created_at', 'account_stream', 'forgotten_at'],
        },
        { key: { id: demotedUser }, kind: 'changed', columns: ['role'] },
      ].sort(byKey),
      refresh_tokens: [
        {
          key: { session_id: deletedSession },
          kind: 'missingInLive',
          columns: ['session_id', 'user_id', 'expires_at', 'created_at'],
        },
      ],
    });
    const tasks = report.differences.find((d) => d.table === 'tasks')!;
    expect([tasks.missingInLive, tasks.missingInRebuild, tasks.changed]).to.deep.equal([2, 1, 1]);
    const users = report.differences.find((d) => d.table === 'users')!;
    const demoted = users.samples.find((s) => s.kind === 'changed')!;
    expect([demoted.live?.role, demoted.rebuild?.role]).to.deep.equal(['user', 'admin']);
    expect(describeDifference('users', demoted)).to.equal(
      `users id=${demotedUser}: role live "user", rebuilt "admin"`,
    );

    expect(report.swapped).to.equal(true);
    expect(await snapshot(db.pool)).to.deep.equal(original);
    // The damaged tables are kept, damage included: a rollback is a swap back.
    const old = report.oldSchema!;
    const { rows: kept } = await db.pool.query(`SELECT status, title FROM ${old}.tasks WHERE id = $1`, [
      corruptedTask,
    ]);
    expect(kept).to.deep.equal([{ status: 'canceled', title: 'tampered' }]);
    const { rows: gone } = await db.pool.query(`SELECT 1 FROM ${old}.tasks WHERE id = $1`, [deletedTask]);
    expect(gone).to.deep.equal([]);
    const { rows: role } = await db.pool.query(`SELECT role FROM ${old}.users WHERE id = $1`, [demotedUser]);
    expect(role).to.deep.equal([{ role: 'user' }]);
  });

  it('does not count a live projector that is merely behind as a difference', async () => {
    // Appended, not yet applied live: one stream of each read model moves on in the log only.
    const fresh = await world.login('cat@example.com');
    await world.projectLive();
    await world.grant('dan@example.com', 'auditor');
    await world.rotate(fresh);
    const waiting = (original.tasks as Array<{ id: string; title: string }>).find(
      (t) => t.title === 'waiting',
    )!;
    await world.start(waiting.id);
    await world.untilReadable();

    const report = await rebuild({ swap: false });
    expect(report.differences).to.deep.equal([]);
    expect(report.streamsBehind).to.equal(3);
    // Without a swap, the live tables stay as they were and the rebuilt ones wait in their schema.
    expect(await snapshot(db.pool)).to.not.deep.equal(await snapshot(db.pool, report.schema));
    const { rows } = await db.pool.query(`SELECT status FROM ${report.schema}.tasks WHERE id = $1`, [
      waiting.id,
    ]);
    expect(rows).to.deep.equal([{ status: 'in_progress' }]);
    expect(report.swapped).to.equal(false);
    expect(await dropOldSchemas(db.pool)).to.deep.equal([report.schema]);
    expect(await schemaExists(db.pool, report.schema)).to.equal(false);
  });

  it('keeps the events appended and applied live while it was rebuilding', async () => {
    let applied = '';
    let notYetApplied = '';
    let expected: Snapshot = {};
    const report = await rebuild({
      verify: false,
      beforeSwap: async () => {
        applied = await world.submit('bob@example.com', 'during the rebuild');
        await world.finish(applied, await world.start(applied), {
          kind: 'succeeded',
          result: 'ok',
          resultTruncated: false,
        });
        await world.grant('cat@example.com', 'auditor');
        await world.projectLive();
        expected = await snapshot(db.pool);
        // The live projector has not got to this one when the swap comes.
        notYetApplied = await world.submit('bob@example.com', 'just before the swap');
        await world.untilReadable();
      },
    });
    expect(report.swapped).to.equal(true);

    const after = await snapshot(db.pool);
    const withoutLast = {
      ...after,
      tasks: (after.tasks as Array<{ id: string }>).filter((t) => t.id !== notYetApplied),
      projection_stream_progress: (after.projection_stream_progress as Array<{ stream_id: string }>).filter(
        (p) => p.stream_id !== taskStreamId(notYetApplied),
      ),
    };
    expect(withoutLast).to.deep.equal(expected);
    const { rows } = await db.pool.query('SELECT id, status FROM tasks WHERE id = ANY ($1) ORDER BY title', [
      [applied, notYetApplied],
    ]);
    expect(rows).to.deep.equal([
      { id: applied, status: 'done' },
      { id: notYetApplied, status: 'pending' },
    ]);
    // When the live projector is given it, it is already there.
    expect(await world.projectLive()).to.not.include('applied');
  });

  it('leaves the live projector working on the swapped-in tables', async () => {
    // As if a Kafka consumer had applied up to here in partition 3.
    const { rows: first } = await db.pool.query<{ position: string }>(
      `SELECT position FROM projection_stream_progress ORDER BY position LIMIT 1`,
    );
    await db.pool.query(`INSERT INTO projection_partition_positions VALUES ('tasks', 3, $1)`, [
      first[0]!.position,
    ]);
    const report = await rebuild();

    // Everything in the log is in the new tables, whichever partition carried it: read-your-writes holds.
    const head = await store.headPosition();
    const { rows: positions } = await db.pool.query(
      'SELECT projection, partition, position FROM projection_partition_positions ORDER BY 1, 2',
    );
    expect(positions).to.deep.equal([
      { projection: 'refresh_tokens', partition: 0, position: head },
      { projection: 'schedules', partition: 0, position: head },
      { projection: 'tasks', partition: 0, position: head },
      { projection: 'tasks', partition: 3, position: head },
      { projection: 'users', partition: 0, position: head },
    ]);

    const waiting = (original.tasks as Array<{ id: string; title: string }>).find(
      (t) => t.title === 'waiting',
    )!;
    await world.start(waiting.id);
    const outcomes = await world.projectLive();
    expect(outcomes.filter((o) => o === 'applied')).to.have.length(1);
    const { rows } = await db.pool.query('SELECT status FROM tasks WHERE id = $1', [waiting.id]);
    expect(rows).to.deep.equal([{ status: 'in_progress' }]);
    const { rows: old } = await db.pool.query(`SELECT status FROM ${report.oldSchema}.tasks WHERE id = $1`, [
      waiting.id,
    ]);
    expect(old).to.deep.equal([{ status: 'pending' }]);
    const { rows: moved } = await db.pool.query<{ position: string }>(
      `SELECT position FROM projection_partition_positions WHERE projection = 'tasks' AND partition = 0`,
    );
    expect(moved[0]!.position).to.equal(await store.headPosition());
  });

  it('drops all but the newest old schemas', async () => {
    const reports: RebuildReport[] = [];
    for (let i = 0; i < 3; i++) reports.push(await rebuild({ verify: false }));
    const olds = reports.map((r) => r.oldSchema!);
    expect(new Set(olds).size).to.equal(3);
    expect((await dropOldSchemas(db.pool, 1)).sort()).to.deep.equal(olds.slice(0, 2).sort());
    expect(await schemaExists(db.pool, olds[2]!)).to.equal(true);
    expect(await schemaExists(db.pool, olds[0]!)).to.equal(false);
    expect(await snapshot(db.pool)).to.deep.equal(original);
  });

  it('refuses a projection whose tables are not listed, touching nothing', async () => {
    const unlisted = { ...PROJECTIONS[0]!, name: 'unlisted', tables: [] };
    let error: unknown;
    await rebuild({ projections: [...PROJECTIONS, unlisted] }).catch((e) => (error = e));
    expect((error as Error).message).to.match(/unlisted has no tables listed/);
    const { rows } = await db.pool.query(`SELECT 1 FROM pg_namespace WHERE nspname LIKE 'rebuild%'`);
    expect(rows).to.deep.equal([]);
  });
});
