import { ConflictError, UnprocessableError } from '../../errors.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import { GENESIS_HASH } from '../../infra/eventStore/hashChain.js';
import { handleCommand, type CommandContext } from '../commandHandler.js';
import { foldEvents } from '../../domain/decider.js';
import { taskStreamId, type TaskSpec } from '../../domain/tasks/events.js';
import { task } from '../../domain/tasks/state.js';
import { submitTask } from '../../domain/tasks/submitTask.js';
import { taskResource, type TaskResource } from '../../domain/tasks/representation.js';
import {
  idempotencyKey,
  idempotencyStreamId,
  isLive,
  requestHash,
  useIdempotencyKey,
} from '../../domain/tasks/idempotency.js';

/** A queued task as the submitter is answered: its resource and the log position of its TaskQueued. */
export interface QueuedTask {
  resource: TaskResource;
  position: string;
}

/** What submitting needs from outside: the store, the clock and id generator, and how long a key lives. */
export interface SubmitDeps {
  store: EventStore;
  clock: () => Date;
  newId: () => string;
  idempotencyKeyTtlSeconds: number;
}

/** One submission: who sends it, the task, and (when an Idempotency-Key came) the key and the request it covers. */
export interface Submission {
  ownerId: string;
  spec: TaskSpec;
  idempotency: { key: string; request: unknown } | null;
}

/** The submitted task as it was right after TaskQueued: the same answer however often the request is replayed. */
async function asQueued(store: EventStore, taskId: string): Promise<QueuedTask | null> {
  const [queued] = await store.readStream(taskStreamId(taskId));
  if (!queued) return null;
  return { resource: taskResource(foldEvents(task, [queued]), queued.revision), position: queued.position };
}

async function queueTask(
  deps: SubmitDeps,
  context: CommandContext,
  submission: Submission,
  taskId: string,
): Promise<QueuedTask> {
  const key = submission.idempotency?.key ?? null;
  const result = await handleCommand(
    deps.store,
    taskStreamId(taskId),
    task,
    (state) =>
      submitTask(
        {
          taskId,
          ownerId: submission.ownerId,
          spec: submission.spec,
          idempotencyKey: key,
          now: deps.clock(),
        },
        state,
      ),
    context,
    // A new task's stream does not exist yet: decide without reading it (a conflict would read it and decide
    // again, which answers "already exists").
    { known: { state: task.initialState, revision: null, hash: GENESIS_HASH } },
  );
  return { resource: taskResource(result.state, result.revision!), position: result.position! };
}

/**
 * Queues a task, at most once per live Idempotency-Key: the same key and request answer the task the first one
 * queued; the same key with another request is an UnprocessableError (422). The key is claimed before the task
 * is queued, so of two concurrent requests with one key only one creates a task.
 */
export async function submitIdempotently(
  deps: SubmitDeps,
  context: CommandContext,
  submission: Submission,
): Promise<QueuedTask> {
  const { store, clock } = deps;
  if (!submission.idempotency) return queueTask(deps, context, submission, deps.newId());
  const { key, request } = submission.idempotency;
  const hash = requestHash(request);
  const claim = await handleCommand(
    store,
    idempotencyStreamId(submission.ownerId, key),
    idempotencyKey,
    (state) =>
      useIdempotencyKey(
        { taskId: deps.newId(), requestHash: hash, now: clock(), ttlSeconds: deps.idempotencyKeyTtlSeconds },
        state,
      ),
    context,
    // Most keys are new; a reused one costs a conflict, then a read.
    { known: { state: idempotencyKey.initialState, revision: null, hash: GENESIS_HASH } },
  );
  if (!isLive(claim.state, clock())) throw new Error('idempotency key claim did not take');
  if (claim.state.requestHash !== hash)
    throw new UnprocessableError('this Idempotency-Key was already used with a different request');
  const taskId = claim.state.taskId!;
  // Either this request just claimed the key, or an earlier one did (and may have crashed before queueing).
  return (
    (claim.events.length === 0 ? await asQueued(store, taskId) : null) ??
    (await queueTask(deps, context, submission, taskId).catch(async (error) => {
      // Two identical requests at once: the other one queued this very task a moment ago.
      const queued = error instanceof ConflictError ? await asQueued(store, taskId) : null;
      if (!queued) throw error;
      return queued;
    }))
  );
}
