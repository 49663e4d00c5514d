import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import jwt from 'jsonwebtoken';
import {
  call,
  identityClient,
  registerAndLogin,
  stackLabel,
  STACK_MODES,
  useTestService,
} from '../support/service.js';
import { waitFor } from '../support/wait.js';
import { sessionStreamId } from '../../src/domain/identity/session.js';
import { applyOnce } from '../../src/projections/projectionRunner.js';
import { PROJECTIONS } from '../../src/projections/index.js';
import { silentLogger } from '../../src/infra/logger.js';
import { createSiblingDatabase } from '../support/postgres.js';
import type { RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import { newEmail } from '../support/fixtures.js';

const run = promisify(execFile);
const PASSWORD = 'correct horse battery';

for (const mode of STACK_MODES) {
  describe(`identity over HTTP (${stackLabel(mode)})`, function () {
    this.timeout(60000);
    const service = useTestService(mode, (config) => {
      config.auth.maxFailedLoginsPerEmail = 3;
      config.auth.maxFailedLoginsPerAddress = 15;
    });
    let base: string;
    before(() => {
      base = service.url;
    });

    const { accountOf, attemptsOf, register, login, refresh, logout, streamTypes } = identityClient(
      service,
      PASSWORD,
    );
    const registeredAndLoggedIn = async () => {
      const { email, token, refreshToken } = await registerAndLogin(base, { password: PASSWORD });
      return { email, access_token: token, refresh_token: refreshToken };
    };

    describe('register', () => {
      it('registers with a normalised email and answers 201 {id, email}', async () => {
        const email = newEmail('user');
        const response = await register(`  ${email.toUpperCase()} `);
        expect(response.status).to.equal(201);
        expect(response.body).to.have.keys('id', 'email');
        expect(response.body.email).to.equal(email);
        expect(response.body.id).to.match(/^[0-9a-f-]{36}$/);
      });

      it('answers 409 for an email already taken, in any case', async () => {
        const email = newEmail('user');
        await register(email);
        const again = await register(email.toUpperCase());
        expect(again.status).to.equal(409);
        expect(again.headers.get('content-type')).to.include('application/problem+json');
      });

      it('refuses a bad email, a short password, a password over 72 bytes and unknown fields with 400', async () => {
        expect((await register('not-an-email')).status).to.equal(400);
        expect((await register(newEmail('user'), 'short')).status).to.equal(400);
        const tooLong = await register(newEmail('user'), 'é'.repeat(37)); // 37 characters, 74 bytes
        expect(tooLong.status).to.equal(400);
        expect(tooLong.body.errors[0].path).to.equal('/body/password');
        const extra = await call(base, 'POST', '/register', {
          body: { email: newEmail('user'), password: PASSWORD, role: 'admin' },
        });
        expect(extra.status).to.equal(400);
      });

      it('stores only a bcrypt hash at the configured cost, never the password', async () => {
        const email = newEmail('user');
        await register(email);
        const [event] = await service.service.infrastructure.store.readStream(accountOf(email));
        expect(event!.rawData).not.to.include(PASSWORD);
        expect(event!.data.passwordHash).to.match(/^\$2[aby]\$06\$/);
      });

      it('lets exactly one of 50 concurrent registrations of one email succeed', async () => {
        const email = newEmail('user');
        const responses = await Promise.all(Array.from({ length: 50 }, () => register(email)));
        const statuses = responses.map((r) => r.status);
        expect(statuses.filter((s) => s === 201)).to.have.length(1);
        expect(statuses.filter((s) => s === 409)).to.have.length(49);
        expect(await streamTypes(accountOf(email))).to.deep.equal(['UserRegistered']);
      });
    });

    describe('login', () => {
      it('logs in right after register with a token pair whose JWT carries the documented claims', async () => {
        const {
          access_token: accessToken,
          refresh_token: refreshToken,
          email,
        } = await registeredAndLoggedIn();
        const claims = jwt.verify(accessToken, service.jwtSecret, {
          algorithms: ['HS256'],
        }) as jwt.JwtPayload;
        expect(claims).to.include.keys('sub', 'role', 'jti', 'iat', 'exp', 'iss', 'aud');
        expect(claims.role).to.equal('user');
        expect(claims.exp! - claims.iat!).to.equal(300);
        expect(claims.iss).to.equal('task-manager');
        expect(refreshToken).to.match(/^[0-9a-f-]{36}\.[A-Za-z0-9_-]{43}$/);
        const me = await call(base, 'GET', '/me', { token: accessToken });
        expect(me.status).to.equal(200);
        expect(me.body.role).to.equal('user');
        const users = await waitFor('the users read model', async () => {
          const { rows } = await service.service.infrastructure.pool.query(
            'SELECT account_stream, role, forgotten_at FROM users WHERE id = $1',
            [claims.sub],
          );
          return rows[0];
        });
        expect(users).to.deep.equal({ account_stream: accountOf(email), role: 'user', forgotten_at: null });
      });

      it('answers a wrong password and an unknown email with the same 401', async () => {
        const email = newEmail('user');
        await register(email);
        const wrongPassword = await login(email, 'wrong password!');
        const unknownEmail = await login(newEmail('user'), 'wrong password!');
        expect(wrongPassword.status).to.equal(401);
        expect(unknownEmail.status).to.equal(401);
        const comparable = (body: Record<string, unknown>) => ({
          ...body,
          instance: undefined,
          request_id: undefined,
        });
        expect(comparable(wrongPassword.body)).to.deep.equal(comparable(unknownEmail.body));
        expect(await streamTypes(attemptsOf(email))).to.deep.equal(['LoginFailed']);
      });

      it('limits failed logins per email with 429 and Retry-After, even with the right password', async () => {
        const email = newEmail('user');
        await register(email);
        for (let i = 0; i < 3; i++) expect((await login(email, 'wrong password!')).status).to.equal(401);
        const limited = await login(email);
        expect(limited.status).to.equal(429);
        expect(Number(limited.headers.get('retry-after'))).to.be.greaterThan(0);
        expect(await streamTypes(attemptsOf(email))).to.deep.equal([
          'LoginFailed',
          'LoginFailed',
          'LoginFailed',
        ]);
      });
    });

    describe('refresh', () => {
      it('rotates: a new pair, and the old refresh token is spent', async () => {
        const first = await registeredAndLoggedIn();
        const rotated = await refresh(first.refresh_token);
        expect(rotated.status).to.equal(200);
        expect(rotated.body.refresh_token).not.to.equal(first.refresh_token);
        expect((await call(base, 'GET', '/me', { token: rotated.body.access_token })).status).to.equal(200);
        const bare = await call(base, 'POST', '/refresh', {
          body: { refresh_token: rotated.body.refresh_token },
        });
        expect(bare.status, 'the token without "Bearer " works too').to.equal(200);
      });

      it('treats a spent token shown again as reuse: 401, the session revoked with its newest token, and an event recorded', async () => {
        const first = await registeredAndLoggedIn();
        const rotated = await refresh(first.refresh_token);
        const reuse = await refresh(first.refresh_token);
        expect(reuse.status).to.equal(401);
        expect((await refresh(rotated.body.refresh_token)).status).to.equal(401);
        const sessionId = first.refresh_token.split('.')[0]!;
        expect(await streamTypes(sessionStreamId(sessionId))).to.deep.equal([
          'SessionStarted',
          'RefreshTokenRotated',
          'RefreshTokenReuseDetected',
          'SessionRevoked',
        ]);
      });

      it('gives exactly one success to two concurrent refreshes with one token', async () => {
        const { refresh_token: token } = await registeredAndLoggedIn();
        const statuses = (await Promise.all([refresh(token), refresh(token), refresh(token)]))
          .map((r) => r.status)
          .sort();
        expect(statuses).to.deep.equal([200, 401, 401]);
      });

      it('refuses an expired refresh token', async () => {
        const { refresh_token: token } = await registeredAndLoggedIn();
        service.clock.advance(service.config.jwt.refreshTtlSeconds * 1000 + 1000);
        try {
          const expired = await refresh(token);
          expect(expired.status).to.equal(401);
          expect(expired.body.detail).to.include('expired');
        } finally {
          service.clock.advance(-(service.config.jwt.refreshTtlSeconds * 1000 + 1000));
        }
      });

      it('refuses malformed and forged refresh tokens with 401', async () => {
        expect((await refresh('nonsense')).status).to.equal(401);
        const { refresh_token: token } = await registeredAndLoggedIn();
        const forged = `${token.split('.')[0]}.${randomBytes(32).toString('base64url')}`;
        expect((await refresh(forged)).status).to.equal(401);
        expect((await refresh(token)).status, 'a forged token does not revoke the real one').to.equal(200);
      });
    });

    describe('logout', () => {
      it('ends only that session: 204, a refresh right after is 401, the other session lives, the row is deleted', async () => {
        const email = newEmail('user');
        await register(email);
        const phone = (await login(email)).body;
        const laptop = (await login(email)).body;
        await waitFor('the refresh token row', async () => {
          const { rowCount } = await service.service.infrastructure.pool.query(
            'SELECT 1 FROM refresh_tokens WHERE session_id = $1',
            [phone.refresh_token.split('.')[0]],
          );
          return rowCount === 1 ? true : undefined;
        });
        expect((await logout(phone.refresh_token)).status).to.equal(204);
        expect((await refresh(phone.refresh_token)).status).to.equal(401);
        expect((await refresh(laptop.refresh_token)).status).to.equal(200);
        await waitFor('the refresh token row to be deleted', async () => {
          const { rowCount } = await service.service.infrastructure.pool.query(
            'SELECT 1 FROM refresh_tokens WHERE session_id = $1',
            [phone.refresh_token.split('.')[0]],
          );
          return rowCount === 0 ? true : undefined;
        });
      });

      it("does not let a user log out another user's session", async () => {
        const mallory = await registeredAndLoggedIn();
        const alice = await registeredAndLoggedIn();
        const attempt = await logout(alice.refresh_token, mallory.access_token);
        expect(attempt.status).to.equal(403);
        expect((await refresh(alice.refresh_token)).status).to.equal(200);
      });

      it('keeps an access token of a revoked session working only until it expires', async () => {
        const { access_token: accessToken, refresh_token: refreshToken } = await registeredAndLoggedIn();
        expect((await logout(refreshToken)).status).to.equal(204);
        expect((await call(base, 'GET', '/me', { token: accessToken })).status).to.equal(200);
        service.clock.advance(301_000);
        try {
          const expired = await call(base, 'GET', '/me', { token: accessToken });
          expect(expired.status).to.equal(401);
          expect(expired.body.detail).to.include('expired');
        } finally {
          service.clock.advance(-301_000);
        }
      });
    });

    describe('access tokens', () => {
      it('refuses missing, malformed, wrongly signed, alg:none and tampered tokens with a 401 problem', async () => {
        const { access_token: good } = await registeredAndLoggedIn();
        const [header, payload] = good.split('.');
        const decoded = JSON.parse(Buffer.from(payload!, 'base64url').toString());
        const noneToken = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${payload}.`;
        const tampered = `${header}.${Buffer.from(JSON.stringify({ ...decoded, role: 'admin' })).toString('base64url')}.${good.split('.')[2]}`;
        const wrongSecret = jwt.sign(decoded, 'another secret entirely', { algorithm: 'HS256' });
        for (const [name, headers] of [
          ['missing', {}],
          ['not bearer', { authorization: `Basic ${good}` }],
          ['garbage', { authorization: 'Bearer abc.def' }],
          ['alg none', { authorization: `Bearer ${noneToken}` }],
          ['tampered', { authorization: `Bearer ${tampered}` }],
          ['wrong secret', { authorization: `Bearer ${wrongSecret}` }],
        ] as Array<[string, Record<string, string>]>) {
          const response = await call(base, 'GET', '/me', { headers });
          expect(response.status, name).to.equal(401);
          expect(response.headers.get('content-type'), name).to.include('application/problem+json');
        }
      });
    });

    describe('roles', () => {
      it('grants a role with `task-manager users grant-role`, seen at the next login', async () => {
        const { email } = await registeredAndLoggedIn();
        const env = {
          ...process.env,
          LOG_LEVEL: 'silent',
          ...(mode === 'embedded'
            ? { DATA_DIR: service.config.embedded.dataDir, DATABASE_URL: '' }
            : { DATABASE_URL: service.config.databaseUrl! }),
        };
        const { stdout } = await run(
          'node',
          ['bin/task-manager.mjs', 'users', 'grant-role', email, 'auditor'],
          { env },
        );
        expect(stdout).to.include('is now auditor');
        const relogin = await login(email);
        const claims = jwt.decode(relogin.body.access_token) as jwt.JwtPayload;
        expect(claims.role).to.equal('auditor');
        const refused = await run('node', ['bin/task-manager.mjs', 'users', 'grant-role', email, 'emperor'], {
          env,
        }).catch((e) => e);
        expect(refused.code).to.equal(1);
        expect(refused.stderr).to.include('must be one of');
      });
    });

    describe('read models', () => {
      it('equal a rebuild from the log: users and refresh_tokens', async () => {
        const rebuilt = await createSiblingDatabase(
          service.service.infrastructure.pool,
          service.service.infrastructure.databaseUrl,
        );
        try {
          const events: RecordedEvent[] = [];
          for (let after: string | null = null; ;) {
            const page = await service.service.infrastructure.store.readAll({ after, limit: 500 });
            if (page.length === 0) break;
            events.push(...page);
            after = page[page.length - 1]!.position;
          }
          expect(events.length).to.be.greaterThan(20);
          for (const event of events)
            for (const projection of PROJECTIONS)
              await applyOnce(rebuilt.pool, projection, event, silentLogger());
          const snapshot = async (pool: typeof rebuilt.pool) => ({
            users: (await pool.query('SELECT * FROM users ORDER BY id')).rows,
            refreshTokens: (await pool.query('SELECT * FROM refresh_tokens ORDER BY session_id')).rows,
          });
          const expected = await snapshot(rebuilt.pool);
          expect(expected.users.length).to.be.greaterThan(5);
          // The live projections may still be catching up: they must converge on exactly the rebuilt rows.
          await waitFor(
            'the live read models to equal the rebuilt ones',
            async () => {
              const live = await snapshot(service.service.infrastructure.pool);
              return JSON.stringify(live) === JSON.stringify(expected) ? true : undefined;
            },
            { timeoutMs: 20000 },
          );
        } finally {
          await rebuilt.drop();
        }
      });
    });

    // Last on purpose: it uses up this client address's failed-login allowance for the rest of the window.
    describe('rate limit per client address', () => {
      it('answers 429 to a fresh email once this address has failed too often', async () => {
        let limited: Awaited<ReturnType<typeof login>> | undefined;
        let freshEmail = '';
        for (
          let attempt = 0;
          attempt <= service.config.auth.maxFailedLoginsPerAddress && !limited;
          attempt++
        ) {
          freshEmail = newEmail('user');
          const response = await login(freshEmail, 'wrong password!');
          if (response.status === 429) limited = response;
          else expect(response.status).to.equal(401);
        }
        expect(limited, 'a 429 within the per-address allowance').not.to.equal(undefined);
        expect(Number(limited!.headers.get('retry-after'))).to.be.greaterThan(0);
        // That email had never failed before: the limit that bit was the address's.
        expect(await streamTypes(attemptsOf(freshEmail))).to.deep.equal([]);
      });
    });
  });
}
