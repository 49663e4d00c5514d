import { expect } from 'chai';
import { createHash } from 'node:crypto';
import {
  call,
  quickWorkerSettings,
  registerAndLogin,
  stackLabel,
  STACK_MODES,
  useTestService,
} from '../support/service.js';
import { sleep, waitFor } from '../support/wait.js';
import { accountStreamId } from '../../src/domain/identity/account.js';
import { generateAuditKeyPair } from '../../src/audit/anchors.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

const PASSWORD = 'password for audit';

for (const mode of STACK_MODES) {
  describe(`auditors over HTTP (${stackLabel(mode, 'full stack')})`, function () {
    this.timeout(60000);
    const service = useTestService(mode, quickWorkerSettings);
    let base: string;
    let userEmail: string;
    let user: { access_token: string; refresh_token: string };
    let auditor: string;
    let taskId: string;

    before(async () => {
      base = service.url;
      const registered = await registerAndLogin(base, { label: 'audit', password: PASSWORD });
      userEmail = registered.email;
      user = { access_token: registered.token, refresh_token: registered.refreshToken };
      // A rotation, so the log holds refresh-token hashes that must never be shown.
      user = (await call(base, 'POST', '/refresh', { body: { refresh_token: user.refresh_token } })).body;
      auditor = (
        await registerAndLogin(base, {
          label: 'audit',
          password: PASSWORD,
          role: { name: 'auditor', infrastructure: service.service.infrastructure },
        })
      ).token;
      taskId = (
        await call(base, 'POST', '/tasks', { body: { title: 'audited work' }, token: user.access_token })
      ).body.id;
      await waitFor('the task to be done', async () => {
        const task = await call(base, 'GET', `/tasks/${taskId}`, { token: user.access_token });
        return task.body.status === 'done' ? true : undefined;
      });
    });

    const audit = (query: string, token = auditor) => call(base, 'GET', `/audit/events${query}`, { token });

    it('refuses the log to a plain user (403) and to no one (401)', async () => {
      expect((await audit('', user.access_token)).status).to.equal(403);
      expect((await call(base, 'GET', '/audit/events')).status).to.equal(401);
    });

    it('pages the whole log in order, each event with its metadata and hash', async () => {
      const expected = (
        await service.service.infrastructure.store.readAll({ after: null, limit: 100000 })
      ).map((event) => event.position);
      const all: Array<{ position: string; metadata: Record<string, unknown> }> = [];
      let after = '';
      // Pages until it has read past the log as it was: `at_end` only means "nothing more readable now" (an older
      // transaction elsewhere on the server may still hold newer events back).
      const deadline = Date.now() + 30000;
      while (all.length === 0 || all[all.length - 1]!.position < expected[expected.length - 1]!) {
        const page = await audit(`?limit=3${after ? `&after=${after}` : ''}`);
        expect(page.status).to.equal(200);
        all.push(...page.body.items);
        if (page.body.next_after) after = page.body.next_after;
        if (page.body.items.length === 0) {
          if (Date.now() > deadline) expect.fail('the audit log stayed short of the log');
          await sleep(20);
        }
      }
      const positions = all.map((e) => e.position);
      expect(positions).to.deep.equal([...positions].sort());
      expect(new Set(positions).size).to.equal(positions.length);
      expect(positions.slice(0, expected.length)).to.deep.equal(expected);
      for (const event of all)
        expect(event.metadata).to.include.keys(
          'event_id',
          'correlation_id',
          'causation_id',
          'user_id',
          'timestamp',
          'hash',
        );
    });

    it('filters by stream, type, user and time', async () => {
      const byStream = await audit(`?stream=task-${taskId}`);
      expect(byStream.body.items.map((e: { type: string }) => e.type)).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskSucceeded',
      ]);
      const byType = await audit('?type=UserRegistered&limit=1000');
      expect(byType.body.items.length).to.be.greaterThan(0);
      expect(byType.body.items.every((e: { type: string }) => e.type === 'UserRegistered')).to.equal(true);
      const queued = byStream.body.items[0];
      const byUser = await audit(`?user_id=${queued.metadata.user_id}&limit=1000`);
      expect(byUser.body.items.map((e: { position: string }) => e.position)).to.include(queued.position);
      expect(
        byUser.body.items.every(
          (e: { metadata: { user_id: string } }) => e.metadata.user_id === queued.metadata.user_id,
        ),
      ).to.equal(true);
      const future = await audit(
        `?from=${encodeURIComponent(new Date(Date.now() + 3600_000).toISOString())}`,
      );
      expect(future.body.items).to.deep.equal([]);
      expect((await audit('?after=not-a-position')).status).to.equal(400);
    });

    it('never shows password hashes, refresh tokens or their hashes', async () => {
      const { store, personalData } = service.service.infrastructure;
      const account = await store.readStream(accountStreamId(personalData.emailHash(userEmail)));
      const passwordHash = account[0]!.data.passwordHash as string;
      const everything = JSON.stringify((await audit('?limit=1000')).body);
      expect(everything).to.include('UserRegistered').and.include('RefreshTokenRotated');
      expect(everything).not.to.include(passwordHash);
      expect(everything).not.to.include(user.refresh_token);
      expect(everything).not.to.include(createHash('sha256').update(user.refresh_token).digest('hex'));
      expect(everything).not.to.match(/\$2[aby]\$\d\d\$/);
      // Emails are sealed in the log itself, so the API shows them sealed, never in clear.
      expect(everything).not.to.include(userEmail);
    });

    it('shows a task as it was at a log position or a time (as_of)', async () => {
      const history = (await audit(`?stream=task-${taskId}`)).body.items as Array<{
        position: string;
        type: string;
        metadata: { timestamp: string };
      }>;
      const asOf = async (value: string, token = user.access_token) =>
        call(base, 'GET', `/tasks/${taskId}?as_of=${encodeURIComponent(value)}`, { token });
      expect((await asOf(history[0]!.position)).body.status).to.equal('pending');
      expect((await asOf(history[1]!.position)).body.status).to.equal('in_progress');
      expect((await asOf(history[2]!.position)).body).to.include({ status: 'done', revision: 2 });
      expect((await asOf(history[0]!.metadata.timestamp)).body.status).to.equal('pending');
      expect((await asOf('2000-01-01T00:00:00Z')).status, 'before it existed').to.equal(404);
      expect((await asOf(history[2]!.position, auditor)).status, 'auditors too').to.equal(200);
      expect((await asOf('yesterday')).status).to.equal(400);
      const stranger = await registerAndLogin(base, { label: 'audit', password: PASSWORD });
      expect((await asOf(history[2]!.position, stranger.token)).status).to.equal(404);
    });
  });
}

