import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { Config } from '../../src/config.js';

export interface RoleProcess {
  pid: number;
  output: () => string;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<number | null>;
  /** SIGKILL: no shutdown code runs, as when a machine dies. */
  kill(): Promise<void>;
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) =>
    child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code)),
  );

/**
 * `task-manager start --roles ...` as a separate process with the given settings (written to a config file of
 * its own), so kills in tests are real kills. Resolves once the process says it has started.
 */
export async function startRoleProcess(
  config: Config,
  roles: string[],
  timeoutMs = 30000,
): Promise<RoleProcess> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tm-role-'));
  const file = path.join(dir, 'config.yml');
  writeFileSync(file, stringify({ ...config, logLevel: 'info', port: 0 }));
  const child = spawn(process.execPath, ['bin/task-manager.mjs', 'start', '--roles', roles.join(',')], {
    cwd: path.resolve(import.meta.dirname, '../..'),
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CONFIG_FILE: file,
      KAFKAJS_NO_PARTITIONER_WARNING: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const deadline = Date.now() + timeoutMs;
  while (!output.includes('task-manager started')) {
    if (child.exitCode !== null)
      throw new Error(`role process exited early (${child.exitCode}):\n${output.slice(-2000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`role process did not start in time:\n${output.slice(-2000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    pid: child.pid!,
    output: () => output,
    stop: async () => {
      child.kill('SIGTERM');
      return exited(child);
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited(child);
    },
  };
}
