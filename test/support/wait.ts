/** The one way tests wait: a pause, and polling until something holds (every tier uses these). */

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface WaitOptions {
  /** Give up after this long (15 s unless told). */
  timeoutMs?: number;
  /** Between two looks (50 ms unless told); ignored when `pause` is given. */
  intervalMs?: number;
  /** Added to the timeout's message: what the test saw instead. */
  describe?: () => Promise<string> | string;
  /**
   * A look that throws counts as "not yet" instead of failing the wait: for a dependency the test broke on
   * purpose, which may fail a look. Otherwise the error ends the wait.
   */
  ignoreErrors?: boolean;
  /** Waits between two looks, instead of `intervalMs` (e.g. until an event arrives, or at most a while). */
  pause?: () => Promise<unknown>;
}

/**
 * Looks with `check` until it returns a value other than undefined, and returns that value. After `timeoutMs`
 * it fails with "timed out after ... ms waiting for `what`", followed by what `describe` says.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  options: WaitOptions = {},
): Promise<T> {
  const { timeoutMs = 15000, intervalMs = 50, describe, ignoreErrors = false } = options;
  const pause = options.pause ?? (() => sleep(intervalMs));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let value: T | undefined;
    try {
      value = await check();
    } catch (error) {
      if (!ignoreErrors) throw error;
      value = undefined;
    }
    if (value !== undefined) return value;
    if (Date.now() > deadline) {
      const seen = describe ? await describe() : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}.${seen ? ` ${seen}` : ''}`);
    }
    await pause();
  }
}