describe('audit commands (task-manager audit ...)', function () {
  this.timeout(90000);
  const service = useTestService('embedded', quickWorkerSettings);
  let keys: { privateKey: string; publicKey: string };

  const cli = async (args: string[]) => {
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      LOG_LEVEL: 'silent',
      DATA_DIR: service.config.embedded.dataDir,
      AUDIT_PRIVATE_KEY: keys.privateKey,
      AUDIT_PUBLIC_KEY: keys.publicKey,
    };
    return run('node', ['bin/task-manager.mjs', ...args], { env, maxBuffer: 64 * 1024 * 1024 }).then(
      ({ stdout }) => ({ code: 0, stdout }),
      (error: { code: number; stdout: string }) => ({ code: error.code, stdout: error.stdout }),
    );
  };

  before(async () => {
    keys = generateAuditKeyPair();
    const { token } = await registerAndLogin(service.url, { label: 'audit', password: PASSWORD });
    for (let i = 0; i < 3; i++)
      await call(service.url, 'POST', '/tasks', { body: { title: `audited ${i}` }, token });
  });

  it('verifies an untouched log, anchors it, and exports it as NDJSON', async () => {
    const anchored = await cli(['audit', 'anchor']);
    expect(anchored.stdout).to.match(/anchored \d+ stream heads/);
    const verified = await cli(['audit', 'verify']);
    expect(verified.code, verified.stdout).to.equal(0);
    expect(verified.stdout).to.match(/^ok: \d+ events, \d+ streams, anchors on \(1 checked\)/);
    const exported = await cli(['audit', 'export']);
    const lines = exported.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    const log = await service.service.infrastructure.store.readAll({ after: null, limit: 100000 });
    expect(lines.map((line) => line.position)).to.deep.equal(log.map((event) => event.position));
    expect(lines[0]).to.include.keys('stream_id', 'revision', 'type', 'raw_data', 'metadata');
  });

  it('names the stream and revision of an event whose data was changed by one byte in PostgreSQL', async () => {
    const { pool } = service.service.infrastructure;
    const { rows } = await pool.query<{ stream_id: string; revision: number }>(
      `SELECT stream_id, revision FROM events WHERE stream_id LIKE 'task-%' AND revision = 0 LIMIT 1`,
    );
    const victim = rows[0]!;
    await pool.query('ALTER TABLE events DISABLE TRIGGER events_append_only');
    await pool.query(
      `UPDATE events SET data = replace(data, 'audited', 'audiTed') WHERE stream_id = $1 AND revision = 0`,
      [victim.stream_id],
    );
    await pool.query('ALTER TABLE events ENABLE TRIGGER events_append_only');
    const verified = await cli(['audit', 'verify']);
    expect(verified.code).to.equal(1);
    expect(verified.stdout).to.include(`stream ${victim.stream_id} revision 0`).and.include('hash_mismatch');
  });
});

