import type { Request, Response } from 'express';
import { ForbiddenError, NotFoundError, ValidationError } from '../../errors.js';
import { schemaRef, type Api, type JSONSchema } from '../../infra/http/api.js';
import type { Cache } from '../../infra/cache/cache.js';
import type { Pool } from '../../infra/db/pool.js';
import { sleep } from '../../infra/abort.js';
import {
  isPosition,
  type EventStore,
  type Position,
  type RecordedEvent,
} from '../../infra/eventStore/eventStore.js';
import { claimsOf, seesAllTasks } from '../../infra/http/auth.js';
import { taskStreamId, type TaskStatus } from '../../commands/tasks/events.js';
import { foldEvents } from '../../commands/commandHandler.js';
import { task as taskDecider } from '../../commands/tasks/state.js';
import { taskResource } from '../../commands/tasks/resource.js';
import {
  createTaskQueries,
  DEFAULT_PAGE_SIZE,
  encodeCursor,
  MAX_PAGE_SIZE,
  type TaskQueries,
  type TaskSnapshot,
} from './query.js';

const TASK_STATUSES: readonly TaskStatus[] = ['pending', 'in_progress', 'done', 'failed', 'canceled'];

const uuid = { type: 'string', format: 'uuid' };
const dateTime = { type: 'string', format: 'date-time' };
const anyJson = {};

const taskExample = {
  id: '0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10',
  owner_id: '5b1f3c2e-8d5a-4f7e-9c61-0a2b3c4d5e6f',
  title: 'Resize the March uploads',
  description: 'Every image uploaded in March, to 1024 px',
  type: 'echo',
  payload: { images: 12 },
  priority: 5,
  queue: 'default',
  status: 'in_progress',
  attempt: 1,
  max_attempts: 3,
  timeout_ms: 30000,
  run_at: '2025-03-01T09:00:00.000Z',
  progress: 0.4,
  result: null,
  error: null,
  created_at: '2025-03-01T09:00:00.000Z',
  updated_at: '2025-03-01T09:00:05.120Z',
  archived_at: null,
  revision: 2,
};

export const taskSchema: JSONSchema = {
  type: 'object',
  required: Object.keys(taskExample),
  properties: {
    id: uuid,
    owner_id: uuid,
    title: { type: 'string' },
    description: { type: ['string', 'null'] },
    type: { type: 'string', description: 'The handler that runs it: `http`, `echo`, `sleep`, `fail`, ...' },
    payload: { ...anyJson, description: "Any JSON: the handler's input" },
    priority: { type: 'integer', minimum: 0, maximum: 10, description: '0 (lowest) to 10 (highest)' },
    queue: { type: 'string' },
    status: { enum: [...TASK_STATUSES] },
    attempt: {
      type: 'integer',
      minimum: 0,
      description: 'The attempt now running, or the number of attempts used so far',
    },
    max_attempts: { type: 'integer', minimum: 1 },
    timeout_ms: { type: 'integer', minimum: 1 },
    run_at: {
      type: ['string', 'null'],
      format: 'date-time',
      description: 'When a pending task may next start (after a delay or a retry back-off)',
    },
    progress: { type: ['number', 'null'], description: 'As the handler last reported it; null before that' },
    result: { ...anyJson, description: "The handler's result once done, otherwise null" },
    error: {
      description: 'The last error, from a failed attempt or the final failure',
      oneOf: [
        { type: 'null' },
        {
          type: 'object',
          required: ['message', 'kind'],
          properties: {
            message: { type: 'string' },
            kind: { enum: ['error', 'timeout', 'lease_expired', 'unrecoverable'] },
          },
        },
      ],
    },
    created_at: dateTime,
    updated_at: dateTime,
    archived_at: {
      type: ['string', 'null'],
      format: 'date-time',
      description: 'When the owner archived the finished task (it is then left out of lists), or null',
    },
    revision: {
      type: 'integer',
      minimum: 0,
      description: "The task stream's revision this reflects; it grows by one with every change",
    },
  },
  examples: [taskExample],
};

