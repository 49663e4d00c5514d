/**
 * The scheduler role: every `scheduler.pollIntervalMs` it looks in the schedules read model for schedules due by now,
 * and fires each from its own stream (never from the row, which may lag). Exactly one task per tick, however many
 * schedulers run and however often they restart:
 *
 * 1. the tick's task id is a function of the schedule and the tick (scheduledTaskId), and its TaskQueued is appended
 *    with expected revision "no stream": a second scheduler firing the same tick finds the stream and appends nothing;
 * 2. then ScheduleFired (or ScheduleTicksSkipped) is appended at the schedule revision the decision was made on: of
 *    two schedulers only one records the tick, and the next decision starts after it.
 *
 * A scheduler that dies between the two steps leaves the tick due; the next look queues the same task id (a no-op)
 * and records it.
 */
import { ConflictError } from '../errors.js';
import { handleCommand, type CommandContext } from '../commands/commandHandler.js';
import type { Config } from '../config.js';
import { foldEvents } from '../domain/decider.js';
import { fireDueTicks, recordQueuedTicks, unfiredTicks } from '../domain/schedules/commands.js';
import { scheduleStreamId, type ScheduleFired } from '../domain/schedules/events.js';
import { schedule as scheduleDecider, type Schedule } from '../domain/schedules/state.js';
import { scheduledTaskId } from '../domain/schedules/taskId.js';
import { taskStreamId } from '../domain/tasks/events.js';
import { initialTask, task as taskDecider } from '../domain/tasks/state.js';
import { submitTask } from '../domain/tasks/submitTask.js';
import { sleep } from '../infra/abort.js';
import type { Pool } from '../infra/db/pool.js';
import type { EventStore } from '../infra/eventStore/eventStore.js';
import { GENESIS_HASH } from '../infra/eventStore/hashChain.js';
import type { Logger } from '../infra/logger.js';
import { selectDueScheduleRows } from '../projections/schedules/table.js';
import { Counter, type Registry } from 'prom-client';

/** What /metrics shows of the schedulers in this process. */
export interface SchedulerMetrics {
  /** Events this process appended to schedule streams, by type: ScheduleFired (one per task) or ScheduleTicksSkipped. */
  events: Counter<'type'>;
  /** Decisions another scheduler (or an owner's command) wrote the schedule's stream before. */
  conflicts: Counter;
}

const schedulerMetricsByRegistry = new WeakMap<Registry, SchedulerMetrics>();