describe('projections rebuild (task-manager projections rebuild --verify)', function () {
  this.timeout(90000);
  const service = useTestService('embedded', quickWorkerSettings);

  before(async () => {
    const { token } = await registerAndLogin(service.url, { label: 'audit', password: PASSWORD });
    const ids = [];
    for (let i = 0; i < 3; i++)
      ids.push(
        (await call(service.url, 'POST', '/tasks', { body: { title: `rebuilt ${i}` }, token })).body.id,
      );
    // One that waits, so the schedule has a row to verify.
    delayed = (
      await call(service.url, 'POST', '/tasks', {
        body: { title: 'later', run_at: new Date(Date.now() + 3_600_000).toISOString() },
        token,
      })
    ).body.id;
    await waitFor('the tasks in the read model', async () => {
      const { rows } = await service.service.infrastructure.pool.query(
        `SELECT count(*) FILTER (WHERE status = 'done')::int AS done, count(*)::int AS n FROM tasks`,
      );
      return rows[0].done === 3 && rows[0].n === 4 ? true : undefined;
    });
  });
  let delayed = '';

  const rebuild = (args: string[]) =>
    run('node', ['bin/task-manager.mjs', 'projections', 'rebuild', ...args], {
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        LOG_LEVEL: 'silent',
        DATA_DIR: service.config.embedded.dataDir,
      },
    });

  it('reports no difference on an untouched system', async () => {
    const { stdout } = await rebuild(['--verify', '--no-swap']);
    expect(stdout).to.include('the rebuilt read models equal the live ones').and.include('not swapped');
    expect(stdout).to.include('verify: task_schedule equals a fold of the log');
    expect(stdout).to.include('verify: queue_settings equals a fold of the log');
  });

  it('names a damaged schedule row, and the rebuild puts it right', async () => {
    const { pool } = service.service.infrastructure;
    const before = (await pool.query('SELECT * FROM task_schedule WHERE task_id = $1', [delayed])).rows;
    expect(before).to.have.length(1);
    await pool.query(
      `UPDATE task_schedule SET priority = 0, run_at = now() + interval '1 day' WHERE task_id = $1`,
      [delayed],
    );
    const { stdout } = await rebuild(['--verify']);
    expect(stdout).to.include('verify: task_schedule: 1 tasks differ from a fold of the log');
    expect(stdout).to.include(`task ${delayed}`);
    expect(stdout).to.match(/task_schedule rebuilt from \d+ task events/);
    expect(
      (await pool.query('SELECT * FROM task_schedule WHERE task_id = $1', [delayed])).rows,
    ).to.deep.equal(before);
  });

  it('names damaged rows and, after the swap, serves the originals again while the service runs', async () => {
    const { pool } = service.service.infrastructure;
    const before = (await pool.query('SELECT * FROM tasks ORDER BY id')).rows;
    await pool.query(`UPDATE tasks SET title = 'tampered' WHERE id = $1`, [before[0].id]);
    await pool.query(`DELETE FROM tasks WHERE id = $1`, [before[1].id]);
    const { stdout } = await rebuild(['--verify']);
    expect(stdout).to.include(`tasks id=${before[0].id}`).and.include('tampered');
    expect(stdout).to.include(`tasks id=${before[1].id}: missing in live`);
    expect(stdout).to.match(/swapped in; the previous tables are kept in schema rebuild_old_/);
    expect((await pool.query('SELECT * FROM tasks ORDER BY id')).rows).to.deep.equal(before);
  });
});
