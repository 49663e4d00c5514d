import type { CpuProfileSummary } from './cpuProfile.js';
import type { CpuUsage } from './cpu.js';
import type { BullmqResult, KafkaProduceResult, PgInsertResult } from './baselines.js';
import type { PgBossResult, PgQueueResult } from './pgQueueBaselines.js';
import type { E2eResult } from './e2e.js';
import type { HttpLoadResult } from './httpLoad.js';
import type { MemorySample } from './memory.js';
import type { StatementStats } from './pgTrace.js';
import type { RebuildResult } from './rebuild.js';
import type { MicroResult } from './micro.js';
import type { AppendBaselineResult } from './appendBaseline.js';
import type { ServiceTraceReport } from './serviceTrace.js';
import type { LatencySummary } from './stats.js';

export interface PhaseRecord {
  name: string;
  seconds: number;
  cpu: CpuUsage;
  rss_mb_peak: number;
}

export interface RatePoint {
  label: string;
  offered_per_s: number;
  achieved_per_s: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  undone: number;
  sustainable: boolean;
}

export interface Target {
  target: string;
  measured: string;
  met: boolean | null;
}

/** A target of issue 15: reached when `value` is at least `required` (at most, for `ms`). */
export interface TargetRatio {
  target: string;
  measured: string;
  value: number | null;
  required: number;
  unit: 'x' | 'ms' | 'events/s' | 'min';
  /** null: not measured (or, for the soak, not run long enough). */
  reached: boolean | null;
}

/** CPU milliseconds per task by component; total = service + postgres + pg_bg + kafka + redis (not the load). */
export interface CpuMsPerTask {
  service: number;
  /** PostgreSQL backends serving the bench's databases. */
  postgres: number;
  /** PostgreSQL's background processes (WAL writer, checkpointer...), shared with the rest of the server. */
  pg_bg: number;
  kafka: number;
  redis: number;
  total: number;
  /** The load generator, not counted in total. */
  load: number;
}

/** The end-to-end figures of one way of running the service. */
export interface TopologyResult {
  /** One entry per process: the roles it ran. */
  processes: string[];
  /** Burst throughput: N tasks, 64 in flight, first POST to last done. */
  e2e_per_s: number | null;
  burst_tasks: number | null;
  burst_p50_ms: number | null;
  burst_p99_ms: number | null;
  /** Open loop at this rate (the target's 200 tasks/s): */
  e2e_latency_rate_per_s: number;
  e2e_achieved_per_s: number | null;
  e2e_p50_ms: number | null;
  /** null when tasks were left undone. */
  e2e_p99_ms: number | null;
  sustained: boolean | null;
  /** Over the burst. */
  cpu_ms_per_task: CpuMsPerTask | null;
}

export interface RolesApartRecord {
  processes: string[];
  startup_s: number;
  warmup: E2eResult | null;
  burst: E2eResult | null;
  burst_cpu: CpuUsage | null;
  rate: E2eResult | null;
}

export interface SubmitProfile {
  requests: number;
  /** Statements per accepted POST, with their mean time. */
  statements: Array<StatementStats & { per_request: number }>;
  round_trips_per_request: number;
  server_mean_ms: number | null;
  client: LatencySummary;
  cpu: CpuUsage;
  /** CPU milliseconds per accepted POST, by component. */
  cpu_ms_per_request: Record<string, number>;
  cpu_profile: CpuProfileSummary | null;
}

export interface PipelineProfile {
  tasks: number;
  statements: Array<StatementStats & { per_task: number }>;
  round_trips_per_task: number;
  cpu: CpuUsage;
  cpu_ms_per_task: Record<string, number>;
}

export interface SoakResult {
  minutes: number;
  rate_per_s: number;
  samples: Array<{ minute: number; rss_mb: number; heap_used_mb: number; retained_heap_mb: number }>;
  rss_mb_start: number;
  rss_mb_end: number;
  rss_mb_per_min: number | null;
  rss_mb_per_min_second_half: number | null;
  heap_mb_per_min: number | null;
  /** The trend of the heap outside the young generation, which `flat` is judged on. */
  retained_heap_mb_per_min: number | null;
  flat: boolean;
  e2e: E2eResult;
}

