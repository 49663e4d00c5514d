import { echoTaskType } from '../../domain/tasks/taskTypes.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import { throwIfAborted, type TaskHandler } from './handler.js';

export const echoHandler: TaskHandler<JsonValue | undefined> = {
  ...echoTaskType,
  async run(payload, { signal }) {
    throwIfAborted(signal);
    return payload ?? null;
  },
};
