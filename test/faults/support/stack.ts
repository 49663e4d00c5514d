/**
 * test/faults/support: what only the fault cases need: the stack of role processes under load (this file), the
 * processes they stop and start (processes.ts), and the relay that kills itself mid-batch (selfKillingRelay.ts).
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Kafka, logLevel } from 'kafkajs';
import type { Config } from '../../../src/config.js';
import type { Role } from '../../../src/main.js';
import { createPool, type Pool } from '../../../src/infra/db/pool.js';
import { silentLogger } from '../../../src/infra/logger.js';
import type { RecordedEvent } from '../../../src/infra/eventStore/eventStore.js';
import { RELAY_CHECKPOINT } from '../../../src/infra/bus/kafka/relay.js';
import { foldEvents } from '../../../src/domain/decider.js';
import { task } from '../../../src/domain/tasks/state.js';
import { taskStreamId, type TaskEvent } from '../../../src/domain/tasks/events.js';
import { applyOnce } from '../../../src/projections/projectionRunner.js';
import { PROJECTIONS } from '../../../src/projections/index.js';
import { ident, PROGRESS_TABLES, readModelTables } from '../../../src/projections/rebuildTables.js';
import { readWholeLog } from '../../support/log.js';
import { adminDatabaseUrl, createSiblingDatabase } from '../../support/postgres.js';
import {
  call,
  quickWorkerSettings,
  registerAndLogin,
  startTestService,
  readThrough,
  useStartedFixture,
  type TestService,
} from '../../support/service.js';
import { killAll, startRoleProcess, type Child } from '../../support/processes.js';
import { ROLE_START_TIMEOUT_MS } from './processes.js';
import { sleep, waitFor } from '../../support/wait.js';

export const TERMINAL_STATUSES = new Set(['done', 'failed', 'canceled']);

/**
 * How much load the fault cases put on the stack, against what they ran before the pipeline was batched (15 to 50
 * tasks/s): the throughput issue asks for the faults to be survived at ten times that, where appends, claims and
 * projections go in batches.
 */
export const LOAD_FACTOR = 10;

/** Short leases and retries, so a crashed worker's task is retried in seconds, not minutes. */
export const faultSettings = (config: Config): void => {
  quickWorkerSettings(config);
  config.workers.concurrency = 32;
  config.workers.queues = { default: 32 };
  config.relay.lockRetryMs = 500;
  config.jwt.accessTtlSeconds = 3600; // the token of the load outlives every case
};

/**
 * The service on the test's PostgreSQL, Redis and Kafka (a database, topic and key prefix of its own): the API
 * and `roles` in this process, any other role in real processes (`roleProcess`).
 */
export interface FaultStack {
  service: TestService;
  url: string;
  config: Config;
  token: string;
  /** A pool of the test's own on the service's database, for checks. */
  db: Pool;
  roleProcess(roles: string[], adjust?: (config: Config) => void): Promise<Child>;
  /** Roles including `api` in a process of their own, and the URL it listens on. */
  apiProcess(roles?: string[]): Promise<{ child: Child; url: string }>;
  stop(): Promise<void>;
}

export async function startFaultStack(
  roles: readonly Role[],
  adjust: (config: Config) => void = () => {},
): Promise<FaultStack> {
  const service = await startTestService(
    'full',
    (config) => {
      faultSettings(config);
      adjust(config);
    },
    roles,
  );
  const db = createPool(
    { connectionString: service.config.databaseUrl!, max: 4, statementTimeoutMs: 60000 },
    silentLogger(),
  );
  const { token } = await registerAndLogin(service.url, { label: 'faults' });
  const roleProcess = (processRoles: string[], adjustChild: (config: Config) => void = () => {}) => {
    const config: Config = structuredClone(service.config);
    adjustChild(config);
    return startRoleProcess(config, processRoles, ROLE_START_TIMEOUT_MS);
  };
  return {
    service,
    url: service.url,
    config: service.config,
    token,
    db,
    roleProcess,
    async apiProcess(processRoles = ['api']) {
      const child = await roleProcess(processRoles);
      await child.waitForOutput(/API: +http:\/\/\S+/, 10000);
      const url = /API: +(http:\/\/\S+)/.exec(child.output())![1]!;
      return { child, url };
    },
    async stop() {
      await killAll();
      await db.end().catch(() => undefined);
      await service.stop().catch(async (error) => {
        // It stops the service first and drops the database after: do not leave the database behind.
        const admin = new pg.Client({ connectionString: adminDatabaseUrl() });
        await admin.connect();
        try {
          await admin.query(
            `DROP DATABASE IF EXISTS ${new URL(service.config.databaseUrl!).pathname.slice(1)} WITH (FORCE)`,
          );
        } finally {
          await admin.end();
        }
        throw error;
      });
    },
  };
}

