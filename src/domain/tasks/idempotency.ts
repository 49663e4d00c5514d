import { createHash } from 'node:crypto';
import type { Decider, DomainEvent } from '../decider.js';
import { canonicalJson } from '../../infra/canonicalJson.js';

/**
 * Idempotency keys. Stream `idempotencyKey-<sha256(user, key)>` records which task a key created and a hash of
 * the request. The key is claimed (appended with the revision read) BEFORE the task is queued, so of two
 * concurrent requests with one key only one creates a task; a crash in between leaves a claim whose task is
 * queued by the next retry of the same request.
 */
export type IdempotencyKeyUsed = DomainEvent<
  'IdempotencyKeyUsed',
  { taskId: string; requestHash: string; usedAt: string; expiresAt: string }
>;

export interface IdempotencyKey {
  taskId: string | null;
  requestHash: string | null;
  expiresAt: string | null;
}

export const idempotencyKey: Decider<IdempotencyKey, IdempotencyKeyUsed> = {
  initialState: { taskId: null, requestHash: null, expiresAt: null },
  evolve: (_state, event) => ({
    taskId: event.data.taskId,
    requestHash: event.data.requestHash,
    expiresAt: event.data.expiresAt,
  }),
};

export const idempotencyStreamId = (userId: string, key: string): string =>
  `idempotencyKey-${createHash('sha256').update(`${userId}\n${key}`).digest('hex')}`;

export const requestHash = (body: unknown): string =>
  createHash('sha256').update(canonicalJson(body)).digest('hex');

export const isLive = (state: IdempotencyKey, now: Date): boolean =>
  state.taskId !== null && state.expiresAt !== null && Date.parse(state.expiresAt) > now.getTime();

export interface UseIdempotencyKey {
  taskId: string;
  requestHash: string;
  now: Date;
  ttlSeconds: number;
}

/** Claims the key for a new task, unless a live claim exists (then the caller replays or refuses). */
export const useIdempotencyKey = (command: UseIdempotencyKey, state: IdempotencyKey): IdempotencyKeyUsed[] =>
  isLive(state, command.now)
    ? []
    : [
        {
          type: 'IdempotencyKeyUsed',
          data: {
            taskId: command.taskId,
            requestHash: command.requestHash,
            usedAt: command.now.toISOString(),
            expiresAt: new Date(command.now.getTime() + command.ttlSeconds * 1000).toISOString(),
          },
        },
      ];
