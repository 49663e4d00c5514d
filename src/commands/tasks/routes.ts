/**
 * src/commands/tasks: the task commands over HTTP (this file: submit, batch submit, edit, cancel, retry, archive,
 * the admin's pause and resume), the idempotent submit as an application service (submitIdempotently.ts) and the
 * mapping of payload errors to request paths (payloadErrors.ts). The deciders are in src/domain/tasks.
 */
import type { Request, Response } from 'express';
import { UnprocessableError, ValidationError } from '../../errors.js';
import { toFieldErrors } from '../../infra/jsonSchema.js';
import { problemDocument, toAppError } from '../../infra/http/problemDetails.js';
import { schemaRef, uuidIdParams, type Api, type JSONSchema } from '../../infra/http/api.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import type { Config } from '../../config.js';
import type { TaskTypeCatalogue } from '../../domain/tasks/taskTypes.js';
import { prioritySchema, taskBodyProperties, taskSpecOf, toPriority, type TaskBody } from './taskBody.js';
import { checkDependencies, MAX_DEPENDENCIES } from './dependencies.js';
import { requireRole } from '../../infra/http/auth.js';
import { handleCommand, type CommandContext } from '../commandHandler.js';
import { taskStreamId, type TaskEvent } from '../../domain/tasks/events.js';
import { task, type Task } from '../../domain/tasks/state.js';
import {
  archiveTask,
  cancelTask,
  retryTask,
  updateTask,
  type UpdateTask,
} from '../../domain/tasks/ownerCommands.js';
import { ensureTaskSchemas, taskResource, type TaskResource } from '../../domain/tasks/representation.js';
import { submitIdempotently, type QueuedTask } from './submitIdempotently.js';
import {
  workerControl,
  workerControlStreamId,
  pauseWorkers,
  resumeWorkers,
} from '../../domain/tasks/workerControl.js';

export interface TaskCommandDeps {
  store: EventStore;
  /** The task types a submission may name, and their payload checks. */
  taskTypes: TaskTypeCatalogue;
  settings: Config['tasks'];
  /** How large a POST /tasks/batch body may be (`http.batchBodyLimit`). */
  batchBodyLimit: string;
  clock: () => Date;
  newId: () => string;
}

/** Printable ASCII, as HTTP header values are; the same rule for the header and a batch item's field. */
const idempotencyKeySchema: JSONSchema = {
  type: 'string',
  minLength: 1,
  maxLength: 200,
  pattern: '^[\\x21-\\x7e]+$',
};

/** A POST /tasks body: a task body (taskBody.ts), and what it waits for, which only a submission can name. */
export interface SubmitBody extends TaskBody {
  depends_on?: string[];
  on_dependency_failure?: 'fail' | 'ignore';
}

export interface EditBody {
  title?: string;
  description?: string | null;
  priority?: number | string;
}

/** An edit's body as the command's changes: priority names become their numbers. */
export const editChanges = (body: EditBody): UpdateTask['changes'] => ({
  title: body.title,
  description: body.description,
  priority: toPriority(body.priority),
});

/**
 * What the Go service's routes reuse: the same commands, the same schemas, answered in that service's shapes.
 */
export interface TaskCommandRoutes {
  /** Validates and queues a submitted task as POST /tasks does, Idempotency-Key included. */
  submit(req: Request): Promise<{ resource: TaskResource; position: string }>;
  /** Runs an owner command on the task's stream; `position` is null when it decided nothing. */
  onTask(
    req: Request,
    taskId: string,
    decide: (state: Task) => TaskEvent[],
  ): Promise<{ resource: TaskResource; position: string | null }>;
  schemas: { submit: JSONSchema; edit: JSONSchema; idempotencyHeader: JSONSchema };
}

const problem = (description: string) => ({ description });
const positionHeader = {
  'X-Position': {
    description: 'Log position of this change: send it as X-Min-Position to read your own write.',
    schema: { type: 'string' },
  },
};

