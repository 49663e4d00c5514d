/**
 * src/domain: what the business knows, free of HTTP, SQL and Kafka. Each aggregate's folder holds its typed event
 * union, its state (evolve) and its pure deciders (command + state -> events); both sides of CQRS import from here,
 * never from each other.
 */
import type { JsonObject, RecordedEvent } from '../infra/eventStore/eventStore.js';

/** A domain event before it is stored: its type and its data, nothing else. */
export interface DomainEvent<Type extends string = string, Data extends JsonObject = JsonObject> {
  type: Type;
  data: Data;
}

export interface Decider<State, Event extends DomainEvent> {
  initialState: State;
  evolve: (state: State, event: Event) => State;
}

/** The state a stream's events fold to: how a command handler, a projection or an auditor rebuilds an aggregate. */
export const foldEvents = <State, Event extends DomainEvent>(
  decider: Decider<State, Event>,
  events: ReadonlyArray<Pick<RecordedEvent, 'type' | 'data'>>,
): State =>
  events.reduce((state, event) => decider.evolve(state, event as unknown as Event), decider.initialState);
