import { expect } from 'chai';
import {
  call,
  registerAndLogin,
  quickWorkerSettings,
  stackLabel,
  STACK_MODES,
  useTestService,
} from '../support/service.js';
import { readWholeLog } from '../support/log.js';
import { waitFor } from '../support/wait.js';

interface BatchResult {
  index: number;
  status: number;
  task?: { id: string; title: string; status: string };
  problem?: {
    status: number;
    type: string;
    errors?: Array<{ path: string; message: string }>;
    detail?: string;
  };
}

for (const mode of STACK_MODES) {
  describe(`bulk submit, POST /tasks/batch (${stackLabel(mode)})`, function () {
    this.timeout(90000);
    const service = useTestService(mode, (config) => {
      quickWorkerSettings(config);
      config.tasks.maxBatchItems = 1000;
      config.tasks.maxPayloadBytes = 1024;
    });
    let token: string;

    before(async () => {
      token = (await registerAndLogin(service.url, { label: 'bulk' })).token;
    });

    const submitBatch = (tasks: unknown[]) =>
      call(service.url, 'POST', '/tasks/batch', { body: { tasks }, token });
    const results = (response: { body: any }) => response.body.results as BatchResult[];

    it('answers one result per item in order; a bad item refuses itself only, with its own problem document', async () => {
      const response = await submitBatch([
        { title: 'first', type: 'echo', payload: { n: 1 } },
        { description: 'no title' },
        { title: 'unknown type', type: 'no-such-type' },
        'not an object',
        { title: 'too big', payload: { blob: 'x'.repeat(2000) } },
        { title: 'bad instant', run_at: '2016-12-31T23:59:60Z' },
        { title: 'last', priority: 'high' },
      ]);
      expect(response.status).to.equal(200);
      const items = results(response);
      expect(items.map((item) => [item.index, item.status])).to.deep.equal([
        [0, 202],
        [1, 400],
        [2, 400],
        [3, 400],
        [4, 413],
        [5, 400],
        [6, 202],
      ]);
      expect(response.body.accepted).to.equal(2);
      expect(response.body.refused).to.equal(5);
      expect(items[1]!.problem!.errors).to.deep.include({
        path: '/body/tasks/1/title',
        message: 'is required',
      });
      expect(items[2]!.problem!.errors!.map((error) => error.path)).to.deep.equal(['/body/tasks/2/type']);
      expect(items[3]!.problem!.errors!.map((error) => error.path)).to.deep.equal(['/body/tasks/3']);
      expect(items[4]!.problem!.detail).to.contain('/body/tasks/4/payload');
      expect(items[5]!.problem!.errors!.map((error) => error.path)).to.deep.equal(['/body/tasks/5/run_at']);
      for (const item of items.filter((result) => result.status !== 202))
        expect(item.problem!.status).to.equal(item.status);

      // The accepted ones are real tasks: readable at the answer's position, and run to done.
      const position = response.headers.get('x-position')!;
      expect(position).to.be.a('string').and.not.equal('');
      for (const item of [items[0]!, items[6]!]) {
        const read = await call(service.url, 'GET', `/tasks/${item.task!.id}`, {
          token,
          headers: { 'x-min-position': position },
        });
        expect(read.status).to.equal(200);
        expect(read.body.title).to.equal(item.task!.title);
      }
      expect(items[6]!.task!.title).to.equal('last');
    });

    it('gives each item its idempotency key: a replay answers the same tasks, a reused key with another body is 422 for that item alone', async () => {
      const key = `bulk-${Date.now()}`;
      const batch = [
        { title: 'keyed one', idempotency_key: `${key}-1` },
        { title: 'keyed two', idempotency_key: `${key}-2` },
        { title: 'unkeyed' },
      ];
      const first = results(await submitBatch(batch));
      const again = results(await submitBatch(batch));
      expect(first.map((item) => item.status)).to.deep.equal([202, 202, 202]);
      expect(again.map((item) => item.status)).to.deep.equal([202, 202, 202]);
      expect(again[0]!.task!.id).to.equal(first[0]!.task!.id);
      expect(again[1]!.task!.id).to.equal(first[1]!.task!.id);
      expect(again[2]!.task!.id).to.not.equal(first[2]!.task!.id);

      const reused = results(
        await submitBatch([
          { title: 'keyed one, changed', idempotency_key: `${key}-1` },
          { title: 'fresh', idempotency_key: `${key}-3` },
        ]),
      );
      expect(reused.map((item) => item.status)).to.deep.equal([422, 202]);

      // The same key twice in one batch, same body: one task, answered to both.
      const twice = results(
        await submitBatch([
          { title: 'twice', idempotency_key: `${key}-4` },
          { title: 'twice', idempotency_key: `${key}-4` },
        ]),
      );
      expect(twice.map((item) => item.status)).to.deep.equal([202, 202]);
      expect(twice[1]!.task!.id).to.equal(twice[0]!.task!.id);
    });

    it('refuses a request that is not a list of 1 to tasks.maxBatchItems items as a whole, and stores nothing', async () => {
      const store = service.service.infrastructure.store;
      // Streams, not events: the tasks of the tests before may still be running and appending.
      const streams = async () => new Set((await readWholeLog(store)).map((event) => event.streamId)).size;
      const before = await streams();
      for (const body of [{ tasks: [] }, { tasks: {} }, {}, { tasks: [{ title: 'x' }], extra: 1 }]) {
        const response = await call(service.url, 'POST', '/tasks/batch', { body, token });
        expect(response.status, JSON.stringify(body)).to.equal(400);
        expect(response.headers.get('content-type')).to.contain('application/problem+json');
      }
      const tooMany = await submitBatch(Array.from({ length: 1001 }, (_, index) => ({ title: `t${index}` })));
      expect(tooMany.status).to.equal(400);
      expect(tooMany.body.errors.map((error: { path: string }) => error.path)).to.deep.equal(['/body/tasks']);
      expect(
        (await call(service.url, 'POST', '/tasks/batch', { body: { tasks: [{ title: 'x' }] } })).status,
      ).to.equal(401);
      expect(await streams()).to.equal(before);
    });

    it('queues 1,000 tasks in one request, each once in the log, and runs them all to done', async () => {
      const response = await submitBatch(
        Array.from({ length: 1000 }, (_, index) => ({
          title: `bulk ${index}`,
          type: 'echo',
          payload: { index },
        })),
      );
      expect(response.status).to.equal(200);
      const items = results(response);
      expect(items.every((item, index) => item.index === index && item.status === 202)).to.equal(true);
      const ids = new Set(items.map((item) => item.task!.id));
      expect(ids.size).to.equal(1000);

      const events = await readWholeLog(service.service.infrastructure.store);
      const queued = events.filter(
        (event) => event.type === 'TaskQueued' && ids.has(event.streamId.slice(5)),
      );
      expect(queued).to.have.length(1000);
      const titles = new Map(
        queued.map((event) => [
          event.streamId.slice(5),
          (event.data as { spec: { title: string } }).spec.title,
        ]),
      );
      items.forEach((item, index) => expect(titles.get(item.task!.id)).to.equal(`bulk ${index}`));

      let done = 0;
      await waitFor(
        'the 1000 bulk tasks to be done',
        async () => {
          const { rows } = await service.service.infrastructure.pool.query<{ done: number }>(
            `SELECT count(*)::int AS done FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'done'`,
            [[...ids]],
          );
          done = rows[0]!.done;
          return done === 1000 || undefined;
        },
        { timeoutMs: 60000, intervalMs: 200, describe: () => `Only ${done} of 1000 were done.` },
      );
    });

    it('documents the operation and its item schema in the OpenAPI document', async () => {
      const doc = (await call(service.url, 'GET', '/openapi.json')).body;
      expect(doc.paths['/tasks/batch'].post.operationId).to.equal('submitTasks');
      expect(doc.components.schemas.BatchSubmitItem.properties).to.have.keys(
        ...Object.keys(doc.components.schemas.SubmitTask.properties),
        'idempotency_key',
      );
    });
  });
}
