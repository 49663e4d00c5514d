import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVICES_SH = path.join(ROOT, 'scripts', 'services.sh');
export const SERVICE_VARIABLES = ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS'] as const;

export interface Services {
  /** True when this run started them (and so stops them). */
  startedHere: boolean;
  stop(): Promise<void>;
}

/** Runs a command, streaming its stderr to ours with a prefix; resolves with its stdout. */
function run(command: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      reject(new Error(`${command} ${args.join(' ')} took longer than ${timeoutMs / 1000} s`));
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`${command} ${args.join(' ')} exited with ${code}`));
    });
  });
}

/**
 * PostgreSQL, Redis and Kafka: the ones in the environment when all three are set, otherwise the ones
 * `scripts/services.sh up` starts (or finds running) for a directory of this run's own. Its `export` lines are
 * evaluated by bash itself (the values are shell-quoted) and read back NUL-separated.
 */
export async function ensureServices(): Promise<Services> {
  if (SERVICE_VARIABLES.every((name) => process.env[name])) {
    process.stderr.write('[bench] using the services in the environment\n');
    return { startedHere: false, stop: async () => {} };
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'task-manager-bench-'));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      await run('bash', [SERVICES_SH, 'down', '--dir', dir], 120_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    const script = `set -e; out=$(bash "$1" up --dir "$2"); eval "$out"; for n in ${SERVICE_VARIABLES.join(' ')}; do printf '%s=%s\\0' "$n" "\${!n:-}"; done`;
    const output = await run('bash', ['-c', script, 'bench', SERVICES_SH, dir], 300_000);
    for (const entry of output.split('\0')) {
      const at = entry.indexOf('=');
      if (at <= 0) continue;
      const name = entry.slice(0, at);
      const value = entry.slice(at + 1);
      if (value && !process.env[name]) process.env[name] = value;
    }
    const missing = SERVICE_VARIABLES.filter((name) => !process.env[name]);
    if (missing.length > 0) throw new Error(`services.sh could not provide ${missing.join(', ')}`);
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
  return { startedHere: true, stop };
}
