import { TaskTypes, type TaskType } from '../../domain/tasks/taskTypes.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { TaskError, TaskStatus } from '../../domain/tasks/events.js';
import type { Logger } from '../../infra/logger.js';

export interface TaskHandlerContext {
  taskId: string;
  /** 1 for the first run of the task. */
  attempt: number;
  /** Aborts when the task is canceled, its timeout passes or the worker stops: handlers must stop promptly. */
  signal: AbortSignal;
  /** `fraction` is 0..1; the worker coalesces calls, so handlers may call it as often as is natural. */
  progress(fraction: number, message?: string): void;
  logger: Logger;
  /** How each task this one depends on ended (its result when done), in `depends_on` order; [] when none. */
  dependencies(): Promise<DependencyOutcome[]>;
}

/** A dependency as a handler sees it: its status and result (or error), from its stream. */
export interface DependencyOutcome {
  taskId: string;
  status: TaskStatus;
  result: JsonValue | null;
  error: TaskError | null;
}

/** A task type's catalogue entry (src/domain/tasks/taskTypes.ts) with the code that runs it. */
export interface TaskHandler<Payload = unknown> extends TaskType {
  /**
   * Resolves with the task's result. Rejecting with UnrecoverableError fails the task at once; any other
   * error is retried while attempts remain. When `context.signal` aborts, rejects with an AbortError.
   */
  // Method syntax on purpose: its parameter is bivariant, so a TaskHandler<SleepPayload> can sit in a
  // TaskHandler[] (the registry validates the payload before any handler sees it).
  run(payload: Payload, context: TaskHandlerContext): Promise<JsonValue>;
}

/** Retrying cannot help (a bad payload, a forbidden host, a 4xx answer): the task goes straight to failed. */
export class UnrecoverableError extends Error {
  override name = 'UnrecoverableError';
}

export const isUnrecoverableError = (error: unknown): error is UnrecoverableError =>
  error instanceof UnrecoverableError;

/**
 * The error a handler rejects with when its signal aborts: always named `AbortError`, whatever reason the
 * worker aborted with, so callers test one name; the reason stays available as `cause`.
 */
export function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (isAbortError(reason)) return reason as Error;
  const error = new Error(
    reason instanceof Error ? `aborted: ${reason.message}` : 'the operation was aborted',
    reason === undefined ? undefined : { cause: reason },
  );
  error.name = 'AbortError';
  return error;
}

export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortError(signal);
}

/** Covers DOMException('AbortError') from fetch and timers as well as our own. */
export const isAbortError = (error: unknown): boolean =>
  typeof error === 'object' && error !== null && (error as { name?: unknown }).name === 'AbortError';

/**
 * Settles like `promise`, or rejects with an AbortError as soon as `signal` aborts. The underlying work is
 * not stopped (use this for things that take no signal, such as a DNS lookup); its late outcome is ignored.
 */
export function abortable<T>(signal: AbortSignal, promise: Promise<T>): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(abortError(signal));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** The handlers a worker runs, by type, with the catalogue of the types they run. */
export class HandlerRegistry {
  private readonly handlers = new Map<string, TaskHandler>();
  /** Built from the handlers themselves, so what is validated is exactly what can run. */
  readonly catalogue: TaskTypes;

  /** Compiles every payload schema now, so a bad schema or a duplicate type stops start-up. */
  constructor(handlers: TaskHandler[]) {
    this.catalogue = new TaskTypes(handlers, 'task handler');
    for (const handler of handlers) this.handlers.set(handler.type, handler);
  }

  get(type: string): TaskHandler | undefined {
    return this.handlers.get(type);
  }

  types(): string[] {
    return this.catalogue.types();
  }
}