/** A suite's fault stack from useFaultStack: the started FaultStack's fields and methods, used when a hook or test runs. */
export type SuiteFaultStack = Readonly<Omit<FaultStack, 'stop'>>;

/**
 * A fault suite's stack, started and stopped by mocha hooks (useStartedFixture): the suite is skipped loudly when
 * the full stack cannot be had, else the stack starts as startFaultStack(roles, adjust) starts it, before the
 * suite's own `before` hooks, and stops (role processes killed, database dropped) after its own `after` hooks.
 * Returns it as a SuiteFaultStack that reads the running stack, so the suite can name it in its `describe` body.
 */
export function useFaultStack(roles: readonly Role[], adjust?: (config: Config) => void): SuiteFaultStack {
  const running = useStartedFixture('full', 'the fault stack', () => startFaultStack(roles, adjust));
  return readThrough(running, ['service', 'url', 'config', 'token', 'db', 'roleProcess', 'apiProcess']);
}

export interface LoadOptions {
  count: number;
  /** Requests in flight at once. */
  concurrency: number;
  /** Pace the submissions (so the fault lands while tasks still arrive); unpaced when absent. */
  perSecond?: number;
  spec?: (index: number) => Record<string, unknown>;
  /** Statuses answered (and retried with the same Idempotency-Key) without counting as a failure. */
  retryable?: ReadonlySet<number>;
  /** Give up on a task after retrying this long. */
  retryForMs?: number;
}

/** Half echo, half short sleeps; short timeouts so the lease of a crashed worker runs out within seconds. */
export const mixedTask = (index: number): Record<string, unknown> =>
  index % 2 === 0
    ? { title: `load ${index}`, type: 'echo', payload: { index }, timeout_ms: 2000 }
    : { title: `load ${index}`, type: 'sleep', payload: { ms: 20 + (index % 7) * 30 }, timeout_ms: 2000 };

/**
 * Tasks submitted over HTTP, each with an Idempotency-Key, so a request that failed (or whose answer was lost)
 * can be sent again without making a second task. `ids` holds every task the API accepted (202).
 */
export class Load {
  readonly ids: string[] = [];
  /** Every answer other than 202, by status (0 = no answer: connection error). */
  readonly rejections = new Map<number, number>();
  /** Requests that failed for good (not retryable, or retried past `retryForMs`). */
  readonly failures: string[] = [];
  readonly done: Promise<void>;
  private started = 0;
  readonly run = randomBytes(4).toString('hex');

  constructor(
    private readonly stack: Pick<FaultStack, 'url' | 'token'>,
    private readonly options: LoadOptions,
  ) {
    const startedAt = Date.now();
    const next = (): number | null => (this.started < options.count ? this.started++ : null);
    const worker = async () => {
      for (let index = next(); index !== null; index = next()) {
        if (options.perSecond) {
          const due = startedAt + (index * 1000) / options.perSecond;
          if (due > Date.now()) await sleep(due - Date.now());
        }
        await this.submit(index);
      }
    };
    this.done = Promise.all(Array.from({ length: options.concurrency }, worker)).then(() => undefined);
  }

  get submitted(): number {
    return this.ids.length;
  }

