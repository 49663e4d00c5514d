import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readWholeLog } from '../support/log.js';
import {
  call,
  identityClient,
  registerAndLogin,
  stackLabel,
  STACK_MODES,
  useTestService,
} from '../support/service.js';
import { waitFor } from '../support/wait.js';
import { readTopicAsOutsider } from '../support/kafka.js';
import { isSealed } from '../../src/infra/secrets/personalData.js';

const run = promisify(execFile);
const PASSWORD = 'password for forgetting';

for (const mode of STACK_MODES) {
  describe(`forgetting a person (${stackLabel(mode)})`, function () {
    this.timeout(120000);
    const service = useTestService(mode);
    let base: string;
    before(() => {
      base = service.url;
    });

    const cli = (args: string[]) =>
      run('node', ['bin/task-manager.mjs', ...args], {
        env: {
          PATH: process.env.PATH,
          HOME: process.env.HOME,
          LOG_LEVEL: 'silent',
          ...(mode === 'embedded'
            ? { DATA_DIR: service.config.embedded.dataDir }
            : { DATABASE_URL: service.config.databaseUrl! }),
        },
        maxBuffer: 64 * 1024 * 1024,
      });
    const { accountOf } = identityClient(service, PASSWORD);

    it('seals the email in the log with the user’s own key, and shows it only to the user and admins', async () => {
      const ann = await registerAndLogin(base, { label: 'sealed', password: PASSWORD });
      const [registered] = await service.service.infrastructure.store.readStream(accountOf(ann.email));
      expect(registered!.type).to.equal('UserRegistered');
      expect(registered!.rawData).not.to.include(ann.email);
      const sealed = registered!.data.email as string;
      expect(isSealed(sealed)).to.equal(true);
      expect(await service.service.infrastructure.personalData.open(ann.userId, sealed)).to.equal(ann.email);
      // Bound to its person: the same bytes do not open as someone else's.
      const other = await registerAndLogin(base, { label: 'sealed', password: PASSWORD });
      const stolen = await service.service.infrastructure.personalData
        .open(other.userId, sealed)
        .catch(() => 'refused');
      expect(stolen).to.equal('refused');

      const own = await call(base, 'GET', `/users/${ann.userId}`, { token: ann.token });
      expect(own.status).to.equal(200);
      expect(own.body).to.include({ id: ann.userId, email: ann.email, role: 'user' });
      expect((await call(base, 'GET', `/users/${ann.userId}`, { token: other.token })).status).to.equal(404);
      expect((await call(base, 'DELETE', `/users/${ann.userId}`, { token: other.token })).status).to.equal(
        404,
      );
    });

    it('forgets a user: the email is unreadable everywhere, the history verifies, the read models equal a rebuild, the email registers anew', async () => {
      const ann = await registerAndLogin(base, { label: 'forget-me', password: PASSWORD });
      const task = await call(base, 'POST', '/tasks', {
        body: { title: 'outlives its owner' },
        token: ann.token,
      });
      expect(task.status).to.equal(202);

      const forgotten = await call(base, 'DELETE', `/users/${ann.userId}`, { token: ann.token });
      expect(forgotten.status).to.equal(204);
      // Again: a no-op, still 204 (the key is destroyed all the same).
      expect((await call(base, 'DELETE', `/users/${ann.userId}`, { token: ann.token })).status).to.equal(204);

      const { store, pool, personalData } = service.service.infrastructure;
      const types = (await store.readStream(accountOf(ann.email))).map((event) => event.type);
      expect(types).to.deep.equal(['UserRegistered', 'UserForgotten']);
      const [registered] = await store.readStream(accountOf(ann.email));
      expect(await personalData.open(ann.userId, registered!.data.email as string)).to.equal(null);

      // Nothing answers with the email, or lets the user back in.
      expect((await call(base, 'GET', `/users/${ann.userId}`, { token: ann.token })).status).to.equal(404);
      expect(
        (await call(base, 'POST', '/refresh', { body: { refresh_token: `Bearer ${ann.refreshToken}` } }))
          .status,
      ).to.equal(401);
      expect(
        (await call(base, 'POST', '/login', { body: { email: ann.email, password: PASSWORD } })).status,
      ).to.equal(401);

      // The email appears nowhere in the events table, in clear.
      const { rows: inClear } = await pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM events WHERE data::text ILIKE '%' || $1 || '%' OR metadata::text ILIKE '%' || $1 || '%'`,
        [ann.email],
      );
      expect(inClear[0]!.n).to.equal(0);
      // Nor in the NDJSON export.
      const exported = await cli(['audit', 'export']);
      expect(exported.stdout).to.include(registered!.streamId);
      expect(exported.stdout).not.to.include(ann.email);
      if (mode === 'full') {
        const log = await readWholeLog(store);
        const messages = await readTopicAsOutsider(
          service.config.kafka.brokers,
          service.config.kafka.topic,
          log.length,
        );
        expect(messages.some((message) => message.headers.type === 'UserForgotten')).to.equal(true);
        for (const message of messages) expect(JSON.stringify(message)).not.to.include(ann.email);
      }

      // The user's task stays, owned by the tombstoned id; the users row says they were forgotten.
      const tombstone = await waitFor('the users read model to show the user forgotten', async () => {
        const { rows } = await pool.query<{ forgotten_at: Date | null; owner: string | null }>(
          `SELECT u.forgotten_at, (SELECT owner_id::text FROM tasks WHERE id = $2) AS owner
             FROM users u WHERE u.id = $1`,
          [ann.userId, task.body.id],
        );
        return rows[0]?.forgotten_at && rows[0].owner ? rows[0] : undefined;
      });
      expect(tombstone.owner).to.equal(ann.userId);

      // The key itself is gone from its table, not only unusable.
      const { rows: key } = await pool.query(
        'SELECT wrapped_key, destroyed_at IS NOT NULL AS destroyed FROM person_keys WHERE person_id = $1',
        [ann.userId],
      );
      expect(key).to.deep.equal([{ wrapped_key: null, destroyed: true }]);

      // The same email registers again, as a new person.
      const again = await registerAndLogin(base, { email: ann.email, password: PASSWORD });
      expect(again.userId).not.to.equal(ann.userId);
      const shown = await call(base, 'GET', `/users/${again.userId}`, { token: again.token });
      expect(shown.body.email).to.equal(ann.email);

      // The history still verifies, and every read model equals a rebuild from the log, the stream that now holds a
      // forgotten user and a live one included.
      await waitFor('the users read model to hold the new registration', async () => {
        const { rows } = await pool.query('SELECT 1 FROM users WHERE id = $1', [again.userId]);
        return rows.length > 0 || undefined;
      });
      const verified = await cli(['audit', 'verify']);
      expect(verified.stdout).to.match(/^ok: \d+ events/);
      const rebuilt = await cli(['projections', 'rebuild', '--verify', '--no-swap']);
      expect(rebuilt.stdout).to.include('the rebuilt read models equal the live ones');
    });

    it('lets an admin forget a user by id, and the command line by email', async () => {
      const admin = await registerAndLogin(base, {
        label: 'forget-admin',
        password: PASSWORD,
        role: { name: 'admin', infrastructure: service.service.infrastructure },
      });
      const bob = await registerAndLogin(base, { label: 'forget-bob', password: PASSWORD });
      const cat = await registerAndLogin(base, { label: 'forget-cat', password: PASSWORD });
      // An admin finds others through the users read model, which may lag the registration a moment.
      const seen = await waitFor('bob in the users read model', async () => {
        const shown = await call(base, 'GET', `/users/${bob.userId}`, { token: admin.token });
        return shown.status === 200 ? shown.body : undefined;
      });
      expect(seen.email).to.equal(bob.email);
      expect((await call(base, 'DELETE', `/users/${bob.userId}`, { token: admin.token })).status).to.equal(
        204,
      );
      expect((await call(base, 'GET', `/users/${bob.userId}`, { token: admin.token })).status).to.equal(404);
      // Nor does the audit API (admins read it) show the forgotten email anywhere.
      const log = await call(base, 'GET', '/audit/events?limit=1000', { token: admin.token });
      expect(log.status).to.equal(200);
      expect(JSON.stringify(log.body)).to.include(bob.userId).and.not.include(bob.email);

      const { stdout } = await cli(['users', 'forget', cat.email]);
      expect(stdout).to.include(`user ${cat.userId} is forgotten`);
      const [catRegistered] = await service.service.infrastructure.store.readStream(accountOf(cat.email));
      expect(
        await service.service.infrastructure.personalData.open(
          cat.userId,
          catRegistered!.data.email as string,
        ),
      ).to.equal(null);
      // By email there is no account any more; by id, forgetting again is a no-op.
      const byEmail = await cli(['users', 'forget', cat.email]).catch(
        (error: { code: number; stderr: string }) => error,
      );
      expect(byEmail).to.include({ code: 1 });
      expect((byEmail as { stderr: string }).stderr).to.include('no account with this email');
      await waitFor('cat in the users read model', async () => {
        const { rows } = await service.service.infrastructure.pool.query(
          'SELECT 1 FROM users WHERE id = $1',
          [cat.userId],
        );
        return rows.length > 0 || undefined;
      });
      const byId = await cli(['users', 'forget', cat.userId]);
      expect(byId.stdout).to.include(`user ${cat.userId} was already forgotten`);
      expect(
        (await call(base, 'POST', '/login', { body: { email: cat.email, password: PASSWORD } })).status,
      ).to.equal(401);
    });
  });
}
