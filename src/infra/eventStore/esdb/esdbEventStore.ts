/**
 * src/infra/eventStore/esdb: the EventStoreDB adapter of the event store.
 */
import {
  BACKWARDS,
  END,
  EventStoreDBClient,
  FORWARDS,
  NO_STREAM,
  START,
  StreamNotFoundError,
  WrongExpectedVersionError,
  binaryEvent,
  excludeSystemEvents,
  type AllStreamSubscription,
  type Position as EsdbPosition,
  type ReadRevision,
} from '@eventstore/db-client';
import type { Logger } from '../../logger.js';
import { backoffMs, sleep } from '../../abort.js';
import { chainHashes, GENESIS_HASH } from '../hashChain.js';
import {
  assertStreamId,
  comparePositions,
  decodePosition,
  encodePosition,
  revisionSatisfies,
  WrongExpectedRevisionError,
  type AppendOptions,
  type AppendResult,
  type EventMetadata,
  type EventStore,
  type ExpectedRevision,
  type JsonObject,
  type NewEvent,
  type Position,
  type ReadAllOptions,
  type RecordedEvent,
  type SubscribeOptions,
} from '../eventStore.js';

/** The fields this adapter uses of the client's recorded event (JSON and binary events alike). */
interface StoredEvent {
  streamId: string;
  id: string;
  revision: bigint;
  type: string;
  created: Date;
  data: unknown;
  metadata: unknown;
  position?: EsdbPosition;
}

/** Enough for 20 writers appending with "any" to one stream at once, each losing every race but the last. */
const MAX_APPEND_ATTEMPTS = 50;
/** Raw events per $all page when looking backwards for the newest non-system event. */
const HEAD_PAGE = 100;
const MAX_INT64 = 0x7fffffffffffffffn;

const isSystemEvent = (event: StoredEvent): boolean =>
  event.type.startsWith('$') || event.streamId.startsWith('$');

const toClientPosition = (position: Position): EsdbPosition => {
  const { high, low } = decodePosition(position);
  return { commit: high, prepare: low };
};

function positionOf(event: StoredEvent): Position {
  const position = event.position;
  // Servers that do not know an event's $all position (stream reads before 22.6) send 0/0 or uint64 max, and
  // a made-up position would silently corrupt checkpoints.
  if (
    !position ||
    position.commit > MAX_INT64 ||
    position.prepare > MAX_INT64 ||
    (position.commit === 0n && position.prepare === 0n)
  )
    throw new Error(
      `EventStoreDB did not report the log position of ${event.streamId}@${event.revision}; this adapter needs a server that reports positions on stream reads (22.10 or later)`,
    );
  return encodePosition(position.commit, position.prepare);
}

/**
 * The exact bytes that were hashed. This adapter writes data as a binary event holding the UTF-8 of
 * JSON.stringify(data), so the bytes come back untouched. A JSON event (written by another tool) is only handed
 * over parsed by the client, so its bytes are rebuilt with JSON.stringify: EventStoreDB stores the bytes the
 * client sent and this client serialises JSON events with JSON.stringify, whose output survives a parse and
 * re-stringify unchanged, but bytes from a writer that formats JSON differently would not verify.
 */
function rawDataOf(event: StoredEvent): string {
  if (event.data instanceof Uint8Array)
    return Buffer.from(event.data.buffer, event.data.byteOffset, event.data.byteLength).toString('utf8');
  return JSON.stringify(event.data);
}

function storedMetadata(event: StoredEvent): Omit<EventMetadata, 'eventId'> {
  const metadata = event.metadata;
  if (
    typeof metadata !== 'object' ||
    metadata === null ||
    metadata instanceof Uint8Array ||
    Array.isArray(metadata)
  )
    throw new Error(
      `event ${event.id} in ${event.streamId} has no JSON metadata: it was not written by this store`,
    );
  return metadata as Omit<EventMetadata, 'eventId'>;
}

