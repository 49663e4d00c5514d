import bcrypt from 'bcryptjs';
import type { Request, Response } from 'express';
import {
  ConflictError,
  ForbiddenError,
  TooManyRequestsError,
  UnauthorizedError,
  ValidationError,
} from '../../errors.js';
import { uuidIdParams, type Api, type ApiHandler, type ApiOperation } from '../../infra/http/api.js';
import { bearerAuthenticator } from '../../infra/http/auth.js';
import type { JSONSchema } from '../../infra/jsonSchema.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import type { RateLimiter } from '../../infra/rateLimit/rateLimiter.js';
import type { Logger } from '../../infra/logger.js';
import { handleCommand, type CommandContext } from '../commandHandler.js';
import { foldEvents } from '../../domain/decider.js';
import {
  account,
  accountStreamId,
  loginAttemptsStreamId,
  normaliseEmail,
  registerUser,
} from '../../domain/identity/account.js';
import { isSealed, type PersonalData } from '../../infra/secrets/personalData.js';
import type { Pool } from '../../infra/db/pool.js';
import { claimsOf } from '../../infra/http/auth.js';
import { NotFoundError } from '../../errors.js';
import { accountStreamOfUser, findAccount, forgetAccount } from './accounts.js';
import {
  detectsReuse,
  endSession,
  rotateRefreshToken,
  session,
  sessionStreamId,
  startSession,
} from '../../domain/identity/session.js';
import {
  accessTokenVerifier,
  issueAccessToken,
  newRefreshToken,
  parseRefreshToken,
  type TokenSettings,
} from './tokens.js';
import type { LoginFailed, UserRole } from '../../domain/identity/events.js';

export interface IdentityDeps {
  store: EventStore;
  /** Seals emails per person and gives the keyed email hash accounts are found by. */
  personalData: PersonalData;
  /** The users read model, for a user's account stream (GET and DELETE /users/{id}). */
  pool: Pool;
  tokens: TokenSettings;
  auth: {
    bcryptCost: number;
    maxFailedLoginsPerEmail: number;
    maxFailedLoginsPerAddress: number;
    failedLoginWindowSeconds: number;
  };
  rateLimiter: RateLimiter;
  clock: () => Date;
  newId: () => string;
  logger: Logger;
}

/** bcrypt reads at most 72 bytes; longer passwords would be silently truncated, so they are refused. */
const MAX_PASSWORD_BYTES = 72;

const credentialsSchema: JSONSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['email', 'password'],
  properties: {
    email: {
      type: 'string',
      maxLength: 254,
      // Surrounding white space is allowed here because the address is trimmed (and lower-cased) before use.
      pattern: '^\\s*[^\\s@]+@[^\\s@]+\\.[^\\s@]+\\s*$',
      description: 'Trimmed and lower-cased before use.',
      examples: ['ann@example.com'],
    },
    password: { type: 'string', minLength: 8, maxLength: 1024, examples: ['correct horse battery staple'] },
  },
  examples: [{ email: 'ann@example.com', password: 'correct horse battery staple' }],
};

const refreshTokenBodySchema: JSONSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['refresh_token'],
  properties: {
    refresh_token: {
      type: 'string',
      minLength: 1,
      maxLength: 512,
      description: "The refresh token, as `Bearer <token>` (the seed's shape) or bare.",
    },
  },
  examples: [
    {
      refresh_token:
        'Bearer 00000000-0000-4000-8000-000000000000.REPLACE_WITH_YOUR_REFRESH_TOKEN_00000000000',
    },
  ],
};

const tokenPairSchema: JSONSchema = {
  type: 'object',
  required: ['access_token', 'refresh_token', 'token_type', 'expires_in'],
  properties: {
    access_token: {
      type: 'string',
      description: 'A JWT (HS256) to send as `Authorization: Bearer <token>`.',
    },
    refresh_token: { type: 'string', description: 'Opaque; exchange it at /refresh before it expires.' },
    token_type: { const: 'Bearer' },
    expires_in: { type: 'integer', description: 'Seconds the access token lives.' },
  },
};

