import { PayloadTooLargeError, ValidationError } from '../../errors.js';
import type { Config } from '../../config.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import { storableInstant } from '../../infra/http/inputSanity.js';
import type { TaskSpec } from '../../domain/tasks/events.js';
import type { TaskTypeCatalogue } from '../../domain/tasks/taskTypes.js';
import { QUEUE_NAME_PATTERN } from '../../domain/queues/queueSettings.js';
import { submittedPayloadErrors } from './payloadErrors.js';

/**
 * A task's body as clients send it, in one place: its JSON schema's fields and the checks the schema cannot make
 * (the payload against its type, its size, the instant). POST /tasks, its batch and a schedule's `task` share them,
 * so a body a schedule accepts is one POST /tasks would accept.
 */

/** Names the seed's clients may send instead of numbers; stored and shown as the number. */
export const PRIORITY_NAMES: Record<string, number> = {
  lowest: 0,
  low: 2,
  normal: 5,
  medium: 5,
  high: 8,
  urgent: 10,
};

export const prioritySchema: JSONSchema = {
  description:
    'Higher runs first: 0 (lowest) to 10 (highest), or one of the names (shown as their number afterwards).',
  oneOf: [{ type: 'integer', minimum: 0, maximum: 10 }, { enum: Object.keys(PRIORITY_NAMES) }],
};

export const toPriority = (value: number | string | undefined): number | undefined =>
  typeof value === 'string' ? PRIORITY_NAMES[value] : value;

/** A task as clients describe it: in POST /tasks, an item of its batch, a schedule's `task`. */
export interface TaskBody {
  title: string;
  description?: string | null;
  type?: string;
  payload?: JsonValue;
  priority?: number | string;
  queue?: string;
  group_key?: string;
  run_at?: string;
  max_attempts?: number;
  timeout_ms?: number;
}

export interface TaskBodyRules {
  taskTypes: TaskTypeCatalogue;
  settings: Config['tasks'];
}

/** The fields of a task body, each with its schema (the types offered are the catalogue's). */
export const taskBodyProperties = ({ taskTypes, settings }: TaskBodyRules): Record<string, JSONSchema> => ({
  title: { type: 'string', minLength: 1, maxLength: 200 },
  description: { type: ['string', 'null'], maxLength: 5000 },
  type: { enum: taskTypes.types(), description: 'The handler that runs the task (default echo).' },
  payload: { description: "The handler's input, any JSON; each type checks its own shape." },
  priority: prioritySchema,
  queue: { type: 'string', pattern: QUEUE_NAME_PATTERN, description: 'Named queue (default "default").' },
  group_key: {
    type: 'string',
    minLength: 1,
    maxLength: 200,
    pattern: '^[\\x21-\\x7e]+$',
    description:
      "Who the task is for (a tenant, a customer, an API account): a queue's group_concurrency caps how many of one key run at once, and a queue with limits serves its keys round robin.",
  },
  run_at: { type: 'string', format: 'date-time', description: 'Not before this time (RFC 3339).' },
  max_attempts: { type: 'integer', minimum: 1, maximum: 100 },
  timeout_ms: { type: 'integer', minimum: 1, maximum: settings.maxTimeoutMs },
});

/**
 * The spec of a body the schema accepted, after the checks the schema cannot make; throws 413 or 400. `at` is where
 * the body sits in the request, for the errors' pointers: `/body`, `/body/tasks/3` in a batch, `/body/task`.
 */
export function taskSpecOf(body: TaskBody, { taskTypes, settings }: TaskBodyRules, at: string): TaskSpec {
  const type = body.type ?? 'echo';
  const payload = body.payload ?? null;
  if (Buffer.byteLength(JSON.stringify(payload), 'utf8') > settings.maxPayloadBytes)
    throw new PayloadTooLargeError(`${at}/payload is larger than ${settings.maxPayloadBytes} bytes`);
  const payloadErrors = submittedPayloadErrors(taskTypes, type, payload, at);
  if (payloadErrors.length > 0) throw new ValidationError(payloadErrors);
  return {
    title: body.title,
    description: body.description ?? null,
    type,
    payload,
    priority: toPriority(body.priority) ?? 5,
    queue: body.queue ?? 'default',
    groupKey: body.group_key ?? null,
    // POST /tasks adds its own (a schedule's task has none: what it would wait for does not exist yet).
    dependencies: null,
    runAt: body.run_at ? storableInstant(body.run_at, `${at}/run_at`) : null,
    maxAttempts: body.max_attempts ?? settings.defaultMaxAttempts,
    timeoutMs: body.timeout_ms ?? settings.defaultTimeoutMs,
  };
}
