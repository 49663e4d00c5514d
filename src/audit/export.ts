import { sleep } from '../infra/abort.js';
import {
  InvalidPositionError,
  isPosition,
  metadataJson,
  type EventStore,
  type JsonObject,
  type MetadataJson,
  type Position,
  type RecordedEvent,
} from '../infra/eventStore/eventStore.js';

/**
 * One line of an export. `raw_data` is the exact text the hash covers, so the file can be verified offline
 * (verifyNdjson.ts); `data` is its parse, for reading. Both carry whatever the events hold, password and
 * refresh-token hashes included: leaving anything out would make the chain unverifiable.
 */
export interface ExportedEvent {
  stream_id: string;
  revision: number;
  position: Position;
  type: string;
  data: JsonObject;
  raw_data: string;
  metadata: MetadataJson;
  recorded_at: string;
}

export const toExportedEvent = (event: RecordedEvent): ExportedEvent => ({
  stream_id: event.streamId,
  revision: event.revision,
  position: event.position,
  type: event.type,
  data: event.data,
  raw_data: event.rawData,
  metadata: metadataJson(event.metadata),
  recorded_at: event.recordedAt,
});

const PAGE_SIZE = 1000;
const HORIZON_WAIT_MS = 60000;

export class HorizonTimeoutError extends Error {
  override name = 'HorizonTimeoutError';
  constructor(readonly target: Position) {
    super(
      `the log up to ${target} is not readable yet: an older transaction has stayed open for over ${HORIZON_WAIT_MS / 1000} s (in PostgreSQL, anywhere on the server)`,
    );
  }
}

/**
 * The log after `after` up to `to`, or up to the head when called, a page at a time. The PostgreSQL store's
 * readAll stops short of events above the oldest open transaction, anywhere on the server; a short page before
 * the target is that, not the end of the log, so this waits for the horizon instead of silently stopping early,
 * and throws HorizonTimeoutError when it does not move for a minute.
 */
export async function* readLogPages(
  store: EventStore,
  options: { after: Position | null; to?: Position },
): AsyncGenerator<RecordedEvent[]> {
  const head = await store.headPosition();
  if (head === null) return;
  const target = options.to !== undefined && options.to < head ? options.to : head;
  let after = options.after;
  let waitedMs = 0;
  while (after === null || after < target) {
    const page = await store.readAll({ after, limit: PAGE_SIZE });
    const within = page.filter((event) => event.position <= target);
    if (within.length > 0) {
      yield within;
      after = within[within.length - 1]!.position;
      waitedMs = 0;
    }
    // Past the target without reaching it: the target event is gone (the log was tampered with meanwhile).
    if (within.length < page.length) return;
    if (page.length < PAGE_SIZE && (after === null || after < target)) {
      if (waitedMs >= HORIZON_WAIT_MS) throw new HorizonTimeoutError(target);
      const pause = Math.min(1000, Math.max(50, waitedMs / 4));
      await sleep(pause);
      waitedMs += pause;
    }
  }
}

/** Lines are gathered into chunks of about this many characters: one write per line is slow on a pipe. */
const CHUNK_CHARS = 64 * 1024;

export interface ExportOptions {
  /** Exclusive. */
  from?: Position;
  /** Inclusive. */
  to?: Position;
  out: NodeJS.WritableStream;
  onProgress?: (progress: { events: number }) => void;
}

/** Resolves on 'drain'; rejects if the output fails or closes first (a reader that went away, say). */
function drained(out: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (error?: Error) => {
      out.off('drain', onDrain);
      out.off('error', onError);
      out.off('close', onClose);
      if (error) reject(error);
      else resolve();
    };
    const onDrain = () => settle();
    const onError = (error: Error) => settle(error);
    const onClose = () => settle(new Error('the export output closed before the export finished'));
    out.on('drain', onDrain);
    out.on('error', onError);
    out.on('close', onClose);
  });
}

/**
 * Writes the log as NDJSON, one event per line, in log order, up to `to` or the head when it starts. It reads a
 * page at a time and waits for the output to drain whenever it is full, so memory stays flat however large the log and however slow the reader. The
 * output is not ended: it may be stdout.
 */
export async function exportLog(store: EventStore, options: ExportOptions): Promise<{ events: number }> {
  const { from, to, out } = options;
  for (const position of [from, to])
    if (position !== undefined && !isPosition(position)) throw new InvalidPositionError(position);
  let events = 0;
  let chunk = '';
  const flush = async () => {
    if (chunk === '') return;
    const writable = out.write(chunk);
    chunk = '';
    if (!writable) await drained(out);
  };
  for await (const page of readLogPages(store, { after: from ?? null, to })) {
    for (const event of page) {
      chunk += JSON.stringify(toExportedEvent(event)) + '\n';
      events++;
      if (chunk.length >= CHUNK_CHARS) await flush();
    }
    await flush();
    options.onProgress?.({ events });
  }
  return { events };
}
