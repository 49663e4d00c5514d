/**
 * src/queries: the cursor of keyset-paged lists (tasks, schedules), newest first on (created_at, id): the last row's
 * pair as opaque base64url JSON, and its strict decoding.
 */
import { ValidationError } from '../errors.js';
import { isUuid } from '../infra/uuid.js';

/** The cursor of a page that ends at the row (createdAt, id). */
export function encodeKeysetCursor(createdAt: string, id: string): string {
  return Buffer.from(JSON.stringify([createdAt, id]), 'utf8').toString('base64url');
}

/**
 * The (createdAt, id) of a cursor; a 400 for anything this service did not issue (or could not have issued).
 * `time` is the exact shape of the created_at values the list issues (its table's precision).
 */
export function decodeKeysetCursor(cursor: string, time: RegExp): { createdAt: string; id: string } {
  const invalid = () => new ValidationError([{ path: '/query/cursor', message: 'is not a valid cursor' }]);
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(cursor)) throw invalid();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (!Array.isArray(parsed) || parsed.length !== 2) throw invalid();
  const [createdAt, id] = parsed as unknown[];
  if (typeof createdAt !== 'string' || !time.test(createdAt) || Number.isNaN(Date.parse(createdAt)))
    throw invalid();
  if (typeof id !== 'string' || !isUuid(id)) throw invalid();
  return { createdAt, id };
}
