/**
 * Errors that know how they look over HTTP. Domain code throws them; the problem-details middleware
 * (src/infra/http/problemDetails.ts) renders them as RFC 9457 `application/problem+json`.
 * Everything that is not an AppError is treated as a bug and answered 500 without details.
 */

export const PROBLEM_TYPE_BASE = 'https://task-manager.dev/problems/';

export const problemType = (slug: string): string => `${PROBLEM_TYPE_BASE}${slug}`;

export interface AppErrorOptions {
  detail?: string;
  /** Extra members of the problem document, e.g. `{ errors: [...] }`. Never overrides the standard members. */
  extensions?: Record<string, unknown>;
  /** Response headers the client needs to act on the problem (Retry-After, Allow). */
  headers?: Record<string, string>;
  cause?: unknown;
}

export class AppError extends Error {
  readonly status: number;
  readonly title: string;
  readonly type: string;
  readonly detail: string | undefined;
  readonly extensions: Record<string, unknown>;
  readonly headers: Record<string, string>;

  constructor(status: number, slug: string, title: string, options: AppErrorOptions = {}) {
    super(options.detail ?? title, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = status;
    this.title = title;
    this.type = problemType(slug);
    this.detail = options.detail;
    this.extensions = options.extensions ?? {};
    this.headers = options.headers ?? {};
  }
}

export interface FieldError {
  /** JSON Pointer into the request, prefixed by where the value came from: `/body/title`, `/query/limit`. */
  path: string;
  message: string;
}

export class ValidationError extends AppError {
  readonly errors: FieldError[];

  constructor(errors: FieldError[], detail?: string) {
    const summary =
      detail ??
      (errors.length === 1
        ? `${errors[0]!.path} ${errors[0]!.message}`
        : `${errors.length} problems in the request`);
    super(400, 'validation', 'Invalid request', { detail: summary, extensions: { errors } });
    this.errors = errors;
  }
}

export class BadRequestError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(400, 'bad-request', 'Bad Request', { ...options, detail });
  }
}

export class UnauthorizedError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    // RFC 9110 requires a challenge on 401.
    super(401, 'unauthorized', 'Unauthorized', {
      ...options,
      detail,
      headers: { 'WWW-Authenticate': 'Bearer', ...options.headers },
    });
  }
}

export class ForbiddenError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(403, 'forbidden', 'Forbidden', { ...options, detail });
  }
}

export class NotFoundError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(404, 'not-found', 'Not Found', { ...options, detail });
  }
}

export class MethodNotAllowedError extends AppError {
  readonly allowed: string[];

  constructor(allowed: string[], detail?: string) {
    super(405, 'method-not-allowed', 'Method Not Allowed', {
      detail,
      headers: { Allow: allowed.join(', ') },
    });
    this.allowed = allowed;
  }
}

export class ConflictError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(409, 'conflict', 'Conflict', { ...options, detail });
  }
}

/** A business rule forbids the command in the aggregate's current state (e.g. editing a started task). */
export class IllegalStateError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(409, 'illegal-state', 'Illegal State', { ...options, detail });
  }
}

export class PayloadTooLargeError extends AppError {
  constructor(detail?: string) {
    super(413, 'payload-too-large', 'Payload Too Large', { detail });
  }
}

export class UnsupportedMediaTypeError extends AppError {
  constructor(detail?: string) {
    super(415, 'unsupported-media-type', 'Unsupported Media Type', { detail });
  }
}

export class UnprocessableError extends AppError {
  constructor(detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(422, 'unprocessable', 'Unprocessable Content', { ...options, detail });
  }
}

export class TooManyRequestsError extends AppError {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number, detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(429, 'too-many-requests', 'Too Many Requests', {
      ...options,
      detail,
      headers: { 'Retry-After': String(Math.max(0, Math.ceil(retryAfterSeconds))), ...options.headers },
    });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export class ServiceUnavailableError extends AppError {
  readonly retryAfterSeconds: number;

  constructor(retryAfterSeconds: number, detail?: string, options: Omit<AppErrorOptions, 'detail'> = {}) {
    super(503, 'service-unavailable', 'Service Unavailable', {
      ...options,
      detail,
      headers: { 'Retry-After': String(Math.max(0, Math.ceil(retryAfterSeconds))), ...options.headers },
    });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export const isAppError = (error: unknown): error is AppError => error instanceof AppError;
