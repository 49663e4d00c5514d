import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { foldEvents } from '../../src/domain/decider.js';
import { task } from '../../src/domain/tasks/state.js';
import type { RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import { readLog, startLoad, statusCounts, waitUntilAllTerminal, useFaultStack } from './support/stack.js';
import { sleep } from '../support/wait.js';
import type { Child } from '../support/processes.js';

const TASKS = 10_000;
const CONCURRENCY = 64;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const megabytes = (bytes: number) => Math.round(bytes / 1048576);
/** A child's resident set, from /proc (0 once it is gone). */
const rssOf = (pid: number): number => {
  try {
    const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return Number(kb ?? 0) * 1024;
  } catch {
    return 0;
  }
};
async function settledMemory() {
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(200);
  }
  return process.memoryUsage();
}

describe(`load: ${TASKS} tasks at concurrency ${CONCURRENCY} through the full stack`, function () {
  this.timeout(600000);
  // The API and the relay here; the projector and the worker in processes of their own. In one process the
  // projector shares the API's connection pool and event loop, and falls far behind during the submissions.
  const stack = useFaultStack(['api', 'relay'], (config) => {
    config.workers.concurrency = 32;
    config.workers.queues = { default: 32 };
    config.database.poolSize = 20;
  });
  let children: Child[];

  before(async () => {
    children = [await stack.roleProcess(['projector']), await stack.roleProcess(['worker'])];
  });

  it('runs every task to done; the read model’s counts equal the log’s; memory returns near its baseline', async () => {
    const echo = (index: number) => ({ title: `load ${index}`, type: 'echo', payload: { index } });
    // Warm up first, so the baseline includes what every process has after its first requests.
    const warmUp = startLoad(stack, { count: 200, concurrency: CONCURRENCY, spec: echo });
    await warmUp.done;
    await waitUntilAllTerminal(stack.db, warmUp.ids, 60000);
    const baseline = await settledMemory();
    const childBaseline = children.map((child) => rssOf(child.pid));

    let peakRss = 0;
    const childPeak = children.map(() => 0);
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
      children.forEach((child, i) => (childPeak[i] = Math.max(childPeak[i]!, rssOf(child.pid))));
    }, 250);
    const started = Date.now();
    const load = startLoad(stack, { count: TASKS, concurrency: CONCURRENCY, spec: echo });
    await load.done;
    const submittedIn = Date.now() - started;
    expect(load.failures, 'every submission accepted').to.deep.equal([]);
    expect(load.ids).to.have.length(TASKS);
    const readModel = await waitUntilAllTerminal(stack.db, load.ids, 420000);
    const finishedIn = Date.now() - started;
    clearInterval(sampler);
    expect(readModel).to.deep.equal({ done: TASKS });
    await sleep(2000);
    const after = await settledMemory();
    const childAfter = children.map((child) => rssOf(child.pid));
    console.log(
      `      [load] ${TASKS} tasks submitted in ${(submittedIn / 1000).toFixed(1)} s, all done in ${(finishedIn / 1000).toFixed(1)} s ` +
        `(${Math.round((TASKS * 1000) / finishedIn)} tasks/s)`,
    );
    console.log(
      `      [load] RSS of this process (API, relay): baseline ${megabytes(baseline.rss)} MB, peak ${megabytes(peakRss)} MB, ` +
        `after ${megabytes(after.rss)} MB; heap used ${megabytes(baseline.heapUsed)} -> ${megabytes(after.heapUsed)} MB`,
    );
    children.forEach((child, i) =>
      console.log(
        `      [load] RSS of ${child.name}: baseline ${megabytes(childBaseline[i]!)} MB, peak ${megabytes(childPeak[i]!)} MB, after ${megabytes(childAfter[i]!)} MB`,
      ),
    );

    // The counts per status in the read model equal those of folding each task's stream in the log.
    const events = await readLog(stack);
    const streams = new Map<string, RecordedEvent[]>();
    for (const event of events) {
      if (!event.streamId.startsWith('task-')) continue;
      const stream = streams.get(event.streamId);
      if (stream) stream.push(event);
      else streams.set(event.streamId, [event]);
    }
    const folded: Record<string, number> = {};
    for (const id of load.ids) {
      const status = foldEvents(task, streams.get(`task-${id}`) ?? []).status;
      folded[status] = (folded[status] ?? 0) + 1;
    }
    expect(folded, 'counts from the log').to.deep.equal(await statusCounts(stack.db, load.ids));
    const { rows } = await stack.db.query<{ status: string; count: number }>(
      'SELECT status, count(*)::int AS count FROM tasks GROUP BY status',
    );
    const allFolded: Record<string, number> = {};
    for (const stream of streams.values()) {
      const status = foldEvents(task, stream).status;
      allFolded[status] = (allFolded[status] ?? 0) + 1;
    }
    expect(Object.fromEntries(rows.map((row) => [row.status, row.count])), 'whole tasks table').to.deep.equal(
      allFolded,
    );
    console.log(
      `      [load] ${events.length} events in the log; status counts ${JSON.stringify(allFolded)}`,
    );

    // Generous: RSS rarely shrinks all the way (the allocator keeps freed pages), but a leak of the load's size
    // would show in the heap.
    expect(after.rss, 'RSS after the load').to.be.lessThan(baseline.rss * 3);
    expect(after.heapUsed, 'heap used after the load').to.be.lessThan(baseline.heapUsed * 2 + 32 * 1048576);
  });
});
