/**
 * src/queries/tasks: reads of the tasks read model, through the cache, with read-your-writes waits and time travel;
 * route.ts maps HTTP onto them.
 */
import { ValidationError } from '../../errors.js';
import type { Cache } from '../../infra/cache/cache.js';
import type { Pool } from '../../infra/db/pool.js';
import { isPosition, type EventStore, type Position } from '../../infra/eventStore/eventStore.js';
import { sleep } from '../../infra/abort.js';
import { decodeKeysetCursor, encodeKeysetCursor } from '../keysetCursor.js';
import { taskStreamId } from '../../domain/tasks/events.js';
import { foldEvents } from '../../domain/decider.js';
import { task as taskDecider } from '../../domain/tasks/state.js';
import { taskResource, type TaskResource } from '../../domain/tasks/representation.js';
import {
  rowToTask,
  selectListedTaskRows,
  selectTaskRow,
  selectTaskStatuses,
  taskCacheKey,
  type ListedTaskFilter,
  type TaskRow,
} from '../../projections/tasks/table.js';

/** The same representation the task commands answer with: one definition, so the two cannot drift apart. */
export type TaskView = TaskResource;

/** A view and the log position of the last event it reflects, which read-your-writes compares against. */
export interface TaskSnapshot {
  task: TaskView;
  position: Position;
}

export interface TaskPage {
  items: TaskView[];
  next_cursor: string | null;
}

/** The table's filter (owner, status, type, queue, time range, title words), paged by a cursor and a limit. */
export interface TaskListFilter extends Omit<ListedTaskFilter, 'after'> {
  /** 1 to 100; 20 when absent. */
  limit?: number;
  cursor?: string | null;
}

/**
 * The words a title search looks for, each searched as a prefix of a title word. Only letters and digits make
 * a word, so nothing the client sends can be read as query syntax. Empty when no word is left.
 */
export function titleWords(text: string): string[] {
  return (text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []).slice(0, 10);
}

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

const rowView = (row: TaskRow): TaskView => taskResource(rowToTask(row), row.revision);

/** created_at as the tasks list issues it: microseconds. */
const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

/** Throws a 400 for anything this service did not issue (or could not have issued). */
export const decodeCursor = (cursor: string) => decodeKeysetCursor(cursor, CURSOR_TIME);

export interface TaskQueries {
  /**
   * The task, or null when there is no such row. With `minPosition`, a cached view older than it is not served:
   * the row is read again (the caller decides whether that row is new enough).
   */
  getTask(id: string, options?: { minPosition?: Position | null }): Promise<TaskSnapshot | null>;
  /** Newest first, keyset-paged on (created_at, id). Archived tasks are left out. */
  listTasks(filter: TaskListFilter): Promise<TaskPage>;
  /**
   * The owner's tasks in one answer, newest first, archived ones left out: at most `cap` of them, and whether
   * there were more (the Go service's GET /api/tasks, which had no pages).
   */
  listOwnerTasks(ownerId: string, cap: number): Promise<{ items: TaskView[]; truncated: boolean }>;
}

export function createTaskQueries(deps: { pool: Pool; cache: Cache; cacheTtlSeconds?: number }): TaskQueries {
  const { pool, cache } = deps;

  const readRow = async (id: string): Promise<TaskSnapshot | null> => {
    const row = await selectTaskRow(pool, id);
    return row ? { task: rowView(row), position: row.last_position } : null;
  };

  /**
   * Pending tasks with dependencies get `waiting_for`: those not yet done (with `ignore`: not yet finished), by the
   * read model's rows of them, in one query for the whole page. Never cached: a dependency's end changes it
   * without touching the task's own row.
   */
  const withWaitingFor = async (views: TaskView[]): Promise<TaskView[]> => {
    const waiting = views.filter((view) => view.status === 'pending' && view.depends_on.length > 0);
    if (waiting.length === 0) return views;
    const statuses = await selectTaskStatuses(pool, [...new Set(waiting.flatMap((view) => view.depends_on))]);
    const finished = (status: string | undefined) =>
      status === 'done' || status === 'failed' || status === 'canceled';
    return views.map((view) =>
      view.status === 'pending' && view.depends_on.length > 0
        ? {
            ...view,
            waiting_for: view.depends_on.filter((id) =>
              view.on_dependency_failure === 'ignore'
                ? !finished(statuses.get(id))
                : statuses.get(id) !== 'done',
            ),
          }
        : view,
    );
  };
  const withWaitingForOne = async (snapshot: TaskSnapshot | null): Promise<TaskSnapshot | null> =>
    snapshot && { ...snapshot, task: (await withWaitingFor([snapshot.task]))[0]! };

  const selectListed = (filter: TaskListFilter, limit: number) =>
    selectListedTaskRows(
      pool,
      { ...filter, after: filter.cursor ? decodeCursor(filter.cursor) : null },
      limit,
    );

  return {
    async getTask(id, options = {}) {
      const key = taskCacheKey(id);
      const minPosition = options.minPosition ?? null;
      const cached = await cache.get<TaskSnapshot>(key);
      if (cached && (minPosition === null || cached.position >= minPosition))
        return withWaitingForOne(cached);
      const fresh = await readRow(id);
      // Absent tasks are not cached: one submitted a moment ago would stay invisible until the entry expired.
      // Stored at the row's position: if a projection committed a newer row meanwhile, the cache refuses this one.
      if (fresh) await cache.set(key, fresh, fresh.position, deps.cacheTtlSeconds);
      return withWaitingForOne(fresh);
    },

    // Lists are not cached: every submit and every status change of any task on a page changes them, so entries
    // would be invalidated about as often as read, and the keyset query is one index range scan anyway.
    async listTasks(filter) {
      const limit = filter.limit ?? DEFAULT_PAGE_SIZE;
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE)
        throw new ValidationError([
          { path: '/query/limit', message: `must be an integer from 1 to ${MAX_PAGE_SIZE}` },
        ]);
      const rows = await selectListed(filter, limit + 1);
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      return {
        items: await withWaitingFor(page.map(rowView)),
        next_cursor: rows.length > limit && last ? encodeKeysetCursor(last.cursor_created_at, last.id) : null,
      };
    },

    async listOwnerTasks(ownerId, cap) {
      const rows = await selectListed({ ownerId }, cap + 1);
      return { items: await withWaitingFor(rows.slice(0, cap).map(rowView)), truncated: rows.length > cap };
    },
  };
}

