import { expect } from 'chai';
import { foldEvents, type Decider, type DomainEvent } from '../../src/domain/decider.js';

/** Given events / when a command / then events or an error: the deciders' tests, without I/O. */
export function given<State, Event extends DomainEvent>(
  decider: Decider<State, Event>,
  history: NoInfer<Event>[],
) {
  const state = foldEvents(decider, history);
  return {
    when: (decide: (state: State) => NoInfer<Event>[]) => ({
      then: (expected: NoInfer<Event>[]) => expect(decide(state)).to.deep.equal(expected),
      thenThrows: (errorType: new (...args: never[]) => Error, message?: string | RegExp) => {
        let thrown: unknown;
        try {
          decide(state);
        } catch (error) {
          thrown = error;
        }
        expect(thrown, 'expected the command to be refused').to.be.instanceOf(errorType);
        if (typeof message === 'string') expect((thrown as Error).message).to.include(message);
        else if (message) expect((thrown as Error).message).to.match(message);
      },
    }),
  };
}
