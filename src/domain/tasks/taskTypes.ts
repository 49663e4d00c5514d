/**
 * The task-type catalogue: each type's name and payload schema, with no HTTP and no storage in it. The command side
 * validates submissions against it; the workers' handler registry must match it.
 */
import type { ValidateFunction } from 'ajv/dist/2020.js';
import type { FieldError } from '../../errors.js';
import { createAjv, toFieldErrors, type JSONSchema } from '../../infra/jsonSchema.js';

/**
 * A kind of task the service runs: what submitters may name in `type`, and the payload it accepts. The
 * worker's handler for it adds only `run`.
 */
export interface TaskType {
  /** The task `type` that selects this handler. */
  type: string;
  description: string;
  /**
   * JSON Schema 2020-12 for the payload, compiled by ajv in strict mode when the catalogue is built. An
   * absent payload is validated as `null`.
   */
  payloadSchema: JSONSchema;
}

/** What the write side needs to know of task types: which exist, and whether a payload fits one. */
export interface TaskTypeCatalogue {
  /** Every known type name, sorted. */
  types(): string[];
  knows(type: string): boolean;
  /**
   * Empty when the payload fits; otherwise errors with JSON Pointers relative to the payload (`/ms`, or ``
   * for the payload itself). An absent payload is checked as `null`. Throws for a type it does not know.
   */
  validatePayload(type: string, payload: unknown): FieldError[];
}

/** The catalogue of the given types, every payload schema compiled now so a bad one stops start-up. */
export class TaskTypes implements TaskTypeCatalogue {
  private readonly validators = new Map<string, ValidateFunction>();

  /** `noun` names an entry in start-up errors: the worker's registry builds one of its handlers. */
  constructor(taskTypes: readonly TaskType[], noun = 'task type') {
    const ajv = createAjv();
    for (const taskType of taskTypes) {
      if (this.validators.has(taskType.type)) throw new Error(`two ${noun}s for type "${taskType.type}"`);
      try {
        this.validators.set(taskType.type, ajv.compile(taskType.payloadSchema));
      } catch (error) {
        throw new Error(`${noun} "${taskType.type}": invalid payload schema: ${(error as Error).message}`, {
          cause: error,
        });
      }
    }
  }

  types(): string[] {
    return [...this.validators.keys()].sort();
  }

  knows(type: string): boolean {
    return this.validators.has(type);
  }

  validatePayload(type: string, payload: unknown): FieldError[] {
    const validate = this.validators.get(type);
    if (!validate) throw new Error(`unknown task type "${type}"`);
    return validate(payload === undefined ? null : payload) ? [] : toFieldErrors('', validate.errors);
  }
}

/** The longest a `sleep` task may wait: an hour. */
export const MAX_SLEEP_MS = 3_600_000;

/** The methods an `http` task may use. */
export const HTTP_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'] as const;
/** One of HTTP_METHODS. */
export type HttpMethod = (typeof HTTP_METHODS)[number];

/** Hands its payload back: for smoke tests. */
export const echoTaskType: TaskType = {
  type: 'echo',
  description: 'Returns its payload unchanged (null when there is none). For smoke tests.',
  payloadSchema: { description: 'Any JSON value' },
};

/** Fan-in: the results of the tasks it depends on, gathered into one. */
export const gatherTaskType: TaskType = {
  type: 'gather',
  description:
    'Returns `{results: [{task_id, status, result}]}`: how each task in its `depends_on` ended, in that order. For fan-in steps.',
  payloadSchema: { description: 'Ignored', type: 'null' },
};

/** Waits a while, reporting progress: for smoke tests. */
export const sleepTaskType: TaskType = {
  type: 'sleep',
  description: 'Waits `ms` milliseconds, reporting progress about every second. For smoke tests.',
  payloadSchema: {
    type: 'object',
    additionalProperties: false,
    required: ['ms'],
    properties: { ms: { type: 'integer', minimum: 0, maximum: MAX_SLEEP_MS } },
    examples: [{ ms: 1000 }],
  },
};

/** Fails on purpose, retryably or not: for smoke tests. */
export const failTaskType: TaskType = {
  type: 'fail',
  description:
    'Always fails, with `message`. With `unrecoverable: true` the task fails at once instead of being retried. For smoke tests.',
  payloadSchema: {
    type: ['object', 'null'],
    additionalProperties: false,
    properties: {
      message: { type: 'string', minLength: 1, maxLength: 1000 },
      unrecoverable: { type: 'boolean', default: false },
    },
    examples: [{ message: 'failed on purpose', unrecoverable: false }],
  },
};

/** Calls a webhook. */
export const httpTaskType: TaskType = {
  type: 'http',
  description:
    'Calls a webhook (a host in handlers.http.allowedHosts) and returns its status, headers and body. ' +
    '5xx, 408, 429 and network errors are retried; other 4xx answers fail the task at once.',
  payloadSchema: {
    type: 'object',
    additionalProperties: false,
    required: ['url'],
    properties: {
      url: { type: 'string', format: 'uri', pattern: '^[Hh][Tt][Tt][Pp][Ss]?://', maxLength: 2048 },
      method: { enum: [...HTTP_METHODS], default: 'POST' },
      headers: {
        type: 'object',
        description: 'Request headers; content-type defaults to application/json when there is a body',
        propertyNames: { pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", maxLength: 256 },
        additionalProperties: { type: 'string', maxLength: 8192 },
      },
      body: { description: 'Any JSON value, sent as JSON; not allowed with GET or HEAD' },
      timeout_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 3_600_000,
        description: 'For the whole exchange, redirects and body included; the task timeout still applies',
      },
    },
    if: { required: ['method'], properties: { method: { enum: ['GET', 'HEAD'] } } },
    then: { properties: { body: false } },
    examples: [
      {
        url: 'https://hooks.example.com/task-done',
        method: 'POST',
        headers: { authorization: 'Bearer <token>' },
        body: { event: 'done' },
        timeout_ms: 10000,
      },
    ],
  },
};

/**
 * Every task type the service offers. A new type is an entry here and a handler in src/workers/handlers;
 * the worker's registry refuses to start unless the two lists name the same types.
 */
export const TASK_TYPES: readonly TaskType[] = [
  echoTaskType,
  sleepTaskType,
  failTaskType,
  httpTaskType,
  gatherTaskType,
];
