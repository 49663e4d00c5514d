/**
 * src/infra/eventStore: the event store port (this file) and its two adapters, PostgreSQL and EventStoreDB,
 * which pass one contract suite (eventStore.contract.ts). Everything else in the system is derived from what is
 * appended here.
 */

/** JSON as it is stored: the hash chain covers these exact bytes, so data is kept as serialized text. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/**
 * A position in the global log, opaque to clients. Both adapters encode it as two fixed-width hex numbers
 * (`<high>-<low>`: transaction id and sequence in PostgreSQL, commit and prepare in EventStoreDB), so positions
 * from one store compare correctly as plain strings.
 */
export type Position = string;

export const encodePosition = (high: bigint, low: bigint): Position =>
  `${high.toString(16).padStart(16, '0')}-${low.toString(16).padStart(16, '0')}`;

export function decodePosition(position: Position): { high: bigint; low: bigint } {
  const match = /^([0-9a-f]{16})-([0-9a-f]{16})$/.exec(position);
  if (!match) throw new InvalidPositionError(position);
  return { high: BigInt('0x' + match[1]), low: BigInt('0x' + match[2]) };
}

export const isPosition = (value: unknown): value is Position =>
  typeof value === 'string' && /^[0-9a-f]{16}-[0-9a-f]{16}$/.test(value);

export const comparePositions = (a: Position, b: Position): number => (a < b ? -1 : a > b ? 1 : 0);

/** What a command supplies for each event's metadata; the store adds the hash chain. */
export interface EventContext {
  correlationId: string;
  causationId: string | null;
  userId: string | null;
  /** From the command's clock, never the store's: deciders and replays stay deterministic. */
  timestamp: string;
}

export interface NewEvent {
  eventId: string;
  type: string;
  data: JsonObject;
  metadata: EventContext;
}

/** What an append wake-up tells of each event appended in this process (see `EventStore.onAppended`). */
export type AppendedEvent = Pick<NewEvent, 'type' | 'data'>;

export interface EventMetadata extends EventContext {
  eventId: string;
  /** SHA-256 hex over (stream, revision, type, exact data bytes, previous hash): see hashChain.ts. */
  hash: string;
}

/** An event's metadata as JSON outside the service shows it (the API, NDJSON exports): snake_case. */
export interface MetadataJson {
  event_id: string;
  correlation_id: string;
  causation_id: string | null;
  user_id: string | null;
  timestamp: string;
  hash: string;
}

export const metadataJson = (metadata: EventMetadata): MetadataJson => ({
  event_id: metadata.eventId,
  correlation_id: metadata.correlationId,
  causation_id: metadata.causationId,
  user_id: metadata.userId,
  timestamp: metadata.timestamp,
  hash: metadata.hash,
});

export interface RecordedEvent {
  streamId: string;
  /** 0 for the first event of a stream. */
  revision: number;
  position: Position;
  type: string;
  data: JsonObject;
  /** The exact serialized bytes that were hashed; `data` is their parse. */
  rawData: string;
  metadata: EventMetadata;
  /** When the store recorded it (the store's clock, informational only). */
  recordedAt: string;
}

/** Expected stream state for optimistic concurrency. */
export type ExpectedRevision = 'any' | 'no_stream' | 'stream_exists' | number;

/** Whether a stream whose head is at `current` (null: no stream) is as `expected`: the check every adapter makes. */
export function revisionSatisfies(expected: ExpectedRevision, current: number | null): boolean {
  if (expected === 'any') return true;
  if (expected === 'no_stream') return current === null;
  if (expected === 'stream_exists') return current !== null;
  return current === expected;
}

export interface AppendOptions {
  expectedRevision: ExpectedRevision;
  /**
   * The chain hash of the event at `expectedRevision`, when the caller has just read it (the command handler
   * has). With it the PostgreSQL store appends in one statement, shared with concurrent appends (group commit).
   */
  previousHash?: string;
  /**
   * Fault-injection hook, called after the events are written and before they commit. The contract suite uses it
   * to force transactions to commit out of order. Adapters whose append is a single call may call it first.
   */
  beforeCommit?: () => Promise<void>;
}

export interface AppendResult {
  /** Revision of the last event in the stream after the append. */
  nextRevision: number;
  /** Global position of the last appended event. */
  position: Position;
  /** The chain hash of the last appended event: a caller that appends again next can pass it as previousHash. */
  hash: string;
}

export interface ReadAllOptions {
  /** Exclusive: events strictly after this position. null = from the start. */
  after: Position | null;
  limit: number;
}

export interface SubscribeOptions {
  /** Exclusive checkpoint: the subscription yields events strictly after it. null = from the start. */
  after: Position | null;
  signal: AbortSignal;
}

export interface EventStore {
  readonly name: 'postgres' | 'esdb';
  /**
   * Appends events atomically. Idempotent by event id: appending events whose ids are already stored (in that
   * stream, at the same place) returns the original result and writes nothing. Throws
   * WrongExpectedRevisionError on a concurrency conflict.
   */
  append(streamId: string, events: NewEvent[], options: AppendOptions): Promise<AppendResult>;
  /** The whole stream in order, or [] when it does not exist. */
  readStream(streamId: string, options?: { fromRevision?: number }): Promise<RecordedEvent[]>;
  /** A page of the global log, in commit-safe order (never skipping an event that commits later). */
  readAll(options: ReadAllOptions): Promise<RecordedEvent[]>;
  /** Catch-up then live: yields every event after the checkpoint, in log order, until the signal aborts. */
  subscribeToAll(options: SubscribeOptions): AsyncIterable<RecordedEvent>;
  /**
   * Calls `listener` soon after events are appended (by this process at once; by others when the adapter can
   * tell), as a hint to look again: with the events this process appended (type and data: a worker of some
   * queues looks at a TaskQueued's queue), or null for another process's appends, which it does not know.
   * Returns the function that removes the listener. Optional: the bus stays the way events are delivered.
   */
  onAppended?(listener: (appended: readonly AppendedEvent[] | null) => void): () => void;
  /** The position of the newest event in the log, or null for an empty log. */
  headPosition(): Promise<Position | null>;
  /** Cheap check for /ready. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export class WrongExpectedRevisionError extends Error {
  override name = 'WrongExpectedRevisionError';
  constructor(
    readonly streamId: string,
    readonly expected: ExpectedRevision,
    readonly actual: number | null,
  ) {
    super(`stream ${streamId}: expected revision ${String(expected)}, actual ${actual ?? 'no stream'}`);
  }
}

export class InvalidPositionError extends Error {
  override name = 'InvalidPositionError';
  constructor(readonly position: string) {
    super(`not a log position: ${JSON.stringify(position)}`);
  }
}

/** Stream ids are `<category>-<id>`; no whitespace, since they are Kafka keys, hash inputs and URL parts. */
export const STREAM_ID_PATTERN = /^[A-Za-z][A-Za-z0-9_]*-[A-Za-z0-9._:@-]{1,200}$/;

export function assertStreamId(streamId: string): void {
  if (!STREAM_ID_PATTERN.test(streamId)) throw new Error(`invalid stream id: ${JSON.stringify(streamId)}`);
}

export const streamCategory = (streamId: string): string => streamId.slice(0, streamId.indexOf('-'));
