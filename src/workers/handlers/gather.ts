import { gatherTaskType } from '../../domain/tasks/taskTypes.js';
import { throwIfAborted, type TaskHandler } from './handler.js';

/** Reads how its dependencies ended (from their streams) and returns their results, in `depends_on` order. */
export const gatherHandler: TaskHandler<null> = {
  ...gatherTaskType,
  async run(_payload, { signal, dependencies }) {
    throwIfAborted(signal);
    const outcomes = await dependencies();
    throwIfAborted(signal);
    return {
      results: outcomes.map((outcome) => ({
        task_id: outcome.taskId,
        status: outcome.status,
        result: outcome.result,
      })),
    };
  },
};
