import { createHash } from 'node:crypto';
import { ConflictError, NotFoundError } from '../../errors.js';
import type { Decider } from '../decider.js';
import type { AccountEvent, RoleGranted, UserForgotten, UserRegistered, UserRole } from './events.js';

/** The live account of one email's stream, if there is one, and the users of it that were forgotten. */
export interface Account {
  exists: boolean;
  userId: string | null;
  /** As recorded: sealed with the user's data key, or in clear for accounts registered before that. */
  storedEmail: string | null;
  passwordHash: string | null;
  role: UserRole;
  registeredAt: string | null;
  forgottenUserIds: readonly string[];
}

const noAccount = {
  exists: false,
  userId: null,
  storedEmail: null,
  passwordHash: null,
  role: 'user',
  registeredAt: null,
} as const;

export const account: Decider<Account, AccountEvent> = {
  initialState: { ...noAccount, forgottenUserIds: [] },
  evolve: (state, event) => {
    switch (event.type) {
      case 'UserRegistered':
        return {
          ...state,
          exists: true,
          userId: event.data.userId,
          storedEmail: event.data.email,
          passwordHash: event.data.passwordHash,
          role: event.data.role,
          registeredAt: event.data.registeredAt,
        };
      case 'RoleGranted':
        return { ...state, role: event.data.role };
      case 'UserForgotten':
        // The stream is free again: the same email may register anew, as a new user.
        return { ...noAccount, forgottenUserIds: [...state.forgottenUserIds, event.data.userId] };
      default:
        return state;
    }
  },
};

/** Trimmed and lower-cased: `Ann@Example.com ` and `ann@example.com` are one account. */
export const normaliseEmail = (email: string): string => email.trim().toLowerCase();

/**
 * Keyed by a hash so the email itself never appears in stream ids, URLs or Kafka keys: `emailHash` is the keyed hash
 * of the normalised email (PersonalData.emailHash), so the ids cannot be matched against guessed emails either.
 */
export const accountStreamId = (emailHash: string): string => `account-${emailHash}`;
export const loginAttemptsStreamId = (emailHash: string): string => `loginAttempts-${emailHash}`;

/**
 * Where accounts registered before migration 0015 live: the plain SHA-256 of the normalised email. Read (login,
 * register's uniqueness check, grants, forgetting), never used for a new account.
 */
export const legacyAccountStreamId = (email: string): string =>
  `account-${createHash('sha256').update(normaliseEmail(email)).digest('hex')}`;

export interface RegisterUser {
  userId: string;
  /** Already sealed with the new user's data key. */
  sealedEmail: string;
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
        email: command.sealedEmail,
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

export interface ForgetUser {
  userId: string;
  /** Who asked: the user themself or an admin; null from the command line. */
  by: string | null;
  now: Date;
}

/** Idempotent: forgetting a user already forgotten changes nothing (their key may still need destroying). */
export const forgetUser = (command: ForgetUser, state: Account): UserForgotten[] => {
  if (state.forgottenUserIds.includes(command.userId)) return [];
  if (!state.exists || state.userId !== command.userId) throw new NotFoundError('no such user');
  return [
    {
      type: 'UserForgotten',
      data: { userId: command.userId, forgottenAt: command.now.toISOString(), forgottenBy: command.by },
    },
  ];
};
