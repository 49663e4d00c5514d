/**
 * src/queries/schedules: the schedules read model over HTTP (GET /schedules, GET /schedules/{id}), with the bounded
 * read-your-writes wait of the task queries. A schedule's history is its stream: GET /audit/events?stream=... shows it.
 */
import type { Request, Response } from 'express';
import { NotFoundError, ValidationError } from '../../errors.js';
import { uuidIdParams, type Api, type JSONSchema } from '../../infra/http/api.js';
import type { Pool } from '../../infra/db/pool.js';
import { isPosition, type Position } from '../../infra/eventStore/eventStore.js';
import { claimsOf, type CallerClaims } from '../../infra/http/auth.js';
import { sleep } from '../../infra/abort.js';
import { decodeKeysetCursor, encodeKeysetCursor } from '../keysetCursor.js';
import {
  ensureScheduleSchemas,
  scheduleExample,
  scheduleResource,
  type ScheduleResource,
} from '../../domain/schedules/representation.js';
import {
  rowToSchedule,
  selectListedScheduleRows,
  selectScheduleRow,
  type ScheduleRow,
} from '../../projections/schedules/table.js';

export interface ScheduleQueryRouteDeps {
  pool: Pool;
  /** True once the schedules projection has applied every event up to `position`. */
  readModelReached: (position: string) => Promise<boolean>;
  minPositionWaitMs: number;
}

const DEFAULT_PAGE_SIZE = 20;
const MAX_PAGE_SIZE = 100;
/** created_at as the schedules list issues it: milliseconds. */
const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** Admins see every schedule; anyone else only their own. */
const seesAllSchedules = (claims: CallerClaims): boolean => claims.role === 'admin';

const rowView = (row: ScheduleRow): ScheduleResource => scheduleResource(rowToSchedule(row), row.revision);

const encodeCursor = (row: ScheduleRow): string => encodeKeysetCursor(row.created_at.toISOString(), row.id);

const decodeCursor = (cursor: string) => decodeKeysetCursor(cursor, CURSOR_TIME);

const minPositionDoc = 'A log position from a command response: wait (bounded) until the read model has it';
const minPositionHeaders: JSONSchema = {
  type: 'object',
  properties: { 'x-min-position': { type: 'string', maxLength: 64, description: minPositionDoc } },
};

function requestedMinPosition(req: Pick<Request, 'get'>): Position | null {
  const value = req.get('x-min-position');
  if (value === undefined) return null;
  if (!isPosition(value))
    throw new ValidationError([
      { path: '/headers/x-min-position', message: 'is not a log position (as returned by a command)' },
    ]);
  return value;
}

function answerPending(res: Response): void {
  res.status(202).set('Retry-After', '1').set('Cache-Control', 'no-store').json({
    status: 'pending',
    detail: 'the read model has not reached that position yet',
  });
}

export function registerScheduleQueryRoutes(api: Api, deps: ScheduleQueryRouteDeps): void {
  const refs = ensureScheduleSchemas(api);
  const pendingSchema: JSONSchema = {
    type: 'object',
    required: ['status', 'detail'],
    properties: { status: { const: 'pending' }, detail: { type: 'string' } },
  };
  const pending = {
    description: 'The read model has not reached the requested position within the wait; retry',
    schema: pendingSchema,
    headers: {
      'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer' } },
    },
  };

  /** Waits, at most minPositionWaitMs, for the read model to include `position`; false if it does not by then. */
  const reached = async (position: Position | null): Promise<boolean> => {
    if (position === null) return true;
    const deadline = Date.now() + deps.minPositionWaitMs;
    for (;;) {
      if (await deps.readModelReached(position)) return true;
      if (Date.now() >= deadline) return false;
      await sleep(20);
    }
  };

  api.route<unknown, Record<string, unknown>, { id: string }>(
    {
      method: 'get',
      path: '/schedules/:id',
      operationId: 'getSchedule',
      summary: 'A schedule, with its next few fire times',
      description:
        'Owners see their schedules, admins every one; any other is 404, as a missing one is. Its history (every ' +
        'firing and change) is its stream, `schedule-<id>`.',
      tags: ['schedules'],
      auth: 'bearer',
      params: uuidIdParams,
      headers: minPositionHeaders,
      responses: {
        200: { description: 'The schedule', schema: refs.schedule, example: scheduleExample },
        202: pending,
        404: { description: 'No such schedule, or not yours (the two are not told apart)' },
      },
    },
    async (req, res) => {
      const claims = claimsOf(req);
      if (!(await reached(requestedMinPosition(req)))) return answerPending(res);
      const row = await selectScheduleRow(deps.pool, req.params.id.toLowerCase());
      if (!row || row.status === 'deleted' || (row.owner_id !== claims.userId && !seesAllSchedules(claims)))
        throw new NotFoundError(`there is no schedule ${req.params.id}`);
      res.set('Cache-Control', 'no-store').json(rowView(row));
    },
  );

  api.route<unknown, { limit: number; cursor?: string }>(
    {
      method: 'get',
      path: '/schedules',
      operationId: 'listSchedules',
      summary: 'Schedules, newest first, a page at a time',
      description: 'Users see their own schedules; admins see every one. Deleted schedules are left out.',
      tags: ['schedules'],
      auth: 'bearer',
      query: {
        type: 'object',
        additionalProperties: false,
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE_SIZE, default: DEFAULT_PAGE_SIZE },
          cursor: { type: 'string', maxLength: 200, description: '`next_cursor` of the previous page' },
        },
      },
      headers: minPositionHeaders,
      responses: {
        200: {
          description: 'A page of schedules',
          schema: refs.scheduleList,
          example: { items: [scheduleExample], next_cursor: null },
        },
        202: pending,
        400: { description: 'Malformed cursor or min position' },
      },
    },
    async (req, res) => {
      const claims = claimsOf(req);
      if (!(await reached(requestedMinPosition(req)))) return answerPending(res);
      const limit = req.query.limit;
      const rows = await selectListedScheduleRows(
        deps.pool,
        {
          ownerId: seesAllSchedules(claims) ? null : claims.userId,
          after: req.query.cursor ? decodeCursor(req.query.cursor) : null,
        },
        limit + 1,
      );
      const page = rows.slice(0, limit);
      res.set('Cache-Control', 'no-store').json({
        items: page.map(rowView),
        next_cursor: rows.length > limit ? encodeCursor(page.at(-1)!) : null,
      });
    },
  );
}