/** How often a read that waits for a log position looks again. */
const POLL_INTERVAL_MS = 25;

export interface TaskReadsDeps {
  queries: TaskQueries;
  store: EventStore;
  /** True once the tasks read model has applied every event up to `position` (a watermark across streams). */
  readModelReached: (position: Position) => Promise<boolean>;
  /** How long a read waits for a position before it answers "pending". */
  minPositionWaitMs: number;
  clock?: () => Date;
}

/** Reads that wait for the caller's own writes, and reads of the past: what the routes add to TaskQueries. */
export interface TaskReads {
  /**
   * The task as seen by a read that includes `minPosition`, waiting at most `minPositionWaitMs`; `pending` when the
   * read model has not reached it by then. `visible` filters what the caller may see: an invisible task is treated
   * exactly as an absent one, waits included, so neither the answer nor its timing reveals that it exists.
   */
  getTaskIncluding(
    id: string,
    minPosition: Position,
    visible: (snapshot: TaskSnapshot | null) => TaskSnapshot | null,
  ): Promise<{ snapshot: TaskSnapshot | null } | 'pending'>;
  /** Waits (bounded) until the task's row reflects `position`, a position a command on this task answered with. */
  waitForTask(id: string, position: Position): Promise<boolean>;
  /** Waits (bounded) until the whole read model includes `position`, which a list spanning many streams needs. */
  waitForReadModel(position: Position): Promise<boolean>;
  /**
   * The task as it was at a time (RFC 3339) or log position: its own events up to then, folded by the domain's
   * evolve, so history answers exactly as the live task would have then. Null when it did not exist yet.
   */
  taskAsOf(id: string, asOf: string): Promise<TaskView | null>;
}

export function createTaskReads(deps: TaskReadsDeps): TaskReads {
  const { queries } = deps;
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

  return {
    async getTaskIncluding(id, minPosition, visible) {
      const read = async () => visible(await queries.getTask(id, { minPosition }));
      const outcome = await pollUntil(async () => {
        const snapshot = await read();
        // The common case: P came from a command on this very task.
        if (snapshot && snapshot.position >= minPosition) return { snapshot };
        if (!(await deps.readModelReached(minPosition))) return undefined;
        // Read again after the watermark: only a row read after it passed P is sure to include P.
        return { snapshot: await read() };
      });
      return outcome ?? 'pending';
    },

    async waitForTask(id, position) {
      const reached = await pollUntil(async () => {
        const snapshot = await queries.getTask(id, { minPosition: position });
        return snapshot && snapshot.position >= position ? true : undefined;
      });
      return reached === true;
    },

    async waitForReadModel(position) {
      return (
        (await pollUntil(async () => ((await deps.readModelReached(position)) ? true : undefined))) === true
      );
    },

    async taskAsOf(id, asOf) {
      let upTo: (event: { position: string; metadata: { timestamp: string } }) => boolean;
      if (isPosition(asOf)) upTo = (event) => event.position <= asOf;
      else if (/^\d{4}-\d{2}-\d{2}T/.test(asOf) && !Number.isNaN(Date.parse(asOf))) {
        const time = Date.parse(asOf);
        upTo = (event) => Date.parse(event.metadata.timestamp) <= time;
      } else
        throw new ValidationError([
          { path: '/query/as_of', message: 'must be an RFC 3339 time or a log position' },
        ]);
      const events = (await deps.store.readStream(taskStreamId(id))).filter(upTo);
      if (events.length === 0) return null;
      return taskResource(foldEvents(taskDecider, events), events[events.length - 1]!.revision);
    },
  };
}