function hashOf(event: StoredEvent): string {
  const hash = (storedMetadata(event) as { hash?: unknown }).hash;
  if (typeof hash !== 'string')
    throw new Error(`${event.streamId}@${event.revision} carries no hash, so the chain cannot be continued`);
  return hash;
}

function toRecordedEvent(event: StoredEvent): RecordedEvent {
  const rawData = rawDataOf(event);
  return {
    streamId: event.streamId,
    revision: Number(event.revision),
    position: positionOf(event),
    type: event.type,
    data: JSON.parse(rawData) as JsonObject,
    rawData,
    metadata: { ...storedMetadata(event), eventId: event.id },
    recordedAt: event.created.toISOString(),
  };
}

const sameId = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();

export interface EsdbEventStoreOptions {
  connectionString: string;
  logger: Logger;
}

/**
 * The event store on EventStoreDB. The hash chain needs the previous event's hash, so every append reads the
 * stream's head and then appends with that exact revision as the expectation: a concurrent writer makes the
 * server refuse the append instead of leaving two events that claim the same predecessor. The caller's own
 * expectation is checked here, against the head that was read.
 */
export class EsdbEventStore implements EventStore {
  readonly name = 'esdb' as const;
  private readonly client: EventStoreDBClient;
  private closed = false;

  constructor(private readonly options: EsdbEventStoreOptions) {
    this.client = EventStoreDBClient.connectionString(options.connectionString);
  }

  async append(streamId: string, events: NewEvent[], options: AppendOptions): Promise<AppendResult> {
    assertStreamId(streamId);
    if (events.length === 0) throw new Error('append needs at least one event');
    const expected = options.expectedRevision;
    // Serialised once: these exact bytes are hashed and sent, so what is read back verifies.
    const rawData = events.map((event) => JSON.stringify(event.data));
    let lostRace = false;
    for (let attempt = 1; ; attempt++) {
      const tail = await this.readTail(streamId, events.length);
      const head = tail.length > 0 ? Number(tail[tail.length - 1]!.revision) : null;
      const existing = await this.findExisting(streamId, events, expected, head, tail);
      if (existing) return existing;
      // Only "any" tolerates another writer getting in first; like PostgreSQL, "stream_exists" does not.
      if (
        !revisionSatisfies(expected, head) ||
        (lostRace && expected !== 'any') ||
        attempt > MAX_APPEND_ATTEMPTS
      )
        throw new WrongExpectedRevisionError(streamId, expected, head);

      const firstRevision = head === null ? 0 : head + 1;
      const hashes = chainHashes(
        streamId,
        firstRevision,
        head === null ? GENESIS_HASH : hashOf(tail[tail.length - 1]!),
        events.map((event, index) => ({ type: event.type, rawData: rawData[index]! })),
      );
      const proposed = events.map((event, index) =>
        // Binary, not jsonEvent: the client would re-serialise JSON data on write and hand back only its parse
        // on read, while binary data travels and is stored as exactly these bytes. Metadata stays JSON.
        binaryEvent({
          id: event.eventId,
          type: event.type,
          data: Buffer.from(rawData[index]!, 'utf8'),
          metadata: { ...event.metadata, hash: hashes[index]! },
        }),
      );
      if (options.beforeCommit) await options.beforeCommit();
      try {
        const result = await this.client.appendToStream(streamId, proposed, {
          expectedRevision: head === null ? NO_STREAM : BigInt(head),
        });
        return await this.appendedResult(streamId, events, result.nextExpectedRevision);
      } catch (error) {
        if (!(error instanceof WrongExpectedVersionError)) throw error;
        // Go round again: the next read either finds these very events (a concurrent retry of this request
        // won, so answer as it did) or reports the conflict against the head that beat us.
        lostRace = true;
        if (expected === 'any') await sleep(backoffMs(attempt, 5, 200));
      }
    }
  }

