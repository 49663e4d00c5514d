import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Config } from '../../../src/config.js';
import { ROOT, spawnChild, startConfiguredProcess, type Child } from '../../support/processes.js';

/** How long a role process of the fault cases may take to start, on a machine under their load. */
export const ROLE_START_TIMEOUT_MS = 45000;

/**
 * The service's own KafkaRelay in a process of its own that SIGKILLs itself right after Kafka acknowledged its
 * `dieAtBatch`-th batch and before that batch's checkpoint is stored (the relay's `afterProduce` hook): the
 * crash the relay's ordering exists for, hit exactly rather than by chance.
 */
export const startSelfKillingRelay = (
  config: Config,
  dieAtBatch: number,
  timeoutMs = ROLE_START_TIMEOUT_MS,
) =>
  startConfiguredProcess(
    `relay that dies after its batch ${dieAtBatch}`,
    ['--import', 'tsx', path.join(import.meta.dirname, 'selfKillingRelay.ts'), String(dieAtBatch)],
    config,
    timeoutMs,
  );

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
      { env: { PATH: process.env.PATH, HOME: process.env.HOME } },
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
