/**
 * src/commands: the write side. Each aggregate's folder holds its application services and HTTP routes (its events,
 * state and pure deciders are in src/domain); this file is the one generic command handler they all go through
 * (read, decide, append).
 */
import { ConflictError } from '../errors.js';
import { foldEvents, type Decider, type DomainEvent } from '../domain/decider.js';
import {
  WrongExpectedRevisionError,
  type EventContext,
  type EventStore,
  type Position,
} from '../infra/eventStore/eventStore.js';

/**
 * What a command brings from outside the domain: the clock, the id generator and who is asking. Deciders take
 * their time and ids from here, never from `new Date()` or `randomUUID()`, so they stay pure and replayable.
 */
export interface CommandContext {
  now: () => Date;
  newId: () => string;
  correlationId: string;
  causationId: string | null;
  userId: string | null;
}

export interface HandleResult<State, Event extends DomainEvent> {
  /** The events this command appended ([] when the decision was to do nothing). */
  events: Event[];
  /** The state after them. */
  state: State;
  /** Stream revision after the command (null if the stream still does not exist). */
  revision: number | null;
  /** Log position of the last appended event; null when nothing was appended. For read-your-writes. */
  position: Position | null;
}

/**
 * A stream's state the caller already holds (a worker that just claimed the task, a submit of a new stream):
 * the first try decides on it without reading; a conflict falls back to reading the stream.
 */
export interface KnownHead<State> {
  state: State;
  /** null: the stream does not exist. */
  revision: number | null;
  /** The chain hash of the event at `revision` (GENESIS_HASH for a new stream). */
  hash: string;
}

/**
 * The one way commands change the world: read the stream, fold it into state, decide, and append with the
 * revision that was read. If another writer got there first, read again and decide again (the decision may
 * differ now); after `maxAttempts` the caller gets a 409 rather than a silent merge.
 */
export async function handleCommand<State, Event extends DomainEvent>(
  store: EventStore,
  streamId: string,
  decider: Decider<State, Event>,
  decide: (state: State) => Event[],
  context: CommandContext,
  options: { maxAttempts?: number; known?: KnownHead<State> } = {},
): Promise<HandleResult<State, Event>> {
  const maxAttempts = options.maxAttempts ?? 5;
  for (let attempt = 1; ; attempt++) {
    let state: State;
    let revision: number | null;
    let previousHash: string | undefined;
    if (attempt === 1 && options.known) {
      ({ state, revision, hash: previousHash } = options.known);
    } else {
      const history = await store.readStream(streamId);
      state = foldEvents(decider, history);
      revision = history.length > 0 ? history[history.length - 1]!.revision : null;
      previousHash = history.at(-1)?.metadata.hash;
    }
    const events = decide(state);
    if (events.length === 0) return { events, state, revision, position: null };
    const metadata: EventContext = {
      correlationId: context.correlationId,
      causationId: context.causationId,
      userId: context.userId,
      timestamp: context.now().toISOString(),
    };
    try {
      const result = await store.append(
        streamId,
        events.map((event) => ({ eventId: context.newId(), type: event.type, data: event.data, metadata })),
        { expectedRevision: revision ?? 'no_stream', previousHash },
      );
      return {
        events,
        state: events.reduce(decider.evolve, state),
        revision: result.nextRevision,
        position: result.position,
      };
    } catch (error) {
      if (!(error instanceof WrongExpectedRevisionError)) throw error;
      if (attempt >= maxAttempts)
        throw new ConflictError(`${streamId} kept changing while this request was being decided; try again`, {
          cause: error,
        });
    }
  }
}
