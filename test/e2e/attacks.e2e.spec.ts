import { expect } from 'chai';
import { createHmac, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import jwt from 'jsonwebtoken';
import { pino } from 'pino';
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
import { grantRoleByEmail } from '../../src/commands/identity/grantRoleCommand.js';
import { taskStreamId } from '../../src/domain/tasks/events.js';
import { newEmail } from '../support/fixtures.js';

const run = promisify(execFile);
/** Distinctive, so that finding it anywhere in a response or a log line means it leaked. */
const PASSWORD = `Leak-Canary-${randomBytes(6).toString('hex')}`;
/** A cost other than the test default (6) and the shipped one (10), so the assertion shows the setting is used. */
const BCRYPT_COST = 8;

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
const hs256 = (header: object, payload: object, key: string | Buffer) => {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`;
};
const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};

for (const mode of STACK_MODES) {
  describe(`attacks (${stackLabel(mode)})`, function () {
    this.timeout(90_000);
    const service = useTestService(mode, (config) => {
      config.auth.bcryptCost = BCRYPT_COST;
      // The timing comparison makes 60 failed logins from this address.
      config.auth.maxFailedLoginsPerEmail = 1000;
      config.auth.maxFailedLoginsPerAddress = 1000;
    });
    let base: string;
    /** Every line the service logs, at trace level, from the moment it is up. */
    const logLines: string[] = [];

    before(() => {
      base = service.url;
      // The service's own logger (createLogger, with its redaction rules), pointed at a buffer: children made from
      // it, per request included, write through the root's stream.
      const logger = service.service.infrastructure.logger;
      (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] = {
        write: (line: string) => void logLines.push(line),
      };
      logger.level = 'trace';
    });

    const { accountOf, register, login, refresh, logout, streamTypes } = identityClient(service, PASSWORD);
    const account = async () => {
      const { email, token, refreshToken } = await registerAndLogin(base, {
        label: 'attack',
        password: PASSWORD,
      });
      const claims = jwt.decode(token) as jwt.JwtPayload;
      return { email, id: claims.sub!, access: token, refresh: refreshToken };
    };

    describe('access tokens', () => {
      let victim: Awaited<ReturnType<typeof account>>;
      let claims: jwt.JwtPayload;
      let now: number;
      const sign = (payload: object) => hs256({ alg: 'HS256', typ: 'JWT' }, payload, service.jwtSecret);

      before(async () => {
        victim = await account();
        claims = jwt.decode(victim.access) as jwt.JwtPayload;
        now = Math.floor(service.clock.now().getTime() / 1000);
      });

      const expectRefused = async (name: string, token: string) => {
        for (const path of ['/me', '/tasks']) {
          const response = await call(base, 'GET', path, { token });
          expect(response.status, `${name}: GET ${path}`).to.equal(401);
          expect(response.headers.get('content-type'), `${name}: GET ${path}`).to.include(
            'application/problem+json',
          );
          expect(response.headers.get('www-authenticate'), `${name}: GET ${path}`).to.match(/^Bearer/);
          expect(JSON.stringify(response.body), `${name}: nothing of the account shown`).not.to.include(
            victim.id,
          );
        }
      };

      it('accepts a token signed here with every claim (the control for the refusals below)', async () => {
        const token = sign({ ...claims, jti: randomUUID() });
        const me = await call(base, 'GET', '/me', { token });
        expect(me.status).to.equal(200);
        expect(me.body.id).to.equal(victim.id);
        expect((await call(base, 'GET', '/tasks', { token })).status).to.equal(200);
      });

      it('refuses alg "none", with or without the original signature', async () => {
        for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
          await expectRefused(`alg ${alg}`, `${b64({ alg, typ: 'JWT' })}.${b64(claims)}.`);
          await expectRefused(
            `alg ${alg}, signature kept`,
            `${b64({ alg, typ: 'JWT' })}.${b64(claims)}.${victim.access.split('.')[2]}`,
          );
        }
      });

      it('refuses RS256, and HS256 signed with the public key as the secret (algorithm confusion)', async () => {
        const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
        const publicPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
        await expectRefused('RS256', jwt.sign({ ...claims }, privateKey, { algorithm: 'RS256' }));
        await expectRefused(
          'RS256 with its key in the header',
          jwt.sign({ ...claims }, privateKey, {
            algorithm: 'RS256',
            header: { alg: 'RS256', jwk: publicKey.export({ format: 'jwk' }) } as jwt.JwtHeader,
          }),
        );
        await expectRefused(
          'HS256 keyed with the public PEM',
          hs256({ alg: 'HS256', typ: 'JWT' }, claims, publicPem),
        );
        await expectRefused(
          'HS512 with the right secret',
          jwt.sign({ ...claims }, service.jwtSecret, { algorithm: 'HS512' }),
        );
      });

      it('refuses a wrong secret, an expired token, a token not valid yet and a tampered payload', async () => {
        await expectRefused(
          'wrong secret',
          hs256({ alg: 'HS256', typ: 'JWT' }, claims, 'not-the-secret-' + randomUUID()),
        );
        await expectRefused('empty secret', hs256({ alg: 'HS256', typ: 'JWT' }, claims, ''));
        await expectRefused('expired', sign({ ...claims, iat: now - 600, exp: now - 300 }));
        const expired = await call(base, 'GET', '/me', {
          token: sign({ ...claims, iat: now - 600, exp: now - 300 }),
        });
        expect(expired.body.detail).to.include('expired');
        await expectRefused('not valid for another hour', sign({ ...claims, nbf: now + 3600 }));
        const [header, , signature] = victim.access.split('.');
        await expectRefused(
          'role raised to admin',
          `${header}.${b64({ ...claims, role: 'admin' })}.${signature}`,
        );
        await expectRefused(
          'subject changed',
          `${header}.${b64({ ...claims, sub: randomUUID() })}.${signature}`,
        );
        await expectRefused(
          'expiry pushed back',
          `${header}.${b64({ ...claims, exp: now + 86_400 })}.${signature}`,
        );
        await expectRefused('wrong issuer', sign({ ...claims, iss: 'someone-else' }));
        await expectRefused('wrong audience', sign({ ...claims, aud: 'someone-else' }));
        await expectRefused('unknown role', sign({ ...claims, role: 'root' }));
      });

      it('refuses a correctly signed token missing any of sub, role, jti, exp (and sid, iat, iss, aud)', async () => {
        for (const claim of ['sub', 'role', 'jti', 'exp', 'sid', 'iat', 'iss', 'aud']) {
          const { [claim]: _removed, ...rest } = claims;
          await expectRefused(`without ${claim}`, sign(rest));
        }
      });
    });

    describe('refresh tokens', () => {
      it('treats a rotated token shown again as reuse and revokes the session', async () => {
        const first = await account();
        const rotated = await refresh(first.refresh);
        expect(rotated.status).to.equal(200);
        const reuse = await refresh(first.refresh);
        expect(reuse.status).to.equal(401);
        expect(reuse.headers.get('content-type')).to.include('application/problem+json');
        const newest = await refresh(rotated.body.refresh_token);
        expect(newest.status, "the session's newest token is revoked too").to.equal(401);
        expect(await streamTypes(sessionStreamId(first.refresh.split('.')[0]!))).to.include('SessionRevoked');
      });

      it('gives exactly one success to five concurrent refreshes with one token', async () => {
        const { refresh: token } = await account();
        const responses = await Promise.all(Array.from({ length: 5 }, () => refresh(token)));
        const statuses = responses.map((r) => r.status).sort();
        expect(statuses).to.deep.equal([200, 401, 401, 401, 401]);
        expect(
          new Set(responses.filter((r) => r.status === 200).map((r) => r.body.refresh_token)).size,
        ).to.equal(1);
      });

      it('refuses a refresh after logout', async () => {
        const { refresh: token } = await account();
        expect((await logout(token)).status).to.equal(204);
        const after = await refresh(token);
        expect(after.status).to.equal(401);
        expect(after.body).not.to.have.property('access_token');
      });

      it("does not let one user log out another's session with their refresh token", async () => {
        const alice = await account();
        const mallory = await account();
        const attempt = await logout(alice.refresh, mallory.access);
        expect(attempt.status).to.equal(403);
        expect(attempt.headers.get('content-type')).to.include('application/problem+json');
        expect(await streamTypes(sessionStreamId(alice.refresh.split('.')[0]!))).to.deep.equal([
          'SessionStarted',
        ]);
        expect((await refresh(alice.refresh)).status, "alice's session lives on").to.equal(200);
      });
    });

    describe('isolation', () => {
      it("hides one user's tasks from another: read, edit, cancel, retry and history are all 404", async () => {
        const alice = await account();
        const bob = await account();
        const tomorrow = new Date(service.clock.now().getTime() + 86_400_000).toISOString();
        const pending = await call(base, 'POST', '/tasks', {
          token: alice.access,
          body: { title: "alice's secret plan", run_at: tomorrow },
        });
        expect(pending.status).to.equal(202);
        const failing = await call(base, 'POST', '/tasks', {
          token: alice.access,
          body: { title: "alice's failure", type: 'fail', payload: { message: 'no', unrecoverable: true } },
        });
        expect(failing.status).to.equal(202);
        await waitFor(
          "alice's task to fail",
          async () =>
            (await call(base, 'GET', `/tasks/${failing.body.id}`, { token: alice.access })).body.status ===
            'failed'
              ? true
              : undefined,
          { timeoutMs: 20_000 },
        );
        const pendingId = pending.body.id as string;
        const failedId = failing.body.id as string;
        const historyBefore = {
          pending: await streamTypes(taskStreamId(pendingId)),
          failed: await streamTypes(taskStreamId(failedId)),
        };

        const nobody = randomUUID();
        const attempts: Array<[string, string, string, unknown?]> = [
          ['read', 'GET', `/tasks/${pendingId}`],
          [
            'read as of now',
            'GET',
            `/tasks/${pendingId}?as_of=${encodeURIComponent(service.clock.now().toISOString())}`,
          ],
          [
            'read with X-Min-Position',
            'GET',
            `/tasks/${pendingId}?min_position=${encodeURIComponent(pending.headers.get('x-position')!)}`,
          ],
          ['edit', 'PATCH', `/tasks/${pendingId}`, { title: 'pwned' }],
          ['cancel', 'DELETE', `/tasks/${pendingId}`],
          ['retry', 'POST', `/tasks/${failedId}/retry`],
          ['history', 'GET', `/tasks/${pendingId}/events`],
        ];
        for (const [what, method, path, body] of attempts) {
          const response = await call(base, method, path, { token: bob.access, body });
          expect(response.status, what).to.equal(404);
          expect(response.headers.get('content-type'), what).to.include('application/problem+json');
          expect(JSON.stringify(response.body), what).not.to.include("alice's");
          // Not told apart from a task that does not exist.
          const absent = await call(base, method, path.replace(/[0-9a-f-]{36}/, nobody), {
            token: bob.access,
            body,
          });
          expect(absent.status, `${what}, no such task`).to.equal(404);
          expect(
            { ...response.body, detail: undefined, instance: undefined, request_id: undefined },
            what,
          ).to.deep.equal({ ...absent.body, detail: undefined, instance: undefined, request_id: undefined });
        }

        const list = await call(base, 'GET', '/tasks?limit=100', { token: bob.access });
        expect(list.status).to.equal(200);
        const listed = list.body.items.map((t: { id: string }) => t.id);
        expect(listed).not.to.include(pendingId);
        expect(listed).not.to.include(failedId);
        const byOwner = await call(base, 'GET', `/tasks?owner_id=${alice.id}`, { token: bob.access });
        expect(byOwner.status, "listing alice's tasks by owner_id").to.equal(403);

        // Nothing bob did reached alice's tasks.
        expect(await streamTypes(taskStreamId(pendingId))).to.deep.equal(historyBefore.pending);
        expect(await streamTypes(taskStreamId(failedId))).to.deep.equal(historyBefore.failed);
        const mine = await call(base, 'GET', `/tasks/${pendingId}`, { token: alice.access });
        expect(mine.body).to.include({ title: "alice's secret plan", status: 'pending' });
      });

      it('refuses the audit log without the auditor role: 401 without a token, 403 for a user', async () => {
        const user = await account();
        const anonymous = await call(base, 'GET', '/audit/events');
        expect(anonymous.status).to.equal(401);
        const refused = await call(base, 'GET', '/audit/events', { token: user.access });
        expect(refused.status).to.equal(403);
        expect(refused.headers.get('content-type')).to.include('application/problem+json');
        expect(refused.body).not.to.have.property('items');
        await grantRoleByEmail(service.service.infrastructure, user.email, 'auditor');
        const auditor = (await login(user.email)).body.access_token as string;
        expect(
          (await call(base, 'GET', '/audit/events', { token: auditor })).status,
          'the same user as auditor',
        ).to.equal(200);
      });
    });

    describe('passwords', () => {
      it('stores a bcrypt hash at the configured cost, never the password', async () => {
        const { email } = await account();
        const [registered] = await service.service.infrastructure.store.readStream(accountOf(email));
        expect(registered!.type).to.equal('UserRegistered');
        expect(registered!.data.passwordHash).to.match(
          new RegExp(`^\\$2b\\$${String(BCRYPT_COST).padStart(2, '0')}\\$`),
        );
        expect(registered!.rawData).not.to.include(PASSWORD);
      });

      it('never returns the password or its hash, and never logs them', async () => {
        const email = newEmail('attack');
        const responses = [
          await register(email),
          await login(email),
          await login(email, `${PASSWORD}-wrong`),
          await register(email),
          await register(newEmail('attack'), `${PASSWORD}${'é'.repeat(40)}`),
          await call(base, 'POST', '/login', { body: `{"email":"${email}","password":"${PASSWORD}"` }),
          await call(base, 'POST', '/login', { body: { email, password: PASSWORD, extra: PASSWORD } }),
        ];
        const pair = responses[1]!.body;
        responses.push(await refresh(pair.refresh_token));
        responses.push(await call(base, 'GET', '/me', { token: pair.access_token }));
        const user = await account();
        await grantRoleByEmail(service.service.infrastructure, user.email, 'auditor');
        const auditor = (await login(user.email)).body.access_token as string;
        responses.push(
          await call(base, 'GET', `/audit/events?stream=${encodeURIComponent(accountOf(email))}`, {
            token: auditor,
          }),
        );
        responses.push(await logout(pair.refresh_token));

        const [registered] = await service.service.infrastructure.store.readStream(accountOf(email));
        const hash = registered!.data.passwordHash as string;
        expect(
          responses.at(-2)!.body.items,
          'the audit log shows the registration',
        ).to.have.length.greaterThan(0);
        for (const [index, response] of responses.entries()) {
          const text = JSON.stringify(response.body) + JSON.stringify([...response.headers]);
          expect(text, `response ${index}`).not.to.include(PASSWORD);
          expect(text, `response ${index}`).not.to.include(hash);
        }

        const logs = logLines.join('');
        expect(logs, 'the log was captured')
          .to.include('"/login"')
          .and.include('"/register"')
          .and.include('"/refresh"');
        expect(logs).not.to.include(PASSWORD);
        expect(logs).not.to.include(hash);
      });

      it('takes about as long to refuse an unknown email as a wrong password', async () => {
        const email = newEmail('attack');
        expect((await register(email)).status).to.equal(201);
        const unknown = newEmail('attack');
        const timed = async (who: string) => {
          const started = performance.now();
          const response = await login(who, 'wrong password!');
          expect(response.status).to.equal(401);
          return performance.now() - started;
        };
        await timed(email);
        await timed(unknown);
        const wrongPassword: number[] = [];
        const unknownEmail: number[] = [];
        for (let i = 0; i < 30; i++) {
          wrongPassword.push(await timed(email));
          unknownEmail.push(await timed(unknown));
        }
        const [a, b] = [median(wrongPassword), median(unknownEmail)];
        // Both pay one bcrypt comparison; without the dummy comparison an unknown email answers many times faster.
        expect(
          Math.max(a, b) / Math.min(a, b),
          `medians: wrong password ${a.toFixed(1)} ms, unknown email ${b.toFixed(1)} ms`,
        ).to.be.at.most(3);
      });
    });

    describe('headers', () => {
      const requests: Array<[string, string, string, Record<string, string>?, string?]> = [
        ['a JSON answer', 'GET', '/health'],
        ['a 401 problem', 'GET', '/tasks'],
        ['a 404 problem', 'GET', '/no-such-thing'],
        ['a 415 problem', 'POST', '/login', { 'content-type': 'text/plain' }, 'hello'],
        ['the OpenAPI document', 'GET', '/openapi.json'],
        ['Swagger UI', 'GET', '/swagger/'],
      ];

      it('sets the security headers and no X-Powered-By on every kind of answer', async () => {
        for (const [what, method, path, headers, body] of requests) {
          const response = await fetch(`${base}${path}`, { method, headers, body });
          await response.arrayBuffer();
          const h = response.headers;
          expect(h.get('x-powered-by'), what).to.equal(null);
          expect(h.get('x-content-type-options'), what).to.equal('nosniff');
          expect(h.get('x-frame-options'), what).to.match(/^(DENY|SAMEORIGIN)$/);
          expect(h.get('referrer-policy'), what).to.equal('no-referrer');
          expect(h.get('cross-origin-resource-policy'), what).to.equal('same-origin');
          const csp = h.get('content-security-policy') ?? '';
          expect(csp, what).to.include("frame-ancestors 'none'");
          expect(csp, what).not.to.include("'unsafe-eval'");
          if (path.startsWith('/swagger')) expect(csp, what).to.include("script-src 'self'");
          else expect(csp, what).to.include("default-src 'none'");
        }
      });

      it('keeps CORS closed: no Access-Control-Allow-Origin for any origin, preflight included', async () => {
        const origin = 'https://evil.example';
        const simple = await fetch(`${base}/health`, { headers: { origin } });
        const withCredentials = await fetch(`${base}/login`, {
          method: 'POST',
          headers: { origin, 'content-type': 'application/json' },
          body: JSON.stringify({ email: newEmail('attack'), password: 'whatever123' }),
        });
        const preflight = await fetch(`${base}/tasks`, {
          method: 'OPTIONS',
          headers: {
            origin,
            'access-control-request-method': 'POST',
            'access-control-request-headers': 'authorization, content-type',
          },
        });
        for (const [what, response] of [
          ['GET', simple],
          ['POST', withCredentials],
          ['preflight', preflight],
        ] as const) {
          await response.arrayBuffer();
          expect(response.headers.get('access-control-allow-origin'), what).to.equal(null);
          expect(response.headers.get('access-control-allow-credentials'), what).to.equal(null);
          expect(response.headers.get('access-control-allow-methods'), what).to.equal(null);
          expect(response.headers.get('access-control-allow-headers'), what).to.equal(null);
        }
      });
    });
  });
}

describe('secrets', function () {
  this.timeout(60_000);
  let workDir: string;
  before(() => {
    workDir = mkdtempSync(path.join(tmpdir(), 'tm-secrets-'));
  });
  after(() => rmSync(workDir, { recursive: true, force: true }));

  const cli = path.resolve(import.meta.dirname, '../../bin/task-manager.mjs');
  /** The CLI in an empty directory (no .env), on the embedded default, with nothing inherited that names a service. */
  const start = (env: Record<string, string>, command = 'start') =>
    run('node', [cli, command], {
      cwd: workDir,
      timeout: 30_000,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? workDir,
        DATA_DIR: path.join(workDir, 'data'),
        DATABASE_URL: '',
        REDIS_URL: '',
        KAFKA_BROKERS: '',
        PORT: '0',
        LOG_LEVEL: 'silent',
        ...env,
      },
    }).then(
      ({ stdout, stderr }) => ({ code: 0 as number | null, signal: null as string | null, stdout, stderr }),
      (error: { code?: number | string; signal?: string; stdout?: string; stderr?: string }) => ({
        code: typeof error.code === 'number' ? error.code : null,
        signal: error.signal ?? null,
        stdout: error.stdout ?? '',
        stderr: error.stderr ?? '',
      }),
    );

  it('refuses to start in production with the default JWT secret or a short one, naming jwt.secret', async () => {
    for (const [what, env] of [
      ['the default secret', { NODE_ENV: 'production' }],
      ['a 12-character secret', { NODE_ENV: 'production', JWT_SECRET: 'short-secret' }],
      ['a 31-character secret', { NODE_ENV: 'production', JWT_SECRET: 'a'.repeat(31) }],
    ] as const) {
      const result = await start(env);
      expect(result.signal, `${what}: it exited by itself, not killed after the timeout`).to.equal(null);
      expect(result.code, what).to.be.a('number').and.not.equal(0);
      expect(result.stderr, what).to.include('jwt.secret');
    }
  });

  it('refuses to start in production without a data key, or with a weak one, naming personalData.dataKey', async () => {
    const jwt = randomBytes(32).toString('hex');
    for (const [what, env] of [
      ['no data key', { NODE_ENV: 'production', JWT_SECRET: jwt }],
      [
        'a 16-byte key',
        { NODE_ENV: 'production', JWT_SECRET: jwt, DATA_KEY: randomBytes(16).toString('base64') },
      ],
      ['a typed key', { NODE_ENV: 'production', JWT_SECRET: jwt, DATA_KEY: 'ab'.repeat(32) }],
    ] as const) {
      const result = await start(env);
      expect(result.signal, `${what}: it exited by itself, not killed after the timeout`).to.equal(null);
      expect(result.code, what).to.be.a('number').and.not.equal(0);
      expect(result.stderr, what).to.include('personalData.dataKey');
    }
  });

  it('accepts a long secret and a data key in production (config passes, so only the unknown command fails)', async () => {
    const result = await start(
      {
        NODE_ENV: 'production',
        JWT_SECRET: randomBytes(32).toString('hex'),
        DATA_KEY: randomBytes(32).toString('base64'),
      },
      'no-such-command',
    );
    expect(result.stderr).not.to.include('jwt.secret');
    expect(result.stderr).not.to.include('personalData.dataKey');
    expect(result.stderr).to.include('unknown command');
  });
});
