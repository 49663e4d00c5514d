import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger, type Logger } from './infra/logger.js';
import {
  ROLES,
  startService,
  connectDatabase,
  createEventStore,
  createPersonalData,
  type Role,
} from './main.js';
import type { EventStore } from './infra/eventStore/eventStore.js';
import { AppError } from './errors.js';
import { grantRoleByEmail } from './commands/identity/grantRoleCommand.js';
import { forgetByEmailOrId } from './commands/identity/accounts.js';
import { randomUUID } from 'node:crypto';
import { isPosition } from './infra/eventStore/eventStore.js';
import { verifyLog } from './audit/verify.js';
import { exportLog } from './audit/export.js';
import { createAnchor, generateAuditKeyPair } from './audit/anchors.js';
import { createProgressReporter } from './audit/progress.js';
import { describeDifference, rebuildReadModels } from './projections/rebuild.js';
import { rebuildSchedule, verifySchedule } from './workers/schedule.js';
import { rebuildQueueSettings, verifyQueueSettings } from './projections/queues/table.js';
import { isApiProcess, onPrimaryStop, startApiCluster } from './apiProcesses.js';
import { PROJECTIONS } from './projections/index.js';
import type { Pool } from './infra/db/pool.js';
import { createPool } from './infra/db/pool.js';
import { migrate } from './infra/db/migrate.js';

const USAGE = `usage: task-manager <command>

  start [--roles api,relay,projector,worker,scheduler] [--processes N]
                                               run the chosen roles (all by default); --processes: the API in N
                                               processes sharing the port, the other roles in this one
  migrate                                      apply database migrations and exit
  users grant-role <email> <role>              roles: user, auditor, admin
  users forget <email|user id>                 forget a person: their data key is destroyed, history kept
  projections rebuild [--verify] [--no-swap]   rebuild every read model from the log beside the live one,
                                               compare (--verify), and swap it in atomically
  audit verify [--stream S]                    recompute hash chains and check signed anchors; exits 1
                                               naming the first bad event
  audit export [--from P] [--to P]             the log as NDJSON on stdout
  audit anchor                                 sign and append an anchor of the stream heads now
  audit keygen                                 print a new Ed25519 key pair (PEM) for anchors

Settings come from config.yml and the environment (see README, "Settings").`;

/** Commands DESIGN.md lists that later issues build; saying so beats a silent "unknown command". */
const NOT_YET = new Set<string>();

class UsageError extends Error {}

function parseRoles(value: string | undefined): Role[] {
  if (!value) return [...ROLES];
  const roles = value.split(',').map((role) => role.trim());
  const unknown = roles.filter((role) => !(ROLES as readonly string[]).includes(role));
  if (unknown.length > 0)
    throw new UsageError(`unknown role(s): ${unknown.join(', ')} (roles: ${ROLES.join(', ')})`);
  return roles as Role[];
}

async function start(config: Config, logger: Logger, args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { roles: { type: 'string' }, processes: { type: 'string' } },
    strict: true,
  });
  const roles = parseRoles(values.roles);
  const processes = parseProcesses(values.processes);
  // An API process forked by `--processes`: serve the API only, and stop when the primary says so.
  if (isApiProcess()) {
    // Its in-process cache would never be invalidated (the projector runs in the primary): Redis or nothing.
    const service = await startService(config, ['api'], logger, { processLocalCache: false });
    logger.info({ roles: ['api'], pid: process.pid }, 'task-manager API process started');
    const shutdown = gracefulShutdown(logger, () => service.stop());
    onPrimaryStop(() => shutdown('primary'));
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => undefined); // the primary got it too, and stops us
    return;
  }
  const clustered = processes > 1 && roles.includes('api');
  const cluster = clustered ? await startApiCluster(config, roles, processes, logger) : null;
  const service = cluster?.service ?? (await startService(config, roles, logger));
  const url = cluster?.url ?? service.url;
  const mode = [
    config.databaseUrl ? 'PostgreSQL from DATABASE_URL' : 'embedded PostgreSQL',
    `${service.infrastructure.store.name} event store`,
    `${service.infrastructure.bus.name} bus`,
    `${service.infrastructure.cache.name} cache`,
    ...(clustered ? [`the API in ${processes} processes`] : []),
  ].join(', ');
  logger.info({ roles, mode }, 'task-manager started');
  if (url) {
    const shown = url.replace('://0.0.0.0:', '://127.0.0.1:');
    process.stdout.write(
      `task-manager is running (${mode})\n  API:     ${shown}\n  Swagger: ${shown}/swagger\n`,
    );
  }
  const shutdown = gracefulShutdown(logger, () => (cluster ? cluster.stop() : service.stop()));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

