import { ConflictError } from '../../errors.js';
import type { TaskOrigin, TaskQueued, TaskSpec } from './events.js';
import type { Task } from './state.js';

export interface SubmitTask {
  taskId: string;
  ownerId: string;
  spec: TaskSpec;
  idempotencyKey: string | null;
  now: Date;
  /** Only for a task a schedule queues. */
  origin?: TaskOrigin;
}

export const submitTask = (command: SubmitTask, state: Task): TaskQueued[] => {
  if (state.exists) throw new ConflictError(`task ${command.taskId} already exists`);
  return [
    {
      type: 'TaskQueued',
      data: {
        taskId: command.taskId,
        ownerId: command.ownerId,
        spec: command.spec,
        queuedAt: command.now.toISOString(),
        idempotencyKey: command.idempotencyKey,
        // Absent, not null, on submitted tasks: their events stay as they were before schedules.
        ...(command.origin ? { origin: command.origin } : {}),
      },
    },
  ];
};
