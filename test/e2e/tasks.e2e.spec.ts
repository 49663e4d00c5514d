import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import {
  call,
  quickWorkerSettings,
  registerAndLogin,
  stackLabel,
  STACK_MODES,
  useTestService,
} from '../support/service.js';
import { waitFor } from '../support/wait.js';

for (const mode of STACK_MODES) {
  describe(`tasks over HTTP (${stackLabel(mode)})`, function () {
    this.timeout(90000);
    const service = useTestService(mode, quickWorkerSettings);
    let base: string;
    let token: string;
    let otherToken: string;
    let webhook: http.Server;
    let webhookFailuresLeft = 0;
    let webhookCalls = 0;

    before(async () => {
      base = service.url;
      ({ token } = await registerAndLogin(base, { label: 'tasks' }));
      ({ token: otherToken } = await registerAndLogin(base, { label: 'tasks' }));
      webhook = http.createServer((req, res) => {
        webhookCalls++;
        if (webhookFailuresLeft-- > 0) res.writeHead(500).end('not yet');
        else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true }));
      });
      await new Promise<void>((resolve) => webhook.listen(0, '127.0.0.1', resolve));
    });
    after(() => {
      webhook?.close();
    });

    const submit = (body: unknown, headers: Record<string, string> = {}, as = token) =>
      call(base, 'POST', '/tasks', { body, token: as, headers });
    const getTask = (id: string, as = token, headers: Record<string, string> = {}) =>
      call(base, 'GET', `/tasks/${id}`, { token: as, headers });
    const history = async (id: string) =>
      (await call(base, 'GET', `/tasks/${id}/events`, { token })).body.items as Array<{
        type: string;
        data: any;
      }>;
    const untilStatus = (id: string, status: string, timeoutMs = 20000) =>
      waitFor(
        `task ${id} to be ${status}`,
        async () => {
          const response = await getTask(id);
          return response.body.status === status ? response.body : undefined;
        },
        { timeoutMs },
      );

    it("runs the seed's body ({title, description, priority}) with the echo handler to done", async () => {
      const submitted = await submit({
        title: 'seed task',
        description: 'as the seed posts it',
        priority: 3,
      });
      expect(submitted.status).to.equal(202);
      expect(submitted.headers.get('location')).to.equal(`/tasks/${submitted.body.id}`);
      expect(submitted.body).to.include({ type: 'echo', status: 'pending', priority: 3, queue: 'default' });
      const done = await untilStatus(submitted.body.id, 'done');
      expect(done.attempt).to.equal(1);
      expect((await history(submitted.body.id)).map((e) => e.type)).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskSucceeded',
      ]);
    });

    it("stores the handler's result", async () => {
      const submitted = await submit({ title: 'echo', payload: { answer: 42, list: ['ü', null] } });
      expect((await untilStatus(submitted.body.id, 'done')).result).to.deep.equal({
        answer: 42,
        list: ['ü', null],
      });
    });

    it('reads its own write: a GET with X-Min-Position sees the submitted task at once', async () => {
      const submitted = await submit({ title: 'read my write', type: 'sleep', payload: { ms: 50 } });
      const read = await getTask(submitted.body.id, token, {
        'X-Min-Position': submitted.headers.get('x-position')!,
      });
      expect(read.status).to.equal(200);
      expect(read.body.id).to.equal(submitted.body.id);
    });

    it('rejects bad tasks with a 400 problem and stores nothing', async () => {
      for (const body of [
        {},
        { title: '' },
        { title: 'x', type: 'nope' },
        { title: 'x', priority: 11 },
        { title: 'x', extra: 1 },
        { title: 'x', type: 'sleep', payload: { ms: -1 } },
      ]) {
        const response = await submit(body);
        expect(response.status, JSON.stringify(body)).to.equal(400);
        expect(response.headers.get('content-type')).to.include('application/problem+json');
      }
      const list = await call(base, 'GET', '/tasks?limit=100', { token });
      expect(list.body.items.map((t: { title: string }) => t.title)).not.to.include('');
    });

    it('retries a failing attempt with back-off, fails for good when attempts run out, and runs again on retry', async () => {
      webhookFailuresLeft = 100;
      const callsBefore = webhookCalls;
      const url = `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/hook`;
      const submitted = await submit({
        title: 'flaky webhook',
        type: 'http',
        payload: { url, method: 'POST', body: { n: 1 } },
        max_attempts: 2,
      });
      const failed = await untilStatus(submitted.body.id, 'failed');
      expect(failed.attempt).to.equal(2);
      expect(failed.error.message).to.include('500');
      const types = (await history(submitted.body.id)).map((e) => e.type);
      expect(types).to.deep.equal([
        'TaskQueued',
        'TaskStarted',
        'TaskAttemptFailed',
        'TaskStarted',
        'TaskFailed',
      ]);

      webhookFailuresLeft = 0;
      const retried = await call(base, 'POST', `/tasks/${submitted.body.id}/retry`, { token });
      expect(retried.status).to.equal(202);
      const done = await untilStatus(submitted.body.id, 'done');
      expect(done.result.status).to.equal(200);
      expect(webhookCalls - callsBefore, 'two failed attempts and one that succeeded').to.equal(3);
      expect(done.attempt).to.equal(1);
    });

    it('records progress, coalesced to at most about one event per progress interval', async () => {
      const submitted = await submit({ title: 'progressing', type: 'sleep', payload: { ms: 2500 } });
      await untilStatus(submitted.body.id, 'done');
      const progress = (await history(submitted.body.id)).filter((e) => e.type === 'TaskProgressed');
      expect(progress.length, 'the sleep handler reports about once a second').to.be.at.least(2);
      const interval = service.config.workers.progressIntervalMs;
      expect(progress.length).to.be.at.most(Math.ceil(2500 / interval) + 2);
      const values = progress.map((e) => e.data.progress as number);
      expect(values).to.deep.equal([...values].sort((a, b) => a - b));
    });

    it('stores a result larger than tasks.maxResultBytes as a truncated prefix', async () => {
      const limit = service.config.tasks.maxResultBytes;
      const submitted = await submit({ title: 'big result', payload: { text: 'x'.repeat(limit + 500) } });
      const done = await untilStatus(submitted.body.id, 'done');
      expect(done.result).to.have.key('truncated_json');
      expect(Buffer.byteLength(done.result.truncated_json)).to.be.at.most(limit);
      const succeeded = (await history(submitted.body.id)).find((e) => e.type === 'TaskSucceeded')!;
      expect(succeeded.data.resultTruncated).to.equal(true);
    });

    it('runs at most the configured number of tasks of one queue at once in a worker', async () => {
      const ids = await Promise.all(
        [0, 1, 2].map(
          async (i) =>
            (await submit({ title: `narrow ${i}`, queue: 'narrow', type: 'sleep', payload: { ms: 300 } }))
              .body.id as string,
        ),
      );
      for (const id of ids) await untilStatus(id, 'done');
      const spans = await Promise.all(
        ids.map(async (id) => {
          const events = await history(id);
          return [
            Date.parse(events.find((e) => e.type === 'TaskStarted')!.data.startedAt),
            Date.parse(events.find((e) => e.type === 'TaskSucceeded')!.data.finishedAt),
          ] as const;
        }),
      );
      spans.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < spans.length; i++)
        expect(spans[i]![0], 'queue "narrow" allows one at a time').to.be.at.least(spans[i - 1]![1]);
    });

    it('fails an unrecoverable error at once, without retries', async () => {
      const submitted = await submit({
        title: 'doomed',
        type: 'fail',
        payload: { message: 'bad input', unrecoverable: true },
        max_attempts: 5,
      });
      const failed = await untilStatus(submitted.body.id, 'failed');
      expect(failed.attempt).to.equal(1);
      expect(failed.error).to.deep.equal({ kind: 'unrecoverable', message: 'bad input' });
    });

    it('aborts a handler that passes timeout_ms and counts it as a failed attempt', async () => {
      const submitted = await submit({
        title: 'too slow',
        type: 'sleep',
        payload: { ms: 5000 },
        timeout_ms: 200,
        max_attempts: 1,
      });
      const failed = await untilStatus(submitted.body.id, 'failed');
      expect(failed.error.kind).to.equal('timeout');
    });

    it('never starts a delayed task before its run_at', async () => {
      const runAt = new Date(service.clock.now().getTime() + 1500).toISOString();
      const submitted = await submit({ title: 'later', run_at: runAt });
      expect(
        (await getTask(submitted.body.id, token, { 'X-Min-Position': submitted.headers.get('x-position')! }))
          .body.status,
      ).to.equal('pending');
      await untilStatus(submitted.body.id, 'done');
      const started = (await history(submitted.body.id)).find((e) => e.type === 'TaskStarted')!;
      expect(Date.parse(started.data.startedAt)).to.be.at.least(Date.parse(runAt));
    });

    it('edits a pending task, and refuses to edit one that has finished', async () => {
      const submitted = await submit({
        title: 'draft',
        run_at: new Date(service.clock.now().getTime() + 60000).toISOString(),
      });
      const edited = await call(base, 'PATCH', `/tasks/${submitted.body.id}`, {
        token,
        body: { title: 'final', priority: 'high' },
      });
      expect(edited.status).to.equal(200);
      expect(edited.body).to.include({ title: 'final', priority: 8 });
      await call(base, 'DELETE', `/tasks/${submitted.body.id}`, { token });
      expect(
        (await call(base, 'PATCH', `/tasks/${submitted.body.id}`, { token, body: { title: 'again' } }))
          .status,
      ).to.equal(409);
    });

    it('cancels a pending task at once, and a finished one is 409', async () => {
      const submitted = await submit({
        title: 'never mind',
        run_at: new Date(service.clock.now().getTime() + 60000).toISOString(),
      });
      const canceled = await call(base, 'DELETE', `/tasks/${submitted.body.id}`, { token });
      expect(canceled.status).to.equal(200);
      expect(canceled.body.status).to.equal('canceled');
      expect((await call(base, 'DELETE', `/tasks/${submitted.body.id}`, { token })).status).to.equal(409);
      expect((await history(submitted.body.id)).map((e) => e.type)).to.deep.equal([
        'TaskQueued',
        'TaskCanceled',
      ]);
    });

    it('cancels a running task: its handler is aborted and the task ends canceled', async () => {
      const submitted = await submit({
        title: 'long sleep',
        type: 'sleep',
        payload: { ms: 20000 },
        timeout_ms: 30000,
      });
      await untilStatus(submitted.body.id, 'in_progress');
      const canceled = await call(base, 'DELETE', `/tasks/${submitted.body.id}`, { token });
      expect(canceled.status).to.equal(200);
      // The worker lets go of it well before the sleep would have ended: the next task runs in its place.
      await waitFor(
        'the worker to abort the canceled handler',
        async () => {
          const metrics = await fetch(`${base}/metrics`).then((r) => r.text());
          return /task_attempts_finished_total\{outcome="canceled"\} [1-9]/.test(metrics) ? true : undefined;
        },
        { timeoutMs: 10000 },
      );
      const types = (await history(submitted.body.id)).map((e) => e.type);
      expect(types).to.include('TaskCanceled').and.not.include('TaskSucceeded');
      // The read model may lag the cancel: read it at the cancel's position, as a client would.
      const seenCancel = { 'X-Min-Position': canceled.headers.get('x-position')! };
      const read = await getTask(submitted.body.id, token, seenCancel);
      expect(read.status, 'the read model reached the cancel').to.equal(200);
      expect(read.body.status).to.equal('canceled');
    });

    it('answers a repeated Idempotency-Key with the same task and response, and a changed body with 422', async () => {
      const key = randomUUID();
      const body = { title: 'pay invoice 17', payload: { amount: 100 } };
      const first = await submit(body, { 'Idempotency-Key': key });
      const second = await submit(
        { payload: { amount: 100 }, title: 'pay invoice 17' },
        { 'Idempotency-Key': key },
      );
      expect(first.status).to.equal(202);
      expect(second.status).to.equal(202);
      expect(second.body).to.deep.equal(first.body);
      expect(second.headers.get('location')).to.equal(first.headers.get('location'));
      const changed = await submit({ ...body, payload: { amount: 999 } }, { 'Idempotency-Key': key });
      expect(changed.status).to.equal(422);
      const otherUser = await submit(body, { 'Idempotency-Key': key }, otherToken);
      expect(otherUser.body.id, 'keys are per user').not.to.equal(first.body.id);
    });

    it("hides another user's task: read, edit, cancel, retry and history are all 404", async () => {
      const submitted = await submit({
        title: 'mine',
        run_at: new Date(service.clock.now().getTime() + 60000).toISOString(),
      });
      const id = submitted.body.id;
      // With the task's own position, so a 404 means "not yours", never "not projected yet".
      const seen = { 'X-Min-Position': submitted.headers.get('x-position')! };
      expect((await getTask(id, token, seen)).status).to.equal(200);
      expect((await getTask(id, otherToken, seen)).status).to.equal(404);
      expect(
        (await call(base, 'PATCH', `/tasks/${id}`, { token: otherToken, body: { title: 'theirs' } })).status,
      ).to.equal(404);
      expect((await call(base, 'DELETE', `/tasks/${id}`, { token: otherToken })).status).to.equal(404);
      expect((await call(base, 'POST', `/tasks/${id}/retry`, { token: otherToken })).status).to.equal(404);
      expect((await call(base, 'GET', `/tasks/${id}/events`, { token: otherToken })).status).to.equal(404);
      const list = await call(base, 'GET', '/tasks?limit=100', { token: otherToken, headers: seen });
      expect(list.status).to.equal(200);
      expect(list.body.items.map((t: { id: string }) => t.id)).not.to.include(id);
      expect(
        (await call(base, 'GET', '/tasks?limit=100', { token, headers: seen })).body.items.map(
          (t: { id: string }) => t.id,
        ),
      ).to.include(id);
    });

    it('lets auditors read any task and its history', async () => {
      const { token: auditorToken } = await registerAndLogin(base, {
        label: 'tasks',
        role: { name: 'auditor', infrastructure: service.service.infrastructure },
      });
      const submitted = await submit({ title: 'audited' });
      expect(
        (
          await getTask(submitted.body.id, auditorToken, {
            'X-Min-Position': submitted.headers.get('x-position')!,
          })
        ).status,
      ).to.equal(200);
      expect(
        (await call(base, 'GET', `/tasks/${submitted.body.id}/events`, { token: auditorToken })).status,
      ).to.equal(200);
    });

    it('starts a high-priority task among the next few, even behind 1,000 low ones', async function () {
      this.timeout(180000);
      const { token: admin } = await registerAndLogin(base, {
        label: 'tasks',
        role: { name: 'admin', infrastructure: service.service.infrastructure },
      });
      expect((await call(base, 'POST', '/admin/workers/pause', { token: admin })).body.paused).to.equal(true);
      try {
        const low: string[] = [];
        for (let batch = 0; batch < 50; batch++) {
          const responses = await Promise.all(
            Array.from({ length: 20 }, (_, i) =>
              submit({ title: `low ${batch * 20 + i}`, priority: 'low', type: 'sleep', payload: { ms: 5 } }),
            ),
          );
          for (const response of responses) {
            expect(response.status).to.equal(202);
            low.push(response.body.id);
          }
        }
        const high = await submit({ title: 'urgent', priority: 'urgent' });
        // Every task in the read model before looking (under load the projection may lag by seconds).
        await waitFor(
          'every task in the read model',
          async () => {
            const { rows } = await service.service.infrastructure.pool.query<{ n: number }>(
              `SELECT count(*)::int AS n FROM tasks WHERE id = ANY($1::uuid[])`,
              [[...low, high.body.id]],
            );
            return rows[0]!.n === low.length + 1 ? true : undefined;
          },
          { timeoutMs: 60000 },
        );
        // A worker may have claimed a few before it saw the pause: the backlog is what is still pending now.
        const backlog = (
          await service.service.infrastructure.pool.query<{ id: string }>(
            `SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'pending'`,
            [low],
          )
        ).rows.map((row) => row.id);
        expect(backlog.length).to.be.greaterThan(900);
        expect((await call(base, 'POST', '/admin/workers/resume', { token: admin })).body.paused).to.equal(
          false,
        );
        await untilStatus(high.body.id, 'done', 60000);
        const highStart = (await history(high.body.id)).find((e) => e.type === 'TaskStarted')!.data
          .startedAt as string;
        const { rows: early } = await service.service.infrastructure.pool.query<{ id: string }>(
          `SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND status <> 'pending' AND updated_at <= $2`,
          [backlog, highStart],
        );
        const diagnosis = async () =>
          JSON.stringify({
            highStart,
            early: await Promise.all(
              early
                .slice(0, 5)
                .map(async ({ id }) =>
                  (await service.service.infrastructure.store.readStream(`task-${id}`)).map((e) => [
                    e.type,
                    e.metadata.timestamp,
                  ]),
                ),
            ),
          });
        // Workers run up to 4 at once: the urgent task may wait for those already claimed, and no more.
        if (early.length > service.config.workers.concurrency + 4)
          expect.fail(`${early.length} low tasks started first: ${await diagnosis()}`);
      } finally {
        await call(base, 'POST', '/admin/workers/resume', { token: admin });
      }
    });
  });
}
