import { IllegalStateError, NotFoundError } from '../../errors.js';
import type { TaskArchived, TaskCanceled, TaskRequeued, TaskUpdated } from './events.js';
import { evolveTask, isFinished, type Task } from './state.js';

/**
 * Commands a task's owner gives. Someone else's task answers exactly like a missing one (404), so ids cannot
 * be probed.
 */
function ownedBy(state: Task, actorId: string): asserts state is Task & { id: string } {
  if (!state.exists || state.ownerId !== actorId) throw new NotFoundError('no such task');
}

export interface UpdateTask {
  actorId: string;
  changes: { title?: string; description?: string | null; priority?: number };
  now: Date;
}

export const updateTask = (command: UpdateTask, state: Task): TaskUpdated[] => {
  ownedBy(state, command.actorId);
  if (state.status !== 'pending')
    throw new IllegalStateError(`task ${state.id} is ${state.status}: only a pending task can be edited`);
  const spec = state.spec!;
  const changes = Object.fromEntries(
    Object.entries(command.changes).filter(
      ([key, value]) => value !== undefined && spec[key as keyof typeof spec] !== value,
    ),
  ) as UpdateTask['changes'];
  if (Object.keys(changes).length === 0) return [];
  return [{ type: 'TaskUpdated', data: { taskId: state.id, changes, updatedAt: command.now.toISOString() } }];
};

export interface CancelTask {
  actorId: string;
  now: Date;
}

export const cancelTask = (command: CancelTask, state: Task): TaskCanceled[] => {
  ownedBy(state, command.actorId);
  if (isFinished(state.status)) throw new IllegalStateError(`task ${state.id} is already ${state.status}`);
  return [
    {
      type: 'TaskCanceled',
      data: {
        taskId: state.id,
        canceledBy: command.actorId,
        wasRunning: state.status === 'in_progress',
        canceledAt: command.now.toISOString(),
      },
    },
  ];
};

export interface RetryTask {
  actorId: string;
  now: Date;
}

export const retryTask = (command: RetryTask, state: Task): TaskRequeued[] => {
  ownedBy(state, command.actorId);
  if (state.archivedAt !== null) throw new IllegalStateError(`task ${state.id} is archived`);
  if (state.status !== 'failed' && state.status !== 'canceled')
    throw new IllegalStateError(
      `task ${state.id} is ${state.status}: only a failed or canceled task can be retried`,
    );
  return [
    {
      type: 'TaskRequeued',
      data: { taskId: state.id, requeuedBy: command.actorId, requeuedAt: command.now.toISOString() },
    },
  ];
};

export interface ArchiveTask {
  actorId: string;
  now: Date;
}

/** Hides a finished task from lists; archiving it again decides nothing, so a repeated request is harmless. */
export const archiveTask = (command: ArchiveTask, state: Task): TaskArchived[] => {
  ownedBy(state, command.actorId);
  if (!isFinished(state.status))
    throw new IllegalStateError(`task ${state.id} is ${state.status}: only a finished task can be archived`);
  if (state.archivedAt !== null) return [];
  return [
    {
      type: 'TaskArchived',
      data: { taskId: state.id, archivedBy: command.actorId, archivedAt: command.now.toISOString() },
    },
  ];
};

export type RemoveTask = ArchiveTask;

/**
 * The Go service's DELETE, "it is gone from my list": an unfinished task is canceled (its worker aborts it, as
 * with DELETE /tasks/{id}) and archived in one decision; a finished one is archived.
 */
export const removeTask = (command: RemoveTask, state: Task): Array<TaskCanceled | TaskArchived> => {
  ownedBy(state, command.actorId);
  if (isFinished(state.status)) return archiveTask(command, state);
  const canceled = cancelTask(command, state);
  return [...canceled, ...archiveTask(command, canceled.reduce(evolveTask, state))];
};
