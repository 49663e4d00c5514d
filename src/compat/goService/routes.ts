/**
 * src/compat/goService: the replaced Go service's paths, served by the same commands and queries.
 */
import type { Request, Response } from 'express';
import { NotFoundError } from '../../errors.js';
import type { Api, ApiOperation } from '../../infra/http/api.js';
import type { CallerClaims } from '../../infra/http/auth.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import type { IdentityRoutes } from '../../commands/identity/routes.js';
import { editChanges, type EditBody, type TaskCommandRoutes } from '../../commands/tasks/routes.js';
import { removeTask, updateTask } from '../../domain/tasks/ownerCommands.js';
import type { TaskEvent } from '../../domain/tasks/events.js';
import type { Task } from '../../domain/tasks/state.js';
import type { TaskResource } from '../../domain/tasks/representation.js';
import type { TaskQueryRoutes } from '../../queries/tasks/route.js';

/**
 * The routes of the Go service this product replaces (mellgit/task-manager: `/auth/*`, `/api/tasks`), so its
 * clients work unchanged. No logic of their own: each one runs our command or query and answers in that
 * service's shape. Where we differ on purpose, the README's "Compatible with the Go service" says why.
 */

export const GO_SERVICE_TAG = 'compatible with the Go service';

export interface GoServiceDeps {
  identity: IdentityRoutes;
  taskCommands: TaskCommandRoutes;
  taskQueries: TaskQueryRoutes;
  /** The most tasks GET /api/tasks answers with (`tasks.compatListCap`). */
  listCap: number;
  clock: () => Date;
}

/** A task as the Go service showed it. */
export interface GoTask {
  id: string;
  user_id: string;
  title: string;
  description: string;
  status: TaskResource['status'];
  priority: number;
  created_at: string;
  updated_at: string;
}

// The Go service's description was a plain string, "" when not given.
export const goTask = (task: TaskResource): GoTask => ({
  id: task.id,
  user_id: task.owner_id,
  title: task.title,
  description: task.description ?? '',
  status: task.status,
  priority: task.priority,
  created_at: task.created_at,
  updated_at: task.updated_at,
});

const goTaskExample: GoTask = {
  id: '0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10',
  user_id: '5b1f3c2e-8d5a-4f7e-9c61-0a2b3c4d5e6f',
  title: 'Learn Go',
  description: 'Take the course and write a test application',
  status: 'pending',
  priority: 2,
  created_at: '2025-05-15T13:54:13.000Z',
  updated_at: '2025-05-15T13:54:13.000Z',
};

const goTaskSchema: JSONSchema = {
  type: 'object',
  additionalProperties: false,
  required: Object.keys(goTaskExample),
  properties: {
    id: { type: 'string', format: 'uuid' },
    user_id: { type: 'string', format: 'uuid' },
    title: { type: 'string' },
    description: { type: 'string' },
    status: {
      enum: ['pending', 'in_progress', 'done', 'failed', 'canceled'],
      description: 'The Go service\'s statuses, and "canceled", which it did not have',
    },
    priority: { type: 'integer', minimum: 0, maximum: 10 },
    created_at: { type: 'string', format: 'date-time' },
    updated_at: { type: 'string', format: 'date-time' },
  },
  examples: [goTaskExample],
};

const TRAILING_SLASH = 'A trailing slash is accepted, as the Go service accepted it.';

const taskIdParams: JSONSchema = {
  type: 'object',
  required: ['task_id'],
  properties: { task_id: { type: 'string', format: 'uuid' } },
};

