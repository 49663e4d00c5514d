import { STATUS_CODES } from 'node:http';
import type { ErrorRequestHandler, NextFunction, Request, RequestHandler, Response } from 'express';
import {
  AppError,
  BadRequestError,
  NotFoundError,
  PayloadTooLargeError,
  ServiceUnavailableError,
  UnsupportedMediaTypeError,
} from '../../errors.js';
import { isConnectionError } from '../db/pool.js';
import type { Logger } from '../logger.js';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** The media types the JSON parser accepts; anything else with a body is answered 415. */
export const JSON_MEDIA_TYPES = ['application/json', 'application/*+json'];

export interface ProblemDocument {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance: string;
  request_id: string | undefined;
  [extension: string]: unknown;
}

export interface ProblemDetailsOptions {
  /** Used when the request has no logger of its own (the request-context middleware did not run). */
  logger: Logger;
  /** Retry-After sent when PostgreSQL cannot be reached. */
  dependencyRetryAfterSeconds?: number;
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);

/**
 * Runs before the JSON parser: express.json() silently skips bodies of another type, which would reach the
 * handler as "body is required" (400) instead of the honest 415.
 */
export function requireJsonBody(): RequestHandler {
  return (req: Request, _res: Response, next: NextFunction) => {
    if (!BODY_METHODS.has(req.method)) return next();
    const length = req.headers['content-length'];
    const hasBody =
      req.headers['transfer-encoding'] !== undefined || (length !== undefined && Number(length) > 0);
    if (!hasBody || req.is(JSON_MEDIA_TYPES)) return next();
    next(
      new UnsupportedMediaTypeError(
        'The request body must be JSON, sent with Content-Type: application/json',
      ),
    );
  };
}

export function notFound(): RequestHandler {
  return (req: Request, _res: Response, next: NextFunction) => {
    next(new NotFoundError(`There is no ${req.method} ${requestPath(req)}`));
  };
}

const requestPath = (req: Request): string => req.originalUrl.split('?')[0] ?? req.originalUrl;

interface HttpErrorLike {
  type?: string;
  status?: number;
  statusCode?: number;
  expose?: boolean;
  limit?: number;
}

/** Errors raised by body-parser (and other http-errors users) before any route runs. */
function fromHttpError(error: HttpErrorLike): AppError | undefined {
  switch (error.type) {
    case 'entity.parse.failed':
      return new AppError(400, 'malformed-json', 'Malformed JSON', {
        detail: 'The request body is not valid JSON',
      });
    case 'entity.too.large':
      return new PayloadTooLargeError(
        error.limit === undefined
          ? 'The request body is too large'
          : `The request body exceeds the limit of ${error.limit} bytes`,
      );
    case 'charset.unsupported':
      return new UnsupportedMediaTypeError('The request body must be encoded as UTF-8');
    case 'encoding.unsupported':
      return new UnsupportedMediaTypeError(
        'Unsupported Content-Encoding; send identity, gzip, deflate or br',
      );
    case 'request.aborted':
      return new BadRequestError('The request body was not received completely');
    case 'request.size.invalid':
      return new BadRequestError('The request body does not match its Content-Length');
  }
  // The router cannot decode a path parameter such as `%zz`: the client's mistake, said plainly.
  if (error instanceof URIError)
    return new BadRequestError('The request path has an escape sequence that does not decode (%XX)');
  const status = error.status ?? error.statusCode;
  // http-errors marks 4xx messages as safe to show (`expose`); 5xx ones are not.
  if (typeof status === 'number' && status >= 400 && status < 500 && error.expose === true)
    return new AppError(status, 'http-error', STATUS_CODES[status] ?? 'Client Error', {
      detail: (error as Error).message,
    });
  return undefined;
}

/**
 * Any error as the AppError it is answered with: an AppError as it is, an unreachable database as 503, a 4xx of
 * express's own as that status, anything else as 500 (logged; its detail stays in the log).
 */
export function toAppError(error: unknown, log: Logger, dependencyRetryAfterSeconds = 5): AppError {
  if (error instanceof AppError) {
    if (error.status >= 500) log.warn({ err: error }, `${error.status} ${error.title}`);
    return error;
  }
  if (isConnectionError(error)) {
    log.warn({ err: error }, 'database unreachable');
    return new ServiceUnavailableError(
      dependencyRetryAfterSeconds,
      'A dependency is unavailable; retry later',
    );
  }
  const mapped =
    typeof error === 'object' && error !== null ? fromHttpError(error as HttpErrorLike) : undefined;
  if (mapped) return mapped;
  // pino's err serializer includes `cause`, so the chain that led here is in the log, not in the response.
  log.error({ err: error }, 'unhandled error');
  return new AppError(500, 'internal', 'Internal Server Error');
}

/** The RFC 9457 document of a problem, as a whole response or as one item of a batch's answer. */
export function problemDocument(
  problem: AppError,
  instance: string,
  requestId: string | undefined,
): ProblemDocument {
  const body: ProblemDocument = {
    type: problem.type,
    title: problem.title,
    status: problem.status,
    ...(problem.detail === undefined ? {} : { detail: problem.detail }),
    instance,
    request_id: requestId,
  };
  for (const [key, value] of Object.entries(problem.extensions)) if (!(key in body)) body[key] = value;
  return body;
}

export function problemDetails(options: ProblemDetailsOptions): ErrorRequestHandler {
  const dependencyRetryAfter = options.dependencyRetryAfterSeconds ?? 5;

  return (error: unknown, req: Request, res: Response, next: NextFunction) => {
    const log: Logger = (req as Partial<Request>).log ?? options.logger;
    const problem = toAppError(error, log, dependencyRetryAfter);

    if (res.headersSent) {
      // Too late for a problem document; let Express abort the connection so the client sees a broken response.
      next(error);
      return;
    }

    const body = problemDocument(problem, requestPath(req), (req as Partial<Request>).id);
    res.status(problem.status);
    for (const [name, value] of Object.entries(problem.headers)) res.set(name, value);
    res.type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body));
  };
}
