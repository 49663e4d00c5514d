import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { handleCommand } from '../../src/commands/commandHandler.js';
import { taskStreamId, type TaskDependencies, type TaskSpec } from '../../src/domain/tasks/events.js';
import { task } from '../../src/domain/tasks/state.js';
import { cancelTask, retryTask } from '../../src/domain/tasks/ownerCommands.js';
import { finishAttempt, type AttemptOutcome } from '../../src/domain/tasks/workerCommands.js';
import { submitTask } from '../../src/domain/tasks/submitTask.js';
import {
  claimDueTasks,
  dependencyFailures,
  rebuildSchedule,
  regateWaitingTasks,
  verifySchedule,
  type ClaimedTask,
} from '../../src/workers/schedule.js';
import { useTestEventStore } from '../support/postgres.js';
import { taskSpec, testClaimRequest, testCommandContext } from '../support/fixtures.js';

describe('tasks that wait for other tasks, in the schedule', function () {
  this.timeout(60_000);
  const test = useTestEventStore('deps', { batchSize: 500 });
  const owner = randomUUID();
  let queue = '';
  beforeEach(() => (queue = `q${randomUUID().slice(0, 8)}`));

  const submit = async (dependencies: TaskDependencies | null = null, overrides: Partial<TaskSpec> = {}) => {
    const taskId = randomUUID();
    await handleCommand(
      test.store,
      taskStreamId(taskId),
      task,
      (state) =>
        submitTask(
          {
            taskId,
            ownerId: owner,
            spec: taskSpec({ queue, dependencies, ...overrides }),
            idempotencyKey: null,
            now: new Date(),
          },
          state,
        ),
      testCommandContext(),
    );
    return taskId;
  };

  const claim = (): Promise<ClaimedTask[]> =>
    claimDueTasks(test.db.pool, test.store, testClaimRequest('w', 50, { onlyQueues: [queue] }));
  const claimedIds = async () => (await claim()).map((c) => c.state.id!).sort();

  const finish = async (taskId: string, outcome: AttemptOutcome) => {
    await handleCommand(
      test.store,
      taskStreamId(taskId),
      task,
      (state) =>
        finishAttempt(
          { workerId: 'w', attempt: state.attempt, outcome, retryDelayMs: 0, now: new Date() },
          state,
        ),
      testCommandContext(),
    );
  };
  const succeed = (taskId: string) =>
    finish(taskId, { kind: 'succeeded', result: { id: taskId }, resultTruncated: false });
  const failForGood = (taskId: string) =>
    finish(taskId, { kind: 'failed', error: { kind: 'unrecoverable', message: 'no' }, retryable: false });
  const statusOf = async (taskId: string) =>
    (
      await test.db.pool.query<{ status: string }>('SELECT status FROM task_schedule WHERE task_id = $1', [
        taskId,
      ])
    ).rows[0]?.status;

  it('holds a task back until every dependency is done, then lets it be claimed', async () => {
    const a = await submit();
    const b = await submit();
    const c = await submit({ taskIds: [a, b], onFailure: 'fail' });
    expect(await statusOf(c)).to.equal('waiting');
    expect(await claimedIds()).to.deep.equal([a, b].sort());
    await succeed(a);
    expect(await statusOf(c)).to.equal('waiting');
    expect(await claimedIds()).to.deep.equal([]);
    await succeed(b);
    expect(await statusOf(c)).to.equal('pending');
    expect(await claimedIds()).to.deep.equal([c]);
    expect(await verifySchedule(test.db.pool)).to.deep.equal([]);
  });

  it('does not hold back a task whose dependencies were done before it was submitted', async () => {
    const a = await submit();
    await claim();
    await succeed(a);
    const b = await submit({ taskIds: [a], onFailure: 'fail' });
    expect(await statusOf(b)).to.equal('pending');
  });

  it('marks a task whose dependency failed for the reaper, naming the dependency; a retry of it waits again', async () => {
    const a = await submit();
    const b = await submit({ taskIds: [a], onFailure: 'fail' });
    await claim();
    await failForGood(a);
    expect(await statusOf(b)).to.equal('dependency_failed');
    expect(await dependencyFailures(test.db.pool)).to.deep.include({ taskId: b, dependencyId: a });
    expect(await verifySchedule(test.db.pool)).to.deep.equal([]);
    // The dependency is retried before any reaper got to b: b waits again.
    await handleCommand(
      test.store,
      taskStreamId(a),
      task,
      (s) => retryTask({ actorId: owner, now: new Date() }, s),
      testCommandContext(),
    );
    expect(await statusOf(b)).to.equal('waiting');
  });

  it('with onFailure "ignore", lets the task start once its dependencies finished, however they ended', async () => {
    const a = await submit();
    const b = await submit();
    const c = await submit({ taskIds: [a, b], onFailure: 'ignore' });
    await claim();
    await failForGood(a);
    expect(await statusOf(c)).to.equal('waiting');
    await handleCommand(
      test.store,
      taskStreamId(b),
      task,
      (s) => cancelTask({ actorId: owner, now: new Date() }, s),
      testCommandContext(),
    );
    expect(await statusOf(c)).to.equal('pending');
    expect(await claimedIds()).to.deep.equal([c]);
  });

  it('catches up, in the sweep, a waiting row whose dependency ended without the trigger seeing it', async () => {
    const a = await submit();
    const b = await submit({ taskIds: [a], onFailure: 'fail' });
    await claim();
    await succeed(a);
    // As if b had been queued in a transaction that committed after a's success looked for its dependents.
    await test.db.pool.query(`UPDATE task_schedule SET status = 'waiting' WHERE task_id = $1`, [b]);
    expect((await verifySchedule(test.db.pool)).map((d) => d.taskId)).to.deep.equal([b]);
    expect(await regateWaitingTasks(test.db.pool)).to.be.at.least(1);
    expect(await statusOf(b)).to.equal('pending');
  });

  it('rebuilds the gates from the log, and verify folds them the same way', async () => {
    const a = await submit();
    const b = await submit({ taskIds: [a], onFailure: 'fail' });
    const c = await submit({ taskIds: [b], onFailure: 'fail' });
    await claim();
    await failForGood(a);
    expect(await verifySchedule(test.db.pool)).to.deep.equal([]);
    await rebuildSchedule(test.db.pool);
    expect(await statusOf(b)).to.equal('dependency_failed');
    expect(await statusOf(c)).to.equal('waiting');
    expect(await verifySchedule(test.db.pool)).to.deep.equal([]);
  });
});
