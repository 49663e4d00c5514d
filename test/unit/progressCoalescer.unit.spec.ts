import { expect } from 'chai';
import { ProgressCoalescer, type ProgressReport } from '../../src/workers/progressCoalescer.js';

/** A write that ends only when the test says so. */
function controlledWrites() {
  const started: ProgressReport[] = [];
  const finish: Array<(error?: Error) => void> = [];
  const write = (report: ProgressReport) =>
    new Promise<void>((resolve, reject) => {
      started.push(report);
      finish.push((error) => (error ? reject(error) : resolve()));
    });
  return { started, finish, write };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('progress coalescer: the latest progress of an attempt, written at each flush', () => {
  it('writes only the latest report of an interval, and nothing when none came', async () => {
    const written: ProgressReport[] = [];
    const progress = new ProgressCoalescer({
      write: async (report) => void written.push(report),
      onError: (error) => expect.fail(String(error)),
    });
    progress.flush();
    await progress.settled();
    expect(written).to.deep.equal([]);
    expect(progress.wroteAny).to.equal(false);

    progress.report(0.1, 'a');
    progress.report(0.2);
    progress.report(0.3, 'c');
    progress.flush();
    progress.flush(); // nothing new since
    progress.report(0.9);
    progress.flush();
    await progress.settled();
    expect(written).to.deep.equal([
      { fraction: 0.3, message: 'c' },
      { fraction: 0.9, message: null },
    ]);
    expect(progress.wroteAny).to.equal(true);
  });

  it('runs writes one after another: a flush waits for the write before it', async () => {
    const { started, finish, write } = controlledWrites();
    const progress = new ProgressCoalescer({ write, onError: (error) => expect.fail(String(error)) });
    progress.report(0.1);
    progress.flush();
    progress.report(0.2);
    progress.flush();
    await tick();
    expect(started.map((r) => r.fraction)).to.deep.equal([0.1]);
    finish[0]!();
    await tick();
    expect(started.map((r) => r.fraction)).to.deep.equal([0.1, 0.2]);
    finish[1]!();
    await progress.settled();
  });

  it('says it wrote as soon as a write has started, before it has ended', async () => {
    const { finish, write } = controlledWrites();
    const progress = new ProgressCoalescer({ write, onError: () => undefined });
    progress.report(0.5);
    expect(progress.wroteAny, 'a report alone writes nothing').to.equal(false);
    progress.flush();
    expect(progress.wroteAny).to.equal(true);
    await tick();
    finish[0]!();
    await progress.settled();
  });

  it('hands a failed write to onError and goes on with the next one', async () => {
    const errors: unknown[] = [];
    const written: number[] = [];
    const progress = new ProgressCoalescer({
      write: async ({ fraction }) => {
        if (fraction === 0.1) throw new Error('append failed');
        written.push(fraction);
      },
      onError: (error) => errors.push(error),
    });
    progress.report(0.1);
    progress.flush();
    progress.report(0.2);
    progress.flush();
    await progress.settled();
    expect(errors.map((error) => (error as Error).message)).to.deep.equal(['append failed']);
    expect(written).to.deep.equal([0.2]);
  });

  it('settles once the writes started so far have ended, leaving an unflushed report unwritten', async () => {
    const { started, finish, write } = controlledWrites();
    const progress = new ProgressCoalescer({ write, onError: () => undefined });
    progress.report(0.4);
    progress.flush();
    progress.report(0.8); // after the last flush: the attempt ends before the next one
    let settled = false;
    const settling = progress.settled().then(() => (settled = true));
    await tick();
    expect(settled).to.equal(false);
    finish[0]!();
    await settling;
    expect(started.map((r) => r.fraction)).to.deep.equal([0.4]);
  });
});
