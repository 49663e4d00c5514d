import type { DomainEvent } from '../decider.js';

export const ROLES = ['user', 'auditor', 'admin'] as const;
export type UserRole = (typeof ROLES)[number];

/**
 * Stream `account-<keyed hash of the normalised email>`: one per email, so an account stream with no live account
 * in it on register makes emails unique. Accounts registered before personal data was sealed live in
 * `account-<sha256 of the email>` (see `legacyAccountStreamId`).
 */
export type UserRegistered = DomainEvent<
  'UserRegistered',
  {
    userId: string;
    /**
     * Sealed with the user's own data key (`pd1.…`, src/infra/secrets/personalData.ts), so forgetting the user
     * makes it unreadable. In clear in events written before migration 0015.
     */
    email: string;
    passwordHash: string;
    role: UserRole;
    registeredAt: string;
  }
>;
export type RoleGranted = DomainEvent<'RoleGranted', { userId: string; role: UserRole; grantedAt: string }>;
/**
 * The user asked to be forgotten (or an admin did it): their data key is destroyed, so every sealed copy of their
 * personal data is unreadable from now on. The stream may hold a new registration of the same email after it.
 */
export type UserForgotten = DomainEvent<
  'UserForgotten',
  { userId: string; forgottenAt: string; forgottenBy: string | null }
>;
export type AccountEvent = UserRegistered | RoleGranted | UserForgotten;

/**
 * Stream `loginAttempts-<keyed hash of the normalised email>`: failed logins, for auditors and rate limits. The
 * stream id says which email; events written before migration 0015 also carry it in clear.
 */
export type LoginFailed = DomainEvent<
  'LoginFailed',
  { email?: string; reason: 'unknown_email' | 'wrong_password'; clientAddress: string; failedAt: string }
>;

/** Stream `session-<sessionId>`: one login, its chain of refresh tokens (a token family) and its end. */
export type SessionStarted = DomainEvent<
  'SessionStarted',
  {
    sessionId: string;
    userId: string;
    /** The stream of the account that logged in, which refresh reads for the user's role and existence. */
    accountStreamId?: string;
    /** Events written before migration 0015 name the account by its email in clear instead. */
    email?: string;
    refreshTokenHash: string;
    expiresAt: string;
    startedAt: string;
  }
>;
export type RefreshTokenRotated = DomainEvent<
  'RefreshTokenRotated',
  {
    sessionId: string;
    previousTokenHash: string;
    refreshTokenHash: string;
    expiresAt: string;
    rotatedAt: string;
  }
>;
export type RefreshTokenReuseDetected = DomainEvent<
  'RefreshTokenReuseDetected',
  { sessionId: string; userId: string; presentedTokenHash: string; detectedAt: string }
>;
export type SessionRevoked = DomainEvent<
  'SessionRevoked',
  { sessionId: string; userId: string; reason: 'logout' | 'refresh_token_reuse'; revokedAt: string }
>;
export type SessionEvent = SessionStarted | RefreshTokenRotated | RefreshTokenReuseDetected | SessionRevoked;