export function schedulerMetrics(registry: Registry): SchedulerMetrics {
  let metrics = schedulerMetricsByRegistry.get(registry);
  if (!metrics) {
    metrics = {
      events: new Counter({
        name: 'scheduler_events_total',
        help: 'Events the scheduler appended to schedule streams: ScheduleFired (a tick queued its task) or ScheduleTicksSkipped',
        labelNames: ['type'],
        registers: [registry],
      }),
      conflicts: new Counter({
        name: 'scheduler_conflicts_total',
        help: "Firing decisions refused at the schedule's revision: another scheduler or a command wrote first",
        registers: [registry],
      }),
    };
    schedulerMetricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

export interface CronSchedulerDeps {
  store: EventStore;
  pool: Pool;
  settings: Config['scheduler'];
  logger: Logger;
  clock?: () => Date;
  newId: () => string;
  metrics?: SchedulerMetrics;
}

/**
 * What one look did: ticks fired (tasks this scheduler recorded), schedules it decided on, conflicts it left to
 * the next look, and schedules it failed to fire (logged; tried again at the next look).
 */
export interface LookResult {
  fired: number;
  decided: number;
  conflicts: number;
  failed: number;
}

export class CronScheduler {
  private readonly clock: () => Date;
  /** What this process last saw of a schedule's stream, so a row that lags it is not read again and again. */
  private readonly seen = new Map<string, { revision: number; nextFireAt: string | null }>();
  private readonly stopping = new AbortController();
  private running: Promise<void> | null = null;

  constructor(private readonly deps: CronSchedulerDeps) {
    this.clock = deps.clock ?? (() => new Date());
  }

  start(): void {
    this.running ??= this.loop();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.running;
  }

  private async loop(): Promise<void> {
    const { signal } = this.stopping;
    while (!signal.aborted) {
      try {
        await this.look();
      } catch (error) {
        this.deps.logger.warn({ err: error }, 'scheduler look failed; trying again');
      }
      await sleep(this.deps.settings.pollIntervalMs, signal);
    }
  }

  /** One look: every schedule due by now, at most `batchSize`, fired from its stream. */
  async look(): Promise<LookResult> {
    const now = this.clock();
    const candidates = await selectDueScheduleRows(this.deps.pool, now, this.deps.settings.batchSize);
    const result: LookResult = { fired: 0, decided: 0, conflicts: 0, failed: 0 };
    for (const candidate of candidates) {
      if (this.stopping.signal.aborted) break;
      const seen = this.seen.get(candidate.id);
      // This process already read a newer stream than the row shows, and that stream was not due.
      if (
        seen &&
        seen.revision >= candidate.revision &&
        (seen.nextFireAt === null || Date.parse(seen.nextFireAt) > now.getTime())
      )
        continue;
      try {
        const fired = await this.fire(candidate.id);
        if (fired !== null) {
          result.decided++;
          result.fired += fired;
        }
      } catch (error) {
        this.seen.delete(candidate.id);
        if (error instanceof ConflictError) {
          // Another scheduler (or the owner) wrote the stream first; the next look decides on what it wrote.
          this.deps.metrics?.conflicts.inc();
          result.conflicts++;
        } else {
          // One schedule that cannot be fired (its stream unreadable, say) must not hold up the ones after it.
          this.deps.logger.warn({ err: error, scheduleId: candidate.id }, 'schedule not fired; trying again');
          result.failed++;
        }
      }
    }
    return result;
  }

  /** Fires what is due of one schedule; the ticks it recorded, or null when nothing was due. */
  async fire(scheduleId: string): Promise<number | null> {
    const { store, settings } = this.deps;
    const streamId = scheduleStreamId(scheduleId);
    const history = await store.readStream(streamId);
    const state = foldEvents(scheduleDecider, history);
    const head = history.at(-1);
    if (!head) return null;
    this.seen.set(scheduleId, { revision: head.revision, nextFireAt: state.nextFireAt });
    const now = this.clock();
    const previousRunning = state.overlap === 'skip' && (await this.previousTaskRunning(state));
    const decide = (queued?: ReadonlyMap<string, string>) =>
      fireDueTicks(
        {
          now,
          previousRunning,
          catchUp: state.catchUp,
          missedAfterMs: settings.missedAfterMs,
          maxCatchUpTicks: settings.maxCatchUpTicks,
          ...(queued ? { queued } : {}),
        },
        state,
      );
    let events = decide();
    // Ticks it skips may have tasks already, queued by a scheduler killed before their ScheduleFired: decide again
    // knowing them, so they are recorded rather than skipped (only after downtime or an overlap skip).
    let queued: ReadonlyMap<string, string> = new Map();
    if (events.some((event) => event.type === 'ScheduleTicksSkipped')) {
      queued = await this.queuedTicks(state, unfiredTicks(events, state, settings.maxCatchUpTicks));
      if (queued.size > 0) events = decide(queued);
    }
    if (events.length === 0) return null;
    const fired = events.filter((event): event is ScheduleFired => event.type === 'ScheduleFired');
    const toQueue = fired.filter((event) => !queued.has(event.data.tick));
    // The tasks first: a tick recorded as fired always has its task.
    await Promise.all(toQueue.map((event) => this.queueTask(state, event, now)));
    let result;
    try {
      result = await handleCommand(store, streamId, scheduleDecider, () => events, this.context(), {
        // Decided on the revision read above, once: a retry would decide again on ticks whose tasks are not queued.
        known: { state, revision: head.revision, hash: head.metadata.hash },
        maxAttempts: 1,
      });
    } catch (error) {
      if (error instanceof ConflictError && fired.length > 0) await this.recordQueued(scheduleId, fired);
      throw error;
    }
    this.seen.set(scheduleId, { revision: result.revision!, nextFireAt: result.state.nextFireAt });
    for (const event of events) this.deps.metrics?.events.inc({ type: event.type });
    if (fired.length > 0)
      this.deps.logger.debug({ scheduleId, ticks: fired.map((event) => event.data.tick) }, 'schedule fired');
    return fired.length;
  }

  /** The ticks whose tasks `fired` queued that the stream, read again, does not record (see recordQueuedTicks). */
  private async recordQueued(scheduleId: string, fired: readonly ScheduleFired[]): Promise<void> {
    const streamId = scheduleStreamId(scheduleId);
    const history = await this.deps.store.readStream(streamId);
    const head = history.at(-1)!;
    const recorded = new Set(
      history.flatMap((event) => (event.type === 'ScheduleFired' ? [String(event.data.taskId)] : [])),
    );
    const state = foldEvents(scheduleDecider, history);
    const missing = recordQueuedTicks(fired, recorded, state, this.clock());
    if (missing.length === 0) return;
    try {
      await handleCommand(this.deps.store, streamId, scheduleDecider, () => missing, this.context(), {
        known: { state, revision: head.revision, hash: head.metadata.hash },
        maxAttempts: 1,
      });
      for (const event of missing) this.deps.metrics?.events.inc({ type: event.type });
    } catch (error) {
      // Changed again meanwhile: the tasks stay queued without their ScheduleFired (the README's caveat).
      if (!(error instanceof ConflictError)) throw error;
      this.deps.logger.warn(
        { scheduleId, ticks: missing.map((e) => e.data.tick) },
        'queued ticks left unrecorded',
      );
    }
  }

  /** Of these ticks, those whose tasks are in the log, each with its task's queuedAt. */
  private async queuedTicks(state: Schedule, ticks: readonly string[]): Promise<Map<string, string>> {
    const found = await Promise.all(
      ticks.map(async (tick) => {
        const [first] = await this.deps.store.readStream(taskStreamId(scheduledTaskId(state.id!, tick)));
        const queuedAt = first?.type === 'TaskQueued' ? first.data.queuedAt : undefined;
        return typeof queuedAt === 'string' ? ([tick, queuedAt] as const) : null;
      }),
    );
    return new Map(found.filter((entry): entry is readonly [string, string] => entry !== null));
  }

  /** The last fired task's state from its own stream: pending or in progress counts as still running. */
  private async previousTaskRunning(state: Schedule): Promise<boolean> {
    if (!state.lastTaskId) return false;
    const previous = foldEvents(
      taskDecider,
      await this.deps.store.readStream(taskStreamId(state.lastTaskId)),
    );
    return previous.exists && (previous.status === 'pending' || previous.status === 'in_progress');
  }

  /** TaskQueued for the tick's task id, unless a scheduler queued it already (the stream exists). */
  private async queueTask(state: Schedule, event: ScheduleFired, now: Date): Promise<void> {
    const { taskId, scheduleId, tick } = event.data;
    await handleCommand(
      this.deps.store,
      taskStreamId(taskId),
      taskDecider,
      (current) =>
        current.exists
          ? []
          : submitTask(
              {
                taskId,
                ownerId: state.ownerId!,
                spec: state.task!,
                idempotencyKey: null,
                now,
                origin: { scheduleId, tick },
              },
              current,
            ),
      this.context(),
      { known: { state: initialTask, revision: null, hash: GENESIS_HASH } },
    );
  }

  private context(): CommandContext {
    return {
      now: this.clock,
      newId: this.deps.newId,
      correlationId: this.deps.newId(),
      causationId: null,
      userId: null,
    };
  }
}
