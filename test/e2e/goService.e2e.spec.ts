import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { call, quickWorkerSettings, stackLabel, STACK_MODES, useTestService } from '../support/service.js';
import { waitFor } from '../support/wait.js';
import { grantRoleByEmail } from '../../src/commands/identity/grantRoleCommand.js';
import { GO_SERVICE_TAG } from '../../src/compat/goService/routes.js';
import { newEmail } from '../support/fixtures.js';

const PASSWORD = 'password123';
/** The fields of the Go service's task (internal/task/model.go), no more, no fewer. */
const GO_TASK_KEYS = [
  'id',
  'user_id',
  'title',
  'description',
  'status',
  'priority',
  'created_at',
  'updated_at',
];
/** Workers serve only this queue: what a Go client creates stays pending, so it can still be edited. */
const RUN_QUEUE = 'go-e2e-runs';

for (const mode of STACK_MODES) {
  describe(`Go service compatibility (${stackLabel(mode)})`, function () {
    this.timeout(90000);
    const service = useTestService(mode, (config) => {
      quickWorkerSettings(config);
      config.workers.onlyQueues = [RUN_QUEUE];
    });
    let base: string;
    before(() => {
      base = service.url;
    });

    /** A Go client's account: registered and logged in through the Go service's routes. */
    const goUser = async () => {
      const email = newEmail('go');
      const registered = await call(base, 'POST', '/auth/register', { body: { email, password: PASSWORD } });
      expect(registered.status).to.equal(201);
      const login = await call(base, 'POST', '/auth/login', { body: { email, password: PASSWORD } });
      expect(login.status).to.equal(200);
      return { email, id: registered.body.id as string, token: login.body.access_token as string };
    };
    const createGoTask = async (token: string, title = 'Learn Go') => {
      const created = await call(base, 'POST', '/api/tasks', {
        token,
        body: { title, description: 'Take the course and write a test application', priority: 2 },
      });
      expect(created.status).to.equal(201);
      return created.body;
    };
    const expectProblem = (response: { status: number; headers: Headers; body: any }, status: number) => {
      expect(response.status).to.equal(status);
      expect(response.headers.get('content-type')).to.include('application/problem+json');
      expect(response.body).to.include({ status });
    };
    const eventTypes = async (id: string, token: string) =>
      ((await call(base, 'GET', `/tasks/${id}/events`, { token })).body.items as Array<{ type: string }>).map(
        (event) => event.type,
      );

    it("replays the Go service's Swagger flow: register, login, create, list, get, patch, delete, refresh, logout", async () => {
      const email = newEmail('go');
      // Its Swagger document writes the register path with a trailing slash.
      const registered = await call(base, 'POST', '/auth/register/', { body: { email, password: PASSWORD } });
      expect(registered.status).to.equal(201);
      const userId = registered.body.id as string;

      const login = await call(base, 'POST', '/auth/login', { body: { email, password: PASSWORD } });
      expect(login.status).to.equal(200);
      expect(login.body.access_token).to.be.a('string').and.not.equal('');
      expect(login.body.refresh_token).to.be.a('string').and.not.equal('');
      const token = login.body.access_token as string;

      const first = await call(base, 'POST', '/api/tasks', {
        token,
        body: { title: 'Learn Go', description: 'Take the course and write a test application', priority: 2 },
      });
      expect(first.status).to.equal(201);
      expect(first.body).to.have.all.keys(GO_TASK_KEYS);
      expect(first.body).to.include({
        user_id: userId,
        title: 'Learn Go',
        description: 'Take the course and write a test application',
        status: 'pending',
        priority: 2,
      });
      expect(first.headers.get('location')).to.equal(`/api/tasks/${first.body.id}`);
      const second = await call(base, 'POST', '/api/tasks', {
        token,
        body: { title: 'Write the service', description: '', priority: 7 },
      });
      expect(second.status).to.equal(201);

      // Right after the writes, as the Go service's synchronous writes allowed: newest first, a bare array.
      const list = await call(base, 'GET', '/api/tasks', { token });
      expect(list.status).to.equal(200);
      expect(list.body).to.be.an('array');
      expect(list.body.map((task: { id: string }) => task.id)).to.deep.equal([second.body.id, first.body.id]);
      for (const task of list.body) expect(task).to.have.all.keys(GO_TASK_KEYS);
      expect(list.body[1]).to.deep.equal(first.body);

      const got = await call(base, 'GET', `/api/tasks/${first.body.id}`, { token });
      expect(got.status).to.equal(200);
      expect(got.body).to.deep.equal(first.body);

      const patched = await call(base, 'PATCH', `/api/tasks/${first.body.id}`, {
        token,
        body: { title: 'Learn Go well', description: 'And Fiber', priority: 3 },
      });
      expect(patched.status).to.equal(200);
      expect(patched.body).to.include({ id: first.body.id, title: 'Learn Go well', priority: 3 });
      const afterPatch = await call(base, 'GET', `/api/tasks/${first.body.id}`, { token });
      expect(afterPatch.body).to.include({ title: 'Learn Go well', description: 'And Fiber', priority: 3 });

      const deleted = await call(base, 'DELETE', `/api/tasks/${first.body.id}`, { token });
      expect(deleted.status).to.equal(204);
      expect(deleted.body).to.equal(null);
      expectProblem(await call(base, 'GET', `/api/tasks/${first.body.id}`, { token }), 404);
      const remaining = await call(base, 'GET', '/api/tasks', { token });
      expect(remaining.body.map((task: { id: string }) => task.id)).to.deep.equal([second.body.id]);
      // Deleted means canceled and archived: the history stays.
      expect(await eventTypes(first.body.id, token)).to.deep.equal([
        'TaskQueued',
        'TaskUpdated',
        'TaskCanceled',
        'TaskArchived',
      ]);
      expect((await call(base, 'DELETE', `/api/tasks/${first.body.id}`, { token })).status).to.equal(204);

      const refreshed = await call(base, 'POST', '/auth/refresh', {
        body: { refresh_token: `Bearer ${login.body.refresh_token}` },
      });
      expect(refreshed.status).to.equal(200);
      expect(refreshed.body.access_token).to.be.a('string');
      expect(refreshed.body.refresh_token).to.be.a('string').and.not.equal(login.body.refresh_token);
      const withNewToken = await call(base, 'GET', '/api/tasks', { token: refreshed.body.access_token });
      expect(withNewToken.status).to.equal(200);

      const loggedOut = await call(base, 'POST', '/auth/logout', {
        body: { refresh_token: `Bearer ${refreshed.body.refresh_token}` },
      });
      expect(loggedOut.status).to.equal(200);
      expect(loggedOut.body).to.equal(null);
      expectProblem(
        await call(base, 'POST', '/auth/refresh', {
          body: { refresh_token: `Bearer ${refreshed.body.refresh_token}` },
        }),
        401,
      );
    });

    it('accepts a trailing slash on every route', async () => {
      const email = newEmail('go');
      expect(
        (await call(base, 'POST', '/auth/register/', { body: { email, password: PASSWORD } })).status,
      ).to.equal(201);
      const login = await call(base, 'POST', '/auth/login/', { body: { email, password: PASSWORD } });
      expect(login.status).to.equal(200);
      const token = login.body.access_token as string;
      const created = await call(base, 'POST', '/api/tasks/', {
        token,
        body: { title: 'slashed', description: 'x', priority: 1 },
      });
      expect(created.status).to.equal(201);
      const id = created.body.id as string;
      expect((await call(base, 'GET', '/api/tasks/', { token })).body).to.have.length(1);
      expect((await call(base, 'GET', `/api/tasks/${id}/`, { token })).body.id).to.equal(id);
      expect(
        (await call(base, 'PATCH', `/api/tasks/${id}/`, { token, body: { title: 'still slashed' } })).body
          .title,
      ).to.equal('still slashed');
      expect((await call(base, 'DELETE', `/api/tasks/${id}/`, { token })).status).to.equal(204);
      const refreshed = await call(base, 'POST', '/auth/refresh/', {
        body: { refresh_token: `Bearer ${login.body.refresh_token}` },
      });
      expect(refreshed.status).to.equal(200);
      expect(
        (
          await call(base, 'POST', '/auth/logout/', {
            body: { refresh_token: `Bearer ${refreshed.body.refresh_token}` },
          })
        ).status,
      ).to.equal(200);
    });

    it('hides an archived finished task from both lists, while its events stay for auditors and time travel', async () => {
      const user = await goUser();
      const submit = async (title: string) => {
        const submitted = await call(base, 'POST', '/tasks', {
          token: user.token,
          body: { title, queue: RUN_QUEUE, payload: { title } },
        });
        expect(submitted.status).to.equal(202);
        return submitted.body.id as string;
      };
      const ids = [await submit('finished one'), await submit('finished two')];
      for (const id of ids)
        await waitFor(
          `task ${id} to be done`,
          async () =>
            (await call(base, 'GET', `/tasks/${id}`, { token: user.token })).body.status === 'done'
              ? true
              : undefined,
          { timeoutMs: 20000 },
        );
      const listed = async () => ({
        ours: (await call(base, 'GET', '/tasks', { token: user.token })).body.items.map(
          (task: { id: string }) => task.id,
        ),
        go: (await call(base, 'GET', '/api/tasks', { token: user.token })).body.map(
          (task: { id: string }) => task.id,
        ),
      });
      expect(await listed()).to.deep.equal({ ours: [ids[1], ids[0]], go: [ids[1], ids[0]] });
      const beforeArchive = new Date(service.clock.now().getTime()).toISOString();

      // The Go service's DELETE archives a finished task; so does our POST /tasks/{id}/archive.
      expect((await call(base, 'DELETE', `/api/tasks/${ids[0]}`, { token: user.token })).status).to.equal(
        204,
      );
      const archived = await call(base, 'POST', `/tasks/${ids[1]}/archive`, { token: user.token });
      expect(archived.status).to.equal(200);
      expect(archived.body).to.include({ id: ids[1], status: 'done' });
      expect(archived.body.archived_at).to.be.a('string');
      const again = await call(base, 'POST', `/tasks/${ids[1]}/archive`, { token: user.token });
      expect(again.status).to.equal(200);
      expect(again.body.archived_at).to.equal(archived.body.archived_at);

      await waitFor(
        'the archived tasks to leave both lists',
        async () => {
          const now = await listed();
          return now.ours.length === 0 && now.go.length === 0 ? true : undefined;
        },
        { timeoutMs: 10000 },
      );
      for (const id of ids) {
        const ours = await call(base, 'GET', `/tasks/${id}`, {
          token: user.token,
          headers: { 'x-min-position': archived.headers.get('x-position')! },
        });
        expect(ours.status).to.equal(200);
        expect(ours.body.status).to.equal('done');
        expect(ours.body.archived_at).to.be.a('string');
        expect(await eventTypes(id, user.token)).to.deep.equal([
          'TaskQueued',
          'TaskStarted',
          'TaskSucceeded',
          'TaskArchived',
        ]);
        const then = await call(base, 'GET', `/tasks/${id}?as_of=${encodeURIComponent(beforeArchive)}`, {
          token: user.token,
        });
        expect(then.body).to.include({ status: 'done', archived_at: null });
      }

      await grantRoleByEmail(service.service.infrastructure, user.email, 'auditor');
      const auditor = await call(base, 'POST', '/auth/login', {
        body: { email: user.email, password: PASSWORD },
      });
      const audit = await call(base, 'GET', `/audit/events?stream=task-${ids[0]}`, {
        token: auditor.body.access_token,
      });
      expect(audit.status).to.equal(200);
      expect(audit.body.items.map((event: { type: string }) => event.type)).to.include('TaskArchived');
    });

    it('refuses to archive a task that has not finished, with a 409 problem', async () => {
      const user = await goUser();
      const task = await createGoTask(user.token);
      expectProblem(await call(base, 'POST', `/tasks/${task.id}/archive`, { token: user.token }), 409);
      expect((await call(base, 'GET', '/api/tasks', { token: user.token })).body).to.have.length(1);
    });

    it("answers another user's task as 404 on every route, and leaves it alone", async () => {
      const owner = await goUser();
      const other = await goUser();
      const task = await createGoTask(owner.token);
      for (const [method, body] of [
        ['GET', undefined],
        ['PATCH', { title: 'not yours' }],
        ['DELETE', undefined],
      ] as const)
        expectProblem(await call(base, method, `/api/tasks/${task.id}`, { token: other.token, body }), 404);
      expectProblem(await call(base, 'POST', `/tasks/${task.id}/archive`, { token: other.token }), 404);
      expect((await call(base, 'GET', '/api/tasks', { token: other.token })).body).to.deep.equal([]);
      expect((await call(base, 'GET', `/api/tasks/${task.id}`, { token: owner.token })).body).to.deep.equal(
        task,
      );
      expectProblem(await call(base, 'GET', `/api/tasks/${randomUUID()}`, { token: owner.token }), 404);
    });

    it('answers errors with problem documents where the Go service answered {error}', async () => {
      const email = newEmail('go');
      // 6 characters was the Go service's minimum; ours is 8.
      expectProblem(await call(base, 'POST', '/auth/register', { body: { email, password: 'abcdef' } }), 400);
      await call(base, 'POST', '/auth/register', { body: { email, password: PASSWORD } });
      expectProblem(await call(base, 'POST', '/auth/register', { body: { email, password: PASSWORD } }), 409);
      expectProblem(
        await call(base, 'POST', '/auth/login', { body: { email, password: 'wrong password' } }),
        401,
      );
      expectProblem(
        await call(base, 'POST', '/auth/refresh', { body: { refresh_token: 'Bearer nonsense' } }),
        401,
      );
      expectProblem(await call(base, 'GET', '/api/tasks'), 401);
      const { token } = await goUser();
      expectProblem(await call(base, 'GET', '/api/tasks/not-a-uuid', { token }), 400);
      expectProblem(
        await call(base, 'POST', '/api/tasks', { token, body: { title: 'x', priority: 11 } }),
        400,
      );
    });

    it('documents the routes in the OpenAPI document under a tag of their own', async () => {
      const doc = (await call(base, 'GET', '/openapi.json')).body;
      const tagged = Object.entries(doc.paths as Record<string, Record<string, { tags: string[] }>>).flatMap(
        ([path, byMethod]) =>
          Object.entries(byMethod)
            .filter(([, op]) => op.tags.includes(GO_SERVICE_TAG))
            .map(([method]) => `${method.toUpperCase()} ${path}`),
      );
      expect(tagged.sort()).to.deep.equal(
        [
          'POST /auth/register',
          'POST /auth/login',
          'POST /auth/refresh',
          'POST /auth/logout',
          'POST /api/tasks',
          'GET /api/tasks',
          'GET /api/tasks/{task_id}',
          'PATCH /api/tasks/{task_id}',
          'DELETE /api/tasks/{task_id}',
        ].sort(),
      );
      expect(doc.tags.map((tag: { name: string }) => tag.name)).to.include(GO_SERVICE_TAG);
      expect(doc.paths['/tasks/{id}/archive'].post.operationId).to.equal('archiveTask');
    });
  });
}
