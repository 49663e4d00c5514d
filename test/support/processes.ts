import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { Config } from '../../src/config.js';
import { waitFor } from './wait.js';

/** The repository: where child processes of the tests run unless told otherwise. */
export const ROOT = path.resolve(import.meta.dirname, '../..');

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
  /** Sends the signal (SIGKILL unless told: no shutdown code runs, as when a machine dies) if it still runs, and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<Exit>;
  /** SIGTERM if it still runs, then waits for the exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** Fails if it exits first, or after `timeoutMs`, with the end of its output. */
  waitForOutput(pattern: string | RegExp, timeoutMs: number): Promise<void>;
}

/** Every child still running, so a failing test can never leave one behind (see `killAll`). */
const live = new Set<Child>();

export async function killAll(): Promise<void> {
  await Promise.all([...live].map((child) => child.kill('SIGKILL')));
}

/** The one way the tests start a process: `command args` in `cwd` (the repository unless told), output kept. */
export function spawnChild(
  name: string,
  command: string,
  args: string[],
  options: { env: Record<string, string | undefined>; cwd?: string; cleanup?: () => void },
): Child {
  const { env, cwd = ROOT, cleanup = () => {} } = options;
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
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
    async stop() {
      return (await handle.kill('SIGTERM')).code;
    },
    async waitForOutput(pattern, timeoutMs) {
      const found = () => (typeof pattern === 'string' ? output.includes(pattern) : pattern.test(output));
      await waitFor(
        `${name} to print ${String(pattern)}`,
        () => {
          if (found()) return true;
          if (exit !== null)
            throw new Error(
              `${name} (pid ${handle.pid}) exited (${exit.code ?? exit.signal}) before printing ${String(pattern)}:\n${output.slice(-3000)}`,
            );
          return undefined;
        },
        { timeoutMs, describe: () => `Its output:\n${output.slice(-3000)}` },
      );
    },
  };
  live.add(handle);
  return handle;
}

/** Waits for `pattern` in the child's output; kills the child (SIGKILL) when that fails. */
async function startedOnce(child: Child, pattern: string | RegExp, timeoutMs: number): Promise<Child> {
  try {
    await child.waitForOutput(pattern, timeoutMs);
  } catch (error) {
    await child.kill();
    throw error;
  }
  return child;
}

/**
 * `node <args>` in the repository with the given settings (written to a config file of its own, read through
 * CONFIG_FILE as `task-manager` reads config.yml, removed when it exits). Resolves once it says it has started.
 */
export async function startConfiguredProcess(
  name: string,
  args: string[],
  config: Config,
  timeoutMs: number,
): Promise<Child> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tm-role-'));
  const file = path.join(dir, 'config.yml');
  writeFileSync(file, stringify({ ...config, logLevel: 'info', port: 0 }));
  const child = spawnChild(name, process.execPath, args, {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CONFIG_FILE: file,
      KAFKAJS_NO_PARTITIONER_WARNING: '1',
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  });
  return startedOnce(child, 'task-manager started', timeoutMs);
}

/**
 * `task-manager start --roles ...` as a separate process with the given settings, so kills in tests are real
 * kills. Resolves once the process says it has started.
 */
export const startRoleProcess = (config: Config, roles: string[], timeoutMs = 30000): Promise<Child> =>
  startConfiguredProcess(
    `task-manager start --roles ${roles.join(',')}`,
    ['bin/task-manager.mjs', 'start', '--roles', roles.join(',')],
    config,
    timeoutMs,
  );

const API_URL = /API:\s+(http:\/\/\S+)/;

/** The URL `task-manager start` prints, from its output. */
export const apiUrlIn = (output: string): string | null => {
  const match = API_URL.exec(output);
  return match ? match[1]!.replace('localhost', '127.0.0.1') : null;
};

export interface StartedCli extends Child {
  url: string;
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
  const child = spawnChild(
    `task-manager ${args.join(' ')}`,
    process.execPath,
    [path.join(ROOT, 'bin/task-manager.mjs'), ...args],
    { cwd, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? cwd, PORT: '0', ...env } },
  );
  await startedOnce(child, API_URL, 90_000);
  return { ...child, url: apiUrlIn(child.output())! };
}