  private async submit(index: number): Promise<void> {
    const spec = (this.options.spec ?? mixedTask)(index);
    const key = `${this.run}-${index}`;
    const deadline = Date.now() + (this.options.retryForMs ?? 60000);
    for (;;) {
      // Status 0: no answer at all (the connection failed).
      const { status, body } = await call(this.stack.url, 'POST', '/tasks', {
        body: spec,
        token: this.stack.token,
        headers: { 'idempotency-key': key },
      }).catch(() => ({ status: 0, body: null as any }));
      if (status === 202) {
        this.ids.push(body.id as string);
        return;
      }
      this.rejections.set(status, (this.rejections.get(status) ?? 0) + 1);
      const retryable = status === 0 || (this.options.retryable?.has(status) ?? false);
      if (!retryable || Date.now() > deadline) {
        this.failures.push(`task ${index}: ${status} ${JSON.stringify(body)?.slice(0, 300)}`);
        return;
      }
      await sleep(200);
    }
  }
}

export const startLoad = (stack: Pick<FaultStack, 'url' | 'token'>, options: LoadOptions): Load =>
  new Load(stack, options);

export async function statusCounts(db: Pool, ids: string[]): Promise<Record<string, number>> {
  const { rows } = await db.query<{ status: string; count: number }>(
    'SELECT status, count(*)::int AS count FROM tasks WHERE id = ANY($1::uuid[]) GROUP BY status',
    [ids],
  );
  const counts: Record<string, number> = Object.fromEntries(rows.map((row) => [row.status, row.count]));
  const seen = rows.reduce((sum, row) => sum + row.count, 0);
  if (seen < ids.length) counts.not_in_read_model = ids.length - seen;
  return counts;
}

/** (a) Every task reaches a terminal status, as the read model (what users see) shows it. */
/**
 * Where the pipeline stands: the log's length, the relay's checkpoint and each projection's position per partition,
 * so a test that timed out says which stage stopped (nothing published, or published and not applied).
 */
export async function pipelinePositions(db: Pool): Promise<string> {
  const { rows } = await db.query<{ what: string; position: string | null; updated: string | null }>(
    `SELECT 'log events' AS what, count(*)::text AS position, NULL AS updated FROM events
     UNION ALL SELECT 'checkpoint ' || name, position, updated_at::text FROM log_checkpoints
     UNION ALL SELECT 'projection ' || projection || ' p' || partition, position, NULL FROM projection_partition_positions`,
  );
  return rows
    .map((row) => `${row.what}=${row.position}${row.updated ? ` (at ${row.updated})` : ''}`)
    .join('; ');
}

export async function waitUntilAllTerminal(db: Pool, ids: string[], timeoutMs: number) {
  return waitFor(
    `all ${ids.length} tasks to reach a terminal status`,
    async () => {
      const counts = await statusCounts(db, ids);
      const terminal = Object.entries(counts)
        .filter(([status]) => TERMINAL_STATUSES.has(status))
        .reduce((sum, [, count]) => sum + count, 0);
      return terminal === ids.length ? counts : undefined;
    },
    {
      timeoutMs,
      describe: async () =>
        `Status counts: ${JSON.stringify(await statusCounts(db, ids).catch((e) => String(e)))}. ` +
        `Pipeline: ${await pipelinePositions(db).catch((e) => String(e))}`,
      intervalMs: 250,
      ignoreErrors: true,
    },
  );
}

/** The whole global log, in order. */
export const readLog = (stack: SuiteFaultStack): Promise<RecordedEvent[]> =>
  readWholeLog(stack.service.service.infrastructure.store);

export interface HistoryReport {
  /** Broken guarantees, one line each: the case asserts this is empty. */
  problems: string[];
  statuses: Record<string, number>;
  /** Tasks that needed more than one attempt. */
  retried: number;
  /** Attempts failed by the lease reaper (their worker vanished). */
  leaseExpired: Array<{ taskId: string; attempt: number; workerId: string | null }>;
}

