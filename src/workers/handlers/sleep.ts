import { sleepTaskType } from '../../domain/tasks/taskTypes.js';
import { abortError, throwIfAborted, type TaskHandler } from './handler.js';

export interface SleepPayload {
  ms: number;
}

const PROGRESS_EVERY_MS = 1000;

/** Waits `ms`, or rejects with an AbortError the moment `signal` aborts. */
function wait(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export const sleepHandler: TaskHandler<SleepPayload> = {
  ...sleepTaskType,
  async run({ ms }, { signal, progress }) {
    throwIfAborted(signal);
    const started = performance.now();
    // Measured against the clock, not summed from timer delays: timers may fire a little early, and the
    // task must not finish before `ms` has passed.
    for (let elapsed = 0; elapsed < ms; elapsed = performance.now() - started) {
      await wait(Math.max(1, Math.min(PROGRESS_EVERY_MS, Math.ceil(ms - elapsed))), signal);
      const slept = Math.min(ms, Math.round(performance.now() - started));
      if (slept < ms) progress(slept / ms, `slept ${slept} of ${ms} ms`);
    }
    progress(1, `slept ${ms} ms`);
    return { slept_ms: ms };
  },
};
