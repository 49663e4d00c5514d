import { ValidationError, type FieldError } from '../../errors.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import { foldEvents } from '../../domain/decider.js';
import { taskStreamId } from '../../domain/tasks/events.js';
import { task } from '../../domain/tasks/state.js';

/** The most tasks one task may depend on. */
export const MAX_DEPENDENCIES = 100;

/**
 * A submission's `depends_on` must name tasks of the same owner that exist now (read from their streams, not the
 * read model, so a task submitted a moment ago counts). Since a task can only depend on tasks older than itself, no
 * cycle can form. Throws a ValidationError naming each id that is not one of the owner's tasks; someone else's task
 * is reported exactly like a missing one, so ids cannot be probed.
 */
export async function checkDependencies(
  store: Pick<EventStore, 'readStream'>,
  ownerId: string,
  taskIds: readonly string[],
  at: string,
): Promise<void> {
  const states = await Promise.all(
    taskIds.map(async (id) => foldEvents(task, await store.readStream(taskStreamId(id)))),
  );
  const errors: FieldError[] = [];
  states.forEach((state, index) => {
    if (!state.exists || state.ownerId !== ownerId)
      errors.push({ path: `${at}/depends_on/${index}`, message: 'is not one of your tasks' });
  });
  if (errors.length > 0) throw new ValidationError(errors);
}
