/**
 * A queue as the API shows it (snake_case), and the JSON schemas of its settings and of the resource, shared by
 * the command route (PUT /queues/{name}) and the query routes (GET /queues, GET /queues/{name}).
 */
import type { JSONSchema } from '../../infra/jsonSchema.js';
import { TASK_STATUSES, type SchemaRegistry } from '../tasks/representation.js';
import type { TaskStatus } from '../tasks/events.js';
import { QUEUE_NAME_PATTERN, type LimitsSource, type QueueLimits } from './queueSettings.js';

/** What PUT /queues/{name} takes: the whole settings; a field left out means no limit of that kind. */
export interface QueueSettingsBody {
  concurrency?: number | null;
  rate?: { limit: number; interval_ms: number } | null;
  group_concurrency?: number | null;
  paused?: boolean;
}

/** A queue's limits as the API shows them: PUT /queues/{name} answers with this. */
export interface QueueSettingsResource {
  name: string;
  concurrency: number | null;
  rate: { limit: number; interval_ms: number } | null;
  group_concurrency: number | null;
  paused: boolean;
  /** `settings`: an admin's PUT; `config`: config.yml's workers.queueLimits; `none`: no limits at all. */
  source: LimitsSource;
  configured_at: string | null;
  configured_by: string | null;
}

/** A queue as GET /queues shows it: its limits and its tasks by status. */
export interface QueueResource extends QueueSettingsResource {
  /** The queue's tasks by status, from the tasks read model (so a moment behind the log). */
  tasks: Record<TaskStatus, number>;
}

export const limitsOfBody = (body: QueueSettingsBody): QueueLimits => ({
  concurrency: body.concurrency ?? null,
  rate: body.rate ? { limit: body.rate.limit, intervalMs: body.rate.interval_ms } : null,
  groupConcurrency: body.group_concurrency ?? null,
  paused: body.paused ?? false,
});

export function queueSettingsResource(
  name: string,
  effective: { limits: QueueLimits; source: LimitsSource },
  configured: { at: string; by: string } | null,
): QueueSettingsResource {
  const { limits } = effective;
  return {
    name,
    concurrency: limits.concurrency,
    rate: limits.rate ? { limit: limits.rate.limit, interval_ms: limits.rate.intervalMs } : null,
    group_concurrency: limits.groupConcurrency,
    paused: limits.paused,
    source: effective.source,
    configured_at: configured?.at ?? null,
    configured_by: configured?.by ?? null,
  };
}

export const queueResource = (
  settings: QueueSettingsResource,
  counts: Partial<Record<TaskStatus, number>>,
): QueueResource => ({
  ...settings,
  tasks: Object.fromEntries(TASK_STATUSES.map((status) => [status, counts[status] ?? 0])) as Record<
    TaskStatus,
    number
  >,
});

/** The `{name}` of /queues/{name}, for the command and the query routes alike. */
export const queueNameParams: JSONSchema = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', pattern: QUEUE_NAME_PATTERN } },
};

const limit = (description: string): JSONSchema => ({
  type: ['integer', 'null'],
  minimum: 1,
  maximum: 1_000_000,
  description,
});

const settingsProperties: Record<string, JSONSchema> = {
  concurrency: limit(
    'At most this many of its tasks running at once, across every worker process (null: no limit)',
  ),
  rate: {
    description:
      'At most `limit` tasks start in any `interval_ms` window, across every worker (null: no limit)',
    oneOf: [
      { type: 'null' },
      {
        type: 'object',
        additionalProperties: false,
        required: ['limit', 'interval_ms'],
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: 1_000_000 },
          interval_ms: { type: 'integer', minimum: 1, maximum: 86_400_000 },
        },
      },
    ],
  },
  group_concurrency: limit(
    'At most this many tasks of one `group_key` running at once (tasks without a key are not capped by it)',
  ),
  paused: { type: 'boolean', description: 'No task of this queue starts while true; running ones finish' },
};

export const queueSettingsBodySchema: JSONSchema = {
  type: 'object',
  additionalProperties: false,
  properties: settingsProperties,
  examples: [{ concurrency: 3, rate: { limit: 10, interval_ms: 1000 }, group_concurrency: 1, paused: false }],
};

const resourceProperties: Record<string, JSONSchema> = {
  name: { type: 'string' },
  ...settingsProperties,
  source: { enum: ['settings', 'config', 'none'], description: 'Where the limits come from' },
  configured_at: { type: ['string', 'null'], format: 'date-time' },
  configured_by: { type: ['string', 'null'], description: 'The admin who last set them' },
};

export const queueSettingsSchema: JSONSchema = {
  type: 'object',
  required: Object.keys(resourceProperties),
  properties: resourceProperties,
};

export const queueSchema: JSONSchema = {
  type: 'object',
  required: [...Object.keys(resourceProperties), 'tasks'],
  properties: {
    ...resourceProperties,
    tasks: {
      type: 'object',
      description: 'Its tasks by status, from the tasks read model',
      required: [...TASK_STATUSES],
      properties: Object.fromEntries(TASK_STATUSES.map((status) => [status, { type: 'integer' }])),
    },
  },
};

const refsByRegistry = new WeakMap<SchemaRegistry, { queueSettings: JSONSchema; queue: JSONSchema }>();

/** The queue components of the OpenAPI document, added once whichever side (command or query) registers first. */
export function ensureQueueSchemas(registry: SchemaRegistry): {
  queueSettings: JSONSchema;
  queue: JSONSchema;
} {
  let refs = refsByRegistry.get(registry);
  if (!refs) {
    refs = {
      queueSettings: registry.addSchema('QueueSettings', queueSettingsSchema),
      queue: registry.addSchema('Queue', queueSchema),
    };
    refsByRegistry.set(registry, refs);
  }
  return refs;
}
