import type { Decider, DomainEvent } from '../decider.js';

/** Stream `workerControl-global`: the global pause switch every worker obeys. */
export const workerControlStreamId = 'workerControl-global';

export type WorkersPaused = DomainEvent<'WorkersPaused', { pausedBy: string; pausedAt: string }>;
export type WorkersResumed = DomainEvent<'WorkersResumed', { resumedBy: string; resumedAt: string }>;
export type WorkerControlEvent = WorkersPaused | WorkersResumed;

export interface WorkerControl {
  paused: boolean;
  changedAt: string | null;
  changedBy: string | null;
}

export const workerControl: Decider<WorkerControl, WorkerControlEvent> = {
  initialState: { paused: false, changedAt: null, changedBy: null },
  evolve: (_state, event) =>
    event.type === 'WorkersPaused'
      ? { paused: true, changedAt: event.data.pausedAt, changedBy: event.data.pausedBy }
      : { paused: false, changedAt: event.data.resumedAt, changedBy: event.data.resumedBy },
};

export const pauseWorkers = (
  command: { by: string; now: Date },
  state: WorkerControl,
): WorkerControlEvent[] =>
  state.paused
    ? []
    : [{ type: 'WorkersPaused', data: { pausedBy: command.by, pausedAt: command.now.toISOString() } }];

export const resumeWorkers = (
  command: { by: string; now: Date },
  state: WorkerControl,
): WorkerControlEvent[] =>
  state.paused
    ? [{ type: 'WorkersResumed', data: { resumedBy: command.by, resumedAt: command.now.toISOString() } }]
    : [];
