import type { JsonObject } from '../../infra/eventStore/eventStore.js';
import type { AccountEvent, SessionEvent } from './events.js';

/**
 * The fields of identity events that hold credential material: a password's bcrypt hash (crackable offline), and
 * refresh-token hashes (a token is looked up by its hash). They stay in the event store, where the command side
 * needs them (login and refresh fold the account and session streams) and the hash chain covers them; they never
 * leave it in what the relay publishes, since a topic is read by every team and tool its ACL admits.
 */
const CREDENTIAL_FIELDS: Partial<Record<AccountEvent['type'] | SessionEvent['type'], readonly string[]>> = {
  UserRegistered: ['passwordHash'],
  SessionStarted: ['refreshTokenHash'],
  RefreshTokenRotated: ['previousTokenHash', 'refreshTokenHash'],
  RefreshTokenReuseDetected: ['presentedTokenHash'],
};

/** What a credential field holds in the public form of an event (the same mark the audit API shows). */
export const REDACTED = '[redacted]';

/**
 * The public form of an event's data: its credential fields (if its type has any) replaced by {@link REDACTED},
 * so the shape stays that of the type. Null when the type carries no credentials: publish it as recorded.
 */
export function withoutCredentials(type: string, data: JsonObject): JsonObject | null {
  const fields = (CREDENTIAL_FIELDS as Record<string, readonly string[] | undefined>)[type];
  if (!fields) return null;
  const publicData: JsonObject = { ...data };
  for (const field of fields) if (field in publicData) publicData[field] = REDACTED;
  return publicData;
}
