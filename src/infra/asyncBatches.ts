/**
 * Groups an async iterable into arrays: whatever is already available (up to `max`) goes in one batch, and a
 * batch is handed on as soon as the source would make us wait. So a busy log is sent in large batches and a
 * quiet one with no added latency.
 */
export async function* asyncBatches<T>(source: AsyncIterable<T>, max: number): AsyncGenerator<T[]> {
  const iterator = source[Symbol.asyncIterator]();
  let next = iterator.next();
  try {
    for (;;) {
      const first = await next;
      if (first.done) return;
      const batch: T[] = [first.value];
      next = iterator.next();
      while (batch.length < max) {
        const ready = await Promise.race([
          next,
          new Promise<'waiting'>((resolve) => setImmediate(resolve, 'waiting')),
        ]);
        if (ready === 'waiting') break;
        if (ready.done) {
          yield batch;
          return;
        }
        batch.push(ready.value);
        next = iterator.next();
      }
      yield batch;
    }
  } finally {
    // Not awaited: a next() may still be pending on a live subscription, and an async generator only returns
    // after it settles. The caller ends the subscription itself, through its AbortSignal.
    iterator.return?.()?.catch(() => undefined);
  }
}
