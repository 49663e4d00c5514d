/**
 * The timers of one running attempt: its timeout, the cancellation check (EventStoreDB only: with the schedule
 * one loop checks every attempt of the worker at once) and the progress flush. Started when the handler starts,
 * cleared when it has ended; the timer functions are injected, so a test can drive them with a fake clock.
 */
import type { AbortReason } from './outcomes.js';

/** The timer functions the attempt's timers run on: the global ones unless a test passes a fake clock. */
export interface TimerClock {
  setTimeout(callback: () => void, ms: number): unknown;
  setInterval(callback: () => void, ms: number): unknown;
  /** Clears a handle of either kind, as the global clearTimeout does. */
  clear(handle: unknown): void;
}

/** Node's own timers. */
export const realTimerClock: TimerClock = {
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  setInterval: (callback, ms) => setInterval(callback, ms),
  clear: (handle) => clearTimeout(handle as NodeJS.Timeout), // clears intervals too
};

/** What one attempt's timers do, and when. */
export interface AttemptTimerOptions {
  /** The handler's signal: the timers abort it with their reason, unless something aborted it first. */
  controller: AbortController;
  /** After this long the attempt is aborted with 'timeout'. */
  timeoutMs: number;
  /**
   * When given, `isCanceled` is asked every `intervalMs`, and the attempt aborted with 'canceled' once it says
   * true; a check that rejects is simply asked again at the next tick. Checks are not awaited before the next.
   */
  cancelCheck?: { intervalMs: number; isCanceled: () => Promise<boolean> };
  /** `flush` is called every `intervalMs`: the progress coalescer's write of the latest report. */
  progressFlush: { intervalMs: number; flush: () => void };
  /** Default: Node's timers. */
  clock?: TimerClock;
}

/** The timers of a running attempt; `clear` stops all of them (a check already in flight may still abort). */
export interface AttemptTimers {
  clear(): void;
}

/** Starts the timers of one attempt; clear them once its handler has ended. */
export function startAttemptTimers(options: AttemptTimerOptions): AttemptTimers {
  const { controller, cancelCheck, progressFlush } = options;
  const clock = options.clock ?? realTimerClock;
  const abort = (reason: AbortReason) => {
    if (!controller.signal.aborted) controller.abort(reason);
  };
  const handles: unknown[] = [clock.setTimeout(() => abort('timeout'), options.timeoutMs)];
  if (cancelCheck)
    handles.push(
      clock.setInterval(() => {
        void cancelCheck
          .isCanceled()
          .then((canceled) => {
            if (canceled) abort('canceled');
          })
          .catch(() => undefined); // a missed check is retried at the next tick
      }, cancelCheck.intervalMs),
    );
  handles.push(clock.setInterval(progressFlush.flush, progressFlush.intervalMs));
  return {
    clear: () => {
      for (const handle of handles) clock.clear(handle);
    },
  };
}
