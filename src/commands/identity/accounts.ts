/**
 * Finding an email's account, and forgetting a user: what register, login, grant-role and DELETE /users/{id} share.
 */
import { randomUUID } from 'node:crypto';
import { isUuid } from '../../infra/uuid.js';
import { NotFoundError } from '../../errors.js';
import type { EventStore, Position } from '../../infra/eventStore/eventStore.js';
import type { Pool } from '../../infra/db/pool.js';
import type { PersonalData } from '../../infra/secrets/personalData.js';
import { foldEvents } from '../../domain/decider.js';
import {
  account,
  accountStreamId,
  forgetUser,
  legacyAccountStreamId,
  normaliseEmail,
  type Account,
} from '../../domain/identity/account.js';
import { handleCommand, type CommandContext } from '../commandHandler.js';

export interface FoundAccount {
  streamId: string;
  state: Account;
}

/**
 * The stream of an email's account and its state. An account registered before personal data was sealed lives in the
 * legacy stream (a plain hash of the email) and is found there while it is live; every other email's account stream
 * is the keyed one, where a new account is registered.
 */
export async function findAccount(
  store: EventStore,
  personalData: PersonalData,
  email: string,
): Promise<FoundAccount> {
  const normalised = normaliseEmail(email);
  const streamId = accountStreamId(personalData.emailHash(normalised));
  const state = foldEvents(account, await store.readStream(streamId));
  if (state.exists) return { streamId, state };
  const legacyStreamId = legacyAccountStreamId(normalised);
  const legacy = foldEvents(account, await store.readStream(legacyStreamId));
  return legacy.exists ? { streamId: legacyStreamId, state: legacy } : { streamId, state };
}

/** The account stream of a user, from the users read model (which keeps it, and no email). */
export async function accountStreamOfUser(pool: Pool, userId: string): Promise<string | null> {
  const { rows } = await pool.query<{ account_stream: string }>(
    'SELECT account_stream FROM users WHERE id = $1',
    [userId],
  );
  return rows[0]?.account_stream ?? null;
}

export interface ForgetResult {
  userId: string;
  /** False when the user had been forgotten already (the key is destroyed again all the same). */
  changed: boolean;
  position: Position | null;
}

/**
 * Forgets a user: UserForgotten in their account stream, then their data key destroyed. The event comes first, so a
 * failure in between leaves a user marked forgotten whose key a retry destroys (forgetting is idempotent), never a
 * live user whose email can no longer be read.
 */
export async function forgetAccount(
  deps: { store: EventStore; personalData: PersonalData },
  found: FoundAccount,
  userId: string,
  context: CommandContext,
): Promise<ForgetResult> {
  const result = await handleCommand(
    deps.store,
    found.streamId,
    account,
    (state) => forgetUser({ userId, by: context.userId, now: context.now() }, state),
    context,
  );
  await deps.personalData.destroyKey(userId);
  return { userId, changed: result.events.length > 0, position: result.position };
}

/** `task-manager users forget <email|id>`: by email (found as login finds it) or by user id (the read model). */
export async function forgetByEmailOrId(
  deps: { store: EventStore; personalData: PersonalData; pool: Pool },
  emailOrId: string,
  clock: () => Date = () => new Date(),
): Promise<ForgetResult> {
  const context: CommandContext = {
    now: clock,
    newId: randomUUID,
    correlationId: randomUUID(),
    causationId: null,
    userId: null,
  };
  if (isUuid(emailOrId)) {
    const streamId = await accountStreamOfUser(deps.pool, emailOrId);
    if (!streamId) throw new NotFoundError(`no user ${emailOrId}`);
    const state = foldEvents(account, await deps.store.readStream(streamId));
    return forgetAccount(deps, { streamId, state }, emailOrId, context);
  }
  const found = await findAccount(deps.store, deps.personalData, emailOrId);
  if (!found.state.exists) throw new NotFoundError('no account with this email');
  return forgetAccount(deps, found, found.state.userId!, context);
}
