import { AnchorKeys, type RetiredAnchorKey } from './audit/anchors.js';
import { parseMasterKey } from './infra/secrets/personalData.js';
import type { QueueLimits, RateLimit } from './domain/queues/queueSettings.js';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Ajv, type ErrorObject, type JSONSchemaType } from 'ajv';

export interface Config {
  port: number;
  host: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  nodeEnv: string;
  databaseUrl: string | null;
  database: { poolSize: number; statementTimeoutMs: number };
  eventStore: 'postgres' | 'esdb';
  eventstoreUrl: string | null;
  eventLog: { pollIntervalMs: number; batchSize: number };
  redisUrl: string | null;
  cache: { keyPrefix: string; ttlSeconds: number; memoryMaxEntries: number; commandTimeoutMs: number };
  kafka: {
    brokers: string[];
    clientId: string;
    topic: string;
    partitions: number;
    replicationFactor: number;
    sessionTimeoutMs: number;
    heartbeatIntervalMs: number;
  };
  relay: { batchSize: number; lockRetryMs: number };
  embedded: { dataDir: string; postgresPort: number };
  http: {
    bodyLimit: string;
    batchBodyLimit: string;
    shutdownGraceMs: number;
    /** Proxies whose X-Forwarded-For is believed (express's `trust proxy`); [] = none, the peer is the client. */
    trustProxy: string[];
  };
  auth: {
    bcryptCost: number;
    maxFailedLoginsPerEmail: number;
    maxFailedLoginsPerAddress: number;
    failedLoginWindowSeconds: number;
  };
  tasks: {
    maxPayloadBytes: number;
    maxResultBytes: number;
    defaultTimeoutMs: number;
    maxTimeoutMs: number;
    defaultMaxAttempts: number;
    idempotencyKeyTtlSeconds: number;
    minPositionWaitMs: number;
    /** The most tasks GET /api/tasks (the Go service's unpaged list) answers with. */
    compatListCap: number;
    /** The most task bodies one POST /tasks/batch may carry. */
    maxBatchItems: number;
  };
  workers: {
    concurrency: number;
    queues: Record<string, number>;
    defaultQueueConcurrency: number;
    /**
     * Limits across every worker process for queues nobody has configured with PUT /queues/{name} (whose settings,
     * once given, take precedence). A queue not named here and never configured has no limits.
     */
    queueLimits: Record<string, QueueLimits>;
    onlyQueues: string[];
    pollIntervalMs: number;
    leaseGraceMs: number;
    backoff: { baseMs: number; maxMs: number; jitter: number };
    shutdownGraceMs: number;
    progressIntervalMs: number;
    cancelCheckIntervalMs: number;
  };
  scheduler: {
    /** How often a scheduler looks for due schedules: a tick fires at most about this late. */
    pollIntervalMs: number;
    /** A tick later than this counts as missed (no scheduler ran at its time) and follows the schedule's catch_up. */
    missedAfterMs: number;
    /** The most ticks one schedule fires in one decision (catch_up "all" after downtime); older ones are skipped. */
    maxCatchUpTicks: number;
    /** The most due schedules one look takes. */
    batchSize: number;
  };
  handlers: {
    http: {
      allowedHosts: string[];
      allowPrivateAddresses: boolean;
      maxResponseBytes: number;
      maxRedirects: number;
    };
  };
  audit: {
    privateKey: string | null;
    publicKey: string | null;
    /** Keys that signed anchors before a rotation, each believed only within its range. */
    retiredPublicKeys: RetiredAnchorKey[];
    anchorIntervalSeconds: number;
  };
  personalData: {
    /**
     * The master key that wraps every person's data key and keys the email hash (hex or base64, >= 32 bytes). null:
     * none configured, so the deployment generates one and keeps it beside its data (refused in production).
     */
    dataKey: string | null;
  };
  jwt: {
    /** null: none configured, so the deployment generates its own and keeps it (see deploymentSecret.ts). */
    secret: string | null;
    accessTtlSeconds: number;
    refreshTtlSeconds: number;
    issuer: string;
    audience: string;
  };
}

/**
 * The secret config.yml shipped with before generated secrets: public, so it is treated as no secret at all
 * (a deployment that still sets it gets a generated one, and production refuses it).
 */
export const LEGACY_DEFAULT_JWT_SECRET = 'change-me-in-production-this-default-is-refused';
const MIN_PRODUCTION_SECRET_LENGTH = 32;