  /**
   * Where a repeat of this append would have put its events: after the expected revision, or for "any" and
   * "stream_exists" (whose place is not known) at the end of the stream. A retry that arrives after someone
   * else has appended to the stream with "any" is therefore not recognised; expected revisions always are.
   */
  private async findExisting(
    streamId: string,
    events: NewEvent[],
    expected: ExpectedRevision,
    head: number | null,
    tail: StoredEvent[],
  ): Promise<AppendResult | null> {
    if (head === null) return null;
    let window = tail;
    if (expected === 'no_stream' || typeof expected === 'number') {
      const first = expected === 'no_stream' ? 0 : expected + 1;
      if (first > head) return null;
      if (tail.length === 0 || Number(tail[0]!.revision) !== first)
        window = await this.readEvents(streamId, { fromRevision: BigInt(first), maxCount: events.length });
    }
    const ids = events.map((event) => event.eventId);
    if (!window.some((stored) => ids.some((id) => sameId(id, stored.id)))) return null;
    const sameAppend =
      window.length === events.length && window.every((stored, index) => sameId(stored.id, ids[index]!));
    if (!sameAppend)
      throw new Error(
        `stream ${streamId}: some of these event ids are already stored elsewhere in the stream`,
      );
    const last = window[window.length - 1]!;
    return { nextRevision: Number(last.revision), position: positionOf(last), hash: hashOf(last) };
  }

  /**
   * The append's result as the log records it. The append reply's own position is not used: for a write the
   * server recognises as a repeat it reports where the original was committed, which need not be the last
   * event's $all position, and repeats answered by findExisting must give the same result as the first time.
   */
  private async appendedResult(
    streamId: string,
    events: NewEvent[],
    nextRevision: bigint,
  ): Promise<AppendResult> {
    const [last] = await this.readEvents(streamId, { fromRevision: nextRevision, maxCount: 1 });
    const lastId = events[events.length - 1]!.eventId;
    if (!last || !sameId(last.id, lastId))
      throw new Error(
        `stream ${streamId}: the append succeeded but revision ${nextRevision} is not event ${lastId}`,
      );
    return { nextRevision: Number(nextRevision), position: positionOf(last), hash: hashOf(last) };
  }

  /** The newest `count` events of the stream, oldest first; [] when it does not exist. */
  private async readTail(streamId: string, count: number): Promise<StoredEvent[]> {
    const newestFirst = await this.readEvents(streamId, {
      fromRevision: END,
      direction: BACKWARDS,
      maxCount: count,
    });
    return newestFirst.reverse();
  }

  private async readEvents(
    streamId: string,
    options: { fromRevision: ReadRevision; maxCount: number; direction?: typeof FORWARDS | typeof BACKWARDS },
  ): Promise<StoredEvent[]> {
    const events: StoredEvent[] = [];
    const read = this.client.readStream(streamId, { resolveLinkTos: false, direction: FORWARDS, ...options });
    try {
      for await (const resolved of read) {
        if (resolved.event) events.push(resolved.event);
      }
    } catch (error) {
      if (error instanceof StreamNotFoundError) return [];
      throw error;
    }
    return events;
  }

  async readStream(streamId: string, options: { fromRevision?: number } = {}): Promise<RecordedEvent[]> {
    const fromRevision = BigInt(Math.max(0, options.fromRevision ?? 0));
    const events = await this.readEvents(streamId, { fromRevision, maxCount: Number.MAX_SAFE_INTEGER });
    return events.map(toRecordedEvent);
  }

  /**
   * EventStoreDB's $all is in commit order already, so there is no commit-safe horizon to respect. A read from
   * a position includes the event at it, and system events are dropped, so raw pages are read until `limit`
   * events are found or the log ends: a caller paging by the last returned position always moves forward.
   */
  async readAll({ after, limit }: ReadAllOptions): Promise<RecordedEvent[]> {
    const page: RecordedEvent[] = [];
    if (limit <= 0) return page;
    let seen: Position | null = after;
    for (;;) {
      const rawCount = limit - page.length + 1;
      let read = 0;
      const stream = this.client.readAll({
        fromPosition: seen ? toClientPosition(seen) : START,
        direction: FORWARDS,
        maxCount: rawCount,
        resolveLinkTos: false,
      });
      for await (const resolved of stream) {
        read++;
        const event = resolved.event;
        if (!event) continue;
        const position = positionOf(event);
        if (seen !== null && comparePositions(position, seen) <= 0) continue;
        seen = position;
        if (isSystemEvent(event)) continue;
        page.push(toRecordedEvent(event));
        if (page.length >= limit) break;
      }
      if (page.length >= limit) {
        await stream.cancel();
        return page;
      }
      if (read < rawCount) return page;
    }
  }

