import type { Request } from 'express';
import { ForbiddenError, UnauthorizedError } from '../../errors.js';

/**
 * What a verified access token says about the caller. Declared here, not taken from identity, so HTTP
 * plumbing depends on no feature; identity's own claims type has this shape, which the compiler checks
 * where its verifier is handed in.
 */
export interface CallerClaims {
  userId: string;
  role: string;
  sessionId: string;
  jti: string;
  expiresAt: Date;
}

/** The token check the bearer middleware is given: claims for a valid token, else it throws UnauthorizedError. */
export type AccessTokenVerifier = (token: string) => CallerClaims;

declare module 'express-serve-static-core' {
  interface Request {
    /** Set by the bearer-token check on routes with `auth: 'bearer'`. */
    auth?: CallerClaims;
  }
}

/** Verifies `Authorization: Bearer <jwt>`; the Api calls it for every operation marked `auth: 'bearer'`. */
export function bearerAuthenticator(verify: AccessTokenVerifier): (req: Request) => void {
  return (req: Request): void => {
    const header = req.get('authorization');
    const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!match) throw new UnauthorizedError('send an access token as "Authorization: Bearer <token>"');
    req.auth = verify(match[1]!);
  };
}

/** The caller's claims; a 401 rather than a crash if a route forgot `auth: 'bearer'`. */
export const claimsOf = (req: { auth?: CallerClaims }): CallerClaims => {
  if (!req.auth) throw new UnauthorizedError();
  return req.auth;
};

/** The caller's claims if they hold one of `roles`; 401 without claims, 403 with another role. */
export const requireRole = (req: { auth?: CallerClaims }, ...roles: string[]): CallerClaims => {
  const claims = claimsOf(req);
  if (!roles.includes(claims.role)) throw new ForbiddenError(`this needs the role ${roles.join(' or ')}`);
  return claims;
};

/** Auditors and admins read every owner's tasks; anyone else only their own. */
export const seesAllTasks = (claims: CallerClaims): boolean =>
  claims.role === 'auditor' || claims.role === 'admin';
