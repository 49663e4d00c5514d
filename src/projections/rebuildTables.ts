/** The rebuild's tables: which they are, created beside the live ones with the same shape and names. */
import { isDeepStrictEqual } from 'node:util';
import type { PoolClient } from '../infra/db/pool.js';
import type { Projection, ReadModelTable } from './readModel.js';

export const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;
export const qualified = (schema: string, table: string): string => `${ident(schema)}.${ident(table)}`;

/** Rebuilt beside the read models: the new tables must carry their own guards and positions into the swap. */
export const PROGRESS_TABLES = ['projection_stream_progress', 'projection_partition_positions'] as const;

/**
 * Every table of the projections, each once. Because the rebuild's search_path holds only the new schema, a table
 * a projection writes but does not list fails loudly instead of being written in the live schema.
 */
export function readModelTables(projections: readonly Projection[]): ReadModelTable[] {
  const tables: ReadModelTable[] = [];
  const owners = new Map<string, string>();
  for (const projection of projections) {
    if (projection.tables.length === 0) throw new Error(`projection ${projection.name} has no tables listed`);
    for (const table of projection.tables) {
      const owner = owners.get(table.name);
      if (owner !== undefined && owner !== projection.name)
        throw new Error(`table ${table.name} is listed by both projection ${owner} and ${projection.name}`);
      if (owner === undefined) tables.push(table);
      owners.set(table.name, projection.name);
    }
  }
  return tables;
}

export const allTableNames = (tables: readonly ReadModelTable[]): string[] => [
  ...PROGRESS_TABLES,
  ...tables.map((table) => table.name),
];

/** A secondary index of a rebuilt table: dropped while the log is applied, built again after it. */
export interface DeferredIndex {
  name: string;
  /** `CREATE INDEX <name> ON <schema>.<table> ...`, as PostgreSQL printed it for the new table. */
  definition: string;
}

/**
 * Creates the new tables with the live ones' shape and names. Their secondary indexes (neither unique nor behind a
 * constraint) are dropped again and returned: maintaining them row by row took most of a rebuild's upserts (the
 * tasks table has seven, one of them a full-text GIN index), and building each once from the finished table is
 * several times cheaper. Unique indexes stay: the upserts' ON CONFLICT and the constraints need them.
 */
export async function createTables(
  client: PoolClient,
  schema: string,
  tables: readonly ReadModelTable[],
): Promise<DeferredIndex[]> {
  const deferred: DeferredIndex[] = [];
  await client.query('BEGIN');
  try {
    await client.query(`CREATE SCHEMA ${ident(schema)}`);
    for (const name of allTableNames(tables)) {
      await client.query(
        `CREATE TABLE ${qualified(schema, name)} (LIKE ${qualified('public', name)} INCLUDING ALL)`,
      );
      await copyStorageParameters(client, schema, name);
      await alignNames(client, schema, name);
      await assertSameShape(client, schema, name);
      const { rows } = await client.query<DeferredIndex>(
        `SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::regclass AND NOT i.indisunique AND NOT i.indisprimary
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)`,
        [qualified(schema, name)],
      );
      for (const index of rows) await client.query(`DROP INDEX ${qualified(schema, index.name)}`);
      deferred.push(...rows);
    }
    await client.query('COMMIT');
    return deferred;
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

/** LIKE ... INCLUDING ALL copies no storage parameter (the `tasks` fillfactor, migrations/0020); this does. */
async function copyStorageParameters(client: PoolClient, schema: string, table: string): Promise<void> {
  const { rows } = await client.query<{ options: string | null }>(
    `SELECT array_to_string(reloptions, ', ') AS options FROM pg_class WHERE oid = $1::regclass`,
    [qualified('public', table)],
  );
  const options = rows[0]?.options;
  if (options) await client.query(`ALTER TABLE ${qualified(schema, table)} SET (${options})`);
}

interface Shape {
  /** Storage parameters (`fillfactor=80`). */
  options: string[];
  columns: string[];
  /** name -> definition without its name and table */
  indexes: Record<string, string>;
  constraints: Record<string, string>;
}

async function shapeOf(client: PoolClient, schema: string, table: string): Promise<Shape> {
  const relation = qualified(schema, table);
  const options = await client.query<{ options: string[] | null }>(
    'SELECT reloptions AS options FROM pg_class WHERE oid = $1::regclass',
    [relation],
  );
  const columns = await client.query<{ column: string }>(
    `SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
            || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || a.attidentity::text || a.attgenerated::text AS column
       FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [relation],
  );
  const indexes = await client.query<{ name: string; definition: string }>(
    `SELECT c.relname AS name,
            regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON (ONLY )?\\S+ ', 'CREATE \\1INDEX ON ') AS definition
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      WHERE i.indrelid = $1::regclass`,
    [relation],
  );
  const constraints = await client.query<{ name: string; definition: string }>(
    `SELECT conname AS name, contype::text || ' ' || pg_get_constraintdef(oid) AS definition
       FROM pg_constraint WHERE conrelid = $1::regclass`,
    [relation],
  );
  return {
    options: [...(options.rows[0]?.options ?? [])].sort(),
    columns: columns.rows.map((row) => row.column),
    indexes: Object.fromEntries(indexes.rows.map((row) => [row.name, row.definition])),
    constraints: Object.fromEntries(constraints.rows.map((row) => [row.name, row.definition])),
  };
}

/**
 * LIKE names copied indexes by the default rule (`tasks_created_at_id_idx`, not `tasks_listing`); after the swap
 * they are the live ones, and later migrations refer to them by name.
 */
async function alignNames(client: PoolClient, schema: string, table: string): Promise<void> {
  const rename = async (kind: 'constraints' | 'indexes', statement: (from: string, to: string) => string) => {
    const live = await shapeOf(client, 'public', table);
    const rebuilt = await shapeOf(client, schema, table);
    for (const [name, definition] of Object.entries(live[kind])) {
      if (name in rebuilt[kind]) continue;
      const twin = Object.keys(rebuilt[kind]).find(
        (candidate) => rebuilt[kind][candidate] === definition && !(candidate in live[kind]),
      );
      if (twin) {
        await client.query(statement(twin, name));
        delete rebuilt[kind][twin];
      }
    }
  };
  // Renaming a constraint renames its index too, so constraints go first.
  await rename(
    'constraints',
    (from, to) => `ALTER TABLE ${qualified(schema, table)} RENAME CONSTRAINT ${ident(from)} TO ${ident(to)}`,
  );
  await rename('indexes', (from, to) => `ALTER INDEX ${qualified(schema, from)} RENAME TO ${ident(to)}`);
}

export async function assertSameShape(client: PoolClient, schema: string, table: string): Promise<void> {
  const live = await shapeOf(client, 'public', table);
  const rebuilt = await shapeOf(client, schema, table);
  if (!isDeepStrictEqual(live, rebuilt))
    throw new Error(
      `${schema}.${table} does not have the shape of public.${table} (was it migrated during the rebuild?): ` +
        `live ${JSON.stringify(live)}, rebuilt ${JSON.stringify(rebuilt)}`,
    );
}
