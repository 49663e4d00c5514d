import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { CallMessage, Operations, ReplyMessage } from './loadProcess.js';
import { nodeOptionsWithoutServiceFlags, withoutServiceNodeFlags } from './serviceNodeFlags.js';

type Args<K extends keyof Operations> = Parameters<Operations[K]>[0];
type Result<K extends keyof Operations> = Awaited<ReturnType<Operations[K]>>;

/** The parent's handle on the load-generator process (bench/loadProcess.ts). */
export class LoadClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private exited = false;

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (message: ReplyMessage) => {
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.ok) waiter.resolve(message.value);
      else waiter.reject(new Error(`load process: ${message.error}`));
    });
    child.on('exit', (code, signal) => {
      this.exited = true;
      for (const waiter of this.pending.values())
        waiter.reject(new Error(`the load process exited (${signal ?? code}) during a call`));
      this.pending.clear();
    });
  }

  /**
   * Forks with this process's own Node options (so `--import tsx` carries over) without the service's flags,
   * and with its environment.
   * NO_LOG_SUCCESS is Graphile Worker's switch for its line per completed job, as a user who wants speed sets it.
   */
  static start(): LoadClient {
    const child = fork(fileURLToPath(new URL('./loadProcess.ts', import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: withoutServiceNodeFlags(process.execArgv),
      env: {
        ...process.env,
        NODE_OPTIONS: nodeOptionsWithoutServiceFlags(process.env.NODE_OPTIONS),
        KAFKAJS_NO_PARTITIONER_WARNING: '1',
        NO_LOG_SUCCESS: '1',
      },
    });
    return new LoadClient(child);
  }

  get pid(): number | null {
    return this.child.pid ?? null;
  }

  /** Calls an operation of the load process; rejects if it has not answered within `timeoutMs`. */
  call<K extends keyof Operations>(op: K, args: Args<K>, timeoutMs = 15 * 60_000): Promise<Result<K>> {
    if (this.exited) return Promise.reject(new Error('the load process is not running'));
    const id = this.nextId++;
    return new Promise<Result<K>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${op} did not answer within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as Result<K>);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.child.send({ id, op, args } satisfies CallMessage);
    });
  }

  /** Ends the process by its pid: gently, then for good after a few seconds. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.disconnect();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}
