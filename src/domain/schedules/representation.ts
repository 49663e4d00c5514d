/**
 * The schedule as the API shows it: the snake_case resource that commands answer with and the read model serves,
 * and its JSON schemas (shared by ajv validation and the OpenAPI document).
 */
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import type { CatchUpPolicy, OverlapPolicy } from './events.js';
import { parseCron } from './cron.js';
import type { Schedule } from './state.js';
import type { SchemaRegistry } from '../tasks/representation.js';

/** How many upcoming ticks a schedule shows. */
export const NEXT_FIRE_TIMES_SHOWN = 5;

export interface ScheduledTaskResource {
  title: string;
  description: string | null;
  type: string;
  payload: JsonValue;
  priority: number;
  queue: string;
  max_attempts: number;
  timeout_ms: number;
}

export interface ScheduleResource {
  id: string;
  owner_id: string;
  name: string;
  cron: string;
  timezone: string;
  task: ScheduledTaskResource;
  overlap: OverlapPolicy;
  catch_up: CatchUpPolicy;
  status: 'active' | 'paused';
  next_fire_at: string | null;
  /** The next few ticks from next_fire_at on; empty while paused. */
  next_fire_times: string[];
  last_tick: string | null;
  last_task_id: string | null;
  fired_count: number;
  created_at: string;
  updated_at: string;
  revision: number;
}

export function scheduleResource(state: Schedule, revision: number): ScheduleResource {
  const task = state.task!;
  const next = state.nextFireAt;
  const nextFireTimes =
    next === null
      ? []
      : [
          next,
          ...parseCron(state.cron, state.timezone)
            .nextTicks(NEXT_FIRE_TIMES_SHOWN - 1, new Date(next))
            .map((tick) => tick.toISOString()),
        ];
  return {
    id: state.id!,
    owner_id: state.ownerId!,
    name: state.name,
    cron: state.cron,
    timezone: state.timezone,
    task: {
      title: task.title,
      description: task.description,
      type: task.type,
      payload: task.payload,
      priority: task.priority,
      queue: task.queue,
      max_attempts: task.maxAttempts,
      timeout_ms: task.timeoutMs,
    },
    overlap: state.overlap,
    catch_up: state.catchUp,
    status: state.status === 'paused' ? 'paused' : 'active',
    next_fire_at: next,
    next_fire_times: nextFireTimes,
    last_tick: state.lastTick,
    last_task_id: state.lastTaskId,
    fired_count: state.firedCount,
    created_at: state.createdAt!,
    updated_at: state.updatedAt!,
    revision,
  };
}

const uuid = { type: 'string', format: 'uuid' };
const dateTime = { type: 'string', format: 'date-time' };
const nullableDateTime = { type: ['string', 'null'], format: 'date-time' };

export const scheduleExample: ScheduleResource = {
  id: '2c5e8f1a-4b3d-4e6f-8a9b-0c1d2e3f4a5b',
  owner_id: '5b1f3c2e-8d5a-4f7e-9c61-0a2b3c4d5e6f',
  name: 'Nightly report',
  cron: '0 2 * * *',
  timezone: 'Europe/Berlin',
  task: {
    title: 'Build the nightly report',
    description: null,
    type: 'echo',
    payload: { report: 'nightly' },
    priority: 5,
    queue: 'default',
    max_attempts: 3,
    timeout_ms: 60000,
  },
  overlap: 'skip',
  catch_up: 'last',
  status: 'active',
  next_fire_at: '2025-03-02T01:00:00.000Z',
  next_fire_times: [
    '2025-03-02T01:00:00.000Z',
    '2025-03-03T01:00:00.000Z',
    '2025-03-04T01:00:00.000Z',
    '2025-03-05T01:00:00.000Z',
    '2025-03-06T01:00:00.000Z',
  ],
  last_tick: '2025-03-01T01:00:00.000Z',
  last_task_id: '8e0b5c1d-2f3a-5b4c-9d6e-7f8a9b0c1d2e',
  fired_count: 12,
  created_at: '2025-02-18T10:00:00.000Z',
  updated_at: '2025-03-01T01:00:00.210Z',
  revision: 14,
};

export const scheduleSchema: JSONSchema = {
  type: 'object',
  required: Object.keys(scheduleExample),
  properties: {
    id: uuid,
    owner_id: uuid,
    name: { type: 'string' },
    cron: {
      type: 'string',
      description: '5 fields (minute first) or 6 (second first), as croner reads them',
    },
    timezone: { type: 'string', description: 'IANA time zone the expression is read in' },
    task: {
      type: 'object',
      required: Object.keys(scheduleExample.task),
      properties: {
        title: { type: 'string' },
        description: { type: ['string', 'null'] },
        type: { type: 'string' },
        payload: {},
        priority: { type: 'integer', minimum: 0, maximum: 10 },
        queue: { type: 'string' },
        max_attempts: { type: 'integer', minimum: 1 },
        timeout_ms: { type: 'integer', minimum: 1 },
      },
    },
    overlap: { enum: ['skip', 'allow'] },
    catch_up: { enum: ['none', 'last', 'all'] },
    status: { enum: ['active', 'paused'] },
    next_fire_at: { ...nullableDateTime, description: 'The next tick to fire; null while paused' },
    next_fire_times: {
      type: 'array',
      items: dateTime,
      description: `The next ${NEXT_FIRE_TIMES_SHOWN} ticks from next_fire_at on (empty while paused)`,
    },
    last_tick: { ...nullableDateTime, description: 'The tick of the last firing ("run now" included)' },
    last_task_id: {
      type: ['string', 'null'],
      format: 'uuid',
      description: 'The task the last firing queued',
    },
    fired_count: { type: 'integer', minimum: 0 },
    created_at: dateTime,
    updated_at: dateTime,
    revision: {
      type: 'integer',
      minimum: 0,
      description: "The schedule stream's revision this reflects (every firing adds one)",
    },
  },
  examples: [scheduleExample],
};

export const scheduleListSchema = (schedule: JSONSchema): JSONSchema => ({
  type: 'object',
  required: ['items', 'next_cursor'],
  properties: {
    items: { type: 'array', items: schedule },
    next_cursor: {
      type: ['string', 'null'],
      description: 'Pass as `cursor` for the next page; null on the last page',
    },
  },
});

/** References to the schedule schemas, as the registry handed them out. */
export interface ScheduleSchemaRefs {
  schedule: JSONSchema;
  scheduleList: JSONSchema;
}

const refsByRegistry = new WeakMap<SchemaRegistry, ScheduleSchemaRefs>();

/** Adds the schedule schemas to `registry` the first time, and returns their refs every time (commands and queries). */
export function ensureScheduleSchemas(registry: SchemaRegistry): ScheduleSchemaRefs {
  let refs = refsByRegistry.get(registry);
  if (!refs) {
    const schedule = registry.addSchema('Schedule', scheduleSchema);
    refs = { schedule, scheduleList: registry.addSchema('ScheduleList', scheduleListSchema(schedule)) };
    refsByRegistry.set(registry, refs);
  }
  return refs;
}
