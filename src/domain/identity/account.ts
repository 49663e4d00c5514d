import { createHash } from 'node:crypto';
import { ConflictError, NotFoundError } from '../../errors.js';
import type { Decider } from '../decider.js';
import type { AccountEvent, RoleGranted, UserRegistered, UserRole } from './events.js';

export interface Account {
  exists: boolean;
  userId: string | null;
  email: string | null;
  passwordHash: string | null;
  role: UserRole;
}

export const account: Decider<Account, AccountEvent> = {
  initialState: { exists: false, userId: null, email: null, passwordHash: null, role: 'user' },
  evolve: (state, event) => {
    switch (event.type) {
      case 'UserRegistered':
        return {
          exists: true,
          userId: event.data.userId,
          email: event.data.email,
          passwordHash: event.data.passwordHash,
          role: event.data.role,
        };
      case 'RoleGranted':
        return { ...state, role: event.data.role };
      default:
        return state;
    }
  },
};

/** Trimmed and lower-cased: `Ann@Example.com ` and `ann@example.com` are one account. */
export const normaliseEmail = (email: string): string => email.trim().toLowerCase();

const emailKey = (email: string) => createHash('sha256').update(normaliseEmail(email)).digest('hex');
/** Keyed by a hash so the email itself never appears in stream ids, URLs or Kafka keys. */
export const accountStreamId = (email: string): string => `account-${emailKey(email)}`;
export const loginAttemptsStreamId = (email: string): string => `loginAttempts-${emailKey(email)}`;

export interface RegisterUser {
  userId: string;
  email: string;
  passwordHash: string;
  now: Date;
}

export const registerUser = (command: RegisterUser, state: Account): UserRegistered[] => {
  if (state.exists) throw new ConflictError('an account with this email already exists');
  return [
    {
      type: 'UserRegistered',
      data: {
        userId: command.userId,
        email: normaliseEmail(command.email),
        passwordHash: command.passwordHash,
        role: 'user',
        registeredAt: command.now.toISOString(),
      },
    },
  ];
};

export interface GrantRole {
  role: UserRole;
  now: Date;
}

export const grantRole = (command: GrantRole, state: Account): RoleGranted[] => {
  if (!state.exists) throw new NotFoundError('no account with this email');
  if (state.role === command.role) return []; // already so: granting again changes nothing
  return [
    {
      type: 'RoleGranted',
      data: { userId: state.userId!, role: command.role, grantedAt: command.now.toISOString() },
    },
  ];
};
