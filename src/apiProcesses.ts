import cluster, { type Worker } from 'node:cluster';
import type { Config } from './config.js';
import type { Logger } from './infra/logger.js';
import { startService, type Role, type RunningService } from './main.js';

/** The message the primary sends an API process to make it stop gracefully. */
const STOP_MESSAGE = 'task-manager:stop';

/** True in a process the primary forked to serve the API. */
export const isApiProcess = (): boolean => cluster.isWorker;

export interface ApiCluster {
  /** The primary's own service: every role but the API (and the database, on the embedded default). */
  service: RunningService;
  url: string;
  stop(): Promise<void>;
}

/**
 * `task-manager start --processes N`: the API in N processes sharing one port (node:cluster hands each
 * connection to one of them), the other roles in this process. One Node process runs JavaScript on one core, and
 * the API is where most of a task's CPU goes, so on a machine with more cores than one this is what lets it use
 * them. The primary starts first: on the embedded default it owns the database, which the API processes borrow.
 * An API process that dies is replaced; SIGTERM or SIGINT stop the API processes gracefully, then this one.
 */
export async function startApiCluster(
  config: Config,
  roles: readonly Role[],
  processes: number,
  logger: Logger,
): Promise<ApiCluster> {
  const service = await startService(
    config,
    roles.filter((role) => role !== 'api'),
    logger,
  );
  let stopping = false;
  const workers = new Set<Worker>();
  let firstAddress: { address: string; port: number } | null = null;
  const fork = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork();
      workers.add(worker);
      worker.once('listening', (address) => {
        firstAddress ??= { address: address.address ?? '0.0.0.0', port: address.port };
        resolve();
      });
      worker.once('exit', (code, signal) => {
        workers.delete(worker);
        if (stopping) return;
        logger.error({ pid: worker.process.pid, code, signal }, 'an API process died; starting another');
        reject(new Error(`API process ${worker.process.pid} exited (${code ?? signal}) before it listened`));
        void fork().catch((error) => logger.error({ err: error }, 'could not replace an API process'));
      });
    });
  try {
    await Promise.all(Array.from({ length: processes }, fork));
  } catch (error) {
    stopping = true;
    for (const worker of workers) worker.kill('SIGKILL');
    await service.stop();
    throw error;
  }
  const { address, port } = firstAddress!;
  const host = address === '::' || address === '' ? '0.0.0.0' : address;
  return {
    service,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    stop: async () => {
      stopping = true;
      await Promise.all(
        [...workers].map(
          (worker) =>
            new Promise<void>((resolve) => {
              worker.once('exit', () => resolve());
              worker.send(STOP_MESSAGE);
            }),
        ),
      );
      await service.stop();
    },
  };
}

/**
 * In an API process: stop when the primary says so, and ignore the terminal's Ctrl-C (the primary gets it too,
 * and stops the API processes itself, gracefully).
 */
export function onPrimaryStop(stop: () => void): void {
  process.on('message', (message) => {
    if (message === STOP_MESSAGE) stop();
  });
  // The primary dying without a word (SIGKILL) disconnects the channel: nothing would ever stop this one.
  process.on('disconnect', () => stop());
}
