import { expect } from 'chai';
import { call, quickWorkerSettings, registerAndLogin, useTestService } from '../support/service.js';
import { killAll, startRoleProcess } from '../support/processes.js';
import { sleep, waitFor } from '../support/wait.js';

/** A task's attempt as the log records it: when it started and ended, and on which worker. */
interface AttemptSpan {
  taskId: string;
  groupKey: string | null;
  workerId: string;
  startedAt: number;
  endedAt: number | null;
  /**
   * When the database recorded the TaskStarted and the attempt's end. The handler runs inside this span (it starts
   * after its TaskStarted is stored and ends before its outcome is), and the span lies inside the time the claim
   * counts the task as running (from the claim's commit to the outcome's), so overlaps of these spans are the ones
   * the limit bounds. The worker-clock times in the events are taken before a claim waits for the database, so
   * they can overlap by more than the tasks ever did.
   */
  recordedFrom: number;
  recordedTo: number | null;
}

/**
 * Limits across worker processes, on the full stack (PostgreSQL, Kafka, Redis): the API, relay and projector in this
 * process, three worker processes apart, so the limits are held by the claim and not by any one process. Every
 * verdict is sampled from the events (TaskStarted and the attempt's end), never from the API.
 */
describe('queue limits across three worker processes (full stack)', function () {
  this.timeout(180_000);
  const service = useTestService(
    'full',
    (config) => {
      quickWorkerSettings(config);
      config.workers.concurrency = 8;
      config.workers.defaultQueueConcurrency = 8;
      config.tasks.maxBatchItems = 1000;
    },
    ['api', 'relay', 'projector'],
  );
  let admin: string;
  let user: string;

  before(async () => {
    const infrastructure = service.service.infrastructure;
    admin = (
      await registerAndLogin(service.url, { label: 'qadmin', role: { name: 'admin', infrastructure } })
    ).token;
    user = (await registerAndLogin(service.url, { label: 'quser' })).token;
    await Promise.all([1, 2, 3].map(() => startRoleProcess(service.config, ['worker'])));
  });
  // Before the service stops (useTestService stops it last): the workers use its database.
  after(async () => {
    await killAll();
  });

  const configure = async (queue: string, settings: unknown) => {
    const response = await call(service.url, 'PUT', `/queues/${queue}`, { body: settings, token: admin });
    expect(response.status, JSON.stringify(response.body)).to.equal(200);
    return response.body;
  };

  const submitAll = async (tasks: unknown[]): Promise<string[]> => {
    const ids: string[] = [];
    for (let from = 0; from < tasks.length; from += 1000) {
      const response = await call(service.url, 'POST', '/tasks/batch', {
        body: { tasks: tasks.slice(from, from + 1000) },
        token: user,
      });
      expect(response.status).to.equal(200);
      expect(response.body.refused).to.equal(0);
      ids.push(...response.body.results.map((result: { task: { id: string } }) => result.task.id));
    }
    return ids;
  };

  /** Each task's attempts from the log: TaskStarted, then the attempt's end (succeeded, failed, released). */
  const spans = async (ids: readonly string[]): Promise<AttemptSpan[]> => {
    const { rows } = await service.service.infrastructure.pool.query<{
      stream_id: string;
      type: string;
      data: string;
      recorded_at: Date;
    }>(
      `SELECT stream_id, type, data, recorded_at FROM events WHERE stream_id = ANY($1::text[])
        ORDER BY stream_id, revision`,
      [ids.map((id) => `task-${id}`)],
    );
    const result: AttemptSpan[] = [];
    let groupKey: string | null = null;
    const open = new Map<string, AttemptSpan>();
    for (const row of rows) {
      const data = JSON.parse(row.data);
      if (row.type === 'TaskQueued') groupKey = data.spec.groupKey ?? null;
      if (row.type === 'TaskStarted') {
        const span = {
          taskId: data.taskId,
          groupKey,
          workerId: data.workerId,
          startedAt: Date.parse(data.startedAt),
          endedAt: null,
          recordedFrom: row.recorded_at.getTime(),
          recordedTo: null,
        };
        open.set(data.taskId, span);
        result.push(span);
      }
      const end = data.finishedAt ?? data.failedAt ?? data.releasedAt;
      if (['TaskSucceeded', 'TaskAttemptFailed', 'TaskFailed', 'TaskReleased'].includes(row.type) && end) {
        const span = open.get(data.taskId);
        if (span) {
          span.endedAt = Date.parse(end);
          span.recordedTo = row.recorded_at.getTime();
        }
        open.delete(data.taskId);
      }
    }
    return result;
  };

  const doneCount = async (ids: readonly string[]): Promise<number> => {
    const { rows } = await service.service.infrastructure.pool.query<{ count: string }>(
      `SELECT count(*)::text AS count FROM events WHERE type = 'TaskSucceeded' AND stream_id = ANY($1::text[])`,
      [ids.map((id) => `task-${id}`)],
    );
    return Number(rows[0]!.count);
  };

  /** The most attempts running at one instant: a sweep over the starts and ends. */
  const mostAtOnce = (attempts: readonly AttemptSpan[]): number => {
    const edges = attempts.flatMap((span) => [
      { at: span.recordedFrom, delta: 1 },
      { at: span.recordedTo ?? Number.POSITIVE_INFINITY, delta: -1 },
    ]);
    // An end and a start at the same millisecond: the end first (the slot was freed, then taken).
    edges.sort((a, b) => a.at - b.at || a.delta - b.delta);
    let running = 0;
    let most = 0;
    for (const edge of edges) most = Math.max(most, (running += edge.delta));
    return most;
  };

  it('refuses PUT /queues/{name} to a non-admin (403) and bad settings (400)', async () => {
    const forbidden = await call(service.url, 'PUT', '/queues/anything', {
      body: { concurrency: 1 },
      token: user,
    });
    expect(forbidden.status).to.equal(403);
    const bad = await call(service.url, 'PUT', '/queues/anything', {
      body: { concurrency: 0, rate: { limit: 5 } },
      token: admin,
    });
    expect(bad.status).to.equal(400);
    expect(bad.headers.get('content-type')).to.match(/application\/problem\+json/);
    const paths = bad.body.errors.map((error: { path: string }) => error.path);
    expect(paths).to.include('/body/concurrency');
  });

  it('never has more than 3 running of a queue limited to 3, across the three workers', async () => {
    const settings = await configure('limit3', { concurrency: 3 });
    expect(settings).to.include({ name: 'limit3', concurrency: 3, source: 'settings', paused: false });
    const ids = await submitAll(
      Array.from({ length: 30 }, (_, i) => ({
        title: `limited ${i}`,
        type: 'sleep',
        payload: { ms: 150 },
        queue: 'limit3',
      })),
    );
    await waitFor('all 30 done', async () => ((await doneCount(ids)) === ids.length ? true : undefined), {
      timeoutMs: 60_000,
    });
    const attempts = await spans(ids);
    expect(mostAtOnce(attempts)).to.equal(3);
    // The three processes shared the work: the limit was held by the claim, not by one process.
    expect(
      new Set(attempts.map((span) => span.workerId.split('-').slice(0, -1).join('-'))).size,
    ).to.be.greaterThan(1);

    await waitFor('the read model to count 30 done', async () =>
      (await call(service.url, 'GET', '/queues/limit3', { token: admin })).body.tasks.done === 30
        ? true
        : undefined,
    );
  });

  it('starts at most 10 per second of a queue limited to 10/s, over 20 s of backlog', async () => {
    await configure('rate10', { rate: { limit: 10, interval_ms: 1000 } });
    const ids = await submitAll(
      Array.from({ length: 400 }, (_, i) => ({ title: `rated ${i}`, queue: 'rate10' })),
    );
    await sleep(20_000);
    // Stop the rest: nothing more of it starts while the verdict is taken.
    await configure('rate10', { paused: true });
    const starts = (await spans(ids)).map((span) => span.startedAt).sort((a, b) => a - b);
    // Any window of 1 s holds at most 10 starts: look at the 11th start after each one.
    for (let i = 0; i + 10 < starts.length; i++)
      expect(starts[i + 10]! - starts[i]!, `starts ${i} to ${i + 10}`).to.be.at.least(1000);
    // And the limit is a rate, not a stall: close to 10/s was started over the 20 s.
    expect(starts.length).to.be.within(150, 210);
  });

  it('serves a small key long before a big one on a fair queue (A: 5,000 queued, B: 20)', async () => {
    await configure('fair', { concurrency: 6 });
    const a = await submitAll(
      Array.from({ length: 5000 }, (_, i) => ({ title: `a ${i}`, queue: 'fair', group_key: 'tenant-a' })),
    );
    const b = await submitAll(
      Array.from({ length: 20 }, (_, i) => ({ title: `b ${i}`, queue: 'fair', group_key: 'tenant-b' })),
    );
    // A has been running while its 5,000 were being submitted; what counts is how many more it gets before B ends.
    const aBefore = await doneCount(a);
    // Sampled meanwhile from the schedule, which the claim counts by: never more than 6 at once. (Echo tasks end
    // within milliseconds, so the events' worker-clock times, taken before a claim waits for the queue's lock,
    // would overlap by more than the tasks ever did.)
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await service.service.infrastructure.pool.query<{ count: number }>(
          `SELECT count(*)::int AS count FROM task_schedule WHERE queue = 'fair' AND status IN ('running', 'claimed')`,
        );
        most = Math.max(most, rows[0]!.count);
        await sleep(5);
      }
    })();
    await waitFor("B's 20 done", async () => ((await doneCount(b)) === 20 ? true : undefined), {
      timeoutMs: 60_000,
    });
    sampling = false;
    await sampler;
    const aDuring = (await doneCount(a)) - aBefore;
    // Round robin: B's 20 took turns with about as many of A's (plus what was already running), not 4,500 of them.
    expect(aDuring, `A finished ${aDuring} while B ran`).to.be.below(100);
    expect(aBefore + aDuring).to.be.below(a.length);
    expect(most).to.be.within(1, 6);
    await configure('fair', { paused: true });
  });

  it('starts nothing of a paused queue until it is resumed, and lists it with its counts', async () => {
    await configure('pausable', { paused: true });
    const ids = await submitAll([{ title: 'waits', queue: 'pausable' }]);
    await sleep(1000);
    expect(await spans(ids)).to.have.length(0);
    await configure('pausable', {});
    await waitFor('the resumed task done', async () => ((await doneCount(ids)) === 1 ? true : undefined));

    const list = await call(service.url, 'GET', '/queues', { token: admin });
    expect(list.status).to.equal(200);
    const names = list.body.items.map((queue: { name: string }) => queue.name);
    expect(names).to.include.members(['limit3', 'rate10', 'fair', 'pausable']);
    const forbidden = await call(service.url, 'GET', '/queues', { token: user });
    expect(forbidden.status).to.equal(403);
  });
});
