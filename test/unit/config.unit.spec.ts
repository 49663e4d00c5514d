import { expect } from 'chai';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generateAuditKeyPair } from '../../src/audit/anchors.js';
import { ConfigError, LEGACY_DEFAULT_JWT_SECRET, loadConfig } from '../../src/config.js';
import { randomBytes } from 'node:crypto';

const randomHexKey = randomBytes(32).toString('hex');

/** An empty working directory, so no stray .env from the checkout leaks into these tests. */
const emptyDir = () => mkdtempSync(path.join(tmpdir(), 'tm-config-'));

const loadWith = (env: Record<string, string>, cwd = emptyDir()) => loadConfig({ env, cwd });

function expectConfigError(env: Record<string, string>, mentions: string): void {
  try {
    loadWith(env);
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    expect((error as Error).message).to.include(mentions);
    return;
  }
  expect.fail(`expected a ConfigError mentioning ${mentions}`);
}

describe('config', () => {
  it('runs on the embedded default with no settings at all', () => {
    const config = loadWith({});
    expect(config).to.include({ port: 3000, databaseUrl: null, redisUrl: null, eventStore: 'postgres' });
    expect(config.kafka.brokers).to.deep.equal([]);
    expect(config.jwt.accessTtlSeconds).to.equal(300);
    expect(config.jwt.refreshTtlSeconds).to.equal(604800);
    expect(path.isAbsolute(config.embedded.dataDir)).to.equal(true);
  });

  it('takes every documented environment override', () => {
    const config = loadWith({
      PORT: '8080',
      DATABASE_URL: 'postgres://u@db:5432/tm',
      REDIS_URL: 'redis://cache:6379',
      KAFKA_BROKERS: 'k1:9092, k2:9092',
      EVENTSTORE_URL: 'esdb://es:2113?tls=false',
      JWT_SECRET: 'x'.repeat(40),
      LOG_LEVEL: 'debug',
    });
    expect(config).to.include({
      port: 8080,
      databaseUrl: 'postgres://u@db:5432/tm',
      redisUrl: 'redis://cache:6379',
      eventstoreUrl: 'esdb://es:2113?tls=false',
      eventStore: 'esdb',
      logLevel: 'debug',
    });
    expect(config.kafka.brokers).to.deep.equal(['k1:9092', 'k2:9092']);
    expect(config.jwt.secret).to.equal('x'.repeat(40));
  });

  it('keeps the PostgreSQL event store when EVENT_STORE says so, even with an EventStoreDB URL', () => {
    expect(loadWith({ EVENTSTORE_URL: 'esdb://es:2113', EVENT_STORE: 'postgres' }).eventStore).to.equal(
      'postgres',
    );
  });

  it('reads a .env file, with the real environment winning', () => {
    const dir = emptyDir();
    writeFileSync(path.join(dir, '.env'), '# comment\nPORT=4000\nLOG_LEVEL="warn"\n');
    const config = loadWith({ LOG_LEVEL: 'error' }, dir);
    expect(config.port).to.equal(4000);
    expect(config.logLevel).to.equal('error');
  });

  it('names the key of a bad value', () => {
    expectConfigError({ PORT: 'eighty' }, 'port');
    expectConfigError({ LOG_LEVEL: 'loud' }, 'logLevel');
    expectConfigError({ DATABASE_URL: 'mysql://x' }, 'databaseUrl');
    expectConfigError({ KAFKA_BROKERS: 'no-port' }, 'kafka.brokers');
    expectConfigError({ EVENT_STORE: 'esdb' }, 'eventstoreUrl');
  });

  it('names an unknown key in the config file', () => {
    const dir = emptyDir();
    const file = path.join(dir, 'config.yml');
    writeFileSync(file, 'port: 3000\nprot: 1\n');
    expect(() => loadConfig({ env: {}, cwd: dir, configFile: file })).to.throw(
      ConfigError,
      'prot: unknown setting',
    );
  });

  it('ships no JWT secret, and treats the old public default and an empty value as none', () => {
    expect(loadWith({}).jwt.secret).to.equal(null);
    expect(loadWith({ JWT_SECRET: LEGACY_DEFAULT_JWT_SECRET }).jwt.secret).to.equal(null);
    expect(loadWith({ JWT_SECRET: '' }).jwt.secret).to.equal(null);
  });

  it('reads the JWT secret from JWT_SECRET_FILE, trimmed', () => {
    const file = path.join(emptyDir(), 'jwt');
    writeFileSync(file, 'f'.repeat(40) + '\n');
    expect(loadWith({ JWT_SECRET_FILE: file }).jwt.secret).to.equal('f'.repeat(40));
  });

  it('reads retired audit keys from AUDIT_RETIRED_PUBLIC_KEYS_FILE, and refuses a bad range or no current key', () => {
    const current = generateAuditKeyPair().publicKey;
    const old = generateAuditKeyPair().publicKey;
    const listFile = (list: unknown) => {
      const file = path.join(emptyDir(), 'retired.json');
      writeFileSync(file, JSON.stringify(list));
      return file;
    };
    const retired = [{ key: old, validFrom: null, validUntil: '2026-06-01T00:00:00Z' }];
    expect(
      loadWith({ AUDIT_PUBLIC_KEY: current, AUDIT_RETIRED_PUBLIC_KEYS_FILE: listFile(retired) }).audit
        .retiredPublicKeys,
    ).to.deep.equal(retired);
    expectConfigError({ AUDIT_RETIRED_PUBLIC_KEYS_FILE: listFile(retired) }, 'needs audit.publicKey');
    expectConfigError(
      {
        AUDIT_PUBLIC_KEY: current,
        AUDIT_RETIRED_PUBLIC_KEYS_FILE: listFile([{ ...retired[0], validFrom: '2026-07-01T00:00:00Z' }]),
      },
      'validFrom must be before validUntil',
    );
    expectConfigError(
      {
        AUDIT_PUBLIC_KEY: current,
        AUDIT_RETIRED_PUBLIC_KEYS_FILE: listFile([{ key: old, validFrom: null }]),
      },
      'retiredPublicKeys',
    );
  });

  it('refuses to start in production without a JWT secret, on the old default or on a short one', () => {
    expectConfigError({ NODE_ENV: 'production' }, 'jwt.secret');
    expectConfigError({ NODE_ENV: 'production', JWT_SECRET: LEGACY_DEFAULT_JWT_SECRET }, 'jwt.secret');
    expectConfigError({ NODE_ENV: 'production', JWT_SECRET: 'short' }, 'jwt.secret');
    expect(
      loadWith({ NODE_ENV: 'production', JWT_SECRET: 'a'.repeat(32), DATA_KEY: randomHexKey }).nodeEnv,
    ).to.equal('production');
  });

  it('takes a random data key of 32 bytes or more as hex or base64, refuses a short, typed or malformed one, and needs one in production', () => {
    expect(loadWith({ DATA_KEY: randomHexKey }).personalData.dataKey).to.equal(randomHexKey);
    expectConfigError({ DATA_KEY: 'ab'.repeat(32) }, 'looks typed');
    expectConfigError({ DATA_KEY: '0123456789abcdef'.repeat(4) }, 'looks typed');
    const base64 = randomBytes(32).toString('base64');
    expect(loadWith({ DATA_KEY: base64 }).personalData.dataKey).to.equal(base64);
    expect(loadWith({ DATA_KEY: '' }).personalData.dataKey).to.equal(null);
    expectConfigError({ DATA_KEY: randomHexKey.slice(0, 62) }, 'personalData.dataKey');
    expectConfigError({ DATA_KEY: 'not a key!' }, 'personalData.dataKey');
    expectConfigError({ NODE_ENV: 'production', JWT_SECRET: 'a'.repeat(32) }, 'personalData.dataKey');
  });
});
