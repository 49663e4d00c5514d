import { failTaskType } from '../../domain/tasks/taskTypes.js';
import { throwIfAborted, UnrecoverableError, type TaskHandler } from './handler.js';

export interface FailPayload {
  message?: string;
  unrecoverable?: boolean;
}

export const failHandler: TaskHandler<FailPayload | null | undefined> = {
  ...failTaskType,
  async run(payload, { signal }) {
    throwIfAborted(signal);
    const message = payload?.message ?? 'failed on purpose';
    if (payload?.unrecoverable === true) throw new UnrecoverableError(message);
    throw new Error(message);
  },
};
