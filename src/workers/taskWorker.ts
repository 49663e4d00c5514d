/**
 * src/workers: what runs tasks. This file is the worker (dispatch, claim, run, reap, drain); schedule.ts holds the
 * claim's SQL, outcomes.ts what a run's end means, attemptTimers.ts and progressCoalescer.ts a running attempt's
 * timers and progress, handlers/ the task types' code. Its reads of the tasks read model are in
 * projections/tasks/table.ts, which owns that table.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Config } from '../config.js';
import type { EventBus, RunningConsumer } from '../infra/bus/bus.js';
import type { Pool } from '../infra/db/pool.js';
import type { AppendedEvent, EventStore, JsonValue } from '../infra/eventStore/eventStore.js';
import type { Logger } from '../infra/logger.js';
import { backoffMs, sleep } from '../infra/abort.js';
import { ConflictError, IllegalStateError } from '../errors.js';
import { handleCommand, type CommandContext } from '../commands/commandHandler.js';
import { foldEvents } from '../domain/decider.js';
import { taskStreamId, type TaskEvent, type TaskQueued } from '../domain/tasks/events.js';
import { task, type Task } from '../domain/tasks/state.js';
import {
  expireLease,
  failForDependency,
  finishAttempt,
  releaseTask,
  reportProgress,
  retryDelayMs,
  startTask,
  type AttemptOutcome,
} from '../domain/tasks/workerCommands.js';
import { workerControl, workerControlStreamId } from '../domain/tasks/workerControl.js';
import {
  msUntilNextDueTask,
  selectDueTaskRows,
  selectExpiredLeaseTaskIds,
} from '../projections/tasks/table.js';
import type { DependencyOutcome, HandlerRegistry } from './handlers/handler.js';
import { attemptEndAfterRejection, type AbortReason, type AttemptEnd } from './outcomes.js';
import { UnrecoverableError } from './handlers/handler.js';
import { startAttemptTimers } from './attemptTimers.js';
import { ProgressCoalescer } from './progressCoalescer.js';
import {
  attemptsNoLongerOurs,
  claimRound,
  dependencyFailures,
  expiredLeases,
  regateWaitingTasks,
  releaseAbandonedClaims,
  type ClaimedTask,
} from './schedule.js';

/** What a worker runs on: the log, the database, the bus, the handlers, its settings; clock, ids, random. */
export interface TaskWorkerOptions {
  store: EventStore;
  pool: Pool;
  bus: EventBus;
  handlers: HandlerRegistry;
  settings: Config['workers'];
  tasks: Config['tasks'];
  metrics: Registry;
  logger: Logger;
  clock?: () => Date;
  newId: () => string;
  random?: () => number;
}

/**
 * An attempt this worker now owns: the task's state after its TaskStarted and the stream's head then (the chain
 * hash is null on EventStoreDB, whose claim does not know it: the outcome then reads the stream first).
 */
type ClaimedAttempt = Pick<ClaimedTask, 'state' | 'revision'> & { hash: string | null };

interface RunningAttempt {
  taskId: string;
  attempt: number;
  queue: string;
  controller: AbortController;
  done: Promise<void>;
}

/** What one look of the dispatcher found (see `claimDueTasks`). */
interface DispatchLook {
  claimed: number;
  mayHaveMore: boolean;
  nextDueMs: number | null;
}

/** How stale the worker's view of the pause switch may be. */
const PAUSE_CHECK_MS = 100;
/** How long the bus may gather the workers' wake-up events when the store itself wakes them (see `gatherMs`). */
const BUS_GATHER_MS = 500;

/** Events after which a pending task may be startable: each wakes the dispatcher early. */
const WAKING_EVENTS = new Set([
  'TaskQueued',
  'TaskRequeued',
  'TaskAttemptFailed',
  'TaskReleased',
  'TaskUpdated',
  'WorkersResumed',
  'QueueConfigured',
]);

/**
 * Events that free a slot of a queue's global limit: they wake the dispatcher only while a managed queue's limit
 * held due work back (otherwise this process's own outcomes would wake it for nothing).
 */
const CAPACITY_EVENTS = new Set([
  'TaskSucceeded',
  'TaskFailed',
  'TaskAttemptFailed',
  'TaskCanceled',
  'TaskReleased',
]);

