/**
 * The task as the API shows it, in one place: the snake_case resource that commands answer with and the read
 * model serves, and the JSON schemas (shared by ajv validation and the OpenAPI document) that describe it.
 * Command routes and query routes both take the schemas from here, in whatever order they are registered.
 */
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import type { TaskStatus } from './events.js';
import type { Task } from './state.js';

/** A task as the API shows it (snake_case). Commands answer with it; the read model serves the same shape. */
export interface TaskResource {
  id: string;
  owner_id: string;
  title: string;
  description: string | null;
  type: string;
  payload: JsonValue;
  priority: number;
  queue: string;
  /** Who the task is for, as the submitter gave it; null when none. */
  group_key: string | null;
  /** The tasks this one waits for ([] when none) and what their failure does to it (null when none). */
  depends_on: string[];
  on_dependency_failure: 'fail' | 'ignore' | null;
  /**
   * Of `depends_on`, those not yet done (or, with `ignore`, not yet finished) while this task is pending: shown by
   * the queries (GET /tasks, GET /tasks/{id}), which look the dependencies up; absent from command answers.
   */
  waiting_for?: string[];
  status: Task['status'];
  attempt: number;
  max_attempts: number;
  timeout_ms: number;
  run_at: string | null;
  progress: number | null;
  result: JsonValue | null;
  error: Task['lastError'];
  created_at: string;
  updated_at: string;
  /** When it was archived (hidden from lists), or null. */
  archived_at: string | null;
  /** The schedule that queued it and the tick it was queued for; null for a submitted task. */
  schedule_id: string | null;
  schedule_tick: string | null;
  revision: number;
}

export function taskResource(state: Task, revision: number): TaskResource {
  const spec = state.spec!;
  return {
    id: state.id!,
    owner_id: state.ownerId!,
    title: spec.title,
    description: spec.description,
    type: spec.type,
    payload: spec.payload,
    priority: spec.priority,
    queue: spec.queue,
    group_key: spec.groupKey,
    depends_on: spec.dependencies?.taskIds ?? [],
    on_dependency_failure: spec.dependencies?.onFailure ?? null,
    status: state.status,
    attempt: state.attempt - state.attemptsBefore,
    max_attempts: spec.maxAttempts,
    timeout_ms: spec.timeoutMs,
    run_at: state.runAt,
    progress: state.progress,
    result: state.result,
    error: state.lastError,
    created_at: state.createdAt!,
    updated_at: state.updatedAt!,
    archived_at: state.archivedAt,
    schedule_id: state.origin?.scheduleId ?? null,
    schedule_tick: state.origin?.tick ?? null,
    revision,
  };
}

/** Every status a task can have, in the order of its life. */
export const TASK_STATUSES: readonly TaskStatus[] = ['pending', 'in_progress', 'done', 'failed', 'canceled'];

const uuid = { type: 'string', format: 'uuid' };
const dateTime = { type: 'string', format: 'date-time' };
const anyJson = {};

/** An example task, shown in the OpenAPI document. */
export const taskExample = {
  id: '0b7e3f0a-3c1d-4e4b-9a55-6d2f1c9e8b10',
  owner_id: '5b1f3c2e-8d5a-4f7e-9c61-0a2b3c4d5e6f',
  title: 'Resize the March uploads',
  description: 'Every image uploaded in March, to 1024 px',
  type: 'echo',
  payload: { images: 12 },
  priority: 5,
  queue: 'default',
  group_key: null,
  depends_on: [],
  on_dependency_failure: null,
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
  schedule_id: null,
  schedule_tick: null,
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
    group_key: {
      type: ['string', 'null'],
      description:
        "Who the task is for (a tenant, a customer): the queue's group_concurrency and fairness count by it",
    },
    depends_on: { type: 'array', items: uuid, description: 'Tasks that must be done before this one starts' },
    on_dependency_failure: {
      enum: ['fail', 'ignore', null],
      description: 'What a failed or canceled dependency does to it (null: it has no dependencies)',
    },
    waiting_for: {
      type: 'array',
      items: uuid,
      description:
        'Shown by the queries: the dependencies it still waits for while pending (it starts once this is empty)',
    },
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
    schedule_id: {
      type: ['string', 'null'],
      format: 'uuid',
      description: 'The schedule that queued the task, or null for a submitted task',
    },
    schedule_tick: {
      type: ['string', 'null'],
      format: 'date-time',
      description: 'The schedule\'s tick it was queued for (for "run now", the time of the request), or null',
    },
    revision: {
      type: 'integer',
      minimum: 0,
      description: "The task stream's revision this reflects; it grows by one with every change",
    },
  },
  examples: [taskExample],
};

/** A page of tasks; `task` is the reference to the Task schema where it was registered. */
export const taskListSchema = (task: JSONSchema): JSONSchema => ({
  type: 'object',
  required: ['items', 'next_cursor'],
  properties: {
    items: { type: 'array', items: task },
    next_cursor: {
      type: ['string', 'null'],
      description: 'Pass as `cursor` for the next page; null on the last page',
    },
  },
});

/** An example task event, shown in the OpenAPI document. */
export const taskEventExample = {
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

/** A task's events; `taskEvent` is the reference to the TaskEvent schema where it was registered. */
export const taskEventListSchema = (taskEvent: JSONSchema): JSONSchema => ({
  type: 'object',
  required: ['items'],
  properties: { items: { type: 'array', items: taskEvent } },
});

/** The detail of a read that waited for a position the read model has not reached. */
export const PENDING_DETAIL = 'the read model has not reached that position yet';

export const readModelPendingSchema: JSONSchema = {
  type: 'object',
  required: ['status', 'detail'],
  properties: { status: { const: 'pending' }, detail: { type: 'string' } },
  examples: [{ status: 'pending', detail: PENDING_DETAIL }],
};

/** References to the task schemas, as the registry handed them out. */
export interface TaskSchemaRefs {
  task: JSONSchema;
  taskList: JSONSchema;
  taskEvent: JSONSchema;
  taskEventList: JSONSchema;
  readModelPending: JSONSchema;
}

/**
 * Where named schemas are registered and referred to: the HTTP layer's Api (its OpenAPI components). Only
 * this much of it, so the domain names no HTTP module.
 */
export interface SchemaRegistry {
  /** Registers `schema` under `name` and returns a reference to it; a second registration of a name throws. */
  addSchema(name: string, schema: JSONSchema): JSONSchema;
}

const refsByRegistry = new WeakMap<SchemaRegistry, TaskSchemaRefs>();

/**
 * Adds the task schemas to `registry` the first time, and returns their refs every time: the command routes
 * for tasks share them with the query routes, in whatever order the two are registered.
 */
export function ensureTaskSchemas(registry: SchemaRegistry): TaskSchemaRefs {
  let refs = refsByRegistry.get(registry);
  if (!refs) {
    const task = registry.addSchema('Task', taskSchema);
    const taskList = registry.addSchema('TaskList', taskListSchema(task));
    const taskEvent = registry.addSchema('TaskEvent', taskEventSchema);
    const taskEventList = registry.addSchema('TaskEventList', taskEventListSchema(taskEvent));
    const readModelPending = registry.addSchema('ReadModelPending', readModelPendingSchema);
    refs = { task, taskList, taskEvent, taskEventList, readModelPending };
    refsByRegistry.set(registry, refs);
  }
  return refs;
}