/**
 * From the log alone: (a) every task is in an allowed terminal status, and (b) no attempt ran to success twice:
 * at most one TaskSucceeded per task, for the attempt its worker had claimed, and no attempt number started twice.
 */
export function checkHistories(
  events: RecordedEvent[],
  ids: string[],
  allowed: ReadonlySet<string> = new Set(['done']),
): HistoryReport {
  const byStream = new Map<string, RecordedEvent[]>();
  for (const event of events) {
    const list = byStream.get(event.streamId);
    if (list) list.push(event);
    else byStream.set(event.streamId, [event]);
  }
  const report: HistoryReport = { problems: [], statuses: {}, retried: 0, leaseExpired: [] };
  for (const id of ids) {
    const stream = byStream.get(taskStreamId(id)) ?? [];
    if (stream.length === 0) {
      report.problems.push(`task ${id}: accepted (202) but not in the log`);
      continue;
    }
    stream.forEach((event, index) => {
      if (event.revision !== index)
        report.problems.push(`task ${id}: revision ${event.revision} at index ${index} of its stream`);
    });
    if (stream[0]!.type !== 'TaskQueued') report.problems.push(`task ${id}: starts with ${stream[0]!.type}`);
    const state = foldEvents(task, stream);
    report.statuses[state.status] = (report.statuses[state.status] ?? 0) + 1;
    if (!allowed.has(state.status))
      report.problems.push(`task ${id}: ${state.status} in the log (expected ${[...allowed].join(' or ')})`);

    const startedAttempts = new Map<number, string>();
    let claimed: { attempt: number; workerId: string } | null = null;
    let successes = 0;
    for (const event of stream as unknown as Array<RecordedEvent & TaskEvent>) {
      if (event.type === 'TaskStarted') {
        const { attempt, workerId } = event.data;
        if (startedAttempts.has(attempt))
          report.problems.push(
            `task ${id}: attempt ${attempt} started twice (${startedAttempts.get(attempt)} and ${workerId})`,
          );
        startedAttempts.set(attempt, workerId);
        claimed = { attempt, workerId };
      } else if (event.type === 'TaskSucceeded') {
        successes++;
        if (!claimed || claimed.attempt !== event.data.attempt)
          report.problems.push(
            `task ${id}: TaskSucceeded for attempt ${event.data.attempt}, but the attempt claimed last was ${claimed?.attempt ?? 'none'}`,
          );
      } else if (event.type === 'TaskAttemptFailed' || event.type === 'TaskFailed') {
        if (event.data.error.kind === 'lease_expired')
          report.leaseExpired.push({
            taskId: id,
            attempt: event.data.attempt,
            workerId: startedAttempts.get(event.data.attempt) ?? null,
          });
      }
    }
    if (successes > 1) report.problems.push(`task ${id}: ${successes} TaskSucceeded events`);
    if (state.status === 'done' && successes !== 1)
      report.problems.push(`task ${id}: done with ${successes} TaskSucceeded events`);
    if (startedAttempts.size > 1) report.retried++;
  }
  return report;
}

/**
 * What a rebuild must reproduce exactly: every table of the read-model registry, and the projections' stream
 * progress. Not the partition positions: they are the live consumer's Kafka offsets, which folding the log does
 * not make.
 */
const STREAM_PROGRESS: (typeof PROGRESS_TABLES)[number] = 'projection_stream_progress';
const COMPARED_TABLES = [...readModelTables(PROJECTIONS).map((table) => table.name), STREAM_PROGRESS];

/** The columns of a table's primary key, in key order, as SQL: the order its rows are compared in. */
const orderOf = new Map<string, Promise<string>>();
function primaryKeyOrder(pool: Pool, table: string): Promise<string> {
  let order = orderOf.get(table);
  if (!order) {
    order = pool
      .query<{ column: string }>(
        `SELECT a.attname AS column
           FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = $1::regclass AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)`,
        [ident(table)],
      )
      .then(({ rows }) => {
        if (rows.length === 0)
          throw new Error(`read-model table ${table} has no primary key to order rows by`);
        return rows.map((row) => ident(row.column)).join(', ');
      });
    order.catch(() => orderOf.delete(table));
    orderOf.set(table, order);
  }
  return order;
}