export function registerGoServiceRoutes(api: Api, deps: GoServiceDeps): void {
  const { identity, taskCommands, taskQueries, clock } = deps;
  const goTaskRef = api.addSchema('GoTask', goTaskSchema);
  const goTaskList = api.addSchema('GoTaskList', { type: 'array', items: goTaskRef });

  /** One of our identity operations at the Go service's path, documented under its own tag. */
  const at = (
    op: ApiOperation,
    path: string,
    operationId: string,
    description: string,
    responses = op.responses,
  ): ApiOperation => ({
    ...op,
    path,
    operationId,
    tags: [GO_SERVICE_TAG],
    description: `The Go service's POST ${path}: the same as POST ${op.path}. ${description} ${TRAILING_SLASH}`,
    responses,
  });

  api.route(
    at(
      identity.register.op,
      '/auth/register',
      'goRegister',
      'The Go service answered 201 with no body (its Swagger says 204, at /auth/register/); this one answers 201 with `{id, email}`. Passwords need 8 characters, not 6.',
    ),
    identity.register.handler,
  );
  api.route(
    at(
      identity.login.op,
      '/auth/login',
      'goLogin',
      'Answers `access_token` and `refresh_token` as the Go service did, plus `token_type` and `expires_in`.',
    ),
    identity.login.handler,
  );
  api.route(
    at(
      identity.refresh.op,
      '/auth/refresh',
      'goRefresh',
      'The Go service answered only a new `access_token` and kept the refresh token valid; this one rotates it: keep the new `refresh_token`, since sending the old one again ends the session.',
    ),
    identity.refresh.handler,
  );
  const { 204: _loggedOut, ...logoutProblems } = identity.logout.op.responses;
  api.route(
    at(
      identity.logout.op,
      '/auth/logout',
      'goLogout',
      'Answers 200 with no body, as the Go service did (POST /logout answers 204).',
      { 200: { description: 'Logged out' }, ...logoutProblems },
    ),
    async (req, res) => {
      const position = await identity.endSessionOf(req);
      res.set('X-Position', position ?? '');
      res.status(200).end();
    },
  );

  // The Go service wrote synchronously, so its clients read right after a write: each write here answers once
  // the read model shows it (bounded by tasks.minPositionWaitMs; past that it answers anyway, the write done).
  const settled = async (result: { resource: TaskResource; position: string | null }) => {
    if (result.position) await taskQueries.waitForTask(result.resource.id, result.position);
    return result;
  };
  const ownerCommand = (
    req: Request,
    decide: (command: { actorId: string; now: Date }, state: Task) => TaskEvent[],
  ) =>
    taskCommands
      .onTask(req, String(req.params.task_id), (state) =>
        decide({ actorId: req.auth!.userId, now: clock() }, state),
      )
      .then(settled);
  const answer = (res: Response, status: number, task: TaskResource, position: string | null = null) => {
    if (position) res.set('X-Position', position);
    res.status(status).set('Cache-Control', 'no-store').json(goTask(task));
  };
  const problem = (description: string) => ({ description });

  api.route(
    {
      method: 'post',
      path: '/api/tasks',
      operationId: 'goCreateTask',
      summary: "Create a task (the Go service's `{title, description, priority}`)",
      description:
        'The same as POST /tasks, answered as the Go service did: 201 once the task is listed, here with the task ' +
        `in its shape (it sent no body). Every field of POST /tasks is accepted too. ${TRAILING_SLASH}`,
      tags: [GO_SERVICE_TAG],
      auth: 'bearer',
      body: taskCommands.schemas.submit,
      headers: taskCommands.schemas.idempotencyHeader,
      responses: {
        201: {
          description: 'Created',
          schema: goTaskRef,
          headers: { Location: { description: 'The task', schema: { type: 'string' } } },
        },
        400: problem('Invalid task'),
        413: problem('Payload larger than allowed'),
        422: problem('Idempotency-Key reused with a different request'),
      },
    },
    async (req, res) => {
      const { resource, position } = await settled(await taskCommands.submit(req));
      res.set('Location', `/api/tasks/${resource.id}`);
      answer(res, 201, resource, position);
    },
  );

  api.route(
    {
      method: 'get',
      path: '/api/tasks',
      operationId: 'goListTasks',
      summary: "All of the caller's tasks, newest first, as one bare array",
      description:
        `The Go service's list had no pages: this one answers at most ${deps.listCap} tasks (tasks.compatListCap), ` +
        'the newest, and sets `X-Truncated: true` when there are more (GET /tasks pages through them all). ' +
        `Archived tasks are left out. ${TRAILING_SLASH}`,
      tags: [GO_SERVICE_TAG],
      auth: 'bearer',
      responses: {
        200: {
          description: "The caller's tasks",
          schema: goTaskList,
          example: [goTaskExample],
          headers: {
            'X-Truncated': {
              description: '"true" when the caller has more tasks than the cap',
              schema: { type: 'string' },
            },
          },
        },
      },
    },
    async (req, res) => {
      const { items, truncated } = await taskQueries.queries.listOwnerTasks(req.auth!.userId, deps.listCap);
      if (truncated) res.set('X-Truncated', 'true');
      res.set('Cache-Control', 'no-store').json(items.map(goTask));
    },
  );

  api.route<unknown, Record<string, unknown>, { task_id: string }>(
    {
      method: 'get',
      path: '/api/tasks/:task_id',
      operationId: 'goGetTask',
      summary: "One of the caller's tasks, in the Go service's shape",
      description: `An archived task ("deleted" here) is gone: 404, as in the Go service. ${TRAILING_SLASH}`,
      tags: [GO_SERVICE_TAG],
      auth: 'bearer',
      params: taskIdParams,
      responses: {
        200: { description: 'The task', schema: goTaskRef, example: goTaskExample },
        404: problem('No such task, not yours, or deleted (the three are not told apart)'),
      },
    },
    async (req, res) => {
      const claims: CallerClaims = req.auth!;
      const id = req.params.task_id.toLowerCase();
      const snapshot = await taskQueries.queries.getTask(id);
      if (!snapshot || snapshot.task.owner_id !== claims.userId || snapshot.task.archived_at !== null)
        throw new NotFoundError(`there is no task ${id}`);
      answer(res, 200, snapshot.task);
    },
  );

  api.route<EditBody>(
    {
      method: 'patch',
      path: '/api/tasks/:task_id',
      operationId: 'goEditTask',
      summary: 'Edit the title, description or priority of a pending task',
      description:
        'The same as PATCH /tasks/{id}: only a task that has not started can be edited (the Go service edited any). ' +
        `Answers 200 with the task (the Go service sent no body). ${TRAILING_SLASH}`,
      tags: [GO_SERVICE_TAG],
      auth: 'bearer',
      params: taskIdParams,
      body: taskCommands.schemas.edit,
      responses: {
        200: { description: 'Edited', schema: goTaskRef },
        404: problem('No such task (or not yours)'),
        409: problem('The task is no longer pending'),
      },
    },
    async (req, res) => {
      const body = req.body;
      const { resource, position } = await ownerCommand(req, (command, state) =>
        updateTask({ ...command, changes: editChanges(body) }, state),
      );
      answer(res, 200, resource, position);
    },
  );

  api.route(
    {
      method: 'delete',
      path: '/api/tasks/:task_id',
      operationId: 'goDeleteTask',
      summary: 'Delete a task: it is gone from the lists; its history stays',
      description:
        'A pending or running task is canceled (as DELETE /tasks/{id} does) and archived; a finished one is ' +
        'archived (as POST /tasks/{id}/archive does). Either way it leaves GET /api/tasks and GET /tasks, while ' +
        `its events stay for auditors and time travel. Deleting it again changes nothing. ${TRAILING_SLASH}`,
      tags: [GO_SERVICE_TAG],
      auth: 'bearer',
      params: taskIdParams,
      responses: {
        204: { description: 'Deleted' },
        404: problem('No such task (or not yours)'),
      },
    },
    async (req, res) => {
      const { position } = await ownerCommand(req, removeTask);
      if (position) res.set('X-Position', position);
      res.status(204).end();
    },
  );
}
