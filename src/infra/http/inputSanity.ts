import type { NextFunction, Request, Response } from 'express';
import { ValidationError, type FieldError } from '../../errors.js';

/** Deeper than any request this API defines; deep enough JSON would otherwise overflow the stack later on. */
export const MAX_JSON_DEPTH = 64;

/**
 * Characters that JSON and JavaScript accept but that cannot be stored: PostgreSQL refuses NUL in text and lone
 * surrogates (half a UTF-16 pair) in jsonb. Accepting them would answer 202 for a task that can never be
 * projected, queued or shown; so they are refused at the door, with the place they were found.
 */
// eslint-disable-next-line no-control-regex -- NUL is exactly what this looks for
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function describe(value: string): string | null {
  const match = UNSTORABLE.exec(value);
  if (!match) return null;
  return match[0] === '\u0000'
    ? 'must not contain NUL characters'
    : 'must not contain unpaired surrogates (invalid Unicode)';
}

const pointer = (segment: string): string => segment.replace(/~/g, '~0').replace(/\//g, '~1');

/** Walks a parsed body without recursion (so no input can overflow the stack), checking depth and strings. */
export function findUnstorable(body: unknown, root: string): FieldError | null {
  const stack: Array<{ value: unknown; path: string; depth: number }> = [
    { value: body, path: root, depth: 0 },
  ];
  while (stack.length > 0) {
    const { value, path, depth } = stack.pop()!;
    if (typeof value === 'string') {
      const problem = describe(value);
      if (problem) return { path, message: problem };
    } else if (value !== null && typeof value === 'object') {
      if (depth >= MAX_JSON_DEPTH) return { path, message: `is nested deeper than ${MAX_JSON_DEPTH} levels` };
      for (const [key, inner] of Object.entries(value)) {
        const problem = describe(key);
        if (problem) return { path: `${path}/${pointer(key)}`, message: `has a key that ${problem}` };
        stack.push({ value: inner, path: `${path}/${pointer(key)}`, depth: depth + 1 });
      }
    }
  }
  return null;
}

/** Runs after the JSON parser, before any route: the body, the query string and the path. */
export function refuseUnstorableInput() {
  return (req: Request, _res: Response, next: NextFunction): void => {
    const problem =
      findUnstorable(req.body, '/body') ??
      findUnstorable(req.query, '/query') ??
      (describe(safeDecode(req.path)) ? { path: '/path', message: describe(safeDecode(req.path))! } : null);
    next(problem ? new ValidationError([problem]) : undefined);
  };
}

function safeDecode(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path; // undecodable escapes are answered by the router's own 400
  }
}

/**
 * An RFC 3339 instant as an ISO string, or a 400 at `path`: RFC 3339 allows instants JavaScript cannot hold (a
 * leap second, 23:59:60) and years PostgreSQL refuses (0000), so both are refused here, where the client can be
 * told, rather than failing later.
 */
export function storableInstant(value: string, path: string): string {
  const time = Date.parse(value);
  if (Number.isNaN(time) || time < Date.UTC(1970, 0, 1) || time >= Date.UTC(10000, 0, 1))
    throw new ValidationError([
      { path, message: 'must be a time between 1970 and 9999, without leap seconds' },
    ]);
  return new Date(time).toISOString();
}
