/**
 * src/projections/schedules: the schedules read model: its projection (this file, the table's only writer) and the
 * module that owns the table (table.ts: columns, row, mapping, reads).
 */
import { checkColumn, defineProjection, type ColumnType } from '../readModel.js';
import { SCHEDULE_EVENT_TYPES, scheduleStreamId, type ScheduleEvent } from '../../domain/schedules/events.js';
import { evolveSchedule, initialSchedule, type Schedule } from '../../domain/schedules/state.js';
import { rowToSchedule, SCHEDULE_COLUMNS, type ScheduleRow } from './table.js';

interface ScheduleState {
  schedule: Schedule;
  revision: number;
  position: string;
}

/** Each column with its SQL type, whether it may be null, and its value (as in the tasks projection). */
const SCHEDULE_WRITE_COLUMNS: ReadonlyArray<
  [string, ColumnType, boolean, (state: ScheduleState) => unknown]
> = [
  ['id', 'uuid', false, (s) => s.schedule.id],
  ['owner_id', 'uuid', false, (s) => s.schedule.ownerId],
  ['name', 'text', false, (s) => s.schedule.name],
  ['cron', 'text', false, (s) => s.schedule.cron],
  ['timezone', 'text', false, (s) => s.schedule.timezone],
  ['task', 'jsonb', false, (s) => s.schedule.task],
  ['overlap', 'text', false, (s) => s.schedule.overlap],
  ['catch_up', 'text', false, (s) => s.schedule.catchUp],
  ['status', 'text', false, (s) => s.schedule.status],
  ['next_fire_at', 'timestamptz', true, (s) => s.schedule.nextFireAt],
  ['last_tick', 'timestamptz', true, (s) => s.schedule.lastTick],
  ['last_task_id', 'uuid', true, (s) => s.schedule.lastTaskId],
  ['fired_count', 'integer', false, (s) => s.schedule.firedCount],
  ['created_at', 'timestamptz', false, (s) => s.schedule.createdAt],
  ['updated_at', 'timestamptz', false, (s) => s.schedule.updatedAt],
  ['revision', 'bigint', false, (s) => s.revision],
  ['last_position', 'text', false, (s) => s.position],
];

function checkScheduleRow(next: ScheduleState, previous: ScheduleState | null): ScheduleState {
  if (!next.schedule.task) throw new TypeError(`schedule ${next.schedule.id} has no task`);
  for (const [column, type, nullable, value] of SCHEDULE_WRITE_COLUMNS) {
    const after = value(next);
    if (previous === null || after !== value(previous)) checkColumn(column, type, nullable, after);
  }
  return next;
}

const COLUMN_LIST = SCHEDULE_WRITE_COLUMNS.map(([column]) => column).join(', ');

const UPSERT_SCHEDULES = `INSERT INTO schedules (${COLUMN_LIST})
  SELECT ${COLUMN_LIST} FROM json_populate_recordset(NULL::schedules, $1::json)
  ON CONFLICT (id) DO UPDATE SET ${SCHEDULE_WRITE_COLUMNS.slice(1)
    .map(([column]) => `${column} = excluded.${column}`)
    .join(', ')}`;

/** Row in, the domain's own evolveSchedule, row back: the read model folds exactly as the commands do. */
export const schedulesProjection = defineProjection<ScheduleState>({
  name: 'schedules',
  eventTypes: SCHEDULE_EVENT_TYPES,
  tables: [{ name: 'schedules', streamOf: `'schedule-' || r.id` }],
  rowPerStream: true, // keyOf checks the event's stream is its row's
  keyOf(recorded) {
    const scheduleId = (recorded as unknown as ScheduleEvent).data.scheduleId;
    if (typeof scheduleId !== 'string' || recorded.streamId !== scheduleStreamId(scheduleId))
      throw new TypeError(`${recorded.type} in ${recorded.streamId} names schedule ${String(scheduleId)}`);
    return scheduleId;
  },
  async load(client, ids, lock) {
    const { rows } = await client.query<ScheduleRow>(
      `SELECT ${SCHEDULE_COLUMNS} FROM schedules WHERE id = ANY ($1::uuid[])${lock ? ' FOR UPDATE' : ''}`,
      [ids],
    );
    return new Map(
      rows.map((row) => [
        row.id,
        { schedule: rowToSchedule(row), revision: row.revision, position: row.last_position },
      ]),
    );
  },
  evolve(state, recorded) {
    const event = recorded as unknown as ScheduleEvent;
    if (state && state.revision >= recorded.revision) return state;
    if (!state && event.type !== 'ScheduleCreated')
      throw new TypeError(
        `${event.type} for schedule ${event.data.scheduleId}, whose ScheduleCreated was never applied`,
      );
    return checkScheduleRow(
      {
        schedule: evolveSchedule(state ? state.schedule : initialSchedule, event),
        revision: recorded.revision,
        position: recorded.position,
      },
      state,
    );
  },
  async write(client, changed) {
    // A deleted schedule keeps its row (status 'deleted'), so evolve never returns null.
    const rows = changed.flatMap(({ row }) =>
      row
        ? [
            Object.fromEntries(
              SCHEDULE_WRITE_COLUMNS.map(([column, , , value]) => [column, value(row) ?? null]),
            ),
          ]
        : [],
    );
    await client.query(UPSERT_SCHEDULES, [JSON.stringify(rows)]);
  },
});
