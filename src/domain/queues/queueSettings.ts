/**
 * src/domain/queues: a queue's flow control, set by an admin and enforced where workers claim: how many of its tasks
 * may run at once across every worker process, how many may start per interval, how many of one group key may run
 * at once, and whether it is paused. Each change is an event on the queue's stream, so who limited what and when is
 * in the audited log like everything else.
 */
import type { Decider, DomainEvent } from '../decider.js';

/** Stream `queue-<name>`: one queue's settings over time. */
export const queueStreamId = (queue: string): string => `queue-${queue}`;
export const QUEUE_STREAM_PREFIX = 'queue-';

/** At most `limit` starts in any `intervalMs` window. */
// Type aliases, not interfaces: these go into event data, and only an alias is assignable to JsonObject.
export type RateLimit = {
  limit: number;
  intervalMs: number;
};

/** The settings a queue runs under; null means "no limit of this kind". */
export type QueueLimits = {
  /** At most this many of the queue's tasks running at once, in the whole system. */
  concurrency: number | null;
  rate: RateLimit | null;
  /** At most this many tasks of one `group_key` running at once; tasks without a key are not capped by it. */
  groupConcurrency: number | null;
  /** No task of this queue starts while true; running ones finish. */
  paused: boolean;
};

/** No limit of any kind: the settings of a queue nobody has configured (and no config default names). */
export const UNLIMITED: QueueLimits = {
  concurrency: null,
  rate: null,
  groupConcurrency: null,
  paused: false,
};

/**
 * A queue whose claims go through its lock (the limits need a count that no other claim changes meanwhile).
 * Round-robin between group keys comes with it: a queue with any limit is also a fair one.
 */
export const isManaged = (limits: QueueLimits): boolean =>
  limits.concurrency !== null || limits.rate !== null || limits.groupConcurrency !== null || limits.paused;

/** The whole new settings (a PUT replaces them), who set them and when. */
export type QueueConfigured = DomainEvent<
  'QueueConfigured',
  {
    queue: string;
    concurrency: number | null;
    rate: RateLimit | null;
    groupConcurrency: number | null;
    paused: boolean;
    configuredBy: string;
    configuredAt: string;
  }
>;
export type QueueEvent = QueueConfigured;

export interface QueueState {
  /** False until the first QueueConfigured: the queue runs on the config's defaults for it. */
  configured: boolean;
  limits: QueueLimits;
  configuredAt: string | null;
  configuredBy: string | null;
}

export const queueSettings: Decider<QueueState, QueueEvent> = {
  initialState: { configured: false, limits: UNLIMITED, configuredAt: null, configuredBy: null },
  evolve: (_state, event) => ({
    configured: true,
    limits: {
      concurrency: event.data.concurrency,
      rate: event.data.rate,
      groupConcurrency: event.data.groupConcurrency,
      paused: event.data.paused,
    },
    configuredAt: event.data.configuredAt,
    configuredBy: event.data.configuredBy,
  }),
};

export interface ConfigureQueue {
  queue: string;
  limits: QueueLimits;
  by: string;
  now: Date;
}

/** Sets a queue's limits; the same settings again decide nothing, so a repeated PUT appends no event. */
export const configureQueue = (command: ConfigureQueue, state: QueueState): QueueConfigured[] => {
  const { limits } = command;
  if (state.configured && JSON.stringify(state.limits) === JSON.stringify(normalised(limits))) return [];
  return [
    {
      type: 'QueueConfigured',
      data: {
        queue: command.queue,
        ...normalised(limits),
        configuredBy: command.by,
        configuredAt: command.now.toISOString(),
      },
    },
  ];
};

/** Fields in one order, so equal settings compare equal. */
const normalised = (limits: QueueLimits): QueueLimits => ({
  concurrency: limits.concurrency,
  rate: limits.rate ? { limit: limits.rate.limit, intervalMs: limits.rate.intervalMs } : null,
  groupConcurrency: limits.groupConcurrency,
  paused: limits.paused,
});

/** How a queue may be named, in a task's `queue` and in /queues/{name}. */
export const QUEUE_NAME_PATTERN = '^[a-z0-9][a-z0-9_.-]{0,63}$';

/** Where a queue's limits come from: an admin's PUT, config.yml's `workers.queueLimits`, or nowhere (none). */
export type LimitsSource = 'settings' | 'config' | 'none';

/** The limits a queue runs under now: an admin's settings win over config.yml's defaults for it. */
export function effectiveLimits(
  configured: QueueLimits | null,
  configDefaults: Readonly<Record<string, QueueLimits>>,
  queue: string,
): { limits: QueueLimits; source: LimitsSource } {
  if (configured) return { limits: configured, source: 'settings' };
  const fromConfig = configDefaults[queue];
  return fromConfig ? { limits: fromConfig, source: 'config' } : { limits: UNLIMITED, source: 'none' };
}
