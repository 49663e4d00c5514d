import type { EventStore, RecordedEvent } from '../../src/infra/eventStore/eventStore.js';

/** The whole global log of a store, page by page, in log order. */
export async function readWholeLog(store: EventStore): Promise<RecordedEvent[]> {
  const events: RecordedEvent[] = [];
  for (;;) {
    const page = await store.readAll({ after: events.at(-1)?.position ?? null, limit: 1000 });
    if (page.length === 0) return events;
    events.push(...page);
  }
}
