import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { Config } from '../../src/config.js';
import { sleep } from './wait.js';

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
    await sleep(50);
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

/** The URL `task-manager start` prints, from its output. */
export const apiUrlIn = (output: string): string | null => {
  const match = /API:\s+(http:\/\/\S+)/.exec(output);
  return match ? match[1]!.replace('localhost', '127.0.0.1') : null;
};

export interface StartedCli {
  url: string;
  pid: number;
  output: () => string;
  /** SIGTERM, then wait for the exit; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/**
 * The CLI (`bin/task-manager.mjs <args>`) in `cwd` as a user would start it: nothing inherited that names a
 * service or a secret, PORT=0 so no test takes 3000. Resolves once it has printed its URL.
 */
export async function startCli(
  cwd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<StartedCli> {
  const cli = path.resolve(import.meta.dirname, '../../bin/task-manager.mjs');
  const child: ChildProcess = spawn(process.execPath, [cli, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? cwd, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const deadline = Date.now() + 90_000;
  let url = apiUrlIn(output);
  while (!url) {
    if (child.exitCode !== null)
      throw new Error(`start exited early (${child.exitCode}):\n${output.slice(-2000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`start did not print its URL in time:\n${output.slice(-2000)}`);
    }
    await sleep(100);
    url = apiUrlIn(output);
  }
  return {
    url,
    pid: child.pid!,
    output: () => output,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited(child);
    },
  };
}