async function snapshot(pool: Pool): Promise<Record<string, string[]>> {
  const tables: Record<string, string[]> = {};
  for (const table of COMPARED_TABLES)
    tables[table] = (
      await pool.query(`SELECT * FROM ${ident(table)} ORDER BY ${await primaryKeyOrder(pool, table)}`)
    ).rows.map((row) => JSON.stringify(row));
  return tables;
}

function differences(live: Record<string, string[]>, rebuilt: Record<string, string[]>): string[] {
  const found: string[] = [];
  for (const table of COMPARED_TABLES) {
    const liveRows = new Set(live[table]);
    const rebuiltRows = new Set(rebuilt[table]);
    const missing = rebuilt[table]!.filter((row) => !liveRows.has(row));
    const extra = live[table]!.filter((row) => !rebuiltRows.has(row));
    if (missing.length + extra.length === 0) continue;
    found.push(
      `${table}: ${live[table]!.length} live rows, ${rebuilt[table]!.length} rebuilt; ${missing.length} rebuilt rows not live, ${extra.length} live rows not rebuilt`,
      ...missing.slice(0, 3).map((row) => `  rebuilt only: ${row.slice(0, 600)}`),
      ...extra.slice(0, 3).map((row) => `  live only:    ${row.slice(0, 600)}`),
    );
  }
  return found;
}

/**
 * (c) The read models equal a rebuild from the log: every event folded with the projections' own `applyOnce` into
 * a fresh database beside the live one, then every row of tasks, users, refresh_tokens and the projections'
 * stream progress compared in full. Returns the differences (empty when equal) once the live projector has had
 * `timeoutMs` to catch up.
 */
export async function readModelDifferences(
  stack: SuiteFaultStack,
  events: RecordedEvent[],
  timeoutMs = 30000,
): Promise<string[]> {
  const rebuilt = await createSiblingDatabase(stack.db, stack.config.databaseUrl!);
  try {
    const logger = silentLogger();
    for (const event of events)
      for (const projection of PROJECTIONS) await applyOnce(rebuilt.pool, projection, event, logger);
    const expected = await snapshot(rebuilt.pool);
    let found: string[] = [];
    const deadline = Date.now() + timeoutMs;
    do {
      found = differences(await snapshot(stack.db), expected);
      if (found.length === 0) return [];
      await sleep(250);
    } while (Date.now() < deadline);
    return found;
  } finally {
    await rebuilt.drop();
  }
}

async function relayCheckpoint(db: Pool): Promise<string | null> {
  const { rows } = await db.query<{ position: string }>(
    'SELECT position FROM log_checkpoints WHERE name = $1',
    [RELAY_CHECKPOINT],
  );
  return rows[0]?.position ?? null;
}

export interface TopicContents {
  /** Event id of every message, in the order read, duplicates included. */
  eventIds: string[];
  /** How often each event id appears. */
  copies: Map<string, number>;
}

/**
 * Everything in a topic up to its high watermarks at the time of the call, read with a fresh consumer group from
 * the beginning.
 */
