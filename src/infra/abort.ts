/** Resolves after `ms`, or as soon as the signal aborts (never rejects: callers check `signal.aborted`). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Exponential back-off with full jitter, capped; `random` is injectable so tests can pin the jitter. */
export const backoffMs = (
  attempt: number,
  baseMs = 100,
  maxMs = 5000,
  random: () => number = Math.random,
): number => Math.round(random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20)));
