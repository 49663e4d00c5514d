import { createHash, createSecretKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { UnauthorizedError } from '../../errors.js';
import type { AccessTokenVerifier } from '../../infra/http/auth.js';
import { ROLES, type UserRole } from '../../domain/identity/events.js';

export interface TokenSettings {
  secret: string;
  accessTtlSeconds: number;
  refreshTtlSeconds: number;
  issuer: string;
  audience: string;
}

export interface AccessClaims {
  userId: string;
  role: UserRole;
  sessionId: string;
  jti: string;
  expiresAt: Date;
}

/** HS256 only: the verifier pins it, so `alg: none` and RS/HS confusion are refused by construction. */
const ALGORITHM = 'HS256';

// jsonwebtoken turns a string secret into a key on every call (a third of a millisecond, on every request); a
// KeyObject made once costs nothing per call.
const keys = new Map<string, KeyObject>();
const keyFor = (secret: string): KeyObject => {
  let key = keys.get(secret);
  if (!key) keys.set(secret, (key = createSecretKey(Buffer.from(secret, 'utf8'))));
  return key;
};

export function issueAccessToken(
  settings: TokenSettings,
  subject: { userId: string; role: UserRole; sessionId: string },
  now: Date,
  jti: string,
): string {
  const iat = Math.floor(now.getTime() / 1000);
  return jwt.sign(
    {
      sub: subject.userId,
      role: subject.role,
      sid: subject.sessionId,
      jti,
      iat,
      exp: iat + settings.accessTtlSeconds,
    },
    keyFor(settings.secret),
    { algorithm: ALGORITHM, issuer: settings.issuer, audience: settings.audience },
  );
}

export function verifyAccessToken(
  settings: TokenSettings,
  token: string,
  now: Date = new Date(),
): AccessClaims {
  let payload: jwt.JwtPayload;
  try {
    const decoded = jwt.verify(token, keyFor(settings.secret), {
      algorithms: [ALGORITHM],
      issuer: settings.issuer,
      audience: settings.audience,
      clockTimestamp: Math.floor(now.getTime() / 1000),
    });
    if (typeof decoded === 'string') throw new Error('payload is not an object');
    payload = decoded;
  } catch (error) {
    const expired = (error as Error).name === 'TokenExpiredError';
    throw new UnauthorizedError(expired ? 'the access token has expired' : 'the access token is not valid', {
      cause: error,
    });
  }
  const { sub, role, sid, jti, exp, iat } = payload as Record<string, unknown>;
  if (
    typeof sub !== 'string' ||
    typeof sid !== 'string' ||
    typeof jti !== 'string' ||
    typeof exp !== 'number' ||
    typeof iat !== 'number' ||
    !(ROLES as readonly unknown[]).includes(role)
  )
    throw new UnauthorizedError('the access token is missing claims');
  return { userId: sub, role: role as UserRole, sessionId: sid, jti, expiresAt: new Date(exp * 1000) };
}

/**
 * The bearer middleware's token check, with the settings and clock it needs bound in. A token it has verified is
 * remembered by its exact text (signature included, so no other text can hit the entry) until the token expires:
 * a client sends the same token with every request of its five minutes, and verifying it again each time (base64,
 * JSON, HMAC, the claim checks) was 4% of the service's main thread in a burst of submits. Only the check that
 * depends on the time, expiry, is made again on a hit; a refused token is never remembered. Access tokens carry
 * no revocation to re-check: a logout ends the session's refresh token, and its access token runs out.
 * `remember` bounds the entries; the oldest go first.
 */
export function accessTokenVerifier(
  settings: TokenSettings,
  clock: () => Date,
  remember = 10000,
): AccessTokenVerifier {
  // The expiry is kept apart from the (frozen) claims handed out: nothing done to their Date can stretch it.
  const verified = new Map<string, { claims: Readonly<AccessClaims>; expiresAtMs: number }>();
  return (token) => {
    const now = clock();
    const known = verified.get(token);
    // jsonwebtoken refuses a token from its `exp` second on; expiresAt is that second, so this is the same test.
    // (Our tokens carry no `nbf`, the one other check that depends on the time.)
    if (known && now.getTime() < known.expiresAtMs) return known.claims;
    verified.delete(token);
    const claims = Object.freeze(verifyAccessToken(settings, token, now));
    if (verified.size >= remember) verified.delete(verified.keys().next().value!);
    verified.set(token, { claims, expiresAtMs: claims.expiresAt.getTime() });
    return claims;
  };
}

export const hashToken = (token: string): string => createHash('sha256').update(token, 'utf8').digest('hex');

/**
 * Refresh tokens are opaque to clients: `<session id>.<256 random bits>`. The session id lets the server read
 * the session's stream directly (no read-model lag between logout and a refused refresh); the random part is
 * the secret, and only the SHA-256 of the whole token is stored.
 */
export function newRefreshToken(sessionId: string): { token: string; hash: string } {
  const token = `${sessionId}.${randomBytes(32).toString('base64url')}`;
  return { token, hash: hashToken(token) };
}

const REFRESH_TOKEN_PATTERN = /^([0-9a-f-]{36})\.([A-Za-z0-9_-]{43})$/;

/** Accepts `Bearer <token>` (the seed's shape) or the bare token. */
export function parseRefreshToken(presented: string): { sessionId: string; hash: string } {
  const token = presented.replace(/^Bearer\s+/i, '').trim();
  const match = REFRESH_TOKEN_PATTERN.exec(token);
  if (!match) throw new UnauthorizedError('the refresh token is not valid');
  return { sessionId: match[1]!, hash: hashToken(token) };
}

export const sameHash = (a: string, b: string): boolean =>
  a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));
