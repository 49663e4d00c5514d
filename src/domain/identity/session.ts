import { ConflictError, UnauthorizedError } from '../../errors.js';
import type { Decider } from '../decider.js';
import type { SessionEvent } from './events.js';
import { legacyAccountStreamId } from './account.js';

/** One login's token family. Only the SHA-256 of refresh tokens is ever kept. */
export interface Session {
  exists: boolean;
  sessionId: string | null;
  userId: string | null;
  /** The account's stream: where refresh finds the user's role, and whether they still exist. */
  accountStreamId: string | null;
  currentTokenHash: string | null;
  spentTokenHashes: string[];
  expiresAt: string | null;
  revoked: 'logout' | 'refresh_token_reuse' | null;
}

export const sessionStreamId = (sessionId: string): string => `session-${sessionId}`;

export const session: Decider<Session, SessionEvent> = {
  initialState: {
    exists: false,
    sessionId: null,
    userId: null,
    accountStreamId: null,
    currentTokenHash: null,
    spentTokenHashes: [],
    expiresAt: null,
    revoked: null,
  },
  evolve: (state, event) => {
    switch (event.type) {
      case 'SessionStarted':
        return {
          ...state,
          exists: true,
          sessionId: event.data.sessionId,
          userId: event.data.userId,
          accountStreamId:
            event.data.accountStreamId ??
            (event.data.email !== undefined ? legacyAccountStreamId(event.data.email) : null),
          currentTokenHash: event.data.refreshTokenHash,
          expiresAt: event.data.expiresAt,
        };
      case 'RefreshTokenRotated':
        return {
          ...state,
          currentTokenHash: event.data.refreshTokenHash,
          spentTokenHashes: [...state.spentTokenHashes, event.data.previousTokenHash],
          expiresAt: event.data.expiresAt,
        };
      case 'SessionRevoked':
        return { ...state, revoked: event.data.reason };
      default:
        return state;
    }
  },
};

export interface StartSession {
  sessionId: string;
  userId: string;
  accountStreamId: string;
  refreshTokenHash: string;
  expiresAt: Date;
  now: Date;
}

export const startSession = (command: StartSession, state: Session): SessionEvent[] => {
  if (state.exists) throw new ConflictError(`session ${command.sessionId} already exists`);
  return [
    {
      type: 'SessionStarted',
      data: {
        sessionId: command.sessionId,
        userId: command.userId,
        accountStreamId: command.accountStreamId,
        refreshTokenHash: command.refreshTokenHash,
        expiresAt: command.expiresAt.toISOString(),
        startedAt: command.now.toISOString(),
      },
    },
  ];
};

/**
 * A spent token shown again means two parties hold the family (RFC 9700, 4.14.2): whoever it is, the whole
 * session ends, and its newest token with it.
 */
const reuseDetected = (presentedTokenHash: string, state: Session, now: Date): SessionEvent[] => [
  {
    type: 'RefreshTokenReuseDetected',
    data: {
      sessionId: state.sessionId!,
      userId: state.userId!,
      presentedTokenHash,
      detectedAt: now.toISOString(),
    },
  },
  {
    type: 'SessionRevoked',
    data: {
      sessionId: state.sessionId!,
      userId: state.userId!,
      reason: 'refresh_token_reuse',
      revokedAt: now.toISOString(),
    },
  },
];

const invalidToken = () => new UnauthorizedError('the refresh token is not valid');

export interface RotateRefreshToken {
  presentedTokenHash: string;
  newTokenHash: string;
  newExpiresAt: Date;
  now: Date;
}

/** Returns RefreshTokenRotated on success, or the reuse events (which the caller answers with 401). */
export const rotateRefreshToken = (command: RotateRefreshToken, state: Session): SessionEvent[] => {
  if (!state.exists) throw invalidToken();
  const isCurrent = command.presentedTokenHash === state.currentTokenHash;
  const isSpent = state.spentTokenHashes.includes(command.presentedTokenHash);
  if (state.revoked) throw new UnauthorizedError('this session has ended');
  if (isSpent) return reuseDetected(command.presentedTokenHash, state, command.now);
  if (!isCurrent) throw invalidToken();
  if (command.now.getTime() >= Date.parse(state.expiresAt!))
    throw new UnauthorizedError('the refresh token has expired');
  return [
    {
      type: 'RefreshTokenRotated',
      data: {
        sessionId: state.sessionId!,
        previousTokenHash: command.presentedTokenHash,
        refreshTokenHash: command.newTokenHash,
        expiresAt: command.newExpiresAt.toISOString(),
        rotatedAt: command.now.toISOString(),
      },
    },
  ];
};

export interface EndSession {
  presentedTokenHash: string;
  now: Date;
}

export const endSession = (command: EndSession, state: Session): SessionEvent[] => {
  if (!state.exists) throw invalidToken();
  const isCurrent = command.presentedTokenHash === state.currentTokenHash;
  if (state.revoked === 'logout' && isCurrent) return []; // logging out twice is still logged out
  if (state.revoked) throw new UnauthorizedError('this session has ended');
  if (state.spentTokenHashes.includes(command.presentedTokenHash))
    return reuseDetected(command.presentedTokenHash, state, command.now);
  if (!isCurrent) throw invalidToken();
  return [
    {
      type: 'SessionRevoked',
      data: {
        sessionId: state.sessionId!,
        userId: state.userId!,
        reason: 'logout',
        revokedAt: command.now.toISOString(),
      },
    },
  ];
};

export const detectsReuse = (events: SessionEvent[]): boolean =>
  events.some((e) => e.type === 'RefreshTokenReuseDetected');
