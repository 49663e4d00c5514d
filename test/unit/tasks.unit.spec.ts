import { expect } from 'chai';
import { ConflictError, IllegalStateError, NotFoundError } from '../../src/errors.js';
import type { TaskEvent, TaskSpec } from '../../src/domain/tasks/events.js';
import { task, type Task } from '../../src/domain/tasks/state.js';
import { submitTask } from '../../src/domain/tasks/submitTask.js';
import {
  archiveTask,
  cancelTask,
  removeTask,
  retryTask,
  updateTask,
} from '../../src/domain/tasks/ownerCommands.js';
import {
  expireLease,
  finishAttempt,
  releaseTask,
  reportProgress,
  retryDelayMs,
  startTask,
} from '../../src/domain/tasks/workerCommands.js';
import { foldEvents } from '../../src/domain/decider.js';
import { given } from '../support/decider.js';
import { taskSpec } from '../support/fixtures.js';

const t0 = new Date('2026-05-01T12:00:00.000Z');
const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);
const iso = (seconds: number) => at(seconds).toISOString();

const spec: TaskSpec = taskSpec({ title: 'send report', maxAttempts: 2, timeoutMs: 1000 });
const queued: TaskEvent = {
  type: 'TaskQueued',
  data: { taskId: 't1', ownerId: 'ann', spec, queuedAt: iso(0), idempotencyKey: null },
};
const started = (attempt: number, seconds = 1): TaskEvent => ({
  type: 'TaskStarted',
  data: { taskId: 't1', attempt, workerId: 'w1', leaseUntil: iso(seconds + 20), startedAt: iso(seconds) },
});
const attemptFailed: TaskEvent = {
  type: 'TaskAttemptFailed',
  data: {
    taskId: 't1',
    attempt: 1,
    error: { kind: 'error', message: 'boom' },
    nextRunAt: iso(5),
    failedAt: iso(2),
  },
};
const failed: TaskEvent = {
  type: 'TaskFailed',
  data: { taskId: 't1', attempt: 2, error: { kind: 'error', message: 'boom' }, failedAt: iso(7) },
};
const canceled: TaskEvent = {
  type: 'TaskCanceled',
  data: { taskId: 't1', canceledBy: 'ann', wasRunning: false, canceledAt: iso(3) },
};

