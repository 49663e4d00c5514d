import { expect } from 'chai';
import { call, quickWorkerSettings, registerAndLogin, useTestService } from '../support/service.js';
import { waitFor } from '../support/wait.js';
import { verifySchedule } from '../../src/workers/schedule.js';

/** Tasks that wait for other tasks, on the full stack (PostgreSQL, Kafka, Redis), run by real workers. */
describe('dependencies between tasks (full stack)', function () {
  this.timeout(90_000);
  const service = useTestService('full', quickWorkerSettings);
  let token: string;

  before(async () => {
    token = (await registerAndLogin(service.url, { label: 'deps' })).token;
  });

  const submit = async (body: Record<string, unknown>, as = token): Promise<string> => {
    const response = await call(service.url, 'POST', '/tasks', { body, token: as });
    expect(response.status, JSON.stringify(response.body)).to.equal(202);
    return response.body.id as string;
  };
  const task = async (id: string) => (await call(service.url, 'GET', `/tasks/${id}`, { token })).body;
  const finished = (id: string) =>
    waitFor(`task ${id} to finish`, async () => {
      const body = await task(id);
      return ['done', 'failed', 'canceled'].includes(body.status) ? body : undefined;
    });
  /** The log's TaskStarted and TaskSucceeded times of a task (worker clock), from its history. */
  const times = async (id: string) => {
    const events = (await call(service.url, 'GET', `/tasks/${id}/events`, { token })).body.items as Array<{
      type: string;
      data: { startedAt?: string; finishedAt?: string };
    }>;
    return {
      started: Date.parse(events.find((e) => e.type === 'TaskStarted')!.data.startedAt!),
      finished: Date.parse(events.find((e) => e.type === 'TaskSucceeded')?.data.finishedAt ?? 'x'),
    };
  };

  it('runs a chain in order, and a gather task reads the results of what it waited for', async () => {
    const first = await submit({ title: 'first', type: 'sleep', payload: { ms: 300 } });
    const second = await submit({ title: 'second', payload: { step: 2 }, depends_on: [first] });
    const last = await submit({ title: 'gather', type: 'gather', depends_on: [first, second] });
    // While the first sleeps, the others wait, and say for what.
    // The read model follows the log through Kafka: wait for the row.
    const waiting = await waitFor('the gather task in the read model', async () => {
      const body = await task(last);
      return body.id === last ? body : undefined;
    });
    expect(waiting.status).to.equal('pending');
    expect(waiting.depends_on).to.deep.equal([first, second]);
    expect(waiting.on_dependency_failure).to.equal('fail');
    expect(waiting.waiting_for).to.include(second);

    const gathered = await finished(last);
    expect(gathered.status).to.equal('done');
    expect(gathered.waiting_for).to.equal(undefined);
    expect(gathered.result).to.deep.equal({
      results: [
        { task_id: first, status: 'done', result: { slept_ms: 300 } },
        { task_id: second, status: 'done', result: { step: 2 } },
      ],
    });
    const [a, b, c] = await Promise.all([first, second, last].map(times));
    expect(b!.started).to.be.at.least(a!.finished);
    expect(c!.started).to.be.at.least(b!.finished);
  });

  it('fails a task whose dependency failed, naming it; with "ignore" it runs anyway', async () => {
    const failing = await submit({
      title: 'fails',
      type: 'fail',
      payload: { message: 'no', unrecoverable: true },
    });
    const dependent = await submit({ title: 'dependent', depends_on: [failing] });
    const indifferent = await submit({
      title: 'indifferent',
      payload: { ran: true },
      depends_on: [failing],
      on_dependency_failure: 'ignore',
    });
    const failed = await finished(dependent);
    expect(failed.status).to.equal('failed');
    expect(failed.error).to.deep.equal({ kind: 'dependency', message: `dependency ${failing} ended failed` });
    const ran = await finished(indifferent);
    expect(ran).to.include({ status: 'done' });
    expect(ran.result).to.deep.equal({ ran: true });
  });

  it("refuses a dependency that is not one of the submitter's tasks, pointing at it (400)", async () => {
    const stranger = (await registerAndLogin(service.url, { label: 'stranger' })).token;
    const theirs = await submit({ title: 'theirs' }, stranger);
    const response = await call(service.url, 'POST', '/tasks', {
      body: { title: 'mine', depends_on: ['00000000-0000-4000-8000-000000000000', theirs] },
      token,
    });
    expect(response.status).to.equal(400);
    expect(response.body.errors.map((error: { path: string }) => error.path)).to.deep.equal([
      '/body/depends_on/0',
      '/body/depends_on/1',
    ]);
    const notUuid = await call(service.url, 'POST', '/tasks', {
      body: { title: 'x', depends_on: ['nope'] },
      token,
    });
    expect(notUuid.status).to.equal(400);
  });

  it('leaves the schedule equal to a fold of the log', async () => {
    expect(await verifySchedule(service.service.infrastructure.pool)).to.deep.equal([]);
  });
});
