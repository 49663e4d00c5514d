import { randomBytes, randomUUID } from 'node:crypto';
import { handleCommand, type CommandContext } from '../../src/commands/commandHandler.js';
import { taskStreamId, type TaskSpec } from '../../src/domain/tasks/events.js';
import { task } from '../../src/domain/tasks/state.js';
import { submitTask } from '../../src/domain/tasks/submitTask.js';
import type { EventStore, RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import type { ClaimRequest } from '../../src/workers/schedule.js';

/** A recorded event for code that only looks at its stream, revision, position and type: data `{}`, no metadata. */
export const recordedEvent = (
  streamId: string,
  revision: number,
  position: string,
  type = 'TaskQueued',
): RecordedEvent => ({
  streamId,
  revision,
  position,
  type,
  data: {},
  rawData: '{}',
  metadata: {} as RecordedEvent['metadata'],
  recordedAt: new Date(0).toISOString(),
});

/** A fresh address per call, labelled by the suite that made it, so suites sharing a database never collide. */
export const newEmail = (label: string): string => `${label}-${randomBytes(5).toString('hex')}@example.com`;

/** The error `promise` rejects with; fails the test if it resolves instead. */
export async function rejection(promise: Promise<unknown>): Promise<any> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection, but it resolved');
}

/** A task spec as the API would store it (echo, default queue, priority 5), with `overrides`. */
export const taskSpec = (overrides: Partial<TaskSpec> = {}): TaskSpec => ({
  title: 'test task',
  description: null,
  type: 'echo',
  payload: { n: 1 },
  priority: 5,
  queue: 'default',
  groupKey: null,
  dependencies: null,
  runAt: null,
  maxAttempts: 3,
  timeoutMs: 60000,
  ...overrides,
});

/** A command's context for tests: the given clock, random ids, no user. */
export const testCommandContext = (now: () => Date = () => new Date()): CommandContext => ({
  now,
  newId: randomUUID,
  correlationId: randomUUID(),
  causationId: null,
  userId: null,
});

/** Queues a new task straight through the command handler (no HTTP), owned by a random user; its id. */
export async function queueTestTask(
  store: EventStore,
  spec: TaskSpec,
  now: () => Date = () => new Date(),
): Promise<string> {
  const taskId = randomUUID();
  await handleCommand(
    store,
    taskStreamId(taskId),
    task,
    (state) => submitTask({ taskId, ownerId: randomUUID(), spec, idempotencyKey: null, now: now() }, state),
    testCommandContext(now),
  );
  return taskId;
}

/**
 * One claim round's request as a worker with `limit` free slots would make it (every queue unless `onlyQueues`
 * says, a minute's lease, fresh metadata), with `overrides`.
 */
export const testClaimRequest = (
  workerId: string,
  limit: number,
  overrides: Partial<ClaimRequest> = {},
): ClaimRequest => {
  const now = overrides.now ?? new Date();
  return {
    limit,
    now,
    roomByQueue: new Map(),
    defaultRoom: limit,
    onlyQueues: [],
    workerId,
    leaseMs: () => 60_000,
    metadata: { correlationId: randomUUID(), causationId: null, userId: null, timestamp: now.toISOString() },
    newId: randomUUID,
    ...overrides,
  };
};
