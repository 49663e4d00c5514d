import { expect } from 'chai';
import { startAttemptTimers, type TimerClock } from '../../src/workers/attemptTimers.js';
import { sleep } from '../support/wait.js';

/** A clock that moves only when told: `advance(ms)` runs every timer due by then, in time order. */
function fakeClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map<number, { at: number; every: number | null; callback: () => void }>();
  const clock: TimerClock = {
    setTimeout: (callback, ms) => {
      timers.set(nextId, { at: now + ms, every: null, callback });
      return nextId++;
    },
    setInterval: (callback, ms) => {
      timers.set(nextId, { at: now + ms, every: ms, callback });
      return nextId++;
    },
    clear: (handle) => void timers.delete(handle as number),
  };
  const advance = async (ms: number) => {
    const until = now + ms;
    for (;;) {
      const due = [...timers].filter(([, t]) => t.at <= until).sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      const [id, timer] = due;
      now = timer.at;
      if (timer.every === null) timers.delete(id);
      else timer.at += timer.every;
      timer.callback();
      await Promise.resolve(); // let a check's promise settle, as the event loop would between timers
      await Promise.resolve();
      await Promise.resolve();
    }
    now = until;
  };
  return { clock, advance, pending: () => timers.size };
}

const noFlush = { intervalMs: 1_000_000, flush: () => undefined };

describe('attempt timers: the timeout, cancellation check and progress flush of one attempt', () => {
  it('aborts the attempt with "timeout" once its timeout has passed, not before', async () => {
    const { clock, advance } = fakeClock();
    const controller = new AbortController();
    startAttemptTimers({ controller, timeoutMs: 500, progressFlush: noFlush, clock });
    await advance(499);
    expect(controller.signal.aborted).to.equal(false);
    await advance(1);
    expect(controller.signal.aborted).to.equal(true);
    expect(controller.signal.reason).to.equal('timeout');
  });

  it('flushes progress every interval until cleared, then never again', async () => {
    const { clock, advance, pending } = fakeClock();
    let flushes = 0;
    const timers = startAttemptTimers({
      controller: new AbortController(),
      timeoutMs: 10_000,
      progressFlush: { intervalMs: 100, flush: () => flushes++ },
      clock,
    });
    await advance(350);
    expect(flushes).to.equal(3);
    timers.clear();
    expect(pending(), 'every timer cleared').to.equal(0);
    await advance(1000);
    expect(flushes).to.equal(3);
  });

  it('asks the cancellation check every interval and aborts with "canceled" once it says so', async () => {
    const { clock, advance } = fakeClock();
    const controller = new AbortController();
    const answers = [false, false, true];
    let asked = 0;
    startAttemptTimers({
      controller,
      timeoutMs: 10_000,
      cancelCheck: { intervalMs: 50, isCanceled: async () => answers[asked++] ?? false },
      progressFlush: noFlush,
      clock,
    });
    await advance(100);
    expect(asked).to.equal(2);
    expect(controller.signal.aborted).to.equal(false);
    await advance(50);
    expect(asked).to.equal(3);
    expect(controller.signal.reason).to.equal('canceled');
  });

  it('asks a check that failed again at the next tick, without aborting', async () => {
    const { clock, advance } = fakeClock();
    const controller = new AbortController();
    let asked = 0;
    startAttemptTimers({
      controller,
      timeoutMs: 10_000,
      cancelCheck: {
        intervalMs: 50,
        isCanceled: async () => {
          asked++;
          if (asked === 1) throw new Error('stream read failed');
          return asked === 2;
        },
      },
      progressFlush: noFlush,
      clock,
    });
    await advance(50);
    expect(asked).to.equal(1);
    expect(controller.signal.aborted).to.equal(false);
    await advance(50);
    expect(asked).to.equal(2);
    expect(controller.signal.reason).to.equal('canceled');
  });

  it('starts no cancellation check when none is given (the schedule checks every attempt at once)', async () => {
    const { clock, pending } = fakeClock();
    startAttemptTimers({ controller: new AbortController(), timeoutMs: 100, progressFlush: noFlush, clock });
    expect(pending(), 'the timeout and the progress flush only').to.equal(2);
  });

  it('keeps the first reason: a cancel after the timeout, or a timeout after a stop, changes nothing', async () => {
    const { clock, advance } = fakeClock();
    const timedOut = new AbortController();
    startAttemptTimers({
      controller: timedOut,
      timeoutMs: 100,
      cancelCheck: { intervalMs: 150, isCanceled: async () => true },
      progressFlush: noFlush,
      clock,
    });
    await advance(200);
    expect(timedOut.signal.reason).to.equal('timeout');

    const released = new AbortController();
    startAttemptTimers({ controller: released, timeoutMs: 100, progressFlush: noFlush, clock });
    released.abort('release');
    await advance(200);
    expect(released.signal.reason).to.equal('release');
  });

  it("runs on Node's timers by default", async () => {
    const controller = new AbortController();
    let flushes = 0;
    const timers = startAttemptTimers({
      controller,
      timeoutMs: 60,
      progressFlush: { intervalMs: 10, flush: () => flushes++ },
    });
    await sleep(120);
    timers.clear();
    expect(controller.signal.reason).to.equal('timeout');
    expect(flushes).to.be.at.least(3);
    const flushed = flushes;
    await sleep(40);
    expect(flushes, 'no flush after clear').to.equal(flushed);
  });
});
