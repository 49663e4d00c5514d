import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import type { Task } from './state.js';

/** A task as the API shows it (snake_case). Commands answer with it; the read model serves the same shape. */
export interface TaskResource {
  id: string;
  owner_id: string;
  title: string;
  description: string | null;
  type: string;
  payload: JsonValue;
  priority: number;
  queue: string;
  status: Task['status'];
  attempt: number;
  max_attempts: number;
  timeout_ms: number;
  run_at: string | null;
  progress: number | null;
  result: JsonValue | null;
  error: Task['lastError'];
  created_at: string;
  updated_at: string;
  /** When it was archived (hidden from lists), or null. */
  archived_at: string | null;
  revision: number;
}

export function taskResource(state: Task, revision: number): TaskResource {
  const spec = state.spec!;
  return {
    id: state.id!,
    owner_id: state.ownerId!,
    title: spec.title,
    description: spec.description,
    type: spec.type,
    payload: spec.payload,
    priority: spec.priority,
    queue: spec.queue,
    status: state.status,
    attempt: state.attempt - state.attemptsBefore,
    max_attempts: spec.maxAttempts,
    timeout_ms: spec.timeoutMs,
    run_at: state.runAt,
    progress: state.progress,
    result: state.result,
    error: state.lastError,
    created_at: state.createdAt!,
    updated_at: state.updatedAt!,
    archived_at: state.archivedAt,
    revision,
  };
}
