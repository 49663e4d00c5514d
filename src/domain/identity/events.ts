import type { DomainEvent } from '../decider.js';

export const ROLES = ['user', 'auditor', 'admin'] as const;
export type UserRole = (typeof ROLES)[number];

/** Stream `account-<sha256(normalised email)>`: one per email, so "no stream" on register makes emails unique. */
export type UserRegistered = DomainEvent<
  'UserRegistered',
  { userId: string; email: string; passwordHash: string; role: UserRole; registeredAt: string }
>;
export type RoleGranted = DomainEvent<'RoleGranted', { userId: string; role: UserRole; grantedAt: string }>;
export type AccountEvent = UserRegistered | RoleGranted;

/** Stream `loginAttempts-<sha256(normalised email)>`: failed logins, for auditors and rate limits. */
export type LoginFailed = DomainEvent<
  'LoginFailed',
  { email: string; reason: 'unknown_email' | 'wrong_password'; clientAddress: string; failedAt: string }
>;

/** Stream `session-<sessionId>`: one login, its chain of refresh tokens (a token family) and its end. */
export type SessionStarted = DomainEvent<
  'SessionStarted',
  {
    sessionId: string;
    userId: string;
    email: string;
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
