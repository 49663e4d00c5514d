import { expect } from 'chai';
import { ConflictError, NotFoundError, UnauthorizedError } from '../../src/errors.js';
import { createHash } from 'node:crypto';
import {
  account,
  accountStreamId,
  forgetUser,
  grantRole,
  legacyAccountStreamId,
  normaliseEmail,
  registerUser,
} from '../../src/domain/identity/account.js';
import { endSession, rotateRefreshToken, session, startSession } from '../../src/domain/identity/session.js';
import type { AccountEvent, SessionEvent } from '../../src/domain/identity/events.js';
import { given } from '../support/decider.js';
import { foldEvents } from '../../src/domain/decider.js';

const now = new Date('2026-03-01T10:00:00.000Z');
const later = new Date('2026-03-01T10:05:00.000Z');
const weekLater = new Date('2026-03-08T10:00:00.000Z');

const registered: AccountEvent = {
  type: 'UserRegistered',
  data: {
    userId: 'u1',
    email: 'pd1.sealed-for-u1',
    passwordHash: '$2b$hash',
    role: 'user',
    registeredAt: now.toISOString(),
  },
};
const forgotten: AccountEvent = {
  type: 'UserForgotten',
  data: { userId: 'u1', forgottenAt: later.toISOString(), forgottenBy: 'u1' },
};

describe('account decider', () => {
  it('registers a new user with the user role and their sealed email', () => {
    given(account, [])
      .when((s) =>
        registerUser({ userId: 'u1', sealedEmail: 'pd1.sealed-for-u1', passwordHash: '$2b$hash', now }, s),
      )
      .then([registered]);
  });

  it('refuses an email that is already registered', () => {
    given(account, [registered])
      .when((s) => registerUser({ userId: 'u2', sealedEmail: 'pd1.x', passwordHash: 'x', now }, s))
      .thenThrows(ConflictError);
  });

  it('keys the account stream by the keyed email hash it is given; the legacy stream by a plain hash of the normalised email', () => {
    expect(accountStreamId('ab12')).to.equal('account-ab12');
    const sha = createHash('sha256').update('ann@example.com').digest('hex');
    expect(legacyAccountStreamId(' ANN@example.com')).to.equal(`account-${sha}`);
    expect(normaliseEmail(' A@B.C ')).to.equal('a@b.c');
  });

  it('forgets the live user of the stream once; forgetting them again changes nothing', () => {
    given(account, [registered])
      .when((s) => forgetUser({ userId: 'u1', by: 'u1', now: later }, s))
      .then([forgotten]);
    given(account, [registered, forgotten])
      .when((s) => forgetUser({ userId: 'u1', by: 'u1', now: later }, s))
      .then([]);
  });

  it('cannot forget a user the stream does not hold', () => {
    given(account, [registered])
      .when((s) => forgetUser({ userId: 'u2', by: null, now }, s))
      .thenThrows(NotFoundError);
    given(account, [])
      .when((s) => forgetUser({ userId: 'u1', by: null, now }, s))
      .thenThrows(NotFoundError);
  });

  it('lets the email register again, as a new user, once its user is forgotten', () => {
    given(account, [registered, forgotten])
      .when((s) =>
        registerUser({ userId: 'u2', sealedEmail: 'pd1.sealed-for-u2', passwordHash: 'y', now }, s),
      )
      .then([
        {
          type: 'UserRegistered',
          data: {
            userId: 'u2',
            email: 'pd1.sealed-for-u2',
            passwordHash: 'y',
            role: 'user',
            registeredAt: now.toISOString(),
          },
        },
      ]);
    given(account, [registered, forgotten])
      .when((s) => grantRole({ role: 'admin', now }, s))
      .thenThrows(NotFoundError);
  });

  it('grants a role once; granting it again changes nothing', () => {
    const granted: AccountEvent = {
      type: 'RoleGranted',
      data: { userId: 'u1', role: 'auditor', grantedAt: now.toISOString() },
    };
    given(account, [registered])
      .when((s) => grantRole({ role: 'auditor', now }, s))
      .then([granted]);
    given(account, [registered, granted])
      .when((s) => grantRole({ role: 'auditor', now }, s))
      .then([]);
  });

  it('cannot grant a role to an account that does not exist', () => {
    given(account, [])
      .when((s) => grantRole({ role: 'admin', now }, s))
      .thenThrows(NotFoundError);
  });
});