/** What the worker reads from the bus: the waking events and the pause switch. */
const BUS_EVENTS: ReadonlySet<string> = new Set([...WAKING_EVENTS, ...CAPACITY_EVENTS, 'WorkersPaused']);

interface WorkerMetrics {
  started: Counter;
  finished: Counter<'outcome'>;
  running: Gauge;
}

const metricsByRegistry = new WeakMap<Registry, WorkerMetrics>();
function workerMetrics(registry: Registry): WorkerMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (!metrics) {
    metrics = {
      started: new Counter({
        name: 'task_attempts_started_total',
        help: 'Task attempts this process claimed',
        registers: [registry],
      }),
      finished: new Counter({
        name: 'task_attempts_finished_total',
        help: 'Task attempts this process ended',
        labelNames: ['outcome'],
        registers: [registry],
      }),
      running: new Gauge({
        name: 'task_attempts_running',
        help: 'Handlers running in this process',
        registers: [registry],
      }),
    };
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

/**
 * Runs queued tasks. On the PostgreSQL event store it claims from the schedule (an inline projection written with
 * the events, see schedule.ts): as many due tasks as it has free slots, highest priority first, with every
 * TaskStarted in the claim's own transaction. On EventStoreDB it picks from the `tasks` read model and claims
 * each with an append at the revision it read (a stale row costs a lost claim, never a second run). Either way
 * the bus wakes it when something becomes startable; delays and back-offs are waited out here, against the clock,
 * so nothing ever sits blocking a Kafka partition. It also reaps expired leases.
 */
export class TaskWorker {
  /** This process's worker: host, pid and a random suffix, recorded in every TaskStarted it appends. */
  readonly workerId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  private readonly running = new Map<string, RunningAttempt>();
  private readonly clock: () => Date;
  private readonly random: () => number;
  private readonly metrics: WorkerMetrics;
  private stopping = new AbortController();
  private wakeup: (() => void) | null = null;
  private wokenSinceLastLook = false;
  private loops: Promise<void>[] = [];
  private consumer: RunningConsumer | null = null;
  private stopWatchingAppends: (() => void) | null = null;
  private pausedCache: { paused: boolean; readAt: number } = { paused: false, readAt: 0 };
  /** The last claim found due work that a queue's concurrency or group cap held back. */
  private waitingForCapacity = false;
  /** Claims come from the inline schedule table: only when the log itself is in PostgreSQL. */
  private readonly usesSchedule: boolean;

  constructor(private readonly options: TaskWorkerOptions) {
    this.clock = options.clock ?? (() => new Date());
    this.random = options.random ?? Math.random;
    this.metrics = workerMetrics(options.metrics);
    this.usesSchedule = options.store.name === 'postgres';
  }

  /** The tasks whose handlers run in this worker now. */
  get runningTaskIds(): string[] {
    return [...this.running.keys()];
  }

  /** Starts consuming wake-ups and the dispatch, reaper (and, on PostgreSQL, cancel-watch) loops. */
  async start(): Promise<void> {
    this.stopping = new AbortController();
    // A wake-up needs only a few event types, so the bus passes over the rest without decoding them, and a
    // batch wakes the dispatcher once.
    this.consumer = await this.options.bus.consumeBatches({
      group: 'workers',
      types: BUS_EVENTS,
      maxBatchSize: 1000,
      // On PostgreSQL the store's append signal (in this process, and by NOTIFY in others) wakes the dispatcher
      // first; the bus is the backstop, so its events may gather for a while at a fraction of the broker's work.
      ...(this.usesSchedule ? { gatherMs: BUS_GATHER_MS } : {}),
      handleBatch: async (events) => {
        // The switch is cached for a second; its events make every worker look again at once.
        if (events.some((event) => event.type === 'WorkersPaused' || event.type === 'WorkersResumed'))
          this.pausedCache.readAt = 0;
        if (events.some((event) => this.wakes(event))) this.wake();
      },
    });
    // Appends in this process (and, through NOTIFY, in others) wake the dispatcher before the bus can: the
    // schedule it claims from is written with the events, so there is something to claim at once.
    // Only appends that may make a task startable: this process's own TaskStarted and outcomes, say, do not.
    if (this.usesSchedule)
      this.stopWatchingAppends =
        this.options.store.onAppended?.((appended) => {
          if (appended === null || appended.some((event) => this.wakes(event))) this.wake();
        }) ?? null;
    this.loops = [this.dispatchLoop(), this.reapLoop()];
    if (this.usesSchedule) this.loops.push(this.cancelWatchLoop());
  }

  /**
   * Graceful stop: no new claims; running handlers get `shutdownGraceMs` to finish; the rest are aborted and
   * handed back (TaskReleased, the attempt not counted) so another worker picks them up at once.
   */
  async stop(): Promise<void> {
    this.stopping.abort();
    this.stopWatchingAppends?.();
    this.wake();
    await this.consumer?.stop();
    await Promise.all(this.loops);
    const deadline = sleep(this.options.settings.shutdownGraceMs);
    const allDone = Promise.all([...this.running.values()].map((runningAttempt) => runningAttempt.done));
    if (
      (await Promise.race([allDone.then(() => 'done' as const), deadline.then(() => 'late' as const)])) ===
      'late'
    ) {
      for (const runningAttempt of this.running.values())
        runningAttempt.controller.abort('release' satisfies AbortReason);
      await allDone;
    }
  }

  /**
   * Whether an event may have made a task this worker serves startable. A TaskQueued names its queue, so one of a
   * queue this worker leaves alone (`onlyQueues`) wakes nothing: each wake-up is a claim, and a worker of one
   * queue made 47 empty claims a second while another queue was being filled (the bench's submit phase).
   */
  private wakes(event: AppendedEvent): boolean {
    const { type } = event;
    if (this.waitingForCapacity && CAPACITY_EVENTS.has(type)) return true;
    if (!WAKING_EVENTS.has(type)) return false;
    const { onlyQueues } = this.options.settings;
    if (type !== 'TaskQueued' || onlyQueues.length === 0) return true;
    const queue = (event.data as Partial<TaskQueued['data']>).spec?.queue;
    return typeof queue !== 'string' || onlyQueues.includes(queue);
  }

  private wake(): void {
    this.wokenSinceLastLook = true;
    this.wakeup?.();
  }

  private waitForWakeup(ms: number): Promise<void> {
    if (this.wokenSinceLastLook) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakeup = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeup = done;
    });
  }

  private context(): CommandContext {
    return {
      now: this.clock,
      newId: this.options.newId,
      correlationId: this.options.newId(),
      causationId: null,
      userId: null,
    };
  }

  /** No room for another attempt: the worker runs as many as it may, or as many of this queue as it may. */
  private atCapacity(queue: string): boolean {
    if (this.running.size >= this.options.settings.concurrency) return true;
    let inQueue = 0;
    for (const runningAttempt of this.running.values()) if (runningAttempt.queue === queue) inQueue++;
    return inQueue >= this.queueLimit(queue);
  }

  private queueLimit(queue: string): number {
    return this.options.settings.queues[queue] ?? this.options.settings.defaultQueueConcurrency;
  }

  private async paused(): Promise<boolean> {
    // The switch is one tiny stream; reading it at most every PAUSE_CHECK_MS is cheaper than a projection for it.
    // Short, since appends wake the dispatcher at once: a longer cache let it claim for a second after a pause.
    if (this.clock().getTime() - this.pausedCache.readAt > PAUSE_CHECK_MS) {
      const state = foldEvents(workerControl, await this.options.store.readStream(workerControlStreamId));
      this.pausedCache = { paused: state.paused, readAt: this.clock().getTime() };
    }
    return this.pausedCache.paused;
  }

  private async dispatchLoop(): Promise<void> {
    const { settings, logger } = this.options;
    // After a wake-up that found nothing in the read model (which may lag the bus by a moment), look again soon.
    let quickRetries = 0;
    while (!this.stopping.signal.aborted) {
      // Read before clearing: a wake-up that ended the last wait counts for this look.
      const woken = this.wokenSinceLastLook;
      this.wokenSinceLastLook = false;
      let claimed = 0;
      let mayHaveMore = false;
      let nextDueMs: number | null = null;
      try {
        if (!(await this.paused()) && this.running.size < settings.concurrency) {
          ({ claimed, mayHaveMore, nextDueMs } = await this.claimDueTasks());
        }
      } catch (error) {
        logger.warn({ err: error }, 'dispatch failed; retrying');
        await sleep(settings.pollIntervalMs, this.stopping.signal);
        continue;
      }
      if (claimed > 0) quickRetries = 0;
      // A round that emptied the schedule of due work waits for a wake-up (an append, a free slot, the bus) or the
      // next due time: looking again at once would find nothing, at the price of a claim statement per round.
      if (mayHaveMore) continue;
      // The read model may lag the bus by a moment; the schedule is written with the events, so it never lags.
      if (!this.usesSchedule && (woken || this.wokenSinceLastLook)) quickRetries = 4;
      let waitMs = settings.pollIntervalMs;
      if (quickRetries > 0) waitMs = Math.min(waitMs, 25 * 2 ** (4 - quickRetries--));
      if (nextDueMs !== null) waitMs = Math.min(waitMs, Math.max(1, nextDueMs));
      await this.waitForWakeup(waitMs);
    }
  }

  /**
   * One look: claim as many due tasks as there are free slots, highest priority first. `mayHaveMore`: look again
   * at once; `nextDueMs`: else when the next delayed task is due (null: none, or not known).
   */
  private async claimDueTasks(): Promise<DispatchLook> {
    return this.usesSchedule ? this.claimFromSchedule() : this.claimFromReadModel();
  }

  private async claimFromSchedule(): Promise<DispatchLook> {
    const { settings, pool } = this.options;
    const roomByQueue = new Map<string, number>();
    for (const queue of Object.keys(settings.queues)) roomByQueue.set(queue, this.queueLimit(queue));
    for (const { queue } of this.running.values())
      roomByQueue.set(queue, (roomByQueue.get(queue) ?? this.queueLimit(queue)) - 1);
    const now = this.clock();
    const { claimed, held, mayHaveMore, nextDueAt } = await claimRound(pool, this.options.store, {
      limit: settings.concurrency - this.running.size,
      now,
      roomByQueue,
      defaultRoom: settings.defaultQueueConcurrency,
      onlyQueues: settings.onlyQueues,
      workerId: this.workerId,
      leaseMs: (state) => (state.spec?.timeoutMs ?? 0) + settings.leaseGraceMs,
      metadata: {
        correlationId: this.options.newId(),
        causationId: null,
        userId: null,
        timestamp: now.toISOString(),
      },
      newId: this.options.newId,
      queueDefaults: settings.queueLimits,
    });
    for (const claim of claimed) this.startAttempt(claim);
    this.waitingForCapacity = held.some((queue) => queue.heldBy === 'limit');
    let nextDueMs = mayHaveMore || !nextDueAt ? null : nextDueAt.getTime() - now.getTime();
    // A rate limit's window frees a start at a known time: look again then.
    for (const queue of held)
      if (queue.retryAt) {
        const ms = Math.max(1, queue.retryAt.getTime() - now.getTime());
        nextDueMs = nextDueMs === null ? ms : Math.min(nextDueMs, ms);
      }
    return { claimed: claimed.length, mayHaveMore, nextDueMs };
  }

  /** EventStoreDB: the read model says what is due; each claim is an append at the revision just read. */
  private async claimFromReadModel(): Promise<DispatchLook> {
    const { settings, pool } = this.options;
    const free = settings.concurrency - this.running.size;
    const busyQueues = new Map<string, number>();
    for (const { queue } of this.running.values()) busyQueues.set(queue, (busyQueues.get(queue) ?? 0) + 1);
    const fullQueues = [...busyQueues]
      .filter(([queue, count]) => count >= this.queueLimit(queue))
      .map(([queue]) => queue);
    const now = this.clock();
    const rows = await selectDueTaskRows(pool, {
      now,
      fullQueues,
      runningIds: [...this.running.keys()],
      onlyQueues: settings.onlyQueues,
      limit: free * 3 + 5,
    });
    let claimed = 0;
    for (const row of rows) {
      if (this.stopping.signal.aborted || this.running.size >= settings.concurrency) break;
      if ((busyQueues.get(row.queue) ?? 0) >= this.queueLimit(row.queue)) continue;
      if (await this.claim(row.id)) {
        claimed++;
        busyQueues.set(row.queue, (busyQueues.get(row.queue) ?? 0) + 1);
      }
    }
    const nextDueMs = claimed === 0 ? await msUntilNextDueTask(pool, now, settings.onlyQueues) : null;
    // The read model may lag: after a round that started something, look again at once.
    return { claimed, mayHaveMore: claimed > 0, nextDueMs };
  }

  /** The claim; false when another worker got there first or the task is no longer startable. */
  private async claim(taskId: string): Promise<boolean> {
    const { settings, store } = this.options;
    let claimed;
    try {
      claimed = await handleCommand(
        store,
        taskStreamId(taskId),
        task,
        (state) =>
          startTask(
            {
              workerId: this.workerId,
              leaseMs: (state.spec?.timeoutMs ?? 0) + settings.leaseGraceMs,
              now: this.clock(),
            },
            state,
          ),
        this.context(),
        { maxAttempts: 1 },
      );
    } catch (error) {
      if (error instanceof IllegalStateError || error instanceof ConflictError) return false;
      throw error;
    }
    this.startAttempt({ state: claimed.state, revision: claimed.revision!, hash: null });
    return true;
  }

  /** A claimed attempt: run it in the background, holding one slot until it has ended. */
  private startAttempt(claim: ClaimedAttempt) {
    const { logger } = this.options;
    const { state } = claim;
    const taskId = state.id!;
    this.metrics.started.inc();
    logger.debug({ taskId, attempt: state.attempt, workerId: this.workerId }, 'task claimed');
    const controller = new AbortController();
    const runningAttempt: RunningAttempt = {
      taskId,
      attempt: state.attempt,
      queue: state.spec!.queue,
      controller,
      done: Promise.resolve(),
    };
    runningAttempt.done = this.run(state, claim.revision, claim.hash, controller)
      .catch((error) =>
        logger.error(
          { err: error, taskId },
          'task attempt ended with an internal error; its lease will expire',
        ),
      )
      .finally(() => {
        const slotWasMissing = this.atCapacity(runningAttempt.queue);
        this.running.delete(taskId);
        this.metrics.running.set(this.running.size);
        // A slot is free where there was none: due work the last look had no room for may start now. Otherwise
        // the last look found no more due work, and a new look would only cost a claim statement.
        if (slotWasMissing) this.wake();
      });
    this.running.set(taskId, runningAttempt);
    this.metrics.running.set(this.running.size);
  }

  /**
   * Cancellation (and a lease lost to the reaper) reaches running handlers through one query for all the
   * attempts of this process, against the schedule, rather than one stream read per task.
   */
  private async cancelWatchLoop(): Promise<void> {
    const { pool, settings, logger } = this.options;
    while (!this.stopping.signal.aborted) {
      await sleep(settings.cancelCheckIntervalMs, this.stopping.signal);
      const runningAttempts = [...this.running.values()];
      if (runningAttempts.length === 0) continue;
      try {
        const gone = new Set(await attemptsNoLongerOurs(pool, this.workerId, runningAttempts));
        for (const runningAttempt of runningAttempts)
          if (gone.has(runningAttempt.taskId) && this.running.get(runningAttempt.taskId) === runningAttempt)
            runningAttempt.controller.abort('canceled' satisfies AbortReason);
      } catch (error) {
        logger.debug({ err: error }, 'cancel check failed; retrying at the next tick');
      }
    }
  }

  /**
   * One attempt, top to bottom: start its timers, run the handler (its progress coalesced), clear the timers,
   * then record how it ended.
   */
  private async run(
    state: Task,
    claimedRevision: number,
    claimedHash: string | null,
    controller: AbortController,
  ): Promise<void> {
    const { settings } = this.options;
    const taskId = state.id!;
    const progress = this.progressOf(state);
    const timers = startAttemptTimers({
      controller,
      timeoutMs: state.spec!.timeoutMs,
      // Without the schedule (EventStoreDB), cancellation reaches the worker through the task's own stream.
      cancelCheck: this.usesSchedule
        ? undefined
        : {
            intervalMs: settings.cancelCheckIntervalMs,
            isCanceled: () => this.attemptEndedInStream(taskId, claimedRevision),
          },
      progressFlush: { intervalMs: settings.progressIntervalMs, flush: () => progress.flush() },
    });

    let outcome: AttemptEnd;
    try {
      outcome = await this.runHandler(state, controller.signal, progress);
    } finally {
      timers.clear();
      await progress.settled();
    }

    if (outcome === 'canceled') {
      this.metrics.finished.inc({ outcome: 'canceled' });
      return; // TaskCanceled (or the reaper's failure) is already in the stream
    }
    // Nothing but this worker writes to a running attempt's stream, as a rule: decide on the state the claim
    // left, without reading the stream again. A cancel or a reaper in between makes it a conflict, then a read.
    const known =
      claimedHash !== null && !progress.wroteAny
        ? { state, revision: claimedRevision, hash: claimedHash }
        : undefined;
    await this.recordOutcome(state, outcome, known);
  }

  /** The attempt's progress reports, coalesced: each flush appends the latest as a TaskProgressed. */
  private progressOf(state: Task): ProgressCoalescer {
    const { store, logger } = this.options;
    const taskId = state.id!;
    const attempt = state.attempt;
    return new ProgressCoalescer({
      write: ({ fraction, message }) =>
        handleCommand(
          store,
          taskStreamId(taskId),
          task,
          (s) =>
            reportProgress(
              { workerId: this.workerId, attempt, progress: fraction, message, now: this.clock() },
              s,
            ),
          this.context(),
        ),
      onError: (error) => logger.warn({ err: error, taskId }, 'progress not recorded'),
    });
  }

  /** What the tasks a task depends on ended with, read from their streams (the log, never a lagging row). */
  private async dependencyOutcomes(taskIds: readonly string[]): Promise<DependencyOutcome[]> {
    return Promise.all(
      taskIds.map(async (id) => {
        const dependency = foldEvents(task, await this.options.store.readStream(taskStreamId(id)));
        return {
          taskId: id,
          status: dependency.status,
          result: dependency.result,
          error: dependency.lastError,
        };
      }),
    );
  }

  /** Runs the task's handler to its end, and says what that end means for the attempt. */
  private async runHandler(
    state: Task,
    signal: AbortSignal,
    progress: ProgressCoalescer,
  ): Promise<AttemptEnd> {
    const { handlers, logger } = this.options;
    const spec = state.spec!;
    const taskId = state.id!;
    const attempt = state.attempt;
    try {
      const handler = handlers.get(spec.type);
      if (!handler) throw new UnrecoverableError(`no handler for type ${spec.type}`);
      const result = await handler.run(spec.payload, {
        taskId,
        attempt,
        signal,
        logger: logger.child({ taskId, attempt }),
        progress: (fraction, message) => progress.report(fraction, message),
        dependencies: () => this.dependencyOutcomes(spec.dependencies?.taskIds ?? []),
      });
      // A handler that returned has done its work, whatever arrived meanwhile: record it. If the task was
      // canceled or reaped in between, finishAttempt decides nothing; releasing it instead would run it twice.
      return this.succeeded(result);
    } catch (error) {
      return attemptEndAfterRejection(error, signal, spec.timeoutMs);
    }
  }

  /**
   * Appends the attempt's end (its outcome, or a hand-back on 'release'). It must not be lost to a passing
   * database error: without it the lease would expire and the task run again. Keep trying while the lease holds;
   * a late write is harmless, as the decider ignores it. `known` is the state the claim left, when still current.
   */
  private async recordOutcome(
    state: Task,
    outcome: Exclude<AttemptEnd, 'canceled'>,
    known: { state: Task; revision: number; hash: string } | undefined,
  ): Promise<void> {
    const { settings, store, logger } = this.options;
    const taskId = state.id!;
    const attempt = state.attempt;
    const leaseEndsAt = Date.parse(state.leaseUntil!);
    const decide =
      outcome === 'release'
        ? (s: Task): TaskEvent[] =>
            releaseTask({ workerId: this.workerId, attempt, reason: 'worker stopping', now: this.clock() }, s)
        : (s: Task): TaskEvent[] =>
            finishAttempt(
              {
                workerId: this.workerId,
                attempt,
                outcome,
                retryDelayMs: retryDelayMs(attempt, settings.backoff, this.random),
                now: this.clock(),
              },
              s,
            );
    for (let write = 1; ; write++) {
      try {
        const finished = await handleCommand(store, taskStreamId(taskId), task, decide, this.context(), {
          known: write === 1 ? known : undefined,
        });
        this.metrics.finished.inc({ outcome: finished.events[0]?.type ?? 'superseded' });
        return;
      } catch (error) {
        if (this.clock().getTime() >= leaseEndsAt) throw error;
        logger.warn(
          { err: error, taskId, attempt, write },
          "could not record the attempt's outcome; retrying",
        );
        await sleep(backoffMs(write, 100, 2000, this.random));
      }
    }
  }

  /** EventStoreDB: whether the task's stream has, since the claim, an event that ends this attempt. */
  private async attemptEndedInStream(taskId: string, claimedRevision: number): Promise<boolean> {
    const events = await this.options.store.readStream(taskStreamId(taskId), {
      fromRevision: claimedRevision + 1,
    });
    return events.some(
      (event) =>
        event.type === 'TaskCanceled' || event.type === 'TaskAttemptFailed' || event.type === 'TaskFailed',
    );
  }

  /** Results are stored up to `maxResultBytes`; a larger one keeps a prefix of its JSON, flagged as truncated. */
  private succeeded(result: JsonValue): AttemptOutcome {
    const json = JSON.stringify(result ?? null);
    const limit = this.options.tasks.maxResultBytes;
    if (Buffer.byteLength(json, 'utf8') <= limit)
      return { kind: 'succeeded', result: result ?? null, resultTruncated: false };
    return {
      kind: 'succeeded',
      result: { truncated_json: Buffer.from(json).subarray(0, limit).toString('utf8') },
      resultTruncated: true,
    };
  }

  /**
   * Tasks waiting for others: first the sweep that gates again what a dependency's outcome could not reach, then
   * a TaskFailed for each whose dependency ended failed or canceled, after reading that dependency's own stream (the
   * schedule is derived; the log decides). Like reaping, any worker may do it: the expected revision makes a race
   * harmless.
   */
  private async settleDependencies(): Promise<void> {
    const { pool, store, logger } = this.options;
    await regateWaitingTasks(pool);
    for (const { taskId, dependencyId } of await dependencyFailures(pool)) {
      const dependency = foldEvents(task, await store.readStream(taskStreamId(dependencyId)));
      await handleCommand(
        store,
        taskStreamId(taskId),
        task,
        (state) =>
          failForDependency({ dependencyId, dependencyStatus: dependency.status, now: this.clock() }, state),
        this.context(),
      ).then(
        (result) =>
          result.events.length > 0 && logger.info({ taskId, dependencyId }, 'dependency failed; task failed'),
        (error) => logger.warn({ err: error, taskId }, 'could not fail a task whose dependency failed'),
      );
    }
  }

  /** Any worker may reap: the append's expected revision makes a race between reapers harmless. */
  private async reapLoop(): Promise<void> {
    const { pool, store, settings, logger } = this.options;
    while (!this.stopping.signal.aborted) {
      try {
        const now = this.clock();
        if (this.usesSchedule) await releaseAbandonedClaims(pool, now);
        const ids = this.usesSchedule
          ? await expiredLeases(pool, now)
          : await selectExpiredLeaseTaskIds(pool, now);
        for (const row of ids.map((id) => ({ id }))) {
          await handleCommand(
            store,
            taskStreamId(row.id),
            task,
            (state) =>
              expireLease(
                {
                  retryDelayMs: retryDelayMs(state.attempt, settings.backoff, this.random),
                  now: this.clock(),
                },
                state,
              ),
            this.context(),
          ).then(
            (result) =>
              result.events.length > 0 && logger.warn({ taskId: row.id }, 'lease expired; attempt failed'),
            (error) => logger.warn({ err: error, taskId: row.id }, 'could not reap an expired lease'),
          );
        }
        if (this.usesSchedule) await this.settleDependencies();
      } catch (error) {
        logger.warn({ err: error }, 'lease reaper failed; retrying');
      }
      await sleep(Math.max(1000, settings.pollIntervalMs), this.stopping.signal);
    }
  }
}
