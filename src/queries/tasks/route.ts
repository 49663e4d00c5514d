import type { Request, Response } from 'express';
import { ForbiddenError, NotFoundError, ValidationError } from '../../errors.js';
import { uuidIdParams, type Api, type JSONSchema } from '../../infra/http/api.js';
import { encodeKeysetCursor } from '../keysetCursor.js';
import type { Cache } from '../../infra/cache/cache.js';
import type { Pool } from '../../infra/db/pool.js';
import {
  isPosition,
  metadataJson,
  type EventStore,
  type Position,
  type RecordedEvent,
} from '../../infra/eventStore/eventStore.js';
import { claimsOf, seesAllTasks } from '../../infra/http/auth.js';
import { storableInstant } from '../../infra/http/inputSanity.js';
import { taskStreamId, type TaskStatus } from '../../domain/tasks/events.js';
import {
  ensureTaskSchemas,
  PENDING_DETAIL,
  TASK_STATUSES,
  taskEventExample,
  taskExample,
} from '../../domain/tasks/representation.js';
import {
  createTaskQueries,
  createTaskReads,
  DEFAULT_PAGE_SIZE,
  MAX_PAGE_SIZE,
  titleWords,
  type TaskQueries,
  type TaskSnapshot,
} from './query.js';

const uuid = { type: 'string', format: 'uuid' };

export interface TaskQueryRouteDeps {
  pool: Pool;
  cache: Cache;
  store: EventStore;
  /** True once every projection has applied every event up to `position` (a watermark across streams). */
  readModelReached: (position: string) => Promise<boolean>;
  minPositionWaitMs: number;
  clock?: () => Date;
}

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

const pendingResponse = (schema: JSONSchema) => ({
  description: 'The read model has not reached the requested position within the wait; retry',
  schema,
  example: { status: 'pending', detail: PENDING_DETAIL },
  headers: { 'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer' } } },
});

/** The newer of `X-Min-Position` and `min_position`, or null when neither is sent; 400 for a malformed one. */
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

/** The title words of `q`, or a 400 when it holds no letter or digit to search for. */
function searchWords(q: string): string[] {
  const words = titleWords(q);
  if (words.length === 0)
    throw new ValidationError([{ path: '/query/q', message: 'has no letter or digit to search for' }]);
  return words;
}

interface ListQuery {
  status?: TaskStatus;
  type?: string;
  queue?: string;
  group_key?: string;
  schedule_id?: string;
  owner_id?: string;
  created_after?: string;
  created_before?: string;
  q?: string;
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
  const reads = createTaskReads({
    queries,
    store: deps.store,
    readModelReached: deps.readModelReached,
    minPositionWaitMs: deps.minPositionWaitMs,
    clock: deps.clock,
  });

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
      params: uuidIdParams,
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
        const asOf = await reads.taskAsOf(id, req.query.as_of);
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

      let found: TaskSnapshot | null;
      if (minPosition === null) found = visible(await queries.getTask(id));
      else {
        const outcome = await reads.getTaskIncluding(id, minPosition, visible);
        if (outcome === 'pending') return answerPending(res);
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
          group_key: { type: 'string', minLength: 1, maxLength: 200, description: 'Tasks of this group key' },
          schedule_id: { ...uuid, description: 'Only the tasks this schedule queued' },
          owner_id: { ...uuid, description: 'Auditors and admins only: the tasks of this owner' },
          created_after: {
            type: 'string',
            format: 'date-time',
            description: 'Submitted at or after this instant (RFC 3339)',
          },
          created_before: {
            type: 'string',
            format: 'date-time',
            description: 'Submitted before this instant',
          },
          q: {
            type: 'string',
            minLength: 1,
            maxLength: 200,
            description:
              'Words of the title, case-insensitive: every word must begin a word of the title (`rep q3` finds "Quarterly report Q3"). Only letters and digits count.',
          },
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
            next_cursor: encodeKeysetCursor('2025-03-01T09:00:00.000000Z', taskExample.id),
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
      const scheduleId = req.query.schedule_id?.toLowerCase();
      const filters = {
        createdAfter:
          req.query.created_after && storableInstant(req.query.created_after, '/query/created_after'),
        createdBefore:
          req.query.created_before && storableInstant(req.query.created_before, '/query/created_before'),
        titleWords: req.query.q === undefined ? undefined : searchWords(req.query.q),
        groupKey: req.query.group_key,
      };
      let ownerId: string | null = claims.userId;
      if (seesAllTasks(claims)) ownerId = req.query.owner_id ?? null;
      else if (req.query.owner_id !== undefined && req.query.owner_id.toLowerCase() !== claims.userId)
        throw new ForbiddenError("only auditors and admins can list other users' tasks");

      // A list spans many streams, so only the watermark can say it includes P.
      if (minPosition !== null && !(await reads.waitForReadModel(minPosition))) return answerPending(res);
      const page = await queries.listTasks({
        ownerId,
        status,
        type,
        queue,
        scheduleId,
        ...filters,
        limit,
        cursor: cursor ?? null,
      });
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
      params: uuidIdParams,
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

  return { queries, waitForTask: reads.waitForTask };
}

function eventView(event: RecordedEvent) {
  return {
    type: event.type,
    revision: event.revision,
    position: event.position,
    data: event.data,
    metadata: metadataJson(event.metadata),
    recorded_at: event.recordedAt,
  };
}
