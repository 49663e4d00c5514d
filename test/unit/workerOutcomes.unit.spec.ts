import { expect } from 'chai';
import { attemptEndAfterRejection, isUnrecoverable, messageOf } from '../../src/workers/outcomes.js';
import { UnrecoverableError } from '../../src/workers/handlers/handler.js';

const live = () => new AbortController().signal;
const abortedWith = (reason: unknown) => {
  const controller = new AbortController();
  controller.abort(reason);
  return controller.signal;
};
const abortError = () => Object.assign(new Error('the operation was aborted'), { name: 'AbortError' });

describe('worker outcomes: what a handler rejection means for its attempt', () => {
  it('a plain error is a retryable failure with its message', () => {
    expect(attemptEndAfterRejection(new Error('boom'), live(), 1000)).to.deep.equal({
      kind: 'failed',
      retryable: true,
      error: { kind: 'error', message: 'boom' },
    });
  });

  it('an UnrecoverableError, or an error flagged unrecoverable, fails the task at once', () => {
    const expected = {
      kind: 'failed',
      retryable: false,
      error: { kind: 'unrecoverable', message: 'bad payload' },
    };
    expect(attemptEndAfterRejection(new UnrecoverableError('bad payload'), live(), 1000)).to.deep.equal(
      expected,
    );
    const flagged = Object.assign(new Error('bad payload'), { unrecoverable: true });
    expect(attemptEndAfterRejection(flagged, live(), 1000)).to.deep.equal(expected);
    expect(isUnrecoverable({ unrecoverable: 'yes' }), 'only the boolean true flags it').to.equal(false);
    expect(isUnrecoverable(null)).to.equal(false);
  });

  it('the abort reason wins over the error the handler rejected with', () => {
    expect(attemptEndAfterRejection(abortError(), abortedWith('canceled'), 1000)).to.equal('canceled');
    expect(attemptEndAfterRejection(abortError(), abortedWith('release'), 1000)).to.equal('release');
    expect(attemptEndAfterRejection(new UnrecoverableError('x'), abortedWith('release'), 1000)).to.equal(
      'release',
    );
  });

  it('a timeout, or an abort for a reason the worker does not name, is a retryable timeout', () => {
    const timedOut = {
      kind: 'failed',
      retryable: true,
      error: { kind: 'timeout', message: 'timed out after 250 ms' },
    };
    expect(attemptEndAfterRejection(abortError(), abortedWith('timeout'), 250)).to.deep.equal(timedOut);
    expect(attemptEndAfterRejection(abortError(), abortedWith(new Error('other')), 250)).to.deep.equal(
      timedOut,
    );
  });

  it('keeps messages to 2,000 characters, and a thrown non-error as its string', () => {
    expect(messageOf(new Error('x'.repeat(5000)))).to.have.length(2000);
    expect(messageOf('plain string')).to.equal('plain string');
    expect(attemptEndAfterRejection(42, live(), 1000)).to.deep.equal({
      kind: 'failed',
      retryable: true,
      error: { kind: 'error', message: '42' },
    });
  });
});
