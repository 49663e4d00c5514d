import { expect } from 'chai';
import { createHmac, randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { LEGACY_DEFAULT_JWT_SECRET, loadConfig } from '../../src/config.js';
import { createTestDatabase, type TestDatabase } from '../support/postgres.js';
import { call, registerAndLogin } from '../support/service.js';
import { apiUrlIn, startCli, startRoleProcess, type Child, type StartedCli } from '../support/processes.js';

const repo = path.resolve(import.meta.dirname, '../..');

/** HS256 by hand, so a forged token can use any key, the empty one included (jsonwebtoken refuses that). */
const forge = (claims: object, key: string): string => {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', key).update(unsigned).digest('base64url')}`;
};

/** `npm start` as the README runs it: the CLI's start, no settings at all, in a directory of its own. */
const startAsTheReadmeDoes = (cwd: string) => startCli(cwd, ['start']);

/** A user of the service at `url`: its id and access token. */
const newAccount = (url: string) =>
  registerAndLogin(url, { label: 'secret', password: 'correct horse battery' });

/** Requests an admin-only, an auditor-only and a user route with the token; returns their statuses. */
async function statusesWith(url: string, token: string): Promise<number[]> {
  return Promise.all([
    call(url, 'GET', '/me', { token }).then((r) => r.status),
    call(url, 'GET', '/audit/events', { token }).then((r) => r.status),
    call(url, 'POST', '/admin/workers/pause', { token }).then((r) => r.status),
  ]);
}

describe('the default signing secret', function () {
  this.timeout(240_000);

  describe('the service started as the README starts it (no settings)', () => {
    let workDir: string;
    let service: StartedCli | null = null;
    before(() => {
      workDir = mkdtempSync(path.join(tmpdir(), 'tm-default-secret-'));
      // As a checkout is: readable by others, so that as root PostgreSQL's own user can reach ./.data.
      chmodSync(workDir, 0o755);
    });
    after(async () => {
      await service?.stop();
      rmSync(workDir, { recursive: true, force: true });
    });

    it('refuses admin tokens forged with the secret in config.yml or the empty one, and keeps its own tokens valid across a restart', async () => {
      // What an outsider can read: config.yml as shipped, and the secret it used to ship.
      const shipped = (
        parseYaml(readFileSync(path.join(repo, 'config.yml'), 'utf8')) as { jwt: { secret: unknown } }
      ).jwt.secret;
      const publicKeys = [LEGACY_DEFAULT_JWT_SECRET, ''];
      if (typeof shipped === 'string') publicKeys.push(shipped);

      service = await startAsTheReadmeDoes(workDir);
      expect(service.output()).to.include('using a generated secret kept in');
      const { userId, token: accessToken } = await newAccount(service.url);

      const { issuer, audience } = loadConfig({ env: {}, cwd: workDir }).jwt;
      const now = Math.floor(Date.now() / 1000);
      const adminClaims = {
        sub: userId,
        role: 'admin',
        sid: randomUUID(),
        jti: randomUUID(),
        iat: now,
        exp: now + 300,
        iss: issuer,
        aud: audience,
      };
      for (const key of publicKeys)
        expect(
          await statusesWith(service.url, forge(adminClaims, key)),
          `forged with ${JSON.stringify(key)}`,
        ).to.deep.equal([401, 401, 401]);

      const secretFile = path.join(workDir, '.data', 'jwt-secret.secret');
      expect(statSync(secretFile).mode & 0o777, 'the generated secret is private to its owner').to.equal(
        0o600,
      );
      expect(readFileSync(secretFile, 'utf8').trim().length).to.be.at.least(43); // 256 bits in base64url

      const me = await call(service.url, 'GET', '/me', { token: accessToken });
      expect(me.status).to.equal(200);
      expect(me.body.id).to.equal(userId);

      await service.stop();
      service = await startAsTheReadmeDoes(workDir);
      const meAfterRestart = await call(service.url, 'GET', '/me', { token: accessToken });
      expect(meAfterRestart.status, 'a token issued before the restart').to.equal(200);
      expect(meAfterRestart.body.id).to.equal(userId);
      for (const key of publicKeys)
        expect(await statusesWith(service.url, forge(adminClaims, key))).to.deep.equal([401, 401, 401]);
    });
  });

  describe('two API processes of one deployment, no secret configured', () => {
    let database: TestDatabase | null = null;
    const processes: Child[] = [];
    after(async () => {
      for (const role of processes) await role.stop();
      await database?.drop();
    });

    it('accept each other’s tokens, since the generated secret lives in the shared database', async function () {
      if (!process.env.DATABASE_URL) return this.skip();
      database = await createTestDatabase('secret');
      const config = loadConfig({ env: { DATABASE_URL: database.url }, cwd: tmpdir() });
      expect(config.jwt.secret).to.equal(null);
      config.host = '127.0.0.1';
      config.auth.bcryptCost = 6;
      // Started together, so both race to create the secret: the first writer must win for both.
      processes.push(
        ...(await Promise.all([startRoleProcess(config, ['api']), startRoleProcess(config, ['api'])])),
      );
      const [first, second] = processes.map((role) => apiUrlIn(role.output()));
      expect(first).to.be.a('string');
      expect(second).to.be.a('string').and.not.equal(first);

      const { userId, token: accessToken } = await newAccount(first!);
      const me = await call(second!, 'GET', '/me', { token: accessToken });
      expect(me.status, 'the token the first process issued, at the second').to.equal(200);
      expect(me.body.id).to.equal(userId);
      expect(
        await statusesWith(second!, forge({ sub: userId, role: 'admin' }, LEGACY_DEFAULT_JWT_SECRET)),
      ).to.deep.equal([401, 401, 401]);
    });
  });
});