export function registerTaskCommandRoutes(api: Api, deps: TaskCommandDeps): TaskCommandRoutes {
  const { store, taskTypes, settings, clock, newId } = deps;
  // The representation the query routes show too, so both document one Task.
  const taskSchema = ensureTaskSchemas(api).task;
  const submitProperties: Record<string, JSONSchema> = {
    ...taskBodyProperties({ taskTypes, settings }),
    depends_on: {
      type: 'array',
      uniqueItems: true,
      maxItems: MAX_DEPENDENCIES,
      items: { type: 'string', format: 'uuid' },
      description:
        'Ids of your own tasks, existing now, that must be done before this one starts: until then it is pending with the ids in `waiting_for`. A task can only depend on older tasks, so no cycle can form.',
    },
    on_dependency_failure: {
      enum: ['fail', 'ignore'],
      description:
        '`fail` (default): a dependency that ends failed or canceled fails this task, naming it. `ignore`: wait only for the dependencies to finish, however they end.',
    },
  };
  const submitSchema = api.addSchema('SubmitTask', {
    type: 'object',
    additionalProperties: false,
    required: ['title'],
    properties: submitProperties,
    examples: [{ title: 'Write the report', description: 'Quarterly numbers', priority: 5 }],
  });
  // An item of POST /tasks/batch: a SubmitTask with its own idempotency key in place of the header.
  api.addSchema('BatchSubmitItem', {
    type: 'object',
    additionalProperties: false,
    required: ['title'],
    properties: {
      ...submitProperties,
      idempotency_key: {
        ...idempotencyKeySchema,
        description: 'As the Idempotency-Key header of POST /tasks, for this item alone.',
      },
    },
  });
  const validateBatchItem = api.compileComponent('BatchSubmitItem');
  const editSchema = api.addSchema('EditTask', {
    type: 'object',
    additionalProperties: false,
    minProperties: 1,
    properties: {
      title: { type: 'string', minLength: 1, maxLength: 200 },
      description: { type: ['string', 'null'], maxLength: 5000 },
      priority: prioritySchema,
    },
    examples: [{ priority: 'high' }],
  });
  const idempotencyHeader: JSONSchema = {
    type: 'object',
    properties: { 'idempotency-key': idempotencyKeySchema },
  };

  const context = (req: Request): CommandContext => ({
    now: clock,
    newId,
    correlationId: req.id ?? newId(),
    causationId: null,
    userId: req.auth!.userId,
  });

  const answer = (res: Response, status: number, resource: TaskResource, position: string | null) => {
    if (position) res.set('X-Position', position);
    res.status(status).json(resource);
  };

  /**
   * Checks what the schema cannot (the payload against its type, its size, the instant) and queues the task.
   * `at` is where the body sits in the request, for the errors' pointers: `/body`, or `/body/tasks/3` in a batch.
   */
  const submitBody = async (
    req: Request,
    body: SubmitBody,
    key: string | null,
    at: string,
  ): Promise<QueuedTask> => {
    const spec = taskSpecOf(body, { taskTypes, settings }, at);
    if (body.depends_on && body.depends_on.length > 0) {
      // Only the PostgreSQL store has the schedule that holds a waiting task back from every claim.
      if (store.name !== 'postgres')
        throw new UnprocessableError('depends_on needs the PostgreSQL event store (eventStore: postgres)');
      spec.dependencies = {
        taskIds: body.depends_on.map((id) => id.toLowerCase()),
        onFailure: body.on_dependency_failure ?? 'fail',
      };
      await checkDependencies(store, req.auth!.userId, spec.dependencies.taskIds, at);
    }
    return submitIdempotently(
      { store, clock, newId, idempotencyKeyTtlSeconds: settings.idempotencyKeyTtlSeconds },
      context(req),
      { ownerId: req.auth!.userId, spec, idempotency: key ? { key, request: body } : null },
    );
  };
  const submit = (req: Request): Promise<QueuedTask> =>
    submitBody(req, req.body as SubmitBody, req.get('idempotency-key') ?? null, '/body');

  api.route<SubmitBody>(
    {
      method: 'post',
      path: '/tasks',
      operationId: 'submitTask',
      summary: 'Submit a task',
      description:
        'Queues the task and answers at once (202). Send an `Idempotency-Key` to make retries safe: the same key and body give the same task; the same key with another body is 422. Keys live 24 hours.',
      tags: ['tasks'],
      auth: 'bearer',
      body: submitSchema,
      headers: idempotencyHeader,
      responses: {
        202: {
          description: 'Queued',
          schema: taskSchema,
          headers: { ...positionHeader, Location: { description: 'The task', schema: { type: 'string' } } },
        },
        400: problem('Invalid task'),
        401: problem('No valid access token'),
        413: problem('Payload larger than allowed'),
        422: problem('Idempotency-Key reused with a different request'),
      },
    },
    async (req, res) => {
      const outcome = await submit(req);
      res.set('Location', `/tasks/${outcome.resource.id}`);
      answer(res, 202, outcome.resource, outcome.position);
    },
  );

  const batchResult = api.addSchema('BatchSubmitResult', {
    type: 'object',
    required: ['index', 'status'],
    properties: {
      index: { type: 'integer', description: 'The position of the item in `tasks`.' },
      status: { type: 'integer', description: '202 queued, or the status POST /tasks would have answered.' },
      task: { ...taskSchema, description: 'The queued task (status 202).' },
      problem: { ...schemaRef('Problem'), description: 'Why this item was refused (any other status).' },
    },
  });
  api.route<{ tasks: unknown[] }>(
    {
      method: 'post',
      path: '/tasks/batch',
      operationId: 'submitTasks',
      summary: 'Submit many tasks in one request',
      description:
        `Up to ${settings.maxBatchItems} task bodies (\`tasks.maxBatchItems\`), each a \`BatchSubmitItem\`: a SubmitTask ` +
        'with an optional `idempotency_key` that behaves as the Idempotency-Key header does. They are written ' +
        'together (the group commit) and answered together, one result per item in the order sent: the queued ' +
        'task (202), or the problem document POST /tasks would have answered for that body alone. One bad item ' +
        'refuses only itself. The answer is 200 whenever results are given, even if every item was refused; it ' +
        'is 503 when the store could be reached for none of them. X-Position is the newest position among the ' +
        'queued tasks.',
      tags: ['tasks'],
      auth: 'bearer',
      bodyLimit: deps.batchBodyLimit,
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['tasks'],
        properties: {
          tasks: {
            type: 'array',
            minItems: 1,
            maxItems: settings.maxBatchItems,
            // Anything here: each item is checked against BatchSubmitItem on its own, so that one bad item
            // gets its own 400 instead of refusing the whole request.
            items: { description: 'A BatchSubmitItem (see components.schemas), checked item by item.' },
          },
        },
        examples: [
          {
            tasks: [
              { title: 'Resize image 1', type: 'echo', payload: { id: 1 }, idempotency_key: 'resize-1' },
              { title: 'Resize image 2', type: 'echo', payload: { id: 2 }, priority: 'high' },
            ],
          },
        ],
      },
      responses: {
        200: {
          description: 'One result per item, in order',
          schema: {
            type: 'object',
            required: ['results', 'accepted', 'refused'],
            properties: {
              results: { type: 'array', items: batchResult },
              accepted: { type: 'integer' },
              refused: { type: 'integer' },
            },
          },
          headers: positionHeader,
        },
        400: problem('Not a list of 1 to tasks.maxBatchItems objects'),
        401: problem('No valid access token'),
        413: problem('Body larger than http.batchBodyLimit'),
        503: problem('The event store could not be reached for any item'),
      },
    },
    async (req, res) => {
      const log = req.log;
      const items = req.body.tasks;
      const results = await Promise.all(
        items.map(async (item, index) => {
          const at = `/body/tasks/${index}`;
          try {
            // Synchronous up to the first await, so the validator's `errors` are still this item's.
            if (!validateBatchItem(item))
              throw new ValidationError(toFieldErrors(at, validateBatchItem.errors));
            const { idempotency_key: key, ...body } = item as SubmitBody & { idempotency_key?: string };
            const queued = await submitBody(req, body, key ?? null, at);
            return { index, status: 202, task: queued.resource, position: queued.position };
          } catch (error) {
            const refused = toAppError(error, log);
            return { index, status: refused.status, refused };
          }
        }),
      );
      if (results.every((result) => result.status === 503)) throw results[0]!.refused;
      let newest: string | null = null;
      for (const result of results)
        if (result.position !== undefined && (newest === null || result.position > newest))
          newest = result.position;
      if (newest) res.set('X-Position', newest);
      res.status(200).json({
        results: results.map(({ index, status, task: resource, refused }) =>
          refused
            ? { index, status, problem: problemDocument(refused, `/tasks/batch`, req.id) }
            : { index, status, task: resource },
        ),
        accepted: results.filter((result) => result.status === 202).length,
        refused: results.filter((result) => result.status !== 202).length,
      });
    },
  );

  const onTask: TaskCommandRoutes['onTask'] = async (req, taskId, decide) => {
    const result = await handleCommand(store, taskStreamId(taskId), task, decide, context(req));
    return { resource: taskResource(result.state, result.revision!), position: result.position };
  };

  const ownerCommand =
    (decide: (req: Request, state: Task) => TaskEvent[], status: number) =>
    async (req: Request, res: Response) => {
      const { resource, position } = await onTask(req, String(req.params.id), (state) => decide(req, state));
      answer(res, status, resource, position);
    };

  api.route<EditBody>(
    {
      method: 'patch',
      path: '/tasks/:id',
      operationId: 'editTask',
      summary: 'Edit the title, description or priority of a pending task',
      tags: ['tasks'],
      auth: 'bearer',
      params: uuidIdParams,
      body: editSchema,
      responses: {
        200: { description: 'Edited', schema: taskSchema, headers: positionHeader },
        404: problem('No such task (or not yours)'),
        409: problem('The task is no longer pending'),
      },
    },
    ownerCommand(
      (req, state) =>
        updateTask({ actorId: req.auth!.userId, changes: editChanges(req.body), now: clock() }, state),
      200,
    ),
  );

  api.route(
    {
      method: 'delete',
      path: '/tasks/:id',
      operationId: 'cancelTask',
      summary: 'Cancel a task; its history stays',
      description: "A pending task is canceled at once; a running one's handler is aborted by its worker.",
      tags: ['tasks'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        200: { description: 'Canceled', schema: taskSchema, headers: positionHeader },
        404: problem('No such task (or not yours)'),
        409: problem('The task has already finished'),
      },
    },
    ownerCommand((req, state) => cancelTask({ actorId: req.auth!.userId, now: clock() }, state), 200),
  );

  api.route(
    {
      method: 'post',
      path: '/tasks/:id/retry',
      operationId: 'retryTask',
      summary: 'Queue a failed or canceled task again, with fresh attempts',
      tags: ['tasks'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        202: { description: 'Queued again', schema: taskSchema, headers: positionHeader },
        404: problem('No such task (or not yours)'),
        409: problem('The task is not failed or canceled'),
      },
    },
    ownerCommand((req, state) => retryTask({ actorId: req.auth!.userId, now: clock() }, state), 202),
  );

  api.route(
    {
      method: 'post',
      path: '/tasks/:id/archive',
      operationId: 'archiveTask',
      summary: 'Archive a finished task: it leaves the lists, its history stays',
      description:
        'A done, failed or canceled task is left out of `GET /tasks` from then on; `GET /tasks/{id}`, its events ' +
        'and the audit log still show it. Archiving an archived task changes nothing.',
      tags: ['tasks'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        200: { description: 'Archived', schema: taskSchema, headers: positionHeader },
        404: problem('No such task (or not yours)'),
        409: problem('The task has not finished'),
      },
    },
    ownerCommand((req, state) => archiveTask({ actorId: req.auth!.userId, now: clock() }, state), 200),
  );

  const workerState = {
    type: 'object',
    required: ['paused'],
    properties: {
      paused: { type: 'boolean' },
      changed_at: { type: ['string', 'null'] },
      changed_by: { type: ['string', 'null'] },
    },
  };
  const controlRoute = (path: string, operationId: string, summary: string, pause: boolean) =>
    api.route(
      {
        method: 'post',
        path,
        operationId,
        summary,
        tags: ['admin'],
        auth: 'bearer',
        responses: {
          200: { description: "The workers' state", schema: workerState },
          403: problem('Needs the admin role'),
        },
      },
      async (req, res) => {
        const admin = requireRole(req, 'admin');
        const command = { by: admin.userId, now: clock() };
        const result = await handleCommand(
          store,
          workerControlStreamId,
          workerControl,
          (state) => (pause ? pauseWorkers(command, state) : resumeWorkers(command, state)),
          context(req),
        );
        res.json({
          paused: result.state.paused,
          changed_at: result.state.changedAt,
          changed_by: result.state.changedBy,
        });
      },
    );
  controlRoute(
    '/admin/workers/pause',
    'pauseWorkers',
    'Pause every worker: running tasks finish, no new ones start',
    true,
  );
  controlRoute('/admin/workers/resume', 'resumeWorkers', 'Resume the workers', false);

  return { submit, onTask, schemas: { submit: submitSchema, edit: editSchema, idempotencyHeader } };
}