describe('task decider', () => {
  describe('submit', () => {
    it('queues a new task', () => {
      given(task, [])
        .when((s) => submitTask({ taskId: 't1', ownerId: 'ann', spec, idempotencyKey: null, now: t0 }, s))
        .then([queued]);
    });
    it('refuses a second submit to the same id', () => {
      given(task, [queued])
        .when((s) => submitTask({ taskId: 't1', ownerId: 'ann', spec, idempotencyKey: null, now: t0 }, s))
        .thenThrows(ConflictError);
    });
  });

  describe('edit', () => {
    it('records only what changed, while pending', () => {
      given(task, [queued])
        .when((s) =>
          updateTask({ actorId: 'ann', changes: { title: 'send report', priority: 9 }, now: at(1) }, s),
        )
        .then([{ type: 'TaskUpdated', data: { taskId: 't1', changes: { priority: 9 }, updatedAt: iso(1) } }]);
    });
    it('decides nothing when nothing changes', () => {
      given(task, [queued])
        .when((s) => updateTask({ actorId: 'ann', changes: { priority: 5 }, now: at(1) }, s))
        .then([]);
    });
    it('refuses to edit a task that has started', () => {
      given(task, [queued, started(1)])
        .when((s) => updateTask({ actorId: 'ann', changes: { priority: 1 }, now: at(2) }, s))
        .thenThrows(IllegalStateError);
    });
    it("answers someone else's task as not found", () => {
      given(task, [queued])
        .when((s) => updateTask({ actorId: 'bob', changes: { priority: 1 }, now: at(1) }, s))
        .thenThrows(NotFoundError);
    });
  });

  describe('cancel', () => {
    it('cancels a pending task at once', () => {
      given(task, [queued])
        .when((s) => cancelTask({ actorId: 'ann', now: at(3) }, s))
        .then([canceled]);
    });
    it('cancels a running task, noting it was running', () => {
      given(task, [queued, started(1)])
        .when((s) => cancelTask({ actorId: 'ann', now: at(3) }, s))
        .then([
          {
            type: 'TaskCanceled',
            data: { taskId: 't1', canceledBy: 'ann', wasRunning: true, canceledAt: iso(3) },
          },
        ]);
    });
    it('refuses to cancel a finished task', () => {
      for (const end of [canceled, failed])
        given(task, [queued, end])
          .when((s) => cancelTask({ actorId: 'ann', now: at(9) }, s))
          .thenThrows(IllegalStateError);
    });
  });

  describe('retry', () => {
    it('queues a failed or canceled task again with fresh attempts', () => {
      for (const end of [failed, canceled]) {
        given(task, [queued, end])
          .when((s) => retryTask({ actorId: 'ann', now: at(10) }, s))
          .then([{ type: 'TaskRequeued', data: { taskId: 't1', requeuedBy: 'ann', requeuedAt: iso(10) } }]);
      }
      const state = foldEvents(task, [
        queued,
        started(1),
        attemptFailed,
        started(2, 6),
        failed,
        { type: 'TaskRequeued', data: { taskId: 't1', requeuedBy: 'ann', requeuedAt: iso(10) } },
      ]);
      expect(state).to.include({ status: 'pending', attempt: 2, attemptsBefore: 2, runAt: iso(10) });
    });
    it('numbers the fresh attempts after the old ones, and gives the full allowance again', () => {
      const requeued: TaskEvent = {
        type: 'TaskRequeued',
        data: { taskId: 't1', requeuedBy: 'ann', requeuedAt: iso(10) },
      };
      const history = [queued, started(1), attemptFailed, started(2, 6), failed, requeued];
      given(task, history)
        .when((s) => startTask({ workerId: 'w2', leaseMs: 1000, now: at(11) }, s))
        .then([
          {
            type: 'TaskStarted',
            data: { taskId: 't1', attempt: 3, workerId: 'w2', leaseUntil: iso(12), startedAt: iso(11) },
          },
        ]);
      const third: TaskEvent = {
        type: 'TaskStarted',
        data: { taskId: 't1', attempt: 3, workerId: 'w2', leaseUntil: iso(12), startedAt: iso(11) },
      };
      const error = { kind: 'error' as const, message: 'again' };
      given(task, [...history, third])
        .when((s) =>
          finishAttempt(
            {
              workerId: 'w2',
              attempt: 3,
              outcome: { kind: 'failed', error, retryable: true },
              retryDelayMs: 1000,
              now: at(12),
            },
            s,
          ),
        )
        .then([
          {
            type: 'TaskAttemptFailed',
            data: { taskId: 't1', attempt: 3, error, nextRunAt: iso(13), failedAt: iso(12) },
          },
        ]);
    });
    it('refuses to retry a task that is pending or running', () => {
      given(task, [queued])
        .when((s) => retryTask({ actorId: 'ann', now: at(1) }, s))
        .thenThrows(IllegalStateError);
      given(task, [queued, started(1)])
        .when((s) => retryTask({ actorId: 'ann', now: at(2) }, s))
        .thenThrows(IllegalStateError);
    });
  });

  describe('archive', () => {
    const succeeded: TaskEvent = {
      type: 'TaskSucceeded',
      data: { taskId: 't1', attempt: 1, result: null, resultTruncated: false, finishedAt: iso(2) },
    };
    const archived: TaskEvent = {
      type: 'TaskArchived',
      data: { taskId: 't1', archivedBy: 'ann', archivedAt: iso(20) },
    };
    it('archives a done, failed or canceled task', () => {
      for (const end of [[started(1), succeeded], [failed], [canceled]])
        given(task, [queued, ...end])
          .when((s) => archiveTask({ actorId: 'ann', now: at(20) }, s))
          .then([archived]);
    });
    it('keeps the task as it was, marked archived', () => {
      const state = foldEvents(task, [queued, started(1), succeeded, archived]);
      expect(state).to.include({ status: 'done', archivedAt: iso(20), updatedAt: iso(20) });
    });
    it('decides nothing for a task already archived', () => {
      given(task, [queued, canceled, archived])
        .when((s) => archiveTask({ actorId: 'ann', now: at(30) }, s))
        .then([]);
    });
    it('refuses to archive a pending or running task', () => {
      for (const history of [[queued], [queued, started(1)]])
        given(task, history)
          .when((s) => archiveTask({ actorId: 'ann', now: at(3) }, s))
          .thenThrows(IllegalStateError, 'only a finished task');
    });
    it("answers someone else's task, or none, as not found", () => {
      given(task, [queued, canceled])
        .when((s) => archiveTask({ actorId: 'bob', now: at(20) }, s))
        .thenThrows(NotFoundError);
      given(task, [])
        .when((s) => archiveTask({ actorId: 'ann', now: at(20) }, s))
        .thenThrows(NotFoundError);
    });
    it('refuses to retry an archived task', () => {
      given(task, [queued, canceled, archived])
        .when((s) => retryTask({ actorId: 'ann', now: at(30) }, s))
        .thenThrows(IllegalStateError, 'archived');
    });
  });

  describe("delete (the Go service's DELETE: gone from the lists)", () => {
    const archivedAt = (seconds: number): TaskEvent => ({
      type: 'TaskArchived',
      data: { taskId: 't1', archivedBy: 'ann', archivedAt: iso(seconds) },
    });
    it('cancels and archives a pending task', () => {
      given(task, [queued])
        .when((s) => removeTask({ actorId: 'ann', now: at(3) }, s))
        .then([canceled, archivedAt(3)]);
    });
    it('cancels a running task (its worker aborts it) and archives it', () => {
      given(task, [queued, started(1)])
        .when((s) => removeTask({ actorId: 'ann', now: at(3) }, s))
        .then([
          {
            type: 'TaskCanceled',
            data: { taskId: 't1', canceledBy: 'ann', wasRunning: true, canceledAt: iso(3) },
          },
          archivedAt(3),
        ]);
    });
    it('archives a finished task, and decides nothing the second time', () => {
      given(task, [queued, failed])
        .when((s) => removeTask({ actorId: 'ann', now: at(9) }, s))
        .then([archivedAt(9)]);
      given(task, [queued, failed, archivedAt(9)])
        .when((s) => removeTask({ actorId: 'ann', now: at(10) }, s))
        .then([]);
    });
    it("answers someone else's task as not found", () => {
      given(task, [queued])
        .when((s) => removeTask({ actorId: 'bob', now: at(3) }, s))
        .thenThrows(NotFoundError);
    });
  });

  describe('start (the claim)', () => {
    it('starts the next attempt with a lease', () => {
      given(task, [queued])
        .when((s) => startTask({ workerId: 'w1', leaseMs: 20_000, now: at(1) }, s))
        .then([started(1)]);
    });
    it('never starts a task before its time', () => {
      const delayed: TaskEvent = {
        ...queued,
        data: { ...queued.data, spec: { ...spec, runAt: iso(60) } },
      } as TaskEvent;
      given(task, [delayed])
        .when((s) => startTask({ workerId: 'w1', leaseMs: 1000, now: at(59) }, s))
        .thenThrows(IllegalStateError, 'not due');
      given(task, [delayed])
        .when((s) => startTask({ workerId: 'w1', leaseMs: 1000, now: at(60) }, s))
        .then([
          {
            type: 'TaskStarted',
            data: { taskId: 't1', attempt: 1, workerId: 'w1', leaseUntil: iso(61), startedAt: iso(60) },
          },
        ]);
    });
    it('refuses to start a running, finished or canceled task', () => {
      for (const history of [
        [queued, started(1)],
        [queued, canceled],
        [queued, failed],
      ])
        given(task, history)
          .when((s) => startTask({ workerId: 'w2', leaseMs: 1000, now: at(9) }, s))
          .thenThrows(IllegalStateError);
    });
    it('waits for the back-off after a failed attempt', () => {
      given(task, [queued, started(1), attemptFailed])
        .when((s) => startTask({ workerId: 'w1', leaseMs: 1000, now: at(4) }, s))
        .thenThrows(IllegalStateError);
      given(task, [queued, started(1), attemptFailed])
        .when((s) => startTask({ workerId: 'w1', leaseMs: 1000, now: at(5) }, s))
        .then([
          {
            type: 'TaskStarted',
            data: { taskId: 't1', attempt: 2, workerId: 'w1', leaseUntil: iso(6), startedAt: iso(5) },
          },
        ]);
    });
  });

  describe('progress', () => {
    it('records progress of the running attempt, clamped to 0..1', () => {
      given(task, [queued, started(1)])
        .when((s) =>
          reportProgress({ workerId: 'w1', attempt: 1, progress: 1.7, message: 'almost', now: at(2) }, s),
        )
        .then([
          {
            type: 'TaskProgressed',
            data: { taskId: 't1', attempt: 1, progress: 1, message: 'almost', progressedAt: iso(2) },
          },
        ]);
    });
    it('ignores progress from a worker that no longer holds the attempt', () => {
      given(task, [queued, started(1), canceled])
        .when((s) =>
          reportProgress({ workerId: 'w1', attempt: 1, progress: 0.5, message: null, now: at(4) }, s),
        )
        .then([]);
    });
  });

  describe('finish an attempt', () => {
    const finish =
      (outcome: Parameters<typeof finishAttempt>[0]['outcome'], attempt = 1) =>
      (s: Task) =>
        finishAttempt({ workerId: 'w1', attempt, outcome, retryDelayMs: 3000, now: at(2) }, s);

    it('succeeds with the result', () => {
      given(task, [queued, started(1)])
        .when(finish({ kind: 'succeeded', result: { ok: true }, resultTruncated: false }))
        .then([
          {
            type: 'TaskSucceeded',
            data: {
              taskId: 't1',
              attempt: 1,
              result: { ok: true },
              resultTruncated: false,
              finishedAt: iso(2),
            },
          },
        ]);
    });
    it('schedules a retry after a retryable failure with attempts left', () => {
      given(task, [queued, started(1)])
        .when(finish({ kind: 'failed', error: { kind: 'error', message: 'boom' }, retryable: true }))
        .then([attemptFailed]);
    });
    it('fails for good (dead letter) when the attempts are used up', () => {
      given(task, [queued, started(1), attemptFailed, started(2, 6)])
        .when((s) =>
          finishAttempt(
            {
              workerId: 'w1',
              attempt: 2,
              outcome: { kind: 'failed', error: { kind: 'error', message: 'boom' }, retryable: true },
              retryDelayMs: 0,
              now: at(7),
            },
            s,
          ),
        )
        .then([failed]);
    });
    it('fails for good at once on an unrecoverable error', () => {
      given(task, [queued, started(1)])
        .when(
          finish({
            kind: 'failed',
            error: { kind: 'unrecoverable', message: 'bad input' },
            retryable: false,
          }),
        )
        .then([
          {
            type: 'TaskFailed',
            data: {
              taskId: 't1',
              attempt: 1,
              error: { kind: 'unrecoverable', message: 'bad input' },
              failedAt: iso(2),
            },
          },
        ]);
    });
    it('ignores the result of an attempt that was canceled, or that is no longer the running one', () => {
      given(task, [queued, started(1), canceled])
        .when(finish({ kind: 'succeeded', result: 1, resultTruncated: false }))
        .then([]);
      given(task, [queued, started(1), attemptFailed, started(2, 6)])
        .when(finish({ kind: 'succeeded', result: 1, resultTruncated: false }, 1))
        .then([]);
    });
  });

  describe('lease expiry (the reaper)', () => {
    it('fails the attempt of a worker whose lease ran out, counting it', () => {
      given(task, [queued, started(1)])
        .when((s) => expireLease({ retryDelayMs: 1000, now: at(22) }, s))
        .then([
          {
            type: 'TaskAttemptFailed',
            data: {
              taskId: 't1',
              attempt: 1,
              error: {
                kind: 'lease_expired',
                message: 'worker w1 did not finish attempt 1 before its lease ended',
              },
              nextRunAt: iso(23),
              failedAt: iso(22),
            },
          },
        ]);
    });
    it('leaves a task alone while its lease holds', () => {
      given(task, [queued, started(1)])
        .when((s) => expireLease({ retryDelayMs: 1000, now: at(20) }, s))
        .then([]);
    });
  });

  describe('release on graceful stop', () => {
    it('hands the task back without counting the attempt', () => {
      const released: TaskEvent = {
        type: 'TaskReleased',
        data: { taskId: 't1', attempt: 1, workerId: 'w1', reason: 'worker stopping', releasedAt: iso(3) },
      };
      given(task, [queued, started(1)])
        .when((s) => releaseTask({ workerId: 'w1', attempt: 1, reason: 'worker stopping', now: at(3) }, s))
        .then([released]);
      expect(foldEvents(task, [queued, started(1), released])).to.include({
        status: 'pending',
        attempt: 0,
        runAt: iso(3),
      });
    });
  });

  describe('back-off', () => {
    const settings = { baseMs: 1000, maxMs: 10_000, jitter: 0.2 };
    it('doubles per attempt, is capped, and stays within the jitter', () => {
      expect([1, 2, 3, 4, 5].map((a) => retryDelayMs(a, settings, () => 0.5))).to.deep.equal([
        1000, 2000, 4000, 8000, 10000,
      ]);
      expect(retryDelayMs(1, settings, () => 0)).to.equal(800);
      expect(retryDelayMs(1, settings, () => 1)).to.equal(1200);
    });
  });
});