export async function readTopic(brokers: string[], topic: string, timeoutMs = 60000): Promise<TopicContents> {
  const kafka = new Kafka({ clientId: 'tm-faults-check', brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
  const targets = new Map(
    offsets.filter((o) => Number(o.high) > Number(o.low)).map((o) => [o.partition, Number(o.high) - 1]),
  );
  const contents: TopicContents = { eventIds: [], copies: new Map() };
  if (targets.size === 0) return contents;
  const groupId = `tm-faults-check-${randomBytes(4).toString('hex')}`;
  const consumer = kafka.consumer({
    groupId,
    maxWaitTimeInMs: 100,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
  });
  const reached = new Set<number>();
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => (finish = resolve));
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        const wire = JSON.parse(message.value!.toString('utf8')) as { metadata: { eventId: string } };
        const id = wire.metadata.eventId;
        contents.eventIds.push(id);
        contents.copies.set(id, (contents.copies.get(id) ?? 0) + 1);
        if (Number(message.offset) >= (targets.get(partition) ?? Infinity)) {
          reached.add(partition);
          if (reached.size === targets.size) finish();
        }
      },
    });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `read only ${reached.size} of ${targets.size} partitions of ${topic} in ${timeoutMs} ms`,
            ),
          ),
        timeoutMs,
      );
    });
    await Promise.race([finished, late]).finally(() => clearTimeout(timer));
  } finally {
    await consumer.disconnect().catch(() => undefined);
    const cleanup = kafka.admin();
    await cleanup
      .connect()
      .then(() => cleanup.deleteGroups([groupId]))
      .catch(() => undefined)
      .finally(() => cleanup.disconnect());
  }
  return contents;
}

export interface KafkaReport {
  /** Log events not found in the topic. */
  missing: string[];
  messages: number;
  /** Events published more than once (absorbed downstream). */
  duplicated: number;
  copies: Map<string, number>;
}

/**
 * (d) No event is missing from Kafka: once the relay's checkpoint has reached the end of the log, every event id of
 * the log is in the run's topic at least once.
 */
export async function kafkaReport(
  stack: SuiteFaultStack,
  events: RecordedEvent[],
  timeoutMs = 60000,
): Promise<KafkaReport> {
  const last = events[events.length - 1]!.position;
  await waitFor(
    'the relay checkpoint to reach the end of the log',
    async () => ((await relayCheckpoint(stack.db)) ?? '') >= last || undefined,
    {
      timeoutMs: timeoutMs,
      describe: async () => `Checkpoint ${await relayCheckpoint(stack.db)}, log ends at ${last}`,
      intervalMs: 250,
      ignoreErrors: true,
    },
  );
  const contents = await readTopic(stack.config.kafka.brokers, stack.config.kafka.topic, timeoutMs);
  const missing = events.map((e) => e.metadata.eventId).filter((id) => !contents.copies.has(id));
  return {
    missing,
    messages: contents.eventIds.length,
    duplicated: [...contents.copies.values()].filter((n) => n > 1).length,
    copies: contents.copies,
  };
}

/** What `expectNothingLost` read, for a case's own checks after it. */
export interface FaultVerdict {
  events: RecordedEvent[];
  histories: HistoryReport;
  kafka: KafkaReport;
}

/**
 * What every fault case asserts once its load has ended: each submission accepted, `done` tasks done as the read
 * model shows them (within `timeoutMs`), (a) and (b) from the log, (c) the read models equal a fold of the log,
 * (d) every log event in Kafka.
 */
export async function expectNothingLost(
  stack: SuiteFaultStack,
  load: Load,
  options: { done: number; timeoutMs: number },
): Promise<FaultVerdict> {
  await load.done;
  expect(load.failures, 'every submission accepted').to.deep.equal([]);
  expect(await waitUntilAllTerminal(stack.db, load.ids, options.timeoutMs)).to.deep.equal({
    done: options.done,
  });
  const events = await readLog(stack);
  const histories = checkHistories(events, load.ids);
  expect(histories.problems).to.deep.equal([]);
  expect(await readModelDifferences(stack, events)).to.deep.equal([]);
  const kafka = await kafkaReport(stack, events);
  expect(kafka.missing, 'log events missing from Kafka').to.deep.equal([]);
  return { events, histories, kafka };
}

/** Sum of every sample of a Prometheus metric in /metrics; with `label`, of the samples that carry it. */
export async function metricTotal(url: string, name: string, label?: string): Promise<number> {
  const response = await fetch(`${url}/metrics`);
  const text = await response.text();
  let total = 0;
  for (const line of text.split('\n'))
    if ((line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && (!label || line.includes(label)))
      total += Number(line.split(' ').pop());
  return total;
}
