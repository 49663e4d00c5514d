/**
 * What the end of a handler's run means for its attempt, in one place (as River's JobCancel and JobSnooze are):
 * the worker's abort reasons, and the one function that turns a handler's rejection into an outcome.
 */
import type { AttemptOutcome } from '../domain/tasks/workerCommands.js';
import { isUnrecoverableError } from './handlers/handler.js';

/** Why the worker aborted a running handler's signal: each ends the attempt differently. */
export type AbortReason =
  /** The task's timeout passed: a retryable failure. */
  | 'timeout'
  /** The task was canceled, or its lease was reaped: the stream already says how the attempt ended. */
  | 'canceled'
  /** The worker is stopping: the attempt is handed back (TaskReleased), to run again elsewhere. */
  | 'release';

/** How an attempt ends: an outcome to record, or nothing to record (canceled), or a hand-back (release). */
export type AttemptEnd = AttemptOutcome | Exclude<AbortReason, 'timeout'>;

/** Errors are kept to this many characters in the stream. */
const MAX_MESSAGE_LENGTH = 2000;

/** An error's message as the stream keeps it. */
export const messageOf = (error: unknown): string =>
  (error instanceof Error ? error.message : String(error)).slice(0, MAX_MESSAGE_LENGTH);

/**
 * Retrying cannot help: an UnrecoverableError, or any error flagged `unrecoverable: true` (so a handler built
 * against another copy of this package, whose class `instanceof` does not recognise, is still understood).
 */
export const isUnrecoverable = (error: unknown): boolean =>
  isUnrecoverableError(error) ||
  (typeof error === 'object' &&
    error !== null &&
    (error as { unrecoverable?: unknown }).unrecoverable === true);

/**
 * The end of an attempt whose handler rejected with `error`. The abort reason wins over the error: a handler
 * aborted by a cancel or a stop rejects with an AbortError, which says nothing about the task itself.
 */
export function attemptEndAfterRejection(error: unknown, signal: AbortSignal, timeoutMs: number): AttemptEnd {
  if (signal.aborted) {
    const reason = signal.reason as AbortReason;
    if (reason === 'canceled' || reason === 'release') return reason;
    return {
      kind: 'failed',
      retryable: true,
      error: { kind: 'timeout', message: `timed out after ${timeoutMs} ms` },
    };
  }
  if (isUnrecoverable(error))
    return { kind: 'failed', retryable: false, error: { kind: 'unrecoverable', message: messageOf(error) } };
  return { kind: 'failed', retryable: true, error: { kind: 'error', message: messageOf(error) } };
}