export interface BenchResults {
  mode: 'quick' | 'full';
  started_at: string;
  duration_s: number;
  submit_per_s: number | null;
  submit_concurrency: number | null;
  pg_insert_per_s: number | null;
  submit_vs_pg: number | null;
  kafka_produce_per_s: number | null;
  bullmq_per_s: number | null;
  /** Graphile Worker, same jobs, same PostgreSQL: jobs / (add time + process time). */
  graphile_per_s: number | null;
  /** pg-boss, same jobs, same PostgreSQL, 4 fetch loops of 50: jobs / (add time + process time). */
  pgboss_per_s: number | null;
  /** POST /tasks/batch, 50 tasks a request, 4 in flight: tasks accepted per second. */
  bulk_submit_per_s: number | null;
  /** Against BullMQ's addBulk and Graphile Worker's addJobs (bulks of 50) in the same run: adding only. */
  bulk_submit_vs_bullmq_add: number | null;
  bulk_submit_vs_graphile_add: number | null;
  e2e_per_s: number | null;
  e2e_vs_bullmq: number | null;
  e2e_vs_graphile: number | null;
  /** Over the single-process e2e burst. */
  cpu_ms_per_task: CpuMsPerTask | null;
  e2e_topologies: {
    single_process: TopologyResult | null;
    roles_apart: TopologyResult | null;
    api_processes_2: TopologyResult | null;
  };
  /** At e2e_latency_rate_per_s (the target's 200 tasks/s). */
  e2e_p50_ms: number | null;
  e2e_p95_ms: number | null;
  e2e_p99_ms: number | null;
  e2e_latency_rate_per_s: number;
  e2e_max_sustainable_per_s: number | null;
  e2e_max_sustainable_p50_ms: number | null;
  e2e_max_sustainable_p99_ms: number | null;
  e2e_p99_passes_100ms_at_per_s: number | null;
  e2e_p99_passes_100ms_note: string;
  projection_lag_p50_ms: number | null;
  projection_lag_p99_ms: number | null;
  get_cached_p50_ms: number | null;
  get_cached_p99_ms: number | null;
  get_uncached_p50_ms: number | null;
  get_uncached_p99_ms: number | null;
  rebuild_events_per_s: number | null;
  rss_mb_before: number | null;
  rss_mb_peak: number | null;
  rss_mb_after: number | null;
  rss_mb_after_gc: number | null;
  soak_rss_mb_per_min: number | null;
  /** Issue 6's targets, as before. */
  targets: Target[];
  targets_issue_15: TargetRatio[];
  machine: Record<string, unknown>;
  settings: Record<string, unknown>;
  notes: string[];
  details: {
    pg_insert: PgInsertResult[];
    kafka: KafkaProduceResult | null;
    bullmq: BullmqResult | null;
    graphile: PgQueueResult | null;
    pgboss: PgBossResult | null;
    submit: HttpLoadResult[];
    /** POST /tasks/batch; `per_s` there counts requests, `bulk_submit_per_s` tasks. */
    bulk_submit: HttpLoadResult | null;
    submit_projection_catch_up: { events: number; seconds: number; per_s: number } | null;
    get: Record<string, HttpLoadResult>;
    e2e_burst: E2eResult | null;
    e2e_rates: E2eResult[];
    e2e_sustain_tries: E2eResult[];
    e2e_max: E2eResult | null;
    /** CPU by component during the e2e burst (the source of cpu_ms_per_task). */
    e2e_burst_cpu: CpuUsage | null;
    roles_apart: RolesApartRecord | null;
    /** Everything in one `start --processes 2`: the API in two processes. */
    api_processes: RolesApartRecord | null;
    rate_points: RatePoint[];
    /** The service's own timings during each end-to-end run, by run label. */
    service_trace: Record<string, ServiceTraceReport>;
    /** After each end-to-end run: leftovers canceled so the next starts clean. */
    settle: Array<{ after: string; canceled: number; still_open: number; seconds: number }>;
    micro: MicroResult | null;
    append: AppendBaselineResult | null;
    profile_submit: SubmitProfile | null;
    profile_pipeline: PipelineProfile | null;
    rebuild: RebuildResult | null;
    soak: SoakResult | null;
    phases: PhaseRecord[];
    memory_samples: MemorySample[];
    errors: string[];
  };
}