  async *subscribeToAll({ after, signal }: SubscribeOptions): AsyncGenerator<RecordedEvent> {
    // The last position yielded: a resubscription starts from here, and the server's copy of it is skipped.
    let checkpoint: Position | null = after;
    let failures = 0;
    while (!signal.aborted && !this.closed) {
      const subscription = this.client.subscribeToAll({
        fromPosition: checkpoint ? toClientPosition(checkpoint) : START,
        resolveLinkTos: false,
        filter: excludeSystemEvents(),
      });
      // An error emitted after we stopped listening must not become an uncaught exception.
      subscription.on('error', (error: Error) =>
        this.options.logger.debug({ err: error }, 'event log subscription error'),
      );
      try {
        for await (const event of this.untilAborted(subscription, signal)) {
          failures = 0;
          if (isSystemEvent(event)) continue;
          const recorded = toRecordedEvent(event);
          if (checkpoint !== null && comparePositions(recorded.position, checkpoint) <= 0) continue;
          yield recorded;
          checkpoint = recorded.position;
        }
        if (signal.aborted || this.closed) return;
        failures++;
        this.options.logger.warn({ failures }, 'event log subscription ended; resubscribing');
      } catch (error) {
        if (signal.aborted || this.closed) return;
        failures++;
        this.options.logger.warn({ err: error, failures }, 'event log subscription failed; resubscribing');
      } finally {
        await subscription.unsubscribe().catch(() => undefined);
        subscription.destroy();
      }
      await sleep(backoffMs(failures, 200, 5000), signal);
    }
  }

  /**
   * The subscription's events until the signal aborts. Cancelling the gRPC call does not end the client's
   * readable, so a plain for-await over it could wait forever; each read is raced against the signal instead.
   */
  private async *untilAborted(
    subscription: AllStreamSubscription,
    signal: AbortSignal,
  ): AsyncGenerator<StoredEvent> {
    let onAbort!: () => void;
    const aborted = new Promise<'aborted'>((resolve) => (onAbort = () => resolve('aborted')));
    if (signal.aborted) return;
    signal.addEventListener('abort', onAbort, { once: true });
    const iterator = subscription[Symbol.asyncIterator]();
    try {
      for (;;) {
        const next = iterator.next();
        const step = await Promise.race([next, aborted]);
        if (step === 'aborted') {
          next.catch(() => undefined);
          return;
        }
        if (step.done) return;
        if (step.value.event) yield step.value.event;
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  async headPosition(): Promise<Position | null> {
    let before: Position | null = null;
    for (;;) {
      let read = 0;
      const stream = this.client.readAll({
        fromPosition: before ? toClientPosition(before) : END,
        direction: BACKWARDS,
        maxCount: HEAD_PAGE,
        resolveLinkTos: false,
      });
      for await (const resolved of stream) {
        read++;
        const event = resolved.event;
        if (!event) continue;
        const position = positionOf(event);
        // Whether a backwards read includes its starting position is not something to rely on.
        if (before !== null && comparePositions(position, before) >= 0) continue;
        before = position;
        if (!isSystemEvent(event)) {
          await stream.cancel();
          return position;
        }
      }
      if (read < HEAD_PAGE) return null;
    }
  }

  async ping(): Promise<void> {
    for await (const _ of this.client.readAll({ fromPosition: END, direction: BACKWARDS, maxCount: 1 })) {
      // Reaching the server is the check; the event itself does not matter.
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.client.dispose();
  }
}