export const taskListSchema: JSONSchema = {
  type: 'object',
  required: ['items', 'next_cursor'],
  properties: {
    items: { type: 'array', items: schemaRef('Task') },
    next_cursor: {
      type: ['string', 'null'],
      description: 'Pass as `cursor` for the next page; null on the last page',
    },
  },
};

const taskEventExample = {
  type: 'TaskStarted',
  revision: 1,
  position: '00000000000004d2-0000000000000007',
  data: {
    taskId: '0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10',
    attempt: 1,
    workerId: 'worker-7f3a',
    leaseUntil: '2025-03-01T09:00:35.000Z',
    startedAt: '2025-03-01T09:00:05.000Z',
  },
  metadata: {
    event_id: '9d4c1a2b-7e6f-4a3b-8c2d-1e0f9a8b7c6d',
    correlation_id: '3f0c8a0e-5b7e-4b8c-9d0a-1f2e3d4c5b6a',
    causation_id: null,
    user_id: null,
    timestamp: '2025-03-01T09:00:05.000Z',
    hash: '5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8',
  },
  recorded_at: '2025-03-01T09:00:05.004Z',
};

export const taskEventSchema: JSONSchema = {
  type: 'object',
  required: ['type', 'revision', 'position', 'data', 'metadata', 'recorded_at'],
  properties: {
    type: { type: 'string', examples: ['TaskQueued', 'TaskStarted', 'TaskSucceeded'] },
    revision: { type: 'integer', minimum: 0, description: "Place in the task's stream, from 0" },
    position: { type: 'string', description: 'Place in the global log; opaque, usable as `min_position`' },
    data: { type: 'object', description: "The event's data exactly as stored (camelCase keys)" },
    metadata: {
      type: 'object',
      required: ['event_id', 'correlation_id', 'causation_id', 'user_id', 'timestamp', 'hash'],
      properties: {
        event_id: { type: 'string' },
        correlation_id: { type: 'string', description: 'The request that caused it' },
        causation_id: { type: ['string', 'null'] },
        user_id: {
          type: ['string', 'null'],
          description: 'Who caused it; null for workers and the scheduler',
        },
        timestamp: dateTime,
        hash: { type: 'string', description: 'SHA-256 of the hash chain through this event' },
      },
    },
    recorded_at: dateTime,
  },
  examples: [taskEventExample],
};

export const taskEventListSchema: JSONSchema = {
  type: 'object',
  required: ['items'],
  properties: { items: { type: 'array', items: schemaRef('TaskEvent') } },
};

const PENDING_DETAIL = 'the read model has not reached that position yet';

export const readModelPendingSchema: JSONSchema = {
  type: 'object',
  required: ['status', 'detail'],
  properties: { status: { const: 'pending' }, detail: { type: 'string' } },
  examples: [{ status: 'pending', detail: PENDING_DETAIL }],
};

export interface TaskSchemaRefs {
  task: JSONSchema;
  taskList: JSONSchema;
  taskEvent: JSONSchema;
  taskEventList: JSONSchema;
  readModelPending: JSONSchema;
}

const withTaskSchemas = new WeakSet<Api>();

/**
 * Adds the task schemas to `api` the first time, and returns their refs every time: the command routes for
 * tasks share them with these queries, in whatever order the two are registered.
 */
export function ensureTaskSchemas(api: Api): TaskSchemaRefs {
  if (!withTaskSchemas.has(api)) {
    api.addSchema('Task', taskSchema);
    api.addSchema('TaskList', taskListSchema);
    api.addSchema('TaskEvent', taskEventSchema);
    api.addSchema('TaskEventList', taskEventListSchema);
    api.addSchema('ReadModelPending', readModelPendingSchema);
    withTaskSchemas.add(api);
  }
  return {
    task: schemaRef('Task'),
    taskList: schemaRef('TaskList'),
    taskEvent: schemaRef('TaskEvent'),
    taskEventList: schemaRef('TaskEventList'),
    readModelPending: schemaRef('ReadModelPending'),
  };
}

