import { createHash } from 'node:crypto';
import type { QueryConfig } from 'pg';

const names = new Map<string, string>();

/**
 * A statement that each connection parses and plans once (a named prepared statement), for the hot paths: planning
 * a statement like the group commit's costs PostgreSQL more CPU than writing a small batch does. The name is
 * derived from the text, so one text always has one name, as node-postgres requires. Use it only for constant
 * texts (or a few variants): each distinct text stays prepared on every connection that ran it.
 *
 * Only for statements whose plan does not depend on the values: after five runs PostgreSQL may keep one generic
 * plan, made without knowing an array's length or a LIMIT (and maybe while a table was small). Measured here, a
 * prepared group commit and projection guard update made the database's CPU per task twice as high on a large log:
 * planned while the log was small, they joined their arrays to it by scanning it. So arrays joined to large tables
 * and LIMIT parameters stay unprepared, unless the statement reads the large table only by per-row look-ups on a
 * unique index, as the group commit now does (GROUP_COMMIT_STATEMENT, on connections with `genericPlans`).
 *
 * Behind PgBouncer in transaction mode, prepared statements need PgBouncer 1.21+ (`max_prepared_statements`).
 */
export function prepared(text: string, values: unknown[]): QueryConfig<unknown[]> {
  let name = names.get(text);
  if (name === undefined) {
    name = `tm_${createHash('sha1').update(text).digest('hex').slice(0, 24)}`;
    names.set(text, name);
  }
  return { name, text, values };
}
