import { expect } from 'chai';
import type { RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import { recordedEvent, rejection } from '../support/fixtures.js';
import { PartitionBatchCombiner, type PartitionBatch } from '../../src/projections/partitionBatchCombiner.js';

function events(partition: number, count: number): RecordedEvent[] {
  return Array.from({ length: count }, (_, i) =>
    recordedEvent(`stream-${partition}`, i, `${partition}-${i}`),
  );
}

/** An apply that ends only when the test says so, recording what each call was given. */
function controlledApply() {
  const calls: Array<readonly PartitionBatch[]> = [];
  const finish: Array<(error?: Error) => void> = [];
  const apply = (parts: readonly PartitionBatch[]) =>
    new Promise<void>((resolve, reject) => {
      calls.push(parts);
      finish.push((error) => (error ? reject(error) : resolve()));
    });
  return { calls, finish, apply };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('partition batch combiner: the read side applies batches that arrive together in one transaction', () => {
  it('applies the batches handed over in one turn together, each partition whole and in order', async () => {
    const { calls, finish, apply } = controlledApply();
    const combiner = new PartitionBatchCombiner(apply);
    const a = { partition: 0, events: events(0, 3) };
    const b = { partition: 1, events: events(1, 2) };
    const answers = [combiner.apply(a), combiner.apply(b)];
    await tick();
    expect(calls).to.have.length(1);
    expect(calls[0]).to.deep.equal([a, b]);
    finish[0]!();
    await Promise.all(answers);
  });

  it('gathers what arrives while a transaction runs into the next one', async () => {
    const { calls, finish, apply } = controlledApply();
    const combiner = new PartitionBatchCombiner(apply);
    const first = combiner.apply({ partition: 0, events: events(0, 1) });
    await tick();
    const second = combiner.apply({ partition: 1, events: events(1, 1) });
    const third = combiner.apply({ partition: 2, events: events(2, 1) });
    await tick();
    expect(calls).to.have.length(1);
    finish[0]!();
    await first;
    await tick();
    expect(calls).to.have.length(2);
    expect(calls[1]!.map((part) => part.partition)).to.deep.equal([1, 2]);
    finish[1]!();
    await Promise.all([second, third]);
  });

  it('fails every batch of a failed transaction, and only those', async () => {
    const { calls, finish, apply } = controlledApply();
    const combiner = new PartitionBatchCombiner(apply);
    const failed = [
      combiner.apply({ partition: 0, events: events(0, 1) }),
      combiner.apply({ partition: 1, events: events(1, 1) }),
    ];
    await tick();
    const later = combiner.apply({ partition: 2, events: events(2, 1) });
    finish[0]!(new Error('connection lost'));
    for (const answer of failed) expect((await rejection(answer)).message).to.equal('connection lost');
    await tick();
    expect(calls).to.have.length(2);
    finish[1]!();
    await later;
  });

  it('caps a transaction at maxEvents, never splitting a batch', async () => {
    const { calls, finish, apply } = controlledApply();
    const combiner = new PartitionBatchCombiner(apply, 4);
    const answers = [
      combiner.apply({ partition: 0, events: events(0, 3) }),
      combiner.apply({ partition: 1, events: events(1, 3) }),
      combiner.apply({ partition: 2, events: events(2, 5) }),
    ];
    await tick();
    expect(calls.map((parts) => parts.map((part) => part.partition))).to.deep.equal([[0, 1]]);
    finish[0]!();
    await Promise.all(answers.slice(0, 2));
    await tick();
    expect(calls.map((parts) => parts.map((part) => part.partition))).to.deep.equal([[0, 1], [2]]);
    finish[1]!();
    await answers[2];
  });
});