export interface TaskQueryRouteDeps {
  pool: Pool;
  cache: Cache;
  store: EventStore;
  /** True once every projection has applied every event up to `position` (a watermark across streams). */
  readModelReached: (position: string) => Promise<boolean>;
  minPositionWaitMs: number;
  clock?: () => Date;
}

const POLL_INTERVAL_MS = 25;

const minPositionDoc = 'A log position from a command response: wait (bounded) until the read model has it';
const minPositionHeaders: JSONSchema = {
  type: 'object',
  properties: { 'x-min-position': { type: 'string', maxLength: 64, description: minPositionDoc } },
};
const minPositionQuery = {
  type: 'string',
  maxLength: 64,
  description: `${minPositionDoc} (same as X-Min-Position)`,
};

const idParams: JSONSchema = { type: 'object', required: ['id'], properties: { id: uuid } };

const pendingResponse = (schema: JSONSchema) => ({
  description: 'The read model has not reached the requested position within the wait; retry',
  schema,
  example: { status: 'pending', detail: PENDING_DETAIL },
  headers: { 'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer' } } },
});

/** The newer of `X-Min-Position` and `min_position`, or null when neither is sent; 400 for a malformed one. */
/**
 * The task as it was at a time or log position: its own events up to that point, folded by the domain's evolve,
 * so history answers exactly as the live task would have then.
 */
async function taskAsOf(store: EventStore, id: string, asOf: string) {
  let upTo: (event: { position: string; metadata: { timestamp: string } }) => boolean;
  if (isPosition(asOf)) upTo = (event) => event.position <= asOf;
  else if (/^\d{4}-\d{2}-\d{2}T/.test(asOf) && !Number.isNaN(Date.parse(asOf))) {
    const time = Date.parse(asOf);
    upTo = (event) => Date.parse(event.metadata.timestamp) <= time;
  } else
    throw new ValidationError([
      { path: '/query/as_of', message: 'must be an RFC 3339 time or a log position' },
    ]);
  const events = (await store.readStream(taskStreamId(id))).filter(upTo);
  if (events.length === 0) return null;
  return taskResource(foldEvents(taskDecider, events), events[events.length - 1]!.revision);
}

function requestedMinPosition(req: Pick<Request, 'get'>, query: { min_position?: unknown }): Position | null {
  const candidates: Array<[string, unknown]> = [
    ['/headers/x-min-position', req.get('x-min-position')],
    ['/query/min_position', query.min_position],
  ];
  let newest: Position | null = null;
  for (const [path, value] of candidates) {
    if (value === undefined) continue;
    if (!isPosition(value))
      throw new ValidationError([{ path, message: 'is not a log position (as returned by a command)' }]);
    if (newest === null || value > newest) newest = value;
  }
  return newest;
}

function answerPending(res: Response): void {
  res.status(202).set('Retry-After', '1').set('Cache-Control', 'no-store').json({
    status: 'pending',
    detail: PENDING_DETAIL,
  });
}

interface ListQuery {
  status?: TaskStatus;
  type?: string;
  queue?: string;
  owner_id?: string;
  limit: number;
  cursor?: string;
  min_position?: string;
}

/** What the Go service's routes reuse: the same queries, and the same bounded read-your-writes wait. */
export interface TaskQueryRoutes {
  queries: TaskQueries;
  /**
   * Waits, at most `minPositionWaitMs`, until the task's row (and so every list) reflects `position`, a position
   * a command on this very task answered with; false if it does not by then.
   */
  waitForTask(id: string, position: Position): Promise<boolean>;
}