/** The first signal stops gracefully; a second one, while that runs, exits at once. */
function gracefulShutdown(logger: Logger, stop: () => Promise<void>): (signal: string) => void {
  let stopping = false;
  return (signal: string) => {
    if (stopping) {
      if (signal === 'primary') return;
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    stopping = true;
    logger.info({ signal }, 'stopping gracefully');
    stop().then(
      () => process.exit(0),
      (error) => {
        logger.error({ err: error }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
}

function parseProcesses(value: string | undefined): number {
  if (value === undefined) return 1;
  const processes = Number(value);
  if (!Number.isInteger(processes) || processes < 1 || processes > 64)
    throw new UsageError(`--processes: expected a whole number from 1 to 64, got ${JSON.stringify(value)}`);
  return processes;
}

async function migrateCommand(config: Config, logger: Logger): Promise<void> {
  const { databaseUrl, embedded } = await connectDatabase(config, logger);
  const pool = createPool({ connectionString: databaseUrl, max: 2, statementTimeoutMs: 600000 }, logger);
  try {
    const applied = await migrate(pool, logger);
    process.stdout.write(
      applied.length ? `applied: ${applied.join(', ')}\n` : 'the database is up to date\n',
    );
  } finally {
    await pool.end();
    await embedded?.stop();
  }
}

/** Opens just what a one-shot command needs: the database (embedded or not) and the event store. */
async function withEventStore<T>(
  config: Config,
  logger: Logger,
  work: (store: EventStore, pool: Pool, embeddedDataDir: string | null) => Promise<T>,
): Promise<T> {
  const { databaseUrl, embedded } = await connectDatabase(config, logger);
  // Room for a rebuild's parallel transactions; long statements are expected from one-shot commands.
  const pool = createPool({ connectionString: databaseUrl, max: 8, statementTimeoutMs: 600000 }, logger);
  let store: EventStore | null = null;
  try {
    await migrate(pool, logger);
    store = await createEventStore(config, pool, databaseUrl, logger);
    return await work(store, pool, embedded ? config.embedded.dataDir : null);
  } finally {
    await store?.close();
    await pool.end();
    await embedded?.stop();
  }
}

const USERS_USAGE =
  'usage: task-manager users grant-role <email> <role>\n       task-manager users forget <email|user id>';

async function usersCommand(config: Config, logger: Logger, args: string[]): Promise<void> {
  const [subcommand, ...rest] = args;
  if (subcommand === 'grant-role' && rest.length === 2) {
    const [email, role] = rest as [string, string];
    const result = await withEventStore(config, logger, (store, pool, embeddedDataDir) =>
      createPersonalData(config, pool, embeddedDataDir, logger).then((personalData) =>
        grantRoleByEmail({ store, personalData }, email, role),
      ),
    );
    process.stdout.write(
      result.changed ? `${email} is now ${role}\n` : `${email} already has the role ${role}\n`,
    );
    return;
  }
  if (subcommand === 'forget' && rest.length === 1) {
    const [emailOrId] = rest as [string];
    const result = await withEventStore(config, logger, async (store, pool, embeddedDataDir) => {
      const personalData = await createPersonalData(config, pool, embeddedDataDir, logger);
      return forgetByEmailOrId({ store, personalData, pool }, emailOrId);
    });
    process.stdout.write(
      result.changed
        ? `user ${result.userId} is forgotten: their data key is destroyed\n`
        : `user ${result.userId} was already forgotten; their data key is destroyed\n`,
    );
    return;
  }
  throw new UsageError(USERS_USAGE);
}

async function projectionsCommand(config: Config, logger: Logger, args: string[]): Promise<number> {
  const [subcommand, ...rest] = args;
  if (subcommand !== 'rebuild')
    throw new UsageError('usage: task-manager projections rebuild [--verify] [--no-swap]');
  const { values } = parseArgs({
    args: rest,
    options: { verify: { type: 'boolean', default: false }, 'no-swap': { type: 'boolean', default: false } },
    strict: true,
  });
  return withEventStore(config, logger, async (store, pool) => {
    // Made on the first report, which brings the total (null on EventStoreDB) for the time left.
    const shown: { progress: ReturnType<typeof createProgressReporter> | null } = { progress: null };
    const report = await rebuildReadModels({
      pool,
      store,
      projections: PROJECTIONS,
      verify: values.verify,
      swap: !values['no-swap'],
      logger,
      onProgress: ({ events, total }) => {
        shown.progress ??= createProgressReporter({ label: 'rebuild', total });
        shown.progress.update({ events });
      },
    });
    shown.progress?.done();
    process.stdout.write(
      `rebuilt ${report.events} events in ${(report.durationMs / 1000).toFixed(1)} s (${Math.round(report.eventsPerSecond)} events/s)\n`,
    );
    if (report.verified) {
      if (report.differences.length === 0)
        process.stdout.write('verify: the rebuilt read models equal the live ones\n');
      for (const table of report.differences) {
        process.stdout.write(
          `verify: ${table.table}: ${table.missingInLive} rows only rebuilt, ${table.missingInRebuild} only live, ${table.changed} changed\n`,
        );
        for (const sample of table.samples)
          process.stdout.write(`  ${describeDifference(table.table, sample)}\n`);
      }
    }
    process.stdout.write(
      report.swapped
        ? `swapped in; the previous tables are kept in schema ${report.oldSchema} for rollback\n`
        : `not swapped: the rebuilt tables are in schema ${report.schema}\n`,
    );
    if (store.name === 'postgres') await scheduleRebuild(pool, values.verify, !values['no-swap']);
    return 0;
  });
}

/** What verify found for one inline table: equal, or how many rows differ and the first ten of them. */
function reportInlineVerify(
  table: string,
  rows: string,
  differences: ReadonlyArray<{ name: string; expected: unknown; actual: unknown }>,
): void {
  process.stdout.write(
    differences.length === 0
      ? `verify: ${table} equals a fold of the log\n`
      : `verify: ${table}: ${differences.length} ${rows} differ from a fold of the log\n`,
  );
  for (const difference of differences.slice(0, 10))
    process.stdout.write(
      `  ${difference.name}: expected ${JSON.stringify(difference.expected)}, found ${JSON.stringify(difference.actual)}\n`,
    );
}

/**
 * The schedule (task_schedule) and the queues' settings (queue_settings) are derived too, though written inline by
 * triggers rather than by projections: verify compares them with a fold of the log in TypeScript; a rebuild replays
 * the triggers' functions over the log.
 */
async function scheduleRebuild(pool: Pool, verify: boolean, replace: boolean): Promise<void> {
  if (verify) {
    reportInlineVerify(
      'task_schedule',
      'tasks',
      (await verifySchedule(pool)).map((d) => ({ ...d, name: `task ${d.taskId}` })),
    );
    reportInlineVerify(
      'queue_settings',
      'queues',
      (await verifyQueueSettings(pool)).map((d) => ({ ...d, name: `queue ${d.queue}` })),
    );
  }
  if (replace) {
    const events = await rebuildSchedule(pool);
    process.stdout.write(`task_schedule rebuilt from ${events} task events\n`);
    const queueEvents = await rebuildQueueSettings(pool);
    process.stdout.write(`queue_settings rebuilt from ${queueEvents} queue events\n`);
  }
}

async function auditCommand(config: Config, logger: Logger, args: string[]): Promise<number> {
  const [subcommand, ...rest] = args;
  const { values } = parseArgs({
    args: rest,
    options: { stream: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' } },
    strict: true,
  });
  switch (subcommand) {
    case 'keygen': {
      const { privateKey, publicKey } = generateAuditKeyPair();
      process.stdout.write(`${privateKey}\n${publicKey}\n`);
      process.stderr.write(
        'Keep the private key out of the database: set AUDIT_PRIVATE_KEY (or _FILE) for the service\n' +
          'and give AUDIT_PUBLIC_KEY to whoever verifies.\n',
      );
      return 0;
    }
    case 'verify':
      return withEventStore(config, logger, async (store) => {
        const progress = createProgressReporter({ label: 'verify' });
        const report = await verifyLog(store, {
          stream: values.stream,
          publicKey: config.audit.publicKey,
          retiredPublicKeys: config.audit.retiredPublicKeys,
          onProgress: progress.update,
        });
        progress.done();
        const counts =
          `${report.events} events, ${report.streams} streams, anchors ${report.anchors}` +
          (report.anchors === 'on'
            ? ` (${report.anchorsChecked} checked)`
            : ' (no public key configured: AUDIT_PUBLIC_KEY)');
        if (report.ok) {
          process.stdout.write(`ok: ${counts}\n`);
          return 0;
        }
        const { problem } = report;
        process.stdout.write(
          `FAILED at stream ${problem.streamId} revision ${problem.revision} (position ${problem.position}): ${problem.kind}: ${problem.detail}\n${counts}\n`,
        );
        return 1;
      });
    case 'export':
      return withEventStore(config, logger, async (store) => {
        for (const [name, value] of [
          ['--from', values.from],
          ['--to', values.to],
        ] as const)
          if (value !== undefined && !isPosition(value)) throw new UsageError(`${name} takes a log position`);
        const progress = createProgressReporter({ label: 'export' });
        await exportLog(store, {
          from: values.from,
          to: values.to,
          out: process.stdout,
          onProgress: progress.update,
        });
        progress.done();
        return 0;
      });
    case 'anchor':
      return withEventStore(config, logger, async (store) => {
        if (!config.audit.privateKey)
          throw new UsageError('anchors need a private key: set AUDIT_PRIVATE_KEY or AUDIT_PRIVATE_KEY_FILE');
        const anchor = await createAnchor(store, {
          privateKey: config.audit.privateKey,
          now: () => new Date(),
          newId: randomUUID,
        });
        process.stdout.write(
          anchor
            ? `anchored ${anchor.heads.length} stream heads at ${anchor.position}\n`
            : 'nothing changed since the last anchor\n',
        );
        return 0;
      });
    default:
      throw new UsageError(
        'usage: task-manager audit verify [--stream S] | export [--from P] [--to P] | anchor | keygen',
      );
  }
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [command, ...args] = argv;
  if (!command || command === '--help' || command === 'help') {
    process.stdout.write(USAGE + '\n');
    return command ? 0 : 2;
  }
  let config: Config;
  try {
    config = loadConfig({ env });
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`task-manager: ${error.message}\n`);
      return 78; // EX_CONFIG
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  try {
    switch (command) {
      case 'start':
        await start(config, logger, args);
        return -1; // keeps running until a signal
      case 'migrate':
        await migrateCommand(config, logger);
        return 0;
      case 'users':
        await usersCommand(config, logger, args);
        return 0;
      case 'audit':
        return await auditCommand(config, logger, args);
      case 'projections':
        return await projectionsCommand(config, logger, args);
      default:
        if (NOT_YET.has(command)) {
          process.stderr.write(`task-manager: "${command}" is not built yet (see README, "Not yet done")\n`);
          return 2;
        }
        throw new UsageError(`unknown command: ${command}`);
    }
  } catch (error) {
    if (error instanceof AppError && error.status < 500) {
      process.stderr.write(`task-manager: ${error.message}\n`);
      return 1;
    }
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`task-manager: ${(error as Error).message}\n\n${USAGE}\n`);
      return 2;
    }
    logger.fatal({ err: error }, `${command} failed`);
    return 1;
  }
}

const code = await main(process.argv.slice(2), process.env);
if (code >= 0) process.exit(code);
