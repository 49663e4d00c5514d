import pg from 'pg';

/**
 * Counts and times every query the service sends to PostgreSQL while tracing is on, by statement. The service
 * runs in this process, so wrapping `pg.Client.prototype.query` sees its pool, the relay's lock connection and
 * the event log's LISTEN connection alike; nothing under src/ changes. The time is from the call to the result,
 * so it includes waiting behind other queries on the same connection.
 */
export interface StatementStats {
  label: string;
  count: number;
  total_ms: number;
  mean_ms: number;
}

const LABELS: Array<[RegExp, string]> = [
  [/^BEGIN/i, 'BEGIN'],
  [/^COMMIT/i, 'COMMIT'],
  [/^ROLLBACK/i, 'ROLLBACK'],
  [/^(SAVEPOINT|RELEASE SAVEPOINT)/i, 'SAVEPOINT / RELEASE (projection)'],
  [/FROM events WHERE stream_id = \$1 AND revision >= \$2/, 'read stream (command handler, cancel watch)'],
  [/json_agg\(json_build_object\('stream_id'/, 'append: duplicate check + stream head'],
  [/^INSERT INTO events/, 'append: INSERT events'],
  [/pg_notify/, 'append: pg_notify'],
  [/FROM events\s+WHERE \(transaction_id, sequence\) >/, 'log read (relay poller)'],
  [/INSERT INTO relay_partition_heads/, 'relay: partition heads'],
  [/INSERT INTO log_checkpoints/, 'relay: checkpoint'],
  [/INSERT INTO projection_stream_progress/, 'projection: stream revision guard'],
  [/INSERT INTO projection_partition_positions/, 'projection: partition position'],
  [/FROM tasks WHERE id = \$1 FOR UPDATE/, 'projection: SELECT task FOR UPDATE'],
  [/^INSERT INTO tasks/, 'projection: upsert task'],
  [/^SELECT id, queue FROM tasks/, 'worker: dispatch (due tasks)'],
  [/task_schedule_claim_limited/, 'worker: claim (task_schedule)'],
  [/^WITH appends AS/, 'append (group commit)'],
  [/SELECT min\(run_at\)/, 'worker: next due time'],
  [/lease_until < \$1/, 'worker: lease reaper'],
  [/FROM tasks WHERE id = \$1$/, 'query: task row (GET)'],
  [/FROM projection_partition_positions WHERE projection/, 'query: read-your-writes watermark'],
];

export function labelFor(sql: string): string {
  const text = sql.replace(/\s+/g, ' ').trim();
  for (const [pattern, label] of LABELS) if (pattern.test(text)) return label;
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

type QueryFn = (...args: unknown[]) => unknown;

export class PgTrace {
  private readonly stats = new Map<string, { count: number; total: number }>();
  private enabled = false;
  private original: QueryFn | null = null;

  /** Wraps the driver once; recording only happens between start() and stop(). */
  install(): void {
    if (this.original) return;
    const proto = pg.Client.prototype as unknown as { query: QueryFn };
    const original = proto.query;
    this.original = original;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const trace = this;
    proto.query = function (this: unknown, ...args: unknown[]): unknown {
      const first = args[0] as { text?: string; submit?: unknown } | string | undefined;
      if (!trace.enabled || (typeof first === 'object' && first && typeof first.submit === 'function'))
        return original.apply(this, args);
      const text = typeof first === 'string' ? first : (first?.text ?? '');
      const started = performance.now();
      const record = () => trace.record(text, performance.now() - started);
      const callbackAt = args.findIndex((arg) => typeof arg === 'function');
      if (callbackAt >= 0) {
        const callback = args[callbackAt] as (...results: unknown[]) => unknown;
        args[callbackAt] = function (this: unknown, ...results: unknown[]) {
          record();
          return callback.apply(this, results);
        };
        return original.apply(this, args);
      }
      const result = original.apply(this, args);
      if (result && typeof (result as Promise<unknown>).then === 'function')
        (result as Promise<unknown>).then(record, record);
      return result;
    };
  }

  uninstall(): void {
    if (!this.original) return;
    (pg.Client.prototype as unknown as { query: QueryFn }).query = this.original;
    this.original = null;
  }

  start(): void {
    this.stats.clear();
    this.enabled = true;
  }

  stop(): StatementStats[] {
    this.enabled = false;
    return [...this.stats]
      .map(([label, { count, total }]) => ({
        label,
        count,
        total_ms: Math.round(total),
        mean_ms: Math.round((total / count) * 1000) / 1000,
      }))
      .sort((a, b) => b.total_ms - a.total_ms);
  }

  private record(sql: string, ms: number): void {
    const label = labelFor(sql);
    const entry = this.stats.get(label) ?? { count: 0, total: 0 };
    entry.count++;
    entry.total += ms;
    this.stats.set(label, entry);
  }
}