const positiveInt = { type: 'integer', minimum: 1 } as const;
/**
 * "This string, or null". ajv's JSONSchemaType ties `nullable: true` to optional members (`| undefined`), not to
 * required `| null` ones, so such settings are an anyOf, which it does type; describeError reports the string
 * branch's complaint only.
 */
const orNull = <T>(schema: JSONSchemaType<T>) => ({
  anyOf: [schema, { type: 'null' as const, nullable: true as const }],
});

/** The schema config is validated with; typed by `Config`, so the compiler checks that the two agree. */
export const configSchema: JSONSchemaType<Config> = {
  type: 'object',
  additionalProperties: false,
  required: [
    'port',
    'host',
    'logLevel',
    'nodeEnv',
    'databaseUrl',
    'database',
    'eventStore',
    'eventstoreUrl',
    'eventLog',
    'redisUrl',
    'cache',
    'kafka',
    'relay',
    'embedded',
    'http',
    'auth',
    'tasks',
    'workers',
    'scheduler',
    'handlers',
    'audit',
    'personalData',
    'jwt',
  ],
  properties: {
    port: { type: 'integer', minimum: 0, maximum: 65535 },
    host: { type: 'string', minLength: 1 },
    logLevel: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] },
    nodeEnv: { type: 'string', minLength: 1 },
    databaseUrl: orNull({ type: 'string', minLength: 1, pattern: '^postgres(ql)?://' }),
    database: {
      type: 'object',
      additionalProperties: false,
      required: ['poolSize', 'statementTimeoutMs'],
      properties: { poolSize: positiveInt, statementTimeoutMs: positiveInt },
    },
    eventStore: { type: 'string', enum: ['postgres', 'esdb'] },
    eventstoreUrl: orNull({
      type: 'string',
      minLength: 1,
      pattern: '^(esdb|kurrentdb|kdb|esdb\\+discover)://',
    }),
    eventLog: {
      type: 'object',
      additionalProperties: false,
      required: ['pollIntervalMs', 'batchSize'],
      properties: { pollIntervalMs: positiveInt, batchSize: positiveInt },
    },
    redisUrl: orNull({ type: 'string', minLength: 1, pattern: '^rediss?://' }),
    cache: {
      type: 'object',
      additionalProperties: false,
      required: ['keyPrefix', 'ttlSeconds', 'memoryMaxEntries', 'commandTimeoutMs'],
      properties: {
        keyPrefix: { type: 'string', maxLength: 100 },
        ttlSeconds: positiveInt,
        memoryMaxEntries: positiveInt,
        commandTimeoutMs: positiveInt,
      },
    },
    kafka: {
      type: 'object',
      additionalProperties: false,
      required: [
        'brokers',
        'clientId',
        'topic',
        'partitions',
        'replicationFactor',
        'sessionTimeoutMs',
        'heartbeatIntervalMs',
      ],
      properties: {
        brokers: { type: 'array', items: { type: 'string', pattern: '^[^\\s:,]+:\\d+$' } },
        clientId: { type: 'string', minLength: 1 },
        topic: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,200}$' },
        partitions: positiveInt,
        replicationFactor: positiveInt,
        sessionTimeoutMs: positiveInt,
        heartbeatIntervalMs: positiveInt,
      },
    },
    relay: {
      type: 'object',
      additionalProperties: false,
      required: ['batchSize', 'lockRetryMs'],
      properties: { batchSize: positiveInt, lockRetryMs: positiveInt },
    },
    embedded: {
      type: 'object',
      additionalProperties: false,
      required: ['dataDir', 'postgresPort'],
      properties: {
        dataDir: { type: 'string', minLength: 1 },
        postgresPort: { type: 'integer', minimum: 0, maximum: 65535 },
      },
    },
    http: {
      type: 'object',
      additionalProperties: false,
      required: ['bodyLimit', 'batchBodyLimit', 'shutdownGraceMs', 'trustProxy'],
      properties: {
        bodyLimit: { type: 'string', pattern: '^\\d+(b|kb|mb)$' },
        batchBodyLimit: { type: 'string', pattern: '^\\d+(b|kb|mb)$' },
        // Addresses, CIDR ranges, or express's names for them (loopback, linklocal, uniquelocal).
        trustProxy: {
          type: 'array',
          items: { type: 'string', pattern: '^[0-9a-fA-F.:/]+$|^(loopback|linklocal|uniquelocal)$' },
        },
        shutdownGraceMs: positiveInt,
      },
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      required: [
        'bcryptCost',
        'maxFailedLoginsPerEmail',
        'maxFailedLoginsPerAddress',
        'failedLoginWindowSeconds',
      ],
      properties: {
        // bcryptjs accepts 4..31; below 10 is only for tests.
        bcryptCost: { type: 'integer', minimum: 4, maximum: 15 },
        maxFailedLoginsPerEmail: positiveInt,
        maxFailedLoginsPerAddress: positiveInt,
        failedLoginWindowSeconds: positiveInt,
      },
    },
    tasks: {
      type: 'object',
      additionalProperties: false,
      required: [
        'maxPayloadBytes',
        'maxResultBytes',
        'defaultTimeoutMs',
        'maxTimeoutMs',
        'defaultMaxAttempts',
        'idempotencyKeyTtlSeconds',
        'minPositionWaitMs',
        'compatListCap',
        'maxBatchItems',
      ],
      properties: {
        maxPayloadBytes: positiveInt,
        maxResultBytes: positiveInt,
        defaultTimeoutMs: positiveInt,
        maxTimeoutMs: positiveInt,
        defaultMaxAttempts: { type: 'integer', minimum: 1, maximum: 100 },
        idempotencyKeyTtlSeconds: positiveInt,
        minPositionWaitMs: { type: 'integer', minimum: 0, maximum: 60000 },
        compatListCap: { type: 'integer', minimum: 1, maximum: 10000 },
        maxBatchItems: { type: 'integer', minimum: 1, maximum: 10000 },
      },
    },
    workers: {
      type: 'object',
      additionalProperties: false,
      required: [
        'concurrency',
        'queues',
        'defaultQueueConcurrency',
        'queueLimits',
        'onlyQueues',
        'pollIntervalMs',
        'leaseGraceMs',
        'backoff',
        'shutdownGraceMs',
        'progressIntervalMs',
        'cancelCheckIntervalMs',
      ],
      properties: {
        concurrency: positiveInt,
        queues: {
          type: 'object',
          required: [],
          propertyNames: { pattern: '^[a-z0-9][a-z0-9_.-]{0,63}$' },
          additionalProperties: positiveInt,
        },
        defaultQueueConcurrency: positiveInt,
        queueLimits: {
          type: 'object',
          required: [],
          propertyNames: { pattern: '^[a-z0-9][a-z0-9_.-]{0,63}$' },
          additionalProperties: {
            type: 'object',
            additionalProperties: false,
            required: ['concurrency', 'rate', 'groupConcurrency', 'paused'],
            properties: {
              concurrency: orNull<number>(positiveInt),
              rate: orNull<RateLimit>({
                type: 'object',
                additionalProperties: false,
                required: ['limit', 'intervalMs'],
                properties: { limit: positiveInt, intervalMs: positiveInt },
              }),
              groupConcurrency: orNull<number>(positiveInt),
              paused: { type: 'boolean' },
            },
          },
        },
        onlyQueues: { type: 'array', items: { type: 'string', pattern: '^[a-z0-9][a-z0-9_.-]{0,63}$' } },
        pollIntervalMs: positiveInt,
        leaseGraceMs: positiveInt,
        backoff: {
          type: 'object',
          additionalProperties: false,
          required: ['baseMs', 'maxMs', 'jitter'],
          properties: {
            baseMs: positiveInt,
            maxMs: positiveInt,
            jitter: { type: 'number', minimum: 0, maximum: 1 },
          },
        },
        shutdownGraceMs: positiveInt,
        progressIntervalMs: positiveInt,
        cancelCheckIntervalMs: positiveInt,
      },
    },
    scheduler: {
      type: 'object',
      additionalProperties: false,
      required: ['pollIntervalMs', 'missedAfterMs', 'maxCatchUpTicks', 'batchSize'],
      properties: {
        pollIntervalMs: { type: 'integer', minimum: 10, maximum: 60000 },
        missedAfterMs: positiveInt,
        maxCatchUpTicks: { type: 'integer', minimum: 1, maximum: 10000 },
        batchSize: { type: 'integer', minimum: 1, maximum: 10000 },
      },
    },
    handlers: {
      type: 'object',
      additionalProperties: false,
      required: ['http'],
      properties: {
        http: {
          type: 'object',
          additionalProperties: false,
          required: ['allowedHosts', 'allowPrivateAddresses', 'maxResponseBytes', 'maxRedirects'],
          properties: {
            allowedHosts: { type: 'array', items: { type: 'string', minLength: 1 } },
            allowPrivateAddresses: { type: 'boolean' },
            maxResponseBytes: positiveInt,
            maxRedirects: { type: 'integer', minimum: 0, maximum: 20 },
          },
        },
      },
    },
    audit: {
      type: 'object',
      additionalProperties: false,
      required: ['privateKey', 'publicKey', 'retiredPublicKeys', 'anchorIntervalSeconds'],
      properties: {
        privateKey: orNull({ type: 'string', pattern: '-----BEGIN PRIVATE KEY-----' }),
        publicKey: orNull({ type: 'string', pattern: '-----BEGIN PUBLIC KEY-----' }),
        retiredPublicKeys: {
          type: 'array',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['key', 'validFrom', 'validUntil'],
            properties: {
              key: { type: 'string', pattern: '-----BEGIN PUBLIC KEY-----' },
              validFrom: orNull({ type: 'string' }),
              validUntil: { type: 'string' },
            },
          },
        },
        anchorIntervalSeconds: positiveInt,
      },
    },
    personalData: {
      type: 'object',
      additionalProperties: false,
      required: ['dataKey'],
      properties: { dataKey: orNull({ type: 'string' }) },
    },
    jwt: {
      type: 'object',
      additionalProperties: false,
      required: ['secret', 'accessTtlSeconds', 'refreshTtlSeconds', 'issuer', 'audience'],
      properties: {
        secret: orNull({ type: 'string' }),
        accessTtlSeconds: positiveInt,
        refreshTtlSeconds: positiveInt,
        issuer: { type: 'string', minLength: 1 },
        audience: { type: 'string', minLength: 1 },
      },
    },
  },
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Record<string, string | undefined>;

