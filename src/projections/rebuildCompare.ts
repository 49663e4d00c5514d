/** Verify's comparison of rebuilt and live tables, row by row, and how a difference is shown. */
import { isDeepStrictEqual } from 'node:util';
import type { PoolClient } from '../infra/db/pool.js';
import type { JsonValue } from '../infra/eventStore/eventStore.js';
import type { ReadModelTable } from './readModel.js';
import { ident, qualified } from './rebuildTables.js';

export interface RowDifference {
  key: Record<string, JsonValue>;
  /** `missingInLive`: only the rebuild has this key; `missingInRebuild`: only live has it; `changed`: both, unequal. */
  kind: 'missingInLive' | 'missingInRebuild' | 'changed';
  /** The columns whose values differ (every column for a missing row), in table order. */
  columns: string[];
  live: Record<string, JsonValue> | null;
  rebuild: Record<string, JsonValue> | null;
}

export interface TableDifference {
  table: string;
  /** Rebuilt rows live does not have as they are (a changed row counts here and in missingInRebuild). */
  missingInLive: number;
  /** Live rows the rebuild does not have as they are. */
  missingInRebuild: number;
  /** Keys present on both sides with different values. */
  changed: number;
  /** The first differing rows by key, at most `sampleLimit`. */
  samples: RowDifference[];
}

/** One line for a terminal: the row's key and what differs. */
export function describeDifference(table: string, difference: RowDifference): string {
  const key = Object.entries(difference.key)
    .map(([column, value]) => `${column}=${String(value)}`)
    .join(' ');
  if (difference.kind === 'missingInLive') return `${table} ${key}: missing in live`;
  if (difference.kind === 'missingInRebuild') return `${table} ${key}: in live, not in the log`;
  const changes = difference.columns.map(
    (column) =>
      `${column} live ${JSON.stringify(difference.live?.[column])}, rebuilt ${JSON.stringify(difference.rebuild?.[column])}`,
  );
  return `${table} ${key}: ${changes.join('; ')}`;
}

const behindSql = (schema: string) =>
  `SELECT n.stream_id FROM ${qualified(schema, 'projection_stream_progress')} n
     LEFT JOIN public.projection_stream_progress l ON l.projection = n.projection AND l.stream_id = n.stream_id
    WHERE n.projection = $1 AND (l.revision IS NULL OR l.revision < n.revision)`;

export async function countStreamsBehind(
  client: PoolClient,
  schema: string,
  projection: string,
): Promise<number> {
  const { rows } = await client.query<{ count: number }>(
    `SELECT count(*) AS count FROM (${behindSql(schema)}) b`,
    [projection],
  );
  return rows[0]!.count;
}

async function primaryKey(client: PoolClient, table: string): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT a.attname AS name FROM pg_index i
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1::regclass AND i.indisprimary
      ORDER BY array_position(i.indkey::int2[], a.attnum)`,
    [qualified('public', table)],
  );
  if (rows.length === 0) throw new Error(`read-model table ${table} has no primary key to compare rows by`);
  return rows.map((row) => row.name);
}

/** EXCEPT both ways, on the rows of streams both sides have reached. Samples as json, not jsonb: column order kept. */
export async function compareTable(
  client: PoolClient,
  schema: string,
  projection: string,
  table: ReadModelTable,
  sampleLimit: number,
): Promise<TableDifference | null> {
  const key = await primaryKey(client, table.name);
  const keyList = (alias: string) => key.map((column) => `${alias}.${ident(column)}`).join(', ');
  const sameKey = (a: string, b: string) => `ROW(${keyList(a)}) = ROW(${keyList(b)})`;
  const settled = (relation: string) =>
    `SELECT r.* FROM ${relation} r WHERE NOT EXISTS (SELECT FROM behind b WHERE b.stream_id = ${table.streamOf})`;
  const { rows } = await client.query<{
    missing_in_live: number;
    missing_in_rebuild: number;
    changed: number;
    samples: Array<{ live: Record<string, JsonValue> | null; rebuild: Record<string, JsonValue> | null }>;
  }>(
    `WITH behind AS MATERIALIZED (${behindSql(schema)}),
          rebuilt AS (${settled(qualified(schema, table.name))}),
          live AS (${settled(qualified('public', table.name))}),
          only_rebuilt AS MATERIALIZED (SELECT * FROM rebuilt EXCEPT ALL SELECT * FROM live),
          only_live AS MATERIALIZED (SELECT * FROM live EXCEPT ALL SELECT * FROM rebuilt),
          keys AS (SELECT ${keyList('x')} FROM only_rebuilt x UNION SELECT ${keyList('x')} FROM only_live x
                   ORDER BY ${key.map((_, i) => i + 1).join(', ')} LIMIT $2)
     SELECT (SELECT count(*) FROM only_rebuilt) AS missing_in_live,
            (SELECT count(*) FROM only_live) AS missing_in_rebuild,
            (SELECT count(*) FROM only_rebuilt x WHERE EXISTS (SELECT FROM only_live y WHERE ${sameKey('x', 'y')})) AS changed,
            (SELECT coalesce(json_agg(json_build_object(
                      'rebuild', (SELECT to_json(x) FROM only_rebuilt x WHERE ${sameKey('x', 'k')}),
                      'live', (SELECT to_json(x) FROM only_live x WHERE ${sameKey('x', 'k')}))
                    ORDER BY ${keyList('k')}), '[]'::json)
               FROM keys k) AS samples`,
    [projection, sampleLimit],
  );
  const result = rows[0]!;
  if (result.missing_in_live === 0 && result.missing_in_rebuild === 0) return null;
  return {
    table: table.name,
    missingInLive: result.missing_in_live,
    missingInRebuild: result.missing_in_rebuild,
    changed: result.changed,
    samples: result.samples.map(({ live, rebuild }) => describeRow(key, live, rebuild)),
  };
}

function describeRow(
  key: readonly string[],
  live: Record<string, JsonValue> | null,
  rebuild: Record<string, JsonValue> | null,
): RowDifference {
  const row = (rebuild ?? live)!;
  const kind = live && rebuild ? 'changed' : rebuild ? 'missingInLive' : 'missingInRebuild';
  const columns =
    live && rebuild
      ? Object.keys(rebuild).filter((column) => !isDeepStrictEqual(live[column], rebuild[column]))
      : Object.keys(row);
  return {
    key: Object.fromEntries(key.map((column) => [column, row[column] ?? null])),
    kind,
    columns,
    live,
    rebuild,
  };
}