describe('session decider', () => {
  const started: SessionEvent = {
    type: 'SessionStarted',
    data: {
      sessionId: 's1',
      userId: 'u1',
      accountStreamId: 'account-ab12',
      refreshTokenHash: 'h1',
      expiresAt: weekLater.toISOString(),
      startedAt: now.toISOString(),
    },
  };
  const rotated: SessionEvent = {
    type: 'RefreshTokenRotated',
    data: {
      sessionId: 's1',
      previousTokenHash: 'h1',
      refreshTokenHash: 'h2',
      expiresAt: weekLater.toISOString(),
      rotatedAt: later.toISOString(),
    },
  };

  it('starts a session with its first refresh token', () => {
    given(session, [])
      .when((s) =>
        startSession(
          {
            sessionId: 's1',
            userId: 'u1',
            accountStreamId: 'account-ab12',
            refreshTokenHash: 'h1',
            expiresAt: weekLater,
            now,
          },
          s,
        ),
      )
      .then([started]);
  });

  it("names the account's stream; a session started before emails were sealed names it by the email in clear", () => {
    expect(foldEvents(session, [started]).accountStreamId).to.equal('account-ab12');
    const legacy: SessionEvent = {
      type: 'SessionStarted',
      data: {
        sessionId: 's1',
        userId: 'u1',
        email: 'ann@example.com',
        refreshTokenHash: 'h1',
        expiresAt: weekLater.toISOString(),
        startedAt: now.toISOString(),
      },
    };
    expect(foldEvents(session, [legacy]).accountStreamId).to.equal(legacyAccountStreamId('ann@example.com'));
  });

  it('rotates the current refresh token, spending it', () => {
    given(session, [started])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'h1', newTokenHash: 'h2', newExpiresAt: weekLater, now: later },
          s,
        ),
      )
      .then([rotated]);
  });

  it('treats a spent token shown again as reuse: the whole session is revoked', () => {
    given(session, [started, rotated])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'h1', newTokenHash: 'h3', newExpiresAt: weekLater, now: later },
          s,
        ),
      )
      .then([
        {
          type: 'RefreshTokenReuseDetected',
          data: { sessionId: 's1', userId: 'u1', presentedTokenHash: 'h1', detectedAt: later.toISOString() },
        },
        {
          type: 'SessionRevoked',
          data: {
            sessionId: 's1',
            userId: 'u1',
            reason: 'refresh_token_reuse',
            revokedAt: later.toISOString(),
          },
        },
      ]);
  });

  it('refuses the newest token of a revoked session', () => {
    const revoked: SessionEvent = {
      type: 'SessionRevoked',
      data: { sessionId: 's1', userId: 'u1', reason: 'refresh_token_reuse', revokedAt: later.toISOString() },
    };
    given(session, [started, rotated, revoked])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'h2', newTokenHash: 'h3', newExpiresAt: weekLater, now: later },
          s,
        ),
      )
      .thenThrows(UnauthorizedError, 'ended');
  });

  it('refuses an expired refresh token', () => {
    given(session, [started])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'h1', newTokenHash: 'h2', newExpiresAt: weekLater, now: weekLater },
          s,
        ),
      )
      .thenThrows(UnauthorizedError, 'expired');
  });

  it('refuses a token the session never issued, without revoking it', () => {
    given(session, [started])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'forged', newTokenHash: 'h2', newExpiresAt: weekLater, now: later },
          s,
        ),
      )
      .thenThrows(UnauthorizedError);
  });

  it('logs out with the current token; logging out again is a no-op', () => {
    const loggedOut: SessionEvent = {
      type: 'SessionRevoked',
      data: { sessionId: 's1', userId: 'u1', reason: 'logout', revokedAt: later.toISOString() },
    };
    given(session, [started])
      .when((s) => endSession({ presentedTokenHash: 'h1', now: later }, s))
      .then([loggedOut]);
    given(session, [started, loggedOut])
      .when((s) => endSession({ presentedTokenHash: 'h1', now: later }, s))
      .then([]);
  });

  it('refuses a refresh after logout', () => {
    const loggedOut: SessionEvent = {
      type: 'SessionRevoked',
      data: { sessionId: 's1', userId: 'u1', reason: 'logout', revokedAt: later.toISOString() },
    };
    given(session, [started, loggedOut])
      .when((s) =>
        rotateRefreshToken(
          { presentedTokenHash: 'h1', newTokenHash: 'h2', newExpiresAt: weekLater, now: later },
          s,
        ),
      )
      .thenThrows(UnauthorizedError);
  });
});
