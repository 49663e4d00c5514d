import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestDatabase, testEventStore, type TestDatabase } from '../support/postgres.js';
import { rejection } from '../support/fixtures.js';
import {
  ForgottenPersonError,
  isSealed,
  parseMasterKey,
  PostgresPersonalData,
} from '../../src/infra/secrets/personalData.js';
import { migrate, MIGRATIONS_DIR } from '../../src/infra/db/migrate.js';
import { silentLogger } from '../../src/infra/logger.js';
import { foldEvents } from '../../src/domain/decider.js';
import { account, accountStreamId, legacyAccountStreamId } from '../../src/domain/identity/account.js';
import { session, sessionStreamId } from '../../src/domain/identity/session.js';
import { findAccount, forgetByEmailOrId } from '../../src/commands/identity/accounts.js';
import { verifyLog } from '../../src/audit/verify.js';
import type { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';

const masterKey = () => randomBytes(32);

describe('personal data sealed per person (PostgreSQL person_keys)', () => {
  let db: TestDatabase;
  before(async () => {
    db = await createTestDatabase('pdata');
  });
  after(async () => db?.drop());

  it('seals a value that only its person’s key opens, and not in clear', async () => {
    const data = new PostgresPersonalData(db.pool, masterKey());
    const ann = randomUUID();
    const sealed = await data.seal(ann, 'ann@example.com');
    expect(isSealed(sealed)).to.equal(true);
    expect(sealed).not.to.include('ann@example.com');
    expect(await data.seal(ann, 'ann@example.com')).not.to.equal(sealed); // a fresh IV each time
    expect(await data.open(ann, sealed)).to.equal('ann@example.com');
    // Bound to its person: another person's key, or the same bytes claimed for another id, does not open it.
    const bob = randomUUID();
    await data.seal(bob, 'bob@example.com');
    expect(await rejection(data.open(bob, sealed))).to.be.instanceOf(Error);
    // One byte changed: the tag catches it.
    const tampered = sealed.slice(0, -2) + (sealed.at(-2) === 'A' ? 'B' : 'A') + sealed.at(-1);
    expect(await rejection(data.open(ann, tampered))).to.be.instanceOf(Error);
    // The key in the table is wrapped: its bytes are not the key, and another master key cannot unwrap it.
    const other = new PostgresPersonalData(db.pool, masterKey());
    expect(await rejection(other.open(ann, sealed))).to.be.instanceOf(Error);
  });

  it('destroys a key for good: nothing it sealed opens, nothing more can be sealed, and again is a no-op', async () => {
    const data = new PostgresPersonalData(db.pool, masterKey());
    const cat = randomUUID();
    const sealed = await data.seal(cat, 'cat@example.com');
    await data.destroyKey(cat);
    await data.destroyKey(cat);
    expect(await data.open(cat, sealed)).to.equal(null);
    expect(await rejection(data.seal(cat, 'cat@example.com'))).to.be.instanceOf(ForgottenPersonError);
    const { rows } = await db.pool.query(
      'SELECT wrapped_key, destroyed_at IS NOT NULL AS destroyed FROM person_keys WHERE person_id = $1',
      [cat],
    );
    expect(rows).to.deep.equal([{ wrapped_key: null, destroyed: true }]);
  });

  it('hashes emails with the master key: stable for one key, unrelated for another', () => {
    const key = masterKey();
    const one = new PostgresPersonalData(db.pool, key);
    expect(one.emailHash('ann@example.com')).to.equal(
      new PostgresPersonalData(db.pool, key).emailHash('ann@example.com'),
    );
    expect(one.emailHash('ann@example.com')).to.match(/^[0-9a-f]{64}$/);
    expect(one.emailHash('ann@example.com')).not.to.equal(one.emailHash('bob@example.com'));
    expect(one.emailHash('ann@example.com')).not.to.equal(
      new PostgresPersonalData(db.pool, masterKey()).emailHash('ann@example.com'),
    );
  });

  it('reads master keys as hex or base64 of 32 bytes or more', () => {
    const key = randomBytes(32);
    expect(parseMasterKey(key.toString('hex'))).to.deep.equal(key);
    expect(parseMasterKey(key.toString('base64'))).to.deep.equal(key);
    expect(parseMasterKey(key.toString('base64url'))).to.deep.equal(key);
    expect(() => parseMasterKey(randomBytes(31).toString('base64'))).to.throw(/at least 32 bytes/);
    expect(() => parseMasterKey('correct horse battery staple')).to.throw(/hex or base64/);
    expect(() => parseMasterKey('ab'.repeat(32))).to.throw(/looks typed/);
  });

  it('destroys, in a sweep, the keys of users the read model shows forgotten (a forget that died half way)', async () => {
    const data = new PostgresPersonalData(db.pool, masterKey());
    const [forgotten, live] = [randomUUID(), randomUUID()];
    const sealed = await data.seal(forgotten, 'gone@example.com');
    await data.seal(live, 'here@example.com');
    await db.pool.query(
      `INSERT INTO users (id, account_stream, role, created_at, forgotten_at)
       VALUES ($1, $3, 'user', now(), now()), ($2, $4, 'user', now(), NULL)`,
      [forgotten, live, `account-${randomUUID()}`, `account-${randomUUID()}`],
    );
    expect(await data.destroyKeysOfForgottenUsers()).to.equal(1);
    expect(await data.destroyKeysOfForgottenUsers()).to.equal(0);
    expect(await data.open(forgotten, sealed)).to.equal(null);
    expect(await data.seal(live, 'here@example.com')).to.match(/^pd1\./);
  });
});

describe('upgrading a database of before sealed personal data (migration 0015)', () => {
  let db: TestDatabase;
  let store: PostgresEventStore;
  let oldMigrations: string;
  const email = 'old-timer@example.com';
  const userId = randomUUID();
  const sessionId = randomUUID();

  before(async () => {
    // The migrations of the version before this one, and its events: the email in clear, in the legacy stream.
    oldMigrations = mkdtempSync(path.join(tmpdir(), 'tm-old-migrations-'));
    for (const file of readdirSync(MIGRATIONS_DIR).filter((f) => /^\d{4}_.*\.sql$/.test(f) && f < '0015'))
      copyFileSync(path.join(MIGRATIONS_DIR, file), path.join(oldMigrations, file));
    db = await createTestDatabase('upgrade', { migrationsDir: oldMigrations });
    store = testEventStore(db);
    const metadata = () => ({
      correlationId: randomUUID(),
      causationId: null,
      userId,
      timestamp: new Date().toISOString(),
    });
    const at = new Date().toISOString();
    await store.append(
      legacyAccountStreamId(email),
      [
        {
          eventId: randomUUID(),
          type: 'UserRegistered',
          data: { userId, email, passwordHash: '$2b$10$x', role: 'user', registeredAt: at },
          metadata: metadata(),
        },
      ],
      { expectedRevision: 'no_stream' },
    );
    await store.append(
      sessionStreamId(sessionId),
      [
        {
          eventId: randomUUID(),
          type: 'SessionStarted',
          data: { sessionId, userId, email, refreshTokenHash: 'h', expiresAt: at, startedAt: at },
          metadata: metadata(),
        },
      ],
      { expectedRevision: 'no_stream' },
    );
    await db.pool.query(`INSERT INTO users (id, email, role, created_at) VALUES ($1, $2, 'user', now())`, [
      userId,
      email,
    ]);
    await migrate(db.pool, silentLogger());
  });
  after(async () => {
    await store?.close();
    await db?.drop();
    rmSync(oldMigrations, { recursive: true, force: true });
  });

  it('keeps the old account: its users row names the legacy stream, login finds it, its session names it too', async () => {
    const { rows } = await db.pool.query('SELECT id, account_stream, role, forgotten_at FROM users');
    expect(rows).to.deep.equal([
      { id: userId, account_stream: legacyAccountStreamId(email), role: 'user', forgotten_at: null },
    ]);
    const data = new PostgresPersonalData(db.pool, masterKey());
    const found = await findAccount(store, data, ' Old-Timer@example.com');
    expect(found.streamId).to.equal(legacyAccountStreamId(email));
    expect(found.state).to.include({ exists: true, userId, storedEmail: email });
    const started = foldEvents(session, await store.readStream(sessionStreamId(sessionId)));
    expect(started.accountStreamId).to.equal(legacyAccountStreamId(email));
  });

  it('forgets the old account in its legacy stream; the email then registers in the keyed stream; the log verifies', async () => {
    const data = new PostgresPersonalData(db.pool, masterKey());
    const forgotten = await forgetByEmailOrId({ store, personalData: data, pool: db.pool }, email);
    expect(forgotten).to.include({ userId, changed: true });
    const legacy = foldEvents(account, await store.readStream(legacyAccountStreamId(email)));
    expect(legacy).to.include({ exists: false });
    expect(legacy.forgottenUserIds).to.deep.equal([userId]);
    const found = await findAccount(store, data, email);
    expect(found.streamId).to.equal(accountStreamId(data.emailHash(email)));
    expect(found.state.exists).to.equal(false);
    const report = await verifyLog(store, { publicKey: null, retiredPublicKeys: [] });
    expect(report.ok, JSON.stringify(report)).to.equal(true);
  });
});
