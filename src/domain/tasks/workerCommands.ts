import { IllegalStateError } from '../../errors.js';
import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type {
  TaskAttemptFailed,
  TaskError,
  TaskEvent,
  TaskFailed,
  TaskProgressed,
  TaskReleased,
  TaskStarted,
  TaskStatus,
} from './events.js';
import type { Task } from './state.js';

/**
 * Commands workers and the reaper give. Every one is checked against the attempt it is about, so a late
 * message from a worker that lost its lease (or a canceled task) changes nothing: it decides [].
 */
const isRunningAttempt = (state: Task, workerId: string, attempt: number): boolean =>
  state.status === 'in_progress' && state.workerId === workerId && state.attempt === attempt;

export interface StartTask {
  workerId: string;
  /** The lease covers the handler's timeout plus a grace; past it, the reaper may fail the attempt. */
  leaseMs: number;
  now: Date;
}

/** The claim. Appended with the revision just read, so of two workers only one starts this attempt. */
export const startTask = (command: StartTask, state: Task): TaskStarted[] => {
  if (!state.exists) throw new IllegalStateError('no such task');
  if (state.status !== 'pending') throw new IllegalStateError(`task ${state.id} is ${state.status}`);
  if (state.runAt && Date.parse(state.runAt) > command.now.getTime())
    throw new IllegalStateError(`task ${state.id} is not due until ${state.runAt}`);
  return [
    {
      type: 'TaskStarted',
      data: {
        taskId: state.id!,
        attempt: state.attempt + 1,
        workerId: command.workerId,
        leaseUntil: new Date(command.now.getTime() + command.leaseMs).toISOString(),
        startedAt: command.now.toISOString(),
      },
    },
  ];
};

export interface ReportProgress {
  workerId: string;
  attempt: number;
  progress: number;
  message: string | null;
  now: Date;
}

export const reportProgress = (command: ReportProgress, state: Task): TaskProgressed[] => {
  if (!isRunningAttempt(state, command.workerId, command.attempt)) return [];
  return [
    {
      type: 'TaskProgressed',
      data: {
        taskId: state.id!,
        attempt: command.attempt,
        progress: Math.min(1, Math.max(0, command.progress)),
        message: command.message,
        progressedAt: command.now.toISOString(),
      },
    },
  ];
};

export type AttemptOutcome =
  | { kind: 'succeeded'; result: JsonValue; resultTruncated: boolean }
  | { kind: 'failed'; error: TaskError; retryable: boolean };

export interface FinishAttempt {
  workerId: string;
  attempt: number;
  outcome: AttemptOutcome;
  /** Chosen outside the decider (it has jitter), used only if the attempt is retried. */
  retryDelayMs: number;
  now: Date;
}

function failAttempt(
  state: Task,
  attempt: number,
  error: TaskError,
  retryable: boolean,
  retryDelayMs: number,
  now: Date,
): Array<TaskAttemptFailed | TaskFailed> {
  const failedAt = now.toISOString();
  if (retryable && attempt - state.attemptsBefore < state.spec!.maxAttempts)
    return [
      {
        type: 'TaskAttemptFailed',
        data: {
          taskId: state.id!,
          attempt,
          error,
          nextRunAt: new Date(now.getTime() + retryDelayMs).toISOString(),
          failedAt,
        },
      },
    ];
  return [{ type: 'TaskFailed', data: { taskId: state.id!, attempt, error, failedAt } }];
}

export const finishAttempt = (command: FinishAttempt, state: Task): TaskEvent[] => {
  if (!isRunningAttempt(state, command.workerId, command.attempt)) return [];
  const { outcome } = command;
  if (outcome.kind === 'succeeded')
    return [
      {
        type: 'TaskSucceeded',
        data: {
          taskId: state.id!,
          attempt: command.attempt,
          result: outcome.result,
          resultTruncated: outcome.resultTruncated,
          finishedAt: command.now.toISOString(),
        },
      },
    ];
  return failAttempt(
    state,
    command.attempt,
    outcome.error,
    outcome.retryable,
    command.retryDelayMs,
    command.now,
  );
};

export interface ExpireLease {
  retryDelayMs: number;
  now: Date;
}

/** The reaper: a worker that vanished mid-task (SIGKILL, lost host) costs the task one attempt, not forever. */
export const expireLease = (command: ExpireLease, state: Task): Array<TaskAttemptFailed | TaskFailed> => {
  if (
    state.status !== 'in_progress' ||
    !state.leaseUntil ||
    Date.parse(state.leaseUntil) > command.now.getTime()
  )
    return [];
  const error: TaskError = {
    kind: 'lease_expired',
    message: `worker ${state.workerId} did not finish attempt ${state.attempt} before its lease ended`,
  };
  return failAttempt(state, state.attempt, error, true, command.retryDelayMs, command.now);
};

export interface ReleaseTask {
  workerId: string;
  attempt: number;
  reason: string;
  now: Date;
}

/** A stopping worker hands back what it could not finish; the attempt is not counted. */
export const releaseTask = (command: ReleaseTask, state: Task): TaskReleased[] => {
  if (!isRunningAttempt(state, command.workerId, command.attempt)) return [];
  return [
    {
      type: 'TaskReleased',
      data: {
        taskId: state.id!,
        attempt: command.attempt,
        workerId: command.workerId,
        reason: command.reason,
        releasedAt: command.now.toISOString(),
      },
    },
  ];
};

/** Exponential back-off with jitter: base * 2^(attempt-1), capped, then spread by +-jitter. */
export function retryDelayMs(
  attempt: number,
  settings: { baseMs: number; maxMs: number; jitter: number },
  random: () => number,
): number {
  const exponential = Math.min(settings.maxMs, settings.baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.max(0, Math.round(exponential * (1 + settings.jitter * (2 * random() - 1))));
}

export interface FailForDependency {
  dependencyId: string;
  /** The dependency's status as its own stream says now. */
  dependencyStatus: TaskStatus;
  now: Date;
}

/**
 * A task that waits for another which ended failed or canceled fails too (with `on_dependency_failure: "fail"`, the
 * default), naming it. Decides nothing when the task no longer waits (it was canceled meanwhile) or when the
 * dependency is not failed or canceled after all (it was retried).
 */
export const failForDependency = (command: FailForDependency, state: Task): TaskFailed[] => {
  const dependencies = state.spec?.dependencies;
  if (state.status !== 'pending' || !dependencies || dependencies.onFailure !== 'fail') return [];
  if (!dependencies.taskIds.includes(command.dependencyId)) return [];
  if (command.dependencyStatus !== 'failed' && command.dependencyStatus !== 'canceled') return [];
  return [
    {
      type: 'TaskFailed',
      data: {
        taskId: state.id!,
        attempt: state.attempt,
        error: {
          kind: 'dependency',
          message: `dependency ${command.dependencyId} ended ${command.dependencyStatus}`,
        },
        failedAt: command.now.toISOString(),
      },
    },
  ];
};
