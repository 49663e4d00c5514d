import { throwIfAborted, UnrecoverableError, type TaskHandler } from './handler.js';

export interface FailPayload {
  message?: string;
  unrecoverable?: boolean;
}

export const failHandler: TaskHandler<FailPayload | null | undefined> = {
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
  async run(payload, { signal }) {
    throwIfAborted(signal);
    const message = payload?.message ?? 'failed on purpose';
    if (payload?.unrecoverable === true) throw new UnrecoverableError(message);
    throw new Error(message);
  },
};