/** Reads `KEY=value` lines; values already in the environment win, as with dotenv. */
export function readDotEnv(file: string): Env {
  if (!existsSync(file)) return {};
  const result: Env = {};
  for (const line of readFileSync(file, 'utf8').split(/\r?\n/)) {
    const match = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!match || line.trimStart().startsWith('#')) continue;
    let value = match[2] ?? '';
    if (/^(['"]).*\1$/.test(value)) value = value.slice(1, -1);
    result[match[1]!] = value;
  }
  return result;
}

const asNumberIfNumeric = (value: string): number | string => (/^-?\d+$/.test(value) ? Number(value) : value);
const emptyToNull = (value: string): string | null => (value.trim() === '' ? null : value);

// The settings as parsed from YAML: untyped until ajv has validated them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type RawConfig = Record<string, any>;

/** Environment variables and the config keys they override. */
const ENV_OVERRIDES: Record<string, (config: RawConfig, value: string) => void> = {
  PORT: (c, v) => (c.port = asNumberIfNumeric(v)),
  HOST: (c, v) => (c.host = v),
  LOG_LEVEL: (c, v) => (c.logLevel = v),
  NODE_ENV: (c, v) => (c.nodeEnv = v),
  DATABASE_URL: (c, v) => (c.databaseUrl = emptyToNull(v)),
  EVENT_STORE: (c, v) => (c.eventStore = v),
  EVENTSTORE_URL: (c, v) => (c.eventstoreUrl = emptyToNull(v)),
  REDIS_URL: (c, v) => (c.redisUrl = emptyToNull(v)),
  KAFKA_BROKERS: (c, v) =>
    (c.kafka.brokers = v
      .split(',')
      .map((b) => b.trim())
      .filter(Boolean)),
  KAFKA_TOPIC: (c, v) => (c.kafka.topic = v),
  TRUST_PROXY: (c, v) =>
    (c.http.trustProxy = v
      .split(',')
      .map((entry) => entry.trim())
      .filter(Boolean)),
  DATA_KEY: (c, v) => (c.personalData.dataKey = emptyToNull(v)),
  DATA_KEY_FILE: (c, v) => (c.personalData.dataKey = v ? readFileSync(v, 'utf8').trim() : null),
  JWT_SECRET: (c, v) => (c.jwt.secret = emptyToNull(v)),
  JWT_SECRET_FILE: (c, v) => (c.jwt.secret = v ? readFileSync(v, 'utf8').trim() : null),
  DATA_DIR: (c, v) => (c.embedded.dataDir = v),
  AUDIT_PRIVATE_KEY: (c, v) => (c.audit.privateKey = emptyToNull(v)),
  AUDIT_PUBLIC_KEY: (c, v) => (c.audit.publicKey = emptyToNull(v)),
  AUDIT_PRIVATE_KEY_FILE: (c, v) => (c.audit.privateKey = v ? readFileSync(v, 'utf8') : null),
  AUDIT_PUBLIC_KEY_FILE: (c, v) => (c.audit.publicKey = v ? readFileSync(v, 'utf8') : null),
  // A JSON list of {key, validFrom, validUntil}, as audit.retiredPublicKeys in config.yml.
  AUDIT_RETIRED_PUBLIC_KEYS_FILE: (c, v) =>
    (c.audit.retiredPublicKeys = v ? (JSON.parse(readFileSync(v, 'utf8')) as RetiredAnchorKey[]) : []),
};

function describeError(error: ErrorObject): string {
  const key = error.instancePath.replace(/^\//, '').replace(/\//g, '.');
  if (error.keyword === 'additionalProperties')
    return `${key ? key + '.' : ''}${String(error.params.additionalProperty)}: unknown setting`;
  if (error.keyword === 'required')
    return `${key ? key + '.' : ''}${String(error.params.missingProperty)}: is required`;
  return `${key || '(root)'}: ${error.message ?? 'is invalid'}`;
}

export interface LoadConfigOptions {
  env?: Env;
  /** Directory holding config.yml and .env; defaults to the package root. */
  configFile?: string;
  cwd?: string;
}

const packageRoot = path.resolve(import.meta.dirname, '..');

/**
 * The one place configuration is read: config.yml, then `.env`, then the environment. Throws a ConfigError
 * naming every bad key, so a misconfigured process stops before it touches anything.
 */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const cwd = options.cwd ?? process.cwd();
  const processEnv = options.env ?? {};
  const env: Env = { ...readDotEnv(path.join(cwd, '.env')), ...processEnv };
  const file = options.configFile ?? env.CONFIG_FILE ?? path.join(packageRoot, 'config.yml');
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new ConfigError(`cannot read ${file}: ${(error as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null)
    throw new ConfigError(`${file}: expected a mapping of settings`);
  const config = structuredClone(raw) as RawConfig;
  for (const [name, apply] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value !== undefined) apply(config, value);
  }
  // An EventStoreDB URL on its own means "use it": EVENT_STORE only needs setting to choose PostgreSQL anyway.
  if (env.EVENTSTORE_URL && !env.EVENT_STORE) config.eventStore = 'esdb';
  const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
  const validate = ajv.compile(configSchema);
  if (!validate(config)) {
    const problems = (validate.errors ?? [])
      // An orNull setting's failure is the string branch's; "must be null" and "must match anyOf" add nothing.
      .filter((error) => error.keyword !== 'anyOf' && !error.schemaPath.endsWith('/anyOf/1/type'))
      .map(describeError);
    throw new ConfigError(`invalid configuration (${file} and environment):\n  ${problems.join('\n  ')}`);
  }
  const typed: Config = config;
  if (
    typed.jwt.secret !== null &&
    (typed.jwt.secret.trim() === '' || typed.jwt.secret === LEGACY_DEFAULT_JWT_SECRET)
  )
    typed.jwt.secret = null;
  if (
    typed.nodeEnv === 'production' &&
    (typed.jwt.secret === null || typed.jwt.secret.length < MIN_PRODUCTION_SECRET_LENGTH)
  ) {
    throw new ConfigError(
      `jwt.secret: refusing to start in production without a secret of at least ${MIN_PRODUCTION_SECRET_LENGTH} characters (set JWT_SECRET or JWT_SECRET_FILE)`,
    );
  }
  if (typed.personalData.dataKey !== null && typed.personalData.dataKey.trim() === '')
    typed.personalData.dataKey = null;
  if (typed.personalData.dataKey !== null) {
    try {
      parseMasterKey(typed.personalData.dataKey);
    } catch (error) {
      throw new ConfigError(`personalData.dataKey: ${(error as Error).message}`);
    }
  } else if (typed.nodeEnv === 'production') {
    // A generated key would sit in the same database as the keys it wraps: no protection from a stolen copy.
    throw new ConfigError(
      'personalData.dataKey: refusing to start in production without a data key (set DATA_KEY or DATA_KEY_FILE: 32 random bytes, hex or base64)',
    );
  }
  if (typed.audit.retiredPublicKeys.length > 0) {
    if (typed.audit.publicKey === null)
      throw new ConfigError(
        'audit.retiredPublicKeys: needs audit.publicKey, the key anchors are signed with now',
      );
    try {
      new AnchorKeys(typed.audit.publicKey, typed.audit.retiredPublicKeys);
    } catch (error) {
      throw new ConfigError(`audit.retiredPublicKeys: ${(error as Error).message}`);
    }
  }
  if (typed.eventStore === 'esdb' && !typed.eventstoreUrl)
    throw new ConfigError('eventstoreUrl: EVENT_STORE=esdb needs EVENTSTORE_URL');
  typed.embedded.dataDir = path.resolve(cwd, typed.embedded.dataDir);
  return typed;
}
