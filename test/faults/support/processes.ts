import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { Config } from '../../../src/config.js';
import { sleep } from '../../support/wait.js';

export const ROOT = path.resolve(import.meta.dirname, '../../..');

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process of the test: its output, how it ended, and kills that can be repeated safely. */
export interface Child {
  name: string;
  pid: number;
  output(): string;
  running(): boolean;
  exited: Promise<Exit>;
  /** Sends the signal (SIGKILL unless told) if it still runs, and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<Exit>;
  waitForOutput(pattern: string | RegExp, timeoutMs: number): Promise<void>;
}

/** Every child still running, so a failing test can never leave one behind (see `killAll`). */
const live = new Set<Child>();

export async function killAll(): Promise<void> {
  await Promise.all([...live].map((child) => child.kill('SIGKILL')));
}

export function spawnChild(
  name: string,
  command: string,
  args: string[],
  env: Record<string, string | undefined>,
  cleanup: () => void = () => {},
): Child {
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  let exit: Exit | null = null;
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      live.delete(handle);
      cleanup();
      resolve(exit);
    });
    child.once('error', (error) => {
      output += `\nspawn error: ${error.message}`;
      exit = { code: -1, signal: null };
      live.delete(handle);
      cleanup();
      resolve(exit);
    });
  });
  const handle: Child = {
    name,
    pid: child.pid ?? -1,
    output: () => output,
    running: () => exit === null,
    exited,
    async kill(signal = 'SIGKILL') {
      if (exit === null) child.kill(signal);
      return exited;
    },
    async waitForOutput(pattern, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      const found = () => (typeof pattern === 'string' ? output.includes(pattern) : pattern.test(output));
      while (!found()) {
        if (exit !== null)
          throw new Error(
            `${name} (pid ${handle.pid}) exited (${exit.code ?? exit.signal}) before printing ${String(pattern)}:\n${output.slice(-3000)}`,
          );
        if (Date.now() > deadline)
          throw new Error(
            `${name} did not print ${String(pattern)} in ${timeoutMs} ms:\n${output.slice(-3000)}`,
          );
        await sleep(50);
      }
    },
  };
  live.add(handle);
  return handle;
}

/** The settings file a child reads (CONFIG_FILE), as `task-manager` reads config.yml. */
function writeConfig(config: Config): { file: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'tm-faults-'));
  const file = path.join(dir, 'config.yml');
  writeFileSync(file, stringify({ ...config, logLevel: 'info', port: 0 }));
  return { file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

const childEnv = (configFile: string) => ({
  PATH: process.env.PATH,
  HOME: process.env.HOME,
  CONFIG_FILE: configFile,
  KAFKAJS_NO_PARTITIONER_WARNING: '1',
});

/** `task-manager start --roles ...` as a real process: SIGKILL on it is a real crash. */
export async function startRoles(config: Config, roles: string[], timeoutMs = 45000): Promise<Child> {
  const { file, remove } = writeConfig(config);
  const child = spawnChild(
    `task-manager start --roles ${roles.join(',')}`,
    process.execPath,
    ['bin/task-manager.mjs', 'start', '--roles', roles.join(',')],
    childEnv(file),
    remove,
  );
  try {
    await child.waitForOutput('task-manager started', timeoutMs);
  } catch (error) {
    await child.kill();
    throw error;
  }
  return child;
}

/**
 * The service's own KafkaRelay in a process of its own that SIGKILLs itself right after Kafka acknowledged its
 * `dieAtBatch`-th batch and before that batch's checkpoint is stored (the relay's `afterProduce` hook): the
 * crash the relay's ordering exists for, hit exactly rather than by chance.
 */
export async function startSelfKillingRelay(config: Config, dieAtBatch: number, timeoutMs = 45000) {
  const { file, remove } = writeConfig(config);
  const child = spawnChild(
    `relay that dies after its batch ${dieAtBatch}`,
    process.execPath,
    ['--import', 'tsx', path.join(import.meta.dirname, 'selfKillingRelay.ts'), String(dieAtBatch)],
    childEnv(file),
    remove,
  );
  try {
    await child.waitForOutput('task-manager started', timeoutMs);
  } catch (error) {
    await child.kill();
    throw error;
  }
  return child;
}

/** What the self-killing relay printed about the batch it died with: Kafka has it, the checkpoint does not. */
export function faultedBatch(output: string): { eventIds: string[]; checkpointBefore: string | null } | null {
  const line = output.split('\n').find((l) => l.includes('"fault":"killed-between-produce-and-checkpoint"'));
  return line ? (JSON.parse(line) as { eventIds: string[]; checkpointBefore: string | null }) : null;
}

/** Lines a child logged with this message (pino JSON). */
export const loggedLines = (child: Child, message: string): string[] =>
  child
    .output()
    .split('\n')
    .filter((line) => line.includes(`"msg":"${message}"`));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A redis-server of the test's own on a free port, so stopping it touches nobody else. */
export class OwnRedis {
  private child: Child | null = null;
  private constructor(readonly port: number) {}

  static async start(): Promise<OwnRedis> {
    const redis = new OwnRedis(await freePort());
    await redis.start();
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.child = spawnChild(
      `redis-server :${this.port}`,
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { PATH: process.env.PATH, HOME: process.env.HOME },
    );
    await this.child.waitForOutput('Ready to accept connections', 15000);
  }

  async stop(): Promise<void> {
    await this.child?.kill('SIGTERM');
    this.child = null;
  }
}

const run = (args: string[], env: NodeJS.ProcessEnv) =>
  new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
    execFile('bash', args, { cwd: ROOT, env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) =>
      error
        ? reject(new Error(`bash ${args.join(' ')} failed: ${stderr.slice(-3000)}`))
        : resolve({ stdout, stderr }),
    ),
  );

/**
 * A Kafka broker of the test's own (scripts/services.sh with KAFKA_BROKERS unset and a directory of its own), so
 * stopping it leaves the broker every other suite uses alone.
 */
export class OwnKafka {
  private constructor(
    readonly dir: string,
    readonly brokers: string[],
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  static async start(): Promise<OwnKafka> {
    const env = { ...process.env };
    delete env.KAFKA_BROKERS;
    let failure = '';
    // Retried: `up` can fail now and then on its own (a random cluster id that starts with "-" is taken for
    // an option by Kafka's StorageTool).
    for (let attempt = 1; attempt <= 3; attempt++) {
      const dir = mkdtempSync(path.join(tmpdir(), 'tm-faults-kafka-'));
      const { stdout, stderr } = await run(['scripts/services.sh', 'up', '--dir', dir], env);
      const brokers = /^export KAFKA_BROKERS=(\S+)$/m.exec(stdout)?.[1];
      if (brokers) return new OwnKafka(dir, brokers.split(','), env);
      failure = stderr;
      await run(['scripts/services.sh', 'down', '--dir', dir], env).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
    throw new Error(`no Kafka broker of our own could be started:\n${failure.slice(-3000)}`);
  }

  async stopBroker(): Promise<void> {
    await run(['scripts/services.sh', 'kafka-stop', '--dir', this.dir], this.env);
  }

  async startBroker(): Promise<void> {
    await run(['scripts/services.sh', 'kafka-start', '--dir', this.dir], this.env);
  }

  async down(): Promise<void> {
    await run(['scripts/services.sh', 'down', '--dir', this.dir], this.env).catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
