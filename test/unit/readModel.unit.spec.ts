import { expect } from 'chai';
import type { PoolClient } from '../../src/infra/db/pool.js';
import type { RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import { defineProjection } from '../../src/projections/readModel.js';
import { recordedEvent } from '../support/fixtures.js';

const event = (streamId: string, revision: number): RecordedEvent =>
  recordedEvent(streamId, revision, `${streamId}-${revision}`, 'Counted');

/** A fold whose rows are counts kept in a Map: what each load and write was given is recorded. */
function countingFold(rowPerStream: boolean) {
  const stored = new Map<string, number>([['b', 3]]);
  const loads: string[][] = [];
  const writes: Array<Array<{ key: string; row: number | null }>> = [];
  const projection = defineProjection<number>({
    name: 'counts',
    eventTypes: new Set(['Counted']),
    tables: [{ name: 'counts', streamOf: 'r.id' }],
    rowPerStream,
    keyOf: (recorded) => {
      if (recorded.data.unusable) throw new TypeError(`${recorded.streamId} names no row`);
      return recorded.streamId;
    },
    load(_client, keys) {
      loads.push([...keys]);
      return Promise.resolve(
        new Map(keys.flatMap((key) => (stored.has(key) ? [[key, stored.get(key)!]] : []))),
      );
    },
    evolve: (row) => (row ?? 0) + 1,
    write(_client, changed) {
      writes.push([...changed]);
      return Promise.resolve();
    },
  });
  return { projection, loads, writes };
}

// The fold's own load and write are the test's: no database is involved, so the client is never used.
const noClient = {} as PoolClient;
const batch = [event('a', 0), event('a', 1), event('b', 4)];

describe('a read model fold', () => {
  it("does not load the row of a stream whose first event is in an exclusive applier's batch", async () => {
    const { projection, loads, writes } = countingFold(true);
    await projection.project(noClient, batch, () => undefined, { exclusive: true });
    expect(loads).to.deep.equal([['b']]);
    expect(writes).to.deep.equal([
      [
        { key: 'a', row: 2 },
        { key: 'b', row: 4 },
      ],
    ]);
  });

  it('loads every row for the live projector, and for a fold whose rows may span streams', async () => {
    for (const [rowPerStream, exclusive] of [
      [true, false],
      [false, true],
    ]) {
      const { projection, loads } = countingFold(rowPerStream!);
      await projection.project(noClient, batch, () => undefined, { exclusive: exclusive! });
      expect(loads).to.deep.equal([['a', 'b']]);
    }
  });

  it("loads the row of a stream whose revision 0 was unusable: its next event is the key's first", async () => {
    const { projection, loads } = countingFold(true);
    const unusable = { ...event('b', 0), data: { unusable: true } };
    const bad: RecordedEvent[] = [];
    await projection.project(noClient, [unusable, event('b', 1)], (recorded) => bad.push(recorded), {
      exclusive: true,
    });
    expect(bad).to.deep.equal([unusable]);
    expect(loads).to.deep.equal([['b']]);
  });

  it('makes no load at all when every stream of the batch starts in it', async () => {
    const { projection, loads, writes } = countingFold(true);
    await projection.project(noClient, [event('a', 0), event('c', 0)], () => undefined, { exclusive: true });
    expect(loads).to.deep.equal([]);
    expect(writes[0]).to.deep.equal([
      { key: 'a', row: 1 },
      { key: 'c', row: 1 },
    ]);
  });
});
