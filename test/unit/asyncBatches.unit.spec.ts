import { expect } from 'chai';
import { asyncBatches } from '../../src/infra/asyncBatches.js';
import { sleep } from '../support/wait.js';

async function* source(groups: number[][], pauseMs: number) {
  for (const group of groups) {
    for (const item of group) yield item;
    await sleep(pauseMs);
  }
}

describe('asyncBatches', () => {
  it('batches what is ready at once and hands a batch on as soon as the source would wait', async () => {
    const batches: number[][] = [];
    for await (const batch of asyncBatches(source([[1, 2, 3], [4], [5, 6]], 20), 10)) batches.push(batch);
    expect(batches).to.deep.equal([[1, 2, 3], [4], [5, 6]]);
  });

  it('never makes a batch larger than the maximum', async () => {
    const batches: number[][] = [];
    for await (const batch of asyncBatches(source([[1, 2, 3, 4, 5]], 1), 2)) batches.push(batch);
    expect(batches).to.deep.equal([[1, 2], [3, 4], [5]]);
  });
});
