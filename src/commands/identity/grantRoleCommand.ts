import { randomUUID } from 'node:crypto';
import type { EventStore, Position } from '../../infra/eventStore/eventStore.js';
import { ValidationError } from '../../errors.js';
import { handleCommand } from '../commandHandler.js';
import { account, accountStreamId, grantRole } from '../../domain/identity/account.js';
import { ROLES, type UserRole } from '../../domain/identity/events.js';

/** `task-manager users grant-role <email> <role>`: an event in the account's stream, like any other command. */
export async function grantRoleByEmail(
  store: EventStore,
  email: string,
  role: string,
  clock: () => Date = () => new Date(),
): Promise<{ changed: boolean; position: Position | null }> {
  if (!(ROLES as readonly string[]).includes(role))
    throw new ValidationError([{ path: '/role', message: `must be one of ${ROLES.join(', ')}` }]);
  const result = await handleCommand(
    store,
    accountStreamId(email),
    account,
    (state) => grantRole({ role: role as UserRole, now: clock() }, state),
    { now: clock, newId: randomUUID, correlationId: randomUUID(), causationId: null, userId: null },
  );
  return { changed: result.events.length > 0, position: result.position };
}
