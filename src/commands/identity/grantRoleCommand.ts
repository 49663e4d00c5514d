import { randomUUID } from 'node:crypto';
import type { EventStore, Position } from '../../infra/eventStore/eventStore.js';
import type { PersonalData } from '../../infra/secrets/personalData.js';
import { ValidationError } from '../../errors.js';
import { handleCommand } from '../commandHandler.js';
import { account, grantRole } from '../../domain/identity/account.js';
import { ROLES, type UserRole } from '../../domain/identity/events.js';
import { findAccount } from './accounts.js';

/** `task-manager users grant-role <email> <role>`: an event in the account's stream, like any other command. */
export async function grantRoleByEmail(
  deps: { store: EventStore; personalData: PersonalData },
  email: string,
  role: string,
  clock: () => Date = () => new Date(),
): Promise<{ changed: boolean; position: Position | null }> {
  if (!(ROLES as readonly string[]).includes(role))
    throw new ValidationError([{ path: '/role', message: `must be one of ${ROLES.join(', ')}` }]);
  const { streamId } = await findAccount(deps.store, deps.personalData, email);
  const result = await handleCommand(
    deps.store,
    streamId,
    account,
    (state) => grantRole({ role: role as UserRole, now: clock() }, state),
    { now: clock, newId: randomUUID, correlationId: randomUUID(), causationId: null, userId: null },
  );
  return { changed: result.events.length > 0, position: result.position };
}