export function registerTaskQueryRoutes(api: Api, deps: TaskQueryRouteDeps): TaskQueryRoutes {
  const refs = ensureTaskSchemas(api);
  const queries = createTaskQueries({ pool: deps.pool, cache: deps.cache });
  const clock = deps.clock ?? (() => new Date());

  /** Polls `probe` until it returns a value or the wait runs out (then undefined). */
  const pollUntil = async <T>(probe: () => Promise<T | undefined>): Promise<T | undefined> => {
    const deadline = clock().getTime() + deps.minPositionWaitMs;
    for (;;) {
      const value = await probe();
      if (value !== undefined) return value;
      const left = deadline - clock().getTime();
      if (left <= 0) return undefined;
      await sleep(Math.min(POLL_INTERVAL_MS, left));
    }
  };
  const waitForTask = async (id: string, position: Position): Promise<boolean> =>
    (await pollUntil(async () => {
      const snapshot = await queries.getTask(id, { minPosition: position });
      return snapshot && snapshot.position >= position ? true : undefined;
    })) === true;

  api.route<unknown, { min_position?: string; as_of?: string }, { id: string }>(
    {
      method: 'get',
      path: '/tasks/:id',
      operationId: 'getTask',
      summary: 'A task, as the read model has it',
      description:
        'Owners see their tasks; auditors and admins see every task. Pass the position a command answered with ' +
        '(`X-Min-Position` or `min_position`) to read your own write: the answer waits, bounded, for it.',
      tags: ['tasks'],
      auth: 'bearer',
      params: idParams,
      query: {
        type: 'object',
        additionalProperties: false,
        properties: {
          min_position: minPositionQuery,
          as_of: {
            type: 'string',
            maxLength: 64,
            description:
              'Time travel: the task as it was at this RFC 3339 time or log position, folded from its events (not the read model).',
          },
        },
      },
      headers: minPositionHeaders,
      responses: {
        200: { description: 'The task', schema: refs.task, example: taskExample },
        202: pendingResponse(refs.readModelPending),
        400: { description: 'Malformed id or min position' },
        404: { description: 'No such task, or not yours (the two are not told apart)' },
      },
    },
    async (req, res) => {
      const claims = claimsOf(req);
      const id = req.params.id.toLowerCase();
      if (typeof req.query.as_of === 'string') {
        const asOf = await taskAsOf(deps.store, id, req.query.as_of);
        if (!asOf || (asOf.owner_id !== claims.userId && !seesAllTasks(claims)))
          throw new NotFoundError(`there was no task ${id} then`);
        res.set('Cache-Control', 'no-store').json(asOf);
        return;
      }
      const minPosition = requestedMinPosition(req, req.query);
      // A task the caller may not see is treated exactly as an absent one, waits included, so neither the
      // status nor the timing reveals that it exists.
      const visible = (snapshot: TaskSnapshot | null): TaskSnapshot | null =>
        snapshot && (snapshot.task.owner_id === claims.userId || seesAllTasks(claims)) ? snapshot : null;

      const read = async () => visible(await queries.getTask(id, { minPosition }));
      let found: TaskSnapshot | null;
      if (minPosition === null) found = await read();
      else {
        const outcome = await pollUntil(async () => {
          const snapshot = await read();
          // The common case: P came from a command on this very task.
          if (snapshot && snapshot.position >= minPosition) return { snapshot };
          if (!(await deps.readModelReached(minPosition))) return undefined;
          // Read again after the watermark: only a row read after it passed P is sure to include P.
          return { snapshot: await read() };
        });
        if (!outcome) return answerPending(res);
        found = outcome.snapshot;
      }
      if (!found) throw new NotFoundError(`there is no task ${id}`);
      res.set('Cache-Control', 'no-store').json(found.task);
    },
  );

  api.route<unknown, ListQuery>(
    {
      method: 'get',
      path: '/tasks',
      operationId: 'listTasks',
      summary: 'Tasks, newest first, a page at a time',
      description:
        'Users see their own tasks; auditors and admins see every task and may filter by `owner_id`. ' +
        'Archived tasks are left out (`GET /tasks/{id}` and its events still show them). Follow `next_cursor` for the next page: tasks submitted meanwhile never shift or repeat a page.',
      tags: ['tasks'],
      auth: 'bearer',
      query: {
        type: 'object',
        additionalProperties: false,
        properties: {
          status: { enum: [...TASK_STATUSES] },
          type: { type: 'string', minLength: 1, maxLength: 100 },
          queue: { type: 'string', minLength: 1, maxLength: 100 },
          owner_id: { ...uuid, description: 'Auditors and admins only: the tasks of this owner' },
          limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE_SIZE, default: DEFAULT_PAGE_SIZE },
          cursor: { type: 'string', maxLength: 200, description: '`next_cursor` of the previous page' },
          min_position: minPositionQuery,
        },
      },
      headers: minPositionHeaders,
      responses: {
        200: {
          description: 'A page of tasks',
          schema: refs.taskList,
          example: {
            items: [taskExample],
            next_cursor: encodeCursor('2025-03-01T09:00:00.000000Z', taskExample.id),
          },
        },
        202: pendingResponse(refs.readModelPending),
        400: { description: 'Malformed filter, cursor or min position' },
        403: { description: '`owner_id` names another user and the caller is not an auditor or admin' },
      },
    },
    async (req, res) => {
      const claims = claimsOf(req);
      const minPosition = requestedMinPosition(req, req.query);
      const { status, type, queue, limit, cursor } = req.query;
      let ownerId: string | null = claims.userId;
      if (seesAllTasks(claims)) ownerId = req.query.owner_id ?? null;
      else if (req.query.owner_id !== undefined && req.query.owner_id.toLowerCase() !== claims.userId)
        throw new ForbiddenError("only auditors and admins can list other users' tasks");

      // A list spans many streams, so only the watermark can say it includes P.
      if (
        minPosition !== null &&
        !(await pollUntil(async () => ((await deps.readModelReached(minPosition)) ? true : undefined)))
      )
        return answerPending(res);
      const page = await queries.listTasks({ ownerId, status, type, queue, limit, cursor: cursor ?? null });
      res.set('Cache-Control', 'no-store').json(page);
    },
  );

  api.route<unknown, Record<string, unknown>, { id: string }>(
    {
      method: 'get',
      path: '/tasks/:id/events',
      operationId: 'getTaskEvents',
      summary: "A task's history, from the event log",
      description: 'Read from the event store itself, so it is never behind. Owners, auditors and admins.',
      tags: ['tasks'],
      auth: 'bearer',
      params: idParams,
      responses: {
        200: {
          description: 'Every event of the task, oldest first',
          schema: refs.taskEventList,
          example: { items: [taskEventExample] },
        },
        400: { description: 'Malformed id' },
        404: { description: 'No such task, or not yours (the two are not told apart)' },
      },
    },
    async (req, res) => {
      const claims = claimsOf(req);
      const id = req.params.id.toLowerCase();
      const events = await deps.store.readStream(taskStreamId(id));
      const queued = events.find((event) => event.type === 'TaskQueued');
      if (!queued || (queued.data.ownerId !== claims.userId && !seesAllTasks(claims)))
        throw new NotFoundError(`there is no task ${id}`);
      res.set('Cache-Control', 'no-store').json({ items: events.map(eventView) });
    },
  );

  return { queries, waitForTask };
}

function eventView(event: RecordedEvent) {
  return {
    type: event.type,
    revision: event.revision,
    position: event.position,
    data: event.data,
    metadata: {
      event_id: event.metadata.eventId,
      correlation_id: event.metadata.correlationId,
      causation_id: event.metadata.causationId,
      user_id: event.metadata.userId,
      timestamp: event.metadata.timestamp,
      hash: event.metadata.hash,
    },
    recorded_at: event.recordedAt,
  };
}