const tokenPairExample = {
  access_token: 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...',
  refresh_token: '3f0e7c1a-5b7d-4c35-9a51-1f0d2c9e8a11.mE4rX...',
  token_type: 'Bearer',
  expires_in: 300,
};

const problem = (description: string) => ({ description });

interface Credentials {
  email: string;
  password: string;
}
interface RefreshTokenBody {
  refresh_token: string;
}

/** An identity operation as registered, so the Go service's routes can serve the same one at its own path. */
export interface IdentityRoute<TBody> {
  op: ApiOperation;
  handler: ApiHandler<TBody>;
}

export interface IdentityRoutes {
  register: IdentityRoute<Credentials>;
  login: IdentityRoute<Credentials>;
  refresh: IdentityRoute<RefreshTokenBody>;
  logout: IdentityRoute<RefreshTokenBody>;
  /** What POST /logout does before it answers: ends the refresh token's session; the log position, if any. */
  endSessionOf(req: Request): Promise<string | null>;
}

export function registerIdentityRoutes(api: Api, deps: IdentityDeps): IdentityRoutes {
  const { store, personalData, tokens, rateLimiter, clock, newId, logger } = deps;
  const credentials = api.addSchema('Credentials', credentialsSchema);
  const refreshBody = api.addSchema('RefreshTokenBody', refreshTokenBodySchema);
  const tokenPair = api.addSchema('TokenPair', tokenPairSchema);
  // One for all logouts, so a token verified once is not verified again (accessTokenVerifier remembers it).
  const authenticateLogout = bearerAuthenticator(accessTokenVerifier(tokens, clock));
  // Compared against when the email is unknown, so both failures cost one bcrypt comparison at the same cost.
  const dummyHash = bcrypt.hashSync('no account has this password', deps.auth.bcryptCost);

  // The request id correlates every event a request causes with its log lines.
  const context = (req: { id?: string }, userId: string | null = null): CommandContext => ({
    now: clock,
    newId,
    correlationId: req.id ?? newId(),
    causationId: null,
    userId,
  });

  const route = <TBody>(op: ApiOperation, handler: ApiHandler<TBody>): IdentityRoute<TBody> => {
    api.route<TBody>(op, handler);
    return { op, handler };
  };

  const issueTokens = (
    res: Response,
    subject: { userId: string; role: UserRole; sessionId: string },
    refreshToken: string,
  ) => {
    const accessToken = issueAccessToken(tokens, subject, clock(), newId());
    res.set('Cache-Control', 'no-store');
    res.status(200).json({
      access_token: accessToken,
      refresh_token: refreshToken,
      token_type: 'Bearer',
      expires_in: tokens.accessTtlSeconds,
    });
  };

  const register = route<Credentials>(
    {
      method: 'post',
      path: '/register',
      operationId: 'register',
      summary: 'Register a user',
      tags: ['identity'],
      body: credentials,
      responses: {
        201: {
          description: 'Registered',
          schema: {
            type: 'object',
            required: ['id', 'email'],
            properties: { id: { type: 'string', format: 'uuid' }, email: { type: 'string' } },
          },
          example: { id: '5b1f3c2e-8d5a-4f7e-9c61-0a2b3c4d5e6f', email: 'ann@example.com' },
        },
        400: problem('Invalid email or password (8 characters to 72 bytes)'),
        409: problem('The email is already registered'),
      },
    },
    async (req, res) => {
      const email = normaliseEmail(req.body.email);
      if (Buffer.byteLength(req.body.password, 'utf8') > MAX_PASSWORD_BYTES)
        throw new ValidationError([
          { path: '/body/password', message: `must be at most ${MAX_PASSWORD_BYTES} bytes` },
        ]);
      // An account registered before emails were sealed lives in the legacy stream: it takes the email too.
      const existing = await findAccount(store, personalData, email);
      if (existing.state.exists) throw new ConflictError('an account with this email already exists');
      const passwordHash = await bcrypt.hash(req.body.password, deps.auth.bcryptCost);
      const userId = newId();
      const sealedEmail = await personalData.seal(userId, email);
      const result = await handleCommand(
        store,
        existing.streamId,
        account,
        (state) => registerUser({ userId, sealedEmail, passwordHash, now: clock() }, state),
        context(req, userId),
        // A conflict here means someone else registered this email at the same moment: that is the answer.
        { maxAttempts: 2 },
      ).catch(async (error) => {
        if (error instanceof ConflictError) {
          // Someone else's registration won, so this user never came to be: their fresh key sealed nothing kept.
          // Only then: after any other failure the append may have committed, and the key is the user's.
          await personalData.destroyKey(userId).catch(() => undefined);
          throw new ConflictError('an account with this email already exists');
        }
        throw error;
      });
      res.set('X-Position', result.position ?? '');
      res.status(201).json({ id: userId, email });
    },
  );

  const login = route<Credentials>(
    {
      method: 'post',
      path: '/login',
      operationId: 'login',
      summary: 'Log in: get an access token and a refresh token',
      tags: ['identity'],
      body: credentials,
      responses: {
        200: { description: 'Logged in', schema: tokenPair, example: tokenPairExample },
        400: problem('Malformed request'),
        401: problem('Wrong email or password (the same answer for both)'),
        429: problem('Too many failed logins for this email or from this address; see Retry-After'),
      },
    },
    async (req, res) => {
      const email = normaliseEmail(req.body.email);
      const clientAddress = req.ip ?? 'unknown';
      const { auth } = deps;
      const emailHash = personalData.emailHash(email);
      const emailKey = `login-failures:email:${accountStreamId(emailHash)}`;
      const addressKey = `login-failures:address:${clientAddress}`;
      // Each attempt is counted BEFORE the password is checked, and given back if it succeeds: checking first and
      // counting after would let a burst of parallel guesses all pass the check.
      const [byEmail, byAddress] = await Promise.all([
        rateLimiter.record(emailKey, auth.failedLoginWindowSeconds),
        rateLimiter.record(addressKey, auth.failedLoginWindowSeconds),
      ]);
      if (byEmail.count > auth.maxFailedLoginsPerEmail || byAddress.count > auth.maxFailedLoginsPerAddress)
        throw new TooManyRequestsError(
          Math.max(1, byEmail.resetInSeconds, byAddress.resetInSeconds),
          'too many failed logins; try again later',
        );

      // Read from the log, not a read model: a login right after register must not depend on projection lag.
      const { streamId: accountStream, state } = await findAccount(store, personalData, email);
      const passwordMatches = await bcrypt.compare(req.body.password, state.passwordHash ?? dummyHash);
      if (!state.exists || !passwordMatches) {
        const failed: LoginFailed = {
          type: 'LoginFailed',
          // No email: the stream's id (a keyed hash) says whose attempts these are.
          data: {
            reason: state.exists ? 'wrong_password' : 'unknown_email',
            clientAddress,
            failedAt: clock().toISOString(),
          },
        };
        const ctx = context(req, state.userId);
        await store
          .append(
            loginAttemptsStreamId(emailHash),
            [
              {
                eventId: newId(),
                type: failed.type,
                data: failed.data,
                metadata: {
                  correlationId: ctx.correlationId,
                  causationId: null,
                  userId: state.userId,
                  timestamp: failed.data.failedAt,
                },
              },
            ],
            { expectedRevision: 'any' },
          )
          .catch((error) => logger.warn({ err: error }, 'could not record a failed login'));
        throw new UnauthorizedError('wrong email or password');
      }

      await Promise.all([rateLimiter.release(emailKey), rateLimiter.release(addressKey)]);
      const sessionId = newId();
      const refresh = newRefreshToken(sessionId);
      await handleCommand(
        store,
        sessionStreamId(sessionId),
        session,
        (current) =>
          startSession(
            {
              sessionId,
              userId: state.userId!,
              accountStreamId: accountStream,
              refreshTokenHash: refresh.hash,
              expiresAt: new Date(clock().getTime() + deps.tokens.refreshTtlSeconds * 1000),
              now: clock(),
            },
            current,
          ),
        context(req, state.userId),
      );
      // A forget that landed while the password was being checked: no tokens for a user who is gone.
      const holder = foldEvents(account, await store.readStream(accountStream));
      if (!holder.exists || holder.userId !== state.userId)
        throw new UnauthorizedError('wrong email or password');
      issueTokens(res, { userId: state.userId!, role: state.role, sessionId }, refresh.token);
    },
  );

  const refresh = route<RefreshTokenBody>(
    {
      method: 'post',
      path: '/refresh',
      operationId: 'refresh',
      summary: 'Exchange a refresh token for a new pair; the old refresh token is spent',
      description:
        'Rotation: each refresh token works once. Presenting a spent one again revokes the whole session (reuse detection).',
      tags: ['identity'],
      body: refreshBody,
      responses: {
        200: { description: 'A new token pair', schema: tokenPair, example: tokenPairExample },
        400: problem('Malformed request'),
        401: problem('The refresh token is unknown, spent, expired or its session has ended'),
      },
    },
    async (req, res) => {
      const { sessionId, hash } = parseRefreshToken(req.body.refresh_token);
      const next = newRefreshToken(sessionId);
      const result = await handleCommand(
        store,
        sessionStreamId(sessionId),
        session,
        (state) =>
          rotateRefreshToken(
            {
              presentedTokenHash: hash,
              newTokenHash: next.hash,
              newExpiresAt: new Date(clock().getTime() + tokens.refreshTtlSeconds * 1000),
              now: clock(),
            },
            state,
          ),
        context(req),
        // Two refreshes racing with one token: the loser is told the token was just used, once, not retried.
        { maxAttempts: 1 },
      ).catch((error) => {
        if (error instanceof ConflictError) throw new UnauthorizedError('this refresh token was just used');
        throw error;
      });
      if (detectsReuse(result.events)) {
        logger.warn({ sessionId }, 'refresh token reuse detected; session revoked');
        throw new UnauthorizedError('this refresh token was already used; the session has been revoked');
      }
      const holder = foldEvents(account, await store.readStream(result.state.accountStreamId!));
      // The user was forgotten since the login: the session ends with them.
      if (!holder.exists || holder.userId !== result.state.userId)
        throw new UnauthorizedError('the account of this session no longer exists');
      issueTokens(res, { userId: result.state.userId!, role: holder.role, sessionId }, next.token);
    },
  );

  const endSessionOf = async (req: Request): Promise<string | null> => {
    const { sessionId, hash } = parseRefreshToken((req.body as RefreshTokenBody).refresh_token);
    // Logout needs no access token, but one that is sent must belong to the session's user.
    let caller: string | null = null;
    if (req.get('authorization')) {
      authenticateLogout(req);
      caller = req.auth!.userId;
    }
    const result = await handleCommand(
      store,
      sessionStreamId(sessionId),
      session,
      (state) => {
        // The token is checked first, so a 403 cannot be used to learn whose session an id is.
        const events = endSession({ presentedTokenHash: hash, now: clock() }, state);
        if (caller && state.userId !== caller)
          throw new ForbiddenError('that session belongs to another user');
        return events;
      },
      context(req, caller),
    );
    if (detectsReuse(result.events))
      throw new UnauthorizedError('this refresh token was already used; the session has been revoked');
    return result.position;
  };

  const logout = route<RefreshTokenBody>(
    {
      method: 'post',
      path: '/logout',
      operationId: 'logout',
      summary: "End the refresh token's session",
      description:
        'Other sessions of the user stay alive. Access tokens already issued keep working until they expire (at most 5 minutes).',
      tags: ['identity'],
      body: refreshBody,
      responses: {
        204: { description: 'Logged out' },
        400: problem('Malformed request'),
        401: problem('The refresh token is not valid'),
        403: problem('The access token sent belongs to another user than the refresh token'),
      },
    },
    async (req, res) => {
      const position = await endSessionOf(req);
      res.set('X-Position', position ?? '');
      res.status(204).end();
    },
  );

  api.route(
    {
      method: 'get',
      path: '/me',
      operationId: 'me',
      summary: 'Who the access token says you are',
      tags: ['identity'],
      auth: 'bearer',
      responses: {
        200: {
          description: "The token's subject",
          schema: {
            type: 'object',
            required: ['id', 'role', 'session_id', 'expires_at'],
            properties: {
              id: { type: 'string' },
              role: { enum: ['user', 'auditor', 'admin'] },
              session_id: { type: 'string' },
              expires_at: { type: 'string', format: 'date-time' },
            },
          },
        },
        401: problem('Missing, malformed, expired or wrongly signed access token'),
      },
    },
    (req, res) => {
      const claims = req.auth!;
      res.json({
        id: claims.userId,
        role: claims.role,
        session_id: claims.sessionId,
        expires_at: claims.expiresAt.toISOString(),
      });
    },
  );

  /**
   * A user's account stream and its state, for the user themself or an admin; 404 for anyone else, as for an unknown
   * id. The user's own session names their stream, so a user reads themself without waiting for the read model;
   * an admin finds others through it.
   */
  const userAccount = async (req: Request, userId: string) => {
    const claims = claimsOf(req);
    const self = claims.userId === userId;
    if (!self && claims.role !== 'admin') throw new NotFoundError('no such user');
    const streamId = self
      ? foldEvents(session, await store.readStream(sessionStreamId(claims.sessionId))).accountStreamId
      : await accountStreamOfUser(deps.pool, userId);
    if (!streamId) throw new NotFoundError('no such user');
    const state = foldEvents(account, await store.readStream(streamId));
    return { streamId, state, live: state.exists && state.userId === userId };
  };

  api.route(
    {
      method: 'get',
      path: '/users/:id',
      operationId: 'getUser',
      summary: 'A user, with their email: for the user themself or an admin',
      description:
        "The email is opened from the account's stream, where it is sealed with the user's own key; a forgotten user is 404.",
      tags: ['identity'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        200: {
          description: 'The user',
          schema: {
            type: 'object',
            required: ['id', 'email', 'role', 'created_at'],
            properties: {
              id: { type: 'string', format: 'uuid' },
              email: { type: 'string' },
              role: { enum: ['user', 'auditor', 'admin'] },
              created_at: { type: 'string', format: 'date-time' },
            },
          },
        },
        401: problem('Missing or bad access token'),
        404: problem('No such user, a forgotten one, or not yours to see'),
      },
    },
    async (req, res) => {
      const userId = String(req.params.id);
      const { state, live } = await userAccount(req, userId);
      const stored = live ? state.storedEmail : null;
      // Accounts registered before emails were sealed hold theirs in clear.
      const email = stored && (isSealed(stored) ? await personalData.open(userId, stored) : stored);
      if (!email) throw new NotFoundError('no such user');
      res.set('Cache-Control', 'no-store');
      res.json({ id: userId, email, role: state.role, created_at: state.registeredAt! });
    },
  );

  api.route(
    {
      method: 'delete',
      path: '/users/:id',
      operationId: 'forgetUser',
      summary: 'Forget a user: their personal data becomes unreadable everywhere, their history stays',
      description:
        "Appends UserForgotten and destroys the user's data key, so the email sealed in the log, on the bus and in exports can never be opened again; the hash chain still verifies. Their tasks stay, owned by the tombstoned id. Access tokens already issued keep working until they expire (at most 5 minutes); refresh fails at once. For the user themself or an admin; doing it again is a no-op.",
      tags: ['identity'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        204: {
          description: 'Forgotten (or already so)',
          headers: {
            'X-Position': { description: 'Log position of UserForgotten', schema: { type: 'string' } },
          },
        },
        401: problem('Missing or bad access token'),
        404: problem('No such user, or not yours to forget'),
      },
    },
    async (req, res) => {
      const userId = String(req.params.id);
      const { streamId, state } = await userAccount(req, userId);
      const result = await forgetAccount(
        { store, personalData },
        { streamId, state },
        userId,
        context(req, req.auth!.userId),
      );
      logger.info({ userId, changed: result.changed }, 'user forgotten');
      res.set('X-Position', result.position ?? '');
      res.status(204).end();
    },
  );

  return { register, login, refresh, logout, endSessionOf };
}
