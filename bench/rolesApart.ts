import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { Config } from '../src/config.js';
import type { Role } from '../src/main.js';
import { createTestDatabase, type TestDatabase } from '../test/support/postgres.js';
import { SERVICE_NODE_FLAGS } from './serviceNodeFlags.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;
const OUTPUT_KEPT = 8_000;

export interface RoleProcessInfo {
  roles: Role[];
  pid: number;
}

/** One process of a deployment: its roles, and how many API processes it forks (`--processes`), if any. */
export interface ProcessGroup {
  roles: Role[];
  apiProcesses?: number;
}

/** The processes `pid` forked (the API processes of `--processes`), from /proc. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** A deployment of its own with each group of roles in a process of its own, as `task-manager start --roles`. */
export interface RolesApart {
  url: string;
  databaseUrl: string;
  database: TestDatabase;
  processes: RoleProcessInfo[];
  pids: Set<number>;
  startup_s: number;
  /** SIGTERM to each process (SIGKILL after 15 s), then the database is dropped. Safe to call twice. */
  stop(): Promise<void>;
}

interface Started {
  child: ChildProcess;
  output(): string;
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve()),
  );
}

/**
 * `node bin/task-manager.mjs start --roles ...` with a config file of its own, like test/support/processes.ts
 * startRoleProcess, but at the log level given: the API runs silent, as the in-process service does (at info
 * it writes a line per request), and is ready when it prints its URL; the other roles log at info, which they
 * use for little besides "task-manager started", their sign of being ready.
 */
async function startProcess(config: Config, group: ProcessGroup, dir: string): Promise<Started> {
  const { roles } = group;
  const api = roles.includes('api');
  const file = path.join(dir, `config-${roles.join('-')}.yml`);
  writeFileSync(file, stringify({ ...config, logLevel: api ? 'silent' : 'info', port: 0 }));
  const args = [...SERVICE_NODE_FLAGS, 'bin/task-manager.mjs', 'start', '--roles', roles.join(',')];
  if (group.apiProcesses) args.push('--processes', String(group.apiProcesses));
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CONFIG_FILE: file,
      KAFKAJS_NO_PARTITIONER_WARNING: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_KEPT);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const ready = api ? /API:\s+http:\/\/\S+/ : /task-manager started/;
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!ready.test(output)) {
    if (child.exitCode !== null)
      throw new Error(`--roles ${roles.join(',')} exited early (${child.exitCode}):\n${output.slice(-2000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`--roles ${roles.join(',')} did not start within 60 s:\n${output.slice(-2000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { child, output: () => output };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = exited(child);
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await done;
  clearTimeout(timer);
}

/**
 * Starts `groups` (e.g. [api], [relay, projector], [worker]) as processes of one deployment: `base`'s settings
 * with a fresh migrated database, a Kafka topic (and so consumer groups) and a cache key prefix of its own, so
 * that it shares nothing with the in-process service but the servers.
 */
export async function startRolesApart(base: Config, groups: ProcessGroup[]): Promise<RolesApart> {
  const t0 = Date.now();
  const database = await createTestDatabase('bench_roles');
  const suffix = randomBytes(4).toString('hex');
  const config: Config = structuredClone(base);
  config.databaseUrl = database.url;
  config.kafka = { ...config.kafka, topic: `tm-bench-roles-${suffix}` };
  config.cache = { ...config.cache, keyPrefix: `tm-bench-roles-${suffix}:` };
  config.host = '127.0.0.1';
  const dir = mkdtempSync(path.join(tmpdir(), 'tm-bench-roles-'));
  const started: Started[] = [];
  let stopped: Promise<void> | null = null;
  const stop = () =>
    (stopped ??= (async () => {
      await Promise.all(started.map((s) => stopProcess(s.child)));
      await database.drop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    })());
  try {
    const outcomes = await Promise.allSettled(groups.map((group) => startProcess(config, group, dir)));
    for (const outcome of outcomes) if (outcome.status === 'fulfilled') started.push(outcome.value);
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed) throw failed.reason;
  } catch (error) {
    await stop();
    throw error;
  }
  const apiIndex = groups.findIndex((group) => group.roles.includes('api'));
  const match = apiIndex === -1 ? null : /API:\s+(http:\/\/\S+)/.exec(started[apiIndex]!.output());
  if (!match) {
    await stop();
    throw new Error('no process of the deployment runs the API');
  }
  const processes = groups.map((group, i) => ({ roles: group.roles, pid: started[i]!.child.pid! }));
  // The API processes a `--processes` group forked do the work too: their CPU counts as the service's. (The
  // embedded PostgreSQL is never used here: the deployment has a DATABASE_URL.)
  const forked = groups.flatMap((group, i) => (group.apiProcesses ? childrenOf(started[i]!.child.pid!) : []));
  return {
    url: match[1]!.replace('localhost', '127.0.0.1').replace('0.0.0.0', '127.0.0.1'),
    databaseUrl: database.url,
    database,
    processes,
    pids: new Set([...processes.map((p) => p.pid), ...forked]),
    startup_s: Math.round((Date.now() - t0) / 100) / 10,
    stop,
  };
}