const fmt = (value: number | null | undefined, digits = 1): string =>
  value === null || value === undefined || !Number.isFinite(value)
    ? '-'
    : value >= 1000
      ? Math.round(value).toLocaleString('en-US')
      : value.toFixed(digits);

function table(title: string, header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [`\n${title}`, line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join(
    '\n',
  );
}

const lat = (s: LatencySummary | null | undefined) => [
  fmt(s?.p50_ms, 2),
  fmt(s?.p95_ms, 2),
  fmt(s?.p99_ms, 2),
];

export function renderTable(r: BenchResults): string {
  const out: string[] = [];
  out.push(`task-manager bench (${r.mode} run, ${fmt(r.duration_s, 0)} s, started ${r.started_at})`);
  out.push(
    table(
      'Submit: POST /tasks (echo), autocannon, closed loop',
      ['concurrency', 'tasks/s', 'p50 ms', 'p95 ms', 'p99 ms', 'PG inserts/s', 'submit/PG'],
      r.details.submit.map((s) => {
        const pg = r.details.pg_insert.find((p) => p.concurrency === s.connections && !p.error);
        return [
          String(s.connections),
          fmt(s.per_s),
          ...lat(s),
          fmt(pg?.per_s),
          pg ? fmt(s.per_s / pg.per_s, 2) : '-',
        ];
      }),
    ),
  );
  out.push(
    table(
      'Baseline: raw PostgreSQL single-row INSERT, one per transaction',
      ['concurrency', 'inserts/s', 'p50 ms', 'p95 ms', 'p99 ms'],
      r.details.pg_insert.map((p) => [String(p.concurrency), fmt(p.per_s), ...lat(p)]),
    ),
  );
  const ap = r.details.append;
  if (ap)
    out.push(
      table(
        `Below HTTP: the event store's append alone (pool of ${ap.pool_size}, scratch database)`,
        ['what', 'concurrency', 'per s', 'p50 ms', 'p95 ms', 'p99 ms'],
        [
          ...ap.store.map((a) => [
            'PostgresEventStore.append',
            String(a.concurrency),
            fmt(a.per_s),
            ...lat(a),
          ]),
          ...(ap.sql_with_notify
            ? [
                [
                  'its SQL: head, INSERT, pg_notify, COMMIT',
                  String(ap.sql_with_notify.concurrency),
                  fmt(ap.sql_with_notify.per_s),
                  ...lat(ap.sql_with_notify),
                ],
              ]
            : []),
          ...(ap.sql_without_notify
            ? [
                [
                  'the same without pg_notify',
                  String(ap.sql_without_notify.concurrency),
                  fmt(ap.sql_without_notify.per_s),
                  ...lat(ap.sql_without_notify),
                ],
              ]
            : []),
        ],
      ),
    );
  const k = r.details.kafka;
  const b = r.details.bullmq;
  const gw = r.details.graphile;
  const boss = r.details.pgboss;
  out.push(
    table(
      'Baselines: kafkajs (relay settings), BullMQ (same Redis), Graphile Worker and pg-boss (same PostgreSQL)',
      ['what', 'per second', 'notes'],
      [
        ['kafkajs produce', fmt(k?.per_s), k ? `batches of ${k.batch_size}, acks -1, idempotent` : 'failed'],
        [
          'kafkajs produce, 1 per send',
          fmt(k?.single.per_s),
          k ? `p50 ${fmt(k.single.p50_ms, 2)} ms, p99 ${fmt(k.single.p99_ms, 2)} ms` : '',
        ],
        ['BullMQ add (bulks of 50)', fmt(b?.add_per_s), b ? `${b.jobs} jobs` : 'failed'],
        ['BullMQ process (concurrency 100)', fmt(b?.process_per_s), 'no-op processor'],
        ['BullMQ add + process', fmt(b?.per_s), 'jobs / (add time + process time)'],
        ['Graphile Worker add (addJobs, bulks of 50)', fmt(gw?.add_per_s), gw ? `${gw.jobs} jobs` : 'failed'],
        [
          'Graphile Worker process (concurrency 24)',
          fmt(gw?.process_per_s),
          'no-op task, other settings default',
        ],
        ['Graphile Worker add + process', fmt(gw?.per_s), 'jobs / (add time + process time)'],
        ['pg-boss add (insert, bulks of 50)', fmt(boss?.add_per_s), boss ? `${boss.jobs} jobs` : 'failed'],
        [
          'pg-boss process (4 fetch loops of 50)',
          fmt(boss?.process_per_s),
          'fetch, no-op, complete the batch',
        ],
        ['pg-boss add + process', fmt(boss?.per_s), 'jobs / (add time + process time)'],
        ...(boss?.work
          ? [
              [
                'pg-boss work() add + process',
                fmt(boss.work.per_s),
                `4 workers of 50, polling every ${boss.work.polling_interval_s} s (its floor): not the headline`,
              ],
            ]
          : []),
      ],
    ),
  );
  const baselineWarnings = [
    ...(gw?.warnings ?? []).map((w) => `Graphile Worker ${w}`),
    ...(boss?.warnings ?? []).map((w) => `pg-boss ${w}`),
  ];
  if (baselineWarnings.length > 0) out.push(`Baselines said: ${baselineWarnings.join('; ')}`);
  out.push(
    table(
      'End to end: submit -> done visible (open loop at the offered rate)',
      ['offered/s', 'achieved/s', 'p50 ms', 'p95 ms', 'p99 ms', 'undone', 'sustainable'],
      r.details.rate_points.map((p) => [
        `${fmt(p.offered_per_s, 0)}${p.label.startsWith('sustain') ? ' (search)' : ''}`,
        fmt(p.achieved_per_s),
        fmt(p.p50_ms),
        fmt(p.p95_ms),
        fmt(p.p99_ms),
        String(p.undone),
        p.sustainable ? 'yes' : 'no',
      ]),
    ),
  );
  const burst = r.details.e2e_burst;
  const max = r.details.e2e_max;
  out.push(
    table(
      'End to end: summary',
      ['figure', 'value'],
      [
        [`burst throughput (${burst?.accepted ?? '-'} tasks, 64 in flight)`, `${fmt(r.e2e_per_s)} tasks/s`],
        ['BullMQ add + process', `${fmt(r.bullmq_per_s)} jobs/s`],
        ['e2e / BullMQ', fmt(r.e2e_vs_bullmq, 3)],
        ['Graphile Worker add + process', `${fmt(r.graphile_per_s)} jobs/s`],
        ['e2e / Graphile Worker', fmt(r.e2e_vs_graphile, 3)],
        ['pg-boss add + process', `${fmt(r.pgboss_per_s)} jobs/s`],
        [
          'bulk submit (POST /tasks/batch, 50 a request) / BullMQ addBulk / Graphile addJobs',
          `${fmt(r.bulk_submit_per_s)} / ${fmt(r.details.bullmq?.add_per_s ?? null)} / ${fmt(r.details.graphile?.add_per_s ?? null)} tasks/s (${fmt(r.bulk_submit_vs_bullmq_add, 3)}x, ${fmt(r.bulk_submit_vs_graphile_add, 3)}x)`,
        ],
        [
          'CPU ms per task over the burst: service / postgres / pg bg / kafka / redis = total',
          r.cpu_ms_per_task
            ? `${fmt(r.cpu_ms_per_task.service, 2)} / ${fmt(r.cpu_ms_per_task.postgres, 2)} / ${fmt(r.cpu_ms_per_task.pg_bg, 2)} / ${fmt(r.cpu_ms_per_task.kafka, 2)} / ${fmt(r.cpu_ms_per_task.redis, 2)} = ${fmt(r.cpu_ms_per_task.total, 2)} (load ${fmt(r.cpu_ms_per_task.load, 2)})`
            : '-',
        ],
        ['max sustainable rate', `${fmt(r.e2e_max_sustainable_per_s, 0)} tasks/s`],
        [
          'latency at max sustainable rate p50 / p99',
          `${fmt(r.e2e_max_sustainable_p50_ms)} / ${fmt(r.e2e_max_sustainable_p99_ms)} ms`,
        ],
        [
          'projection lag at that rate p50 / p99',
          `${fmt(r.projection_lag_p50_ms)} / ${fmt(r.projection_lag_p99_ms)} ms`,
        ],
        ['p99 passes 100 ms at', r.e2e_p99_passes_100ms_note],
      ],
    ),
  );
  const topologies = Object.entries(r.e2e_topologies).filter(
    (entry): entry is [string, TopologyResult] => entry[1] !== null,
  );
  if (topologies.length > 0)
    out.push(
      table(
        `End to end by topology (burst of N tasks, 64 in flight; then ${r.e2e_latency_rate_per_s} tasks/s open loop)`,
        [
          'topology',
          'processes',
          'burst/s',
          'burst p99 ms',
          `p50 / p99 ms at ${r.e2e_latency_rate_per_s}/s`,
          'sustained',
          'CPU ms/task: service / PG / kafka / total',
        ],
        topologies.map(([name, t]) => [
          name.replace(/_/g, ' '),
          t.processes.join('; '),
          fmt(t.e2e_per_s),
          fmt(t.burst_p99_ms),
          `${fmt(t.e2e_p50_ms)} / ${fmt(t.e2e_p99_ms)}`,
          t.sustained === null ? '-' : t.sustained ? 'yes' : 'no',
          t.cpu_ms_per_task
            ? `${fmt(t.cpu_ms_per_task.service, 2)} / ${fmt(t.cpu_ms_per_task.postgres + t.cpu_ms_per_task.pg_bg, 2)} / ${fmt(t.cpu_ms_per_task.kafka, 2)} / ${fmt(t.cpu_ms_per_task.total, 2)}`
            : '-',
        ]),
      ),
    );
  if (max)
    out.push(
      table(
        `Where a task's time goes at ${fmt(max.offered_per_s, 0)} tasks/s (from the events' recorded_at)`,
        ['stage', 'p50 ms', 'p95 ms', 'p99 ms'],
        [
          ['POST start -> TaskQueued appended', ...lat(max.stages.post_to_queued)],
          [
            'TaskQueued -> TaskStarted (relay, Kafka, projection, dispatch, claim)',
            ...lat(max.stages.queued_to_started),
          ],
          ['TaskStarted -> TaskSucceeded (handler, finish)', ...lat(max.stages.started_to_succeeded)],
          [
            'TaskSucceeded -> row shows done (relay, Kafka, projection)',
            ...lat(max.stages.succeeded_to_visible),
          ],
          ['whole: POST start -> done visible', ...lat(max.latency)],
        ],
      ),
    );
  const inside = max ? r.details.service_trace[max.label] : undefined;
  if (max && inside) {
    const w = inside.worker;
    const rows: string[][] = [
      [
        'worker: dispatch rounds, mean',
        `${w.dispatch_rounds} rounds, ${fmt(w.dispatch_round_mean_ms, 2)} ms each`,
      ],
      [
        'worker: claim attempts per task won',
        `${fmt(w.claims_won ? w.claim_attempts / w.claims_won : null, 2)} (${w.claim_attempts} for ${w.claims_won}), ${fmt(w.claim_mean_ms, 2)} ms each`,
      ],
      [
        'relay: sends to Kafka',
        `${inside.relay.sends} sends, ${fmt(inside.relay.mean_batch)} events each, p50 ${fmt(inside.relay.send.p50_ms, 2)} / p99 ${fmt(inside.relay.send.p99_ms, 2)} ms`,
      ],
      [
        'relay: append -> read from the log / -> acked by Kafka',
        `p50 ${fmt(inside.relay.append_to_read.p50_ms, 0)} / p99 ${fmt(inside.relay.append_to_read.p99_ms, 0)} ms; p50 ${fmt(inside.relay.append_to_acked.p50_ms, 0)} / p99 ${fmt(inside.relay.append_to_acked.p99_ms, 0)} ms`,
      ],
      ...inside.consumers.map((c) => [
        `consumer ${c.group.replace(/^.*\.(projection\.|workers)/, '$1')}`,
        `${c.events} events; handler p50 ${fmt(c.handle.p50_ms, 2)} / p99 ${fmt(c.handle.p99_ms, 2)} ms; append -> handler p50 ${fmt(c.since_append.p50_ms, 0)} / p99 ${fmt(c.since_append.p99_ms, 0)} ms`,
      ]),
    ];
    out.push(table(`Inside the service at ${fmt(max.offered_per_s, 0)} tasks/s`, ['what', 'measured'], rows));
  }
  const micro = r.details.micro;
  if (micro)
    out.push(
      table(
        'Micro: what the big figures are made of (load process, same Node options)',
        ['what', 'value'],
        [
          [
            'PostgreSQL round trip (SELECT 1, idle connection)',
            `p50 ${fmt(micro.pg_round_trip.p50_ms, 3)} / p99 ${fmt(micro.pg_round_trip.p99_ms, 3)} ms`,
          ],
          [
            'await import() of a loaded module (handleUntilDone, per event)',
            `${fmt(micro.dynamic_import_us)} us`,
          ],
          [
            'jsonwebtoken.verify, string secret vs KeyObject',
            `${fmt(micro.jwt_verify_string_secret_us)} us vs ${fmt(micro.jwt_verify_key_object_us)} us`,
          ],
        ],
      ),
    );
  const get = r.details.get;
  out.push(
    table(
      'GET /tasks/{id}',
      ['case', 'req/s', 'p50 ms', 'p95 ms', 'p99 ms'],
      Object.entries(get).map(([name, g]) => [name, fmt(g.per_s), ...lat(g)]),
    ),
  );
  const p = r.details.profile_submit;
  if (p)
    out.push(
      table(
        `POST /tasks hot path (${p.requests} requests at concurrency 16, traced): ${fmt(p.round_trips_per_request, 1)} statements per request in the trace (the request's own six plus the background pipeline's frequent ones); server mean ${fmt(p.server_mean_ms, 2)} ms`,
        ['statement', 'per request', 'mean ms'],
        p.statements.slice(0, 12).map((s) => [s.label, fmt(s.per_request, 2), fmt(s.mean_ms, 3)]),
      ),
    );
  const prof = p?.cpu_profile;
  if (prof)
    out.push(
      table(
        `CPU profile of the service during that phase (main thread busy ${fmt(prof.busy_share * 100, 0)}% of ${prof.sampled_ms} ms${prof.file ? `; ${prof.file}` : ''})`,
        ['self time in', 'ms', 'share'],
        prof.top_functions
          .slice(0, 10)
          .map((f) => [
            `${f.fn} ${f.where}${f.via ? ` via ${f.via}` : ''}`,
            String(f.ms),
            fmt(f.share * 100, 1) + '%',
          ]),
      ),
    );
  if (prof?.by_component)
    out.push(
      table(
        'The same profile by component: busy time under the nearest module of ours (library and Node work included)',
        ['component', 'ms', 'share'],
        prof.by_component.slice(0, 15).map((c) => [c.component, String(c.ms), fmt(c.share * 100, 1) + '%']),
      ),
    );
  const pp = r.details.profile_pipeline;
  if (pp)
    out.push(
      table(
        `Pipeline per task (${pp.tasks} tasks, traced): ${fmt(pp.round_trips_per_task, 1)} PostgreSQL round trips per task in the service`,
        ['statement', 'per task', 'mean ms'],
        pp.statements.slice(0, 16).map((s) => [s.label, fmt(s.per_task, 2), fmt(s.mean_ms, 3)]),
      ),
    );
  out.push(
    table(
      "CPU by phase (cores busy; 2.0 = both cores). postgres = backends of the bench's databases; pg bg = WAL writer, checkpointer...; other = the rest of this shared machine",
      ['phase', 's', 'service', 'load', 'postgres', 'pg bg', 'kafka', 'redis', 'other', 'machine'],
      r.details.phases.map((ph) => [
        ph.name,
        fmt(ph.seconds, 0),
        fmt(ph.cpu.cores.service, 2),
        fmt(ph.cpu.cores.load, 2),
        fmt(ph.cpu.cores.postgres, 2),
        fmt(ph.cpu.cores.pg_bg, 2),
        fmt(ph.cpu.cores.kafka, 2),
        fmt(ph.cpu.cores.redis, 2),
        fmt(ph.cpu.cores.other, 2),
        fmt(ph.cpu.machineCores, 2),
      ]),
    ),
  );
  out.push(
    table(
      'Rebuild, memory',
      ['figure', 'value'],
      [
        [
          'rebuild (bulk phase, verify on)',
          r.details.rebuild
            ? `${fmt(r.rebuild_events_per_s)} events/s over ${r.details.rebuild.events} events, ${r.details.rebuild.differing_tables} differing tables`
            : '-',
        ],
        [
          'service RSS before / peak / after / after GC',
          `${fmt(r.rss_mb_before)} / ${fmt(r.rss_mb_peak)} / ${fmt(r.rss_mb_after)} / ${fmt(r.rss_mb_after_gc)} MB`,
        ],
        [
          'soak',
          r.details.soak
            ? `${r.details.soak.minutes} min at ${r.details.soak.rate_per_s}/s: RSS ${fmt(r.details.soak.rss_mb_start)} -> ${fmt(r.details.soak.rss_mb_end)} MB (${fmt(r.soak_rss_mb_per_min, 2)} MB/min, second half ${fmt(r.details.soak.rss_mb_per_min_second_half, 2)}); heap ${fmt(r.details.soak.heap_mb_per_min, 2)} MB/min, retained ${fmt(r.details.soak.retained_heap_mb_per_min, 2)} MB/min`
            : 'not run (--soak N)',
        ],
      ],
    ),
  );
  out.push(
    table(
      'Targets (issue 15; reported, never asserted)',
      ['target', 'measured', 'needed', 'result'],
      r.targets_issue_15.map((t) => [
        t.target,
        t.measured,
        t.unit === 'x'
          ? `>= ${t.required}x`
          : t.unit === 'ms'
            ? `< ${t.required} ms`
            : t.unit === 'min'
              ? `${t.required} min soak`
              : `>= ${fmt(t.required)} ${t.unit}`,
        t.reached === null ? 'not measured' : t.reached ? 'reached' : 'not reached',
      ]),
    ),
  );
  out.push(
    table(
      'Targets (issue 6)',
      ['target', 'measured', 'met'],
      r.targets.map((t) => [t.target, t.measured, t.met === null ? 'n/a' : t.met ? 'yes' : 'NO']),
    ),
  );
  const settled = r.details.settle.filter((x) => x.canceled > 0 || x.still_open > 0);
  if (settled.length > 0)
    out.push(
      `\nLeftovers canceled between end-to-end runs: ${settled.map((x) => `${x.after}: ${x.canceled}${x.still_open ? ` (${x.still_open} still open)` : ''}`).join(', ')}`,
    );
  if (r.details.errors.length > 0) out.push(`\nErrors:\n  ${r.details.errors.join('\n  ')}`);
  if (r.notes.length > 0) out.push(`\nNotes:\n  ${r.notes.join('\n  ')}`);
  return out.join('\n');
}

const escapeXml = (text: string) =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/**
 * Latency (p50, p99) against offered rate, both on log scales, hand-written SVG. Runs that did not keep up (the
 * backlog grew) are drawn hollow; a vertical line marks the burst throughput.
 */
export function renderChart(
  points: readonly RatePoint[],
  title: string,
  throughput: number | null = null,
): string {
  const W = 760;
  const H = 460;
  const m = { left: 70, right: 150, top: 50, bottom: 60 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const usable = points
    .filter((p) => p.p50_ms !== null && p.p99_ms !== null)
    .sort((a, b) => a.offered_per_s - b.offered_per_s);
  const rates = usable.map((p) => p.offered_per_s);
  const lats = usable.flatMap((p) => [p.p50_ms!, p.p99_ms!]).concat([100]);
  const decadeFloor = (v: number) => 10 ** Math.floor(Math.log10(Math.max(v, 1e-3)));
  const decadeCeil = (v: number) => 10 ** Math.ceil(Math.log10(Math.max(v, 1e-3)));
  const xMin = decadeFloor(Math.min(...rates, 50, throughput ?? Infinity) * 0.8);
  const xMax = decadeCeil(Math.max(...rates, 1000) * 1.2);
  const yMin = decadeFloor(Math.min(...lats) * 0.8);
  const yMax = decadeCeil(Math.max(...lats) * 1.2);
  const x = (v: number) =>
    m.left + ((Math.log10(v) - Math.log10(xMin)) / (Math.log10(xMax) - Math.log10(xMin))) * pw;
  const y = (v: number) =>
    m.top + ph - ((Math.log10(v) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * ph;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="15">${escapeXml(title)}</text>`,
  );
  const ticks = (min: number, max: number) => {
    const out: Array<{ v: number; major: boolean }> = [];
    for (let d = min; d <= max * 1.0001; d *= 10)
      for (const k of [1, 2, 5]) if (d * k <= max * 1.0001) out.push({ v: d * k, major: k === 1 });
    return out;
  };
  for (const t of ticks(xMin, xMax)) {
    parts.push(
      `<line x1="${x(t.v).toFixed(1)}" y1="${m.top}" x2="${x(t.v).toFixed(1)}" y2="${m.top + ph}" stroke="${t.major ? '#ccc' : '#eee'}"/>`,
      `<text x="${x(t.v).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${t.v}</text>`,
    );
  }
  for (const t of ticks(yMin, yMax)) {
    parts.push(
      `<line x1="${m.left}" y1="${y(t.v).toFixed(1)}" x2="${m.left + pw}" y2="${y(t.v).toFixed(1)}" stroke="${t.major ? '#ccc' : '#eee'}"/>`,
      `<text x="${m.left - 6}" y="${(y(t.v) + 4).toFixed(1)}" text-anchor="end">${t.v}</text>`,
    );
  }
  parts.push(
    `<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
    `<text x="${m.left + pw / 2}" y="${H - 18}" text-anchor="middle">offered rate (tasks/s, log scale)</text>`,
    `<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">submit -> done latency (ms, log scale)</text>`,
  );
  if (100 >= yMin && 100 <= yMax)
    parts.push(
      `<line x1="${m.left}" y1="${y(100).toFixed(1)}" x2="${m.left + pw}" y2="${y(100).toFixed(1)}" stroke="#c00" stroke-dasharray="6 4"/>`,
      `<text x="${m.left + pw + 6}" y="${(y(100) + 4).toFixed(1)}" fill="#c00">100 ms</text>`,
    );
  if (throughput !== null && throughput >= xMin && throughput <= xMax)
    parts.push(
      `<line x1="${x(throughput).toFixed(1)}" y1="${m.top}" x2="${x(throughput).toFixed(1)}" y2="${m.top + ph}" stroke="#555" stroke-dasharray="3 3"/>`,
      `<text x="${(x(throughput) + 4).toFixed(1)}" y="${m.top + 14}" fill="#555">burst throughput ${Math.round(throughput)}/s</text>`,
    );
  const series: Array<{ name: string; color: string; pick: (p: RatePoint) => number }> = [
    { name: 'p50', color: '#1f77b4', pick: (p) => p.p50_ms! },
    { name: 'p99', color: '#d62728', pick: (p) => p.p99_ms! },
  ];
  series.forEach((s, i) => {
    if (usable.length > 1)
      parts.push(
        `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${usable
          .map((p) => `${x(p.offered_per_s).toFixed(1)},${y(s.pick(p)).toFixed(1)}`)
          .join(' ')}"/>`,
      );
    for (const p of usable)
      parts.push(
        `<circle cx="${x(p.offered_per_s).toFixed(1)}" cy="${y(s.pick(p)).toFixed(1)}" r="4" fill="${p.sustainable ? s.color : 'white'}" stroke="${s.color}" stroke-width="2"><title>${escapeXml(`${s.name} ${s.pick(p)} ms at ${p.offered_per_s}/s${p.sustainable ? '' : ' (not sustained: the backlog grew)'}`)}</title></circle>`,
      );
    const ly = m.top + 10 + i * 20;
    parts.push(
      `<line x1="${m.left + pw + 12}" y1="${ly}" x2="${m.left + pw + 36}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`,
      `<text x="${m.left + pw + 42}" y="${ly + 4}">${s.name}</text>`,
    );
  });
  parts.push(
    `<text x="${m.left + pw + 12}" y="${m.top + 60}" font-size="11">hollow: not sustained</text>`,
    `<text x="${m.left + pw + 12}" y="${m.top + 74}" font-size="11">(the backlog grew)</text>`,
    '</svg>',
  );
  return parts.join('\n') + '\n';
}
