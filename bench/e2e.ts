import http from 'node:http';
import pg from 'pg';
import { nowMs, round, sleep, summarize, type LatencySummary } from './stats.js';

/**
 * Submit -> `done` visible, per task. Tasks are POSTed (open loop at a fixed rate, or closed loop for a burst);
 * a poller watches the `tasks` read model for the submitted ids in batches, over its own connection (one
 * query every POLL_MS for the oldest POLL_BATCH outstanding ids rather than a GET per task per poll, which would
 * flood the API being measured). A sample of the tasks seen done is then read through GET /tasks/{id} as well, to check the
 * API shows what the table shows. Event timestamps from the log give where each task spent its time.
 */
export interface E2eRequest {
  url: string;
  token: string;
  databaseUrl: string;
  /** Open loop at this rate (tasks/s) for `seconds`; or, with `burst`, that many tasks with `concurrency` in flight. */
  rate?: number;
  seconds?: number;
  burst?: number;
  concurrency?: number;
  drainTimeoutSeconds: number;
  /** GET every n-th task once it is seen done (1 = all); 0 = none. */
  confirmEvery: number;
  /**
   * Overload guard for open-loop runs: stop offering once this many tasks are submitted and not yet done, so a
   * rate far above capacity leaves a backlog that drains in bounded time. The run then counts as not kept up.
   */
  maxOutstanding?: number;
  label: string;
}

export interface StageBreakdown {
  /** POST start -> TaskQueued appended (HTTP, auth, validation, read + append). */
  post_to_queued: LatencySummary;
  /** TaskQueued -> TaskStarted appended (relay, Kafka, projection of TaskQueued, worker wake-up, dispatch, claim). */
  queued_to_started: LatencySummary;
  /** TaskStarted -> TaskSucceeded appended (handler, finish command). */
  started_to_succeeded: LatencySummary;
  /** TaskSucceeded appended -> row shows done (relay, Kafka, projection of TaskStarted and TaskSucceeded). */
  succeeded_to_visible: LatencySummary;
}

export interface E2eResult {
  label: string;
  offered_per_s: number | null;
  submitted: number;
  accepted: number;
  rejected: number;
  done: number;
  undone: number;
  /** Tasks done per second, first POST to last done. */
  achieved_per_s: number;
  wall_s: number;
  latency: LatencySummary;
  /** Latency of the first and last quarter of the run (by submission order): a growing backlog shows here. */
  first_quarter_p50_ms: number | null;
  last_quarter_p50_ms: number | null;
  post: LatencySummary;
  stages: StageBreakdown;
  /** Projection lag: TaskSucceeded appended -> row visible (same as stages.succeeded_to_visible). */
  projection_lag: LatencySummary;
  confirm: { checked: number; mismatched: number; get: LatencySummary };
  /** How late the open-loop sender fell behind its schedule (a client that cannot keep up shows here). */
  max_send_slip_ms: number;
  /** Set when the overload guard stopped the offered load early: after this many seconds. */
  stopped_early_after_s: number | null;
  poll_ms: number;
}

interface Submitted {
  id: string | null;
  postStart: number;
  postEnd: number | null;
  done: number | null;
}

const POLL_MS = 5;
/** Ids per poll at most. */
const POLL_BATCH = 250;
const BACKLOG_POLL_MS = 20;
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function request(
  url: URL,
  method: string,
  token: string,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { authorization: `Bearer ${token}` };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(body);
    }
    const req = http.request(url, { method, headers, agent, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

export async function runE2e(options: E2eRequest): Promise<E2eResult> {
  const base = new URL(options.url);
  const postUrl = new URL('/tasks', base);
  const body = JSON.stringify({ title: `bench ${options.label}`, type: 'echo', payload: { n: 1 } });
  const tasks: Submitted[] = [];
  const byId = new Map<string, Submitted>();
  const outstanding = new Set<string>();
  const confirmations: Promise<void>[] = [];
  const confirmLatencies: number[] = [];
  let mismatched = 0;
  let rejected = 0;
  let doneCount = 0;
  let maxSlip = 0;
  let pollError: unknown = null;
  let inFlight = 0;
  let stoppedEarly: number | null = null;

  const db = new pg.Client({ connectionString: options.databaseUrl, application_name: 'bench-e2e-poller' });
  db.on('error', (error) => (pollError ??= error));
  await db.connect();
  // An index lookup whatever the table's statistics say: a sequential scan of a large tasks table per poll would
  // load the machine the service runs on.
  await db.query('SET enable_seqscan = off');
  await db.query('SET plan_cache_mode = force_generic_plan');
  const posts: Promise<void>[] = [];

  const submit = (): Promise<void> => {
    const task: Submitted = { id: null, postStart: nowMs(), postEnd: null, done: null };
    tasks.push(task);
    inFlight++;
    return request(postUrl, 'POST', options.token, body).then(
      (res) => {
        inFlight--;
        task.postEnd = nowMs();
        if (res.status !== 202) {
          rejected++;
          return;
        }
        task.id = (JSON.parse(res.body) as { id: string }).id;
        byId.set(task.id, task);
        outstanding.add(task.id);
      },
      () => {
        inFlight--;
        task.postEnd = nowMs();
        rejected++;
      },
    );
  };

  let sending = true;
  const poller = (async () => {
    while (sending || outstanding.size > 0) {
      if (outstanding.size === 0) {
        await sleep(POLL_MS);
        continue;
      }
      // The oldest outstanding tasks (a Set keeps insertion order), which are the next to finish in a FIFO queue.
      // Few enough for an index lookup: a long id list makes PostgreSQL scan the whole tasks table, which at a
      // poll every 5 ms took most of a core from the service being measured.
      const ids: string[] = [];
      for (const id of outstanding) {
        ids.push(id);
        if (ids.length === POLL_BATCH) break;
      }
      const seenAt = nowMs(); // the statement's snapshot is taken just after this: the row was visible by then
      // Prepared (planned once: with sequential scans off, the plan is the primary key's whatever the list's
      // length), so the poll costs the measured machine's PostgreSQL no parse and plan 200 times a second.
      const { rows } = await db.query<{ id: string }>({
        name: 'bench-e2e-poll',
        text: `SELECT id::text AS id FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'done'`,
        values: [ids],
      });
      for (const row of rows) {
        const task = byId.get(row.id);
        if (!task || task.done !== null) continue;
        task.done = seenAt;
        outstanding.delete(row.id);
        doneCount++;
        if (options.confirmEvery > 0 && doneCount % options.confirmEvery === 0) {
          const started = nowMs();
          confirmations.push(
            request(new URL(`/tasks/${row.id}`, base), 'GET', options.token).then(
              (res) => {
                confirmLatencies.push(nowMs() - started);
                if (res.status !== 200 || (JSON.parse(res.body) as { status?: string }).status !== 'done')
                  mismatched++;
              },
              () => void mismatched++,
            ),
          );
        }
      }
      // A backlog (more outstanding than one poll looks at) is measured in seconds, not milliseconds: polling it
      // less often leaves the machine to the service.
      const interval = outstanding.size > POLL_BATCH ? BACKLOG_POLL_MS : POLL_MS;
      const elapsed = nowMs() - seenAt;
      if (elapsed < interval) await sleep(interval - elapsed);
    }
  })().catch((error: unknown) => {
    pollError = error;
  });

  const first = nowMs();
  let offered: number | null = null;
  try {
    if (options.burst !== undefined) {
      let next = 0;
      const lanes = Array.from({ length: Math.min(options.concurrency ?? 64, options.burst) }, async () => {
        while (next < options.burst!) {
          next++;
          await submit();
        }
      });
      await Promise.all(lanes);
    } else {
      const rate = options.rate!;
      offered = rate;
      const total = Math.max(1, Math.round(rate * options.seconds!));
      for (let sent = 0; sent < total;) {
        if (options.maxOutstanding !== undefined && outstanding.size + inFlight > options.maxOutstanding) {
          stoppedEarly = (nowMs() - first) / 1000;
          break;
        }
        const due = Math.min(total, Math.floor(((nowMs() - first) * rate) / 1000) + 1);
        while (sent < due) {
          maxSlip = Math.max(maxSlip, nowMs() - (first + (sent * 1000) / rate));
          posts.push(submit());
          sent++;
        }
        const wait = first + (sent * 1000) / rate - nowMs();
        if (wait > 0) await sleep(wait);
      }
      await Promise.all(posts);
    }
  } finally {
    sending = false;
  }
  const drainDeadline = nowMs() + options.drainTimeoutSeconds * 1000;
  while (outstanding.size > 0 && nowMs() < drainDeadline && pollError === null) await sleep(20);
  const undoneIds = [...outstanding];
  outstanding.clear();
  await poller;
  await Promise.all(confirmations);
  if (pollError !== null) {
    await db.end().catch(() => undefined);
    throw pollError;
  }

  const accepted = tasks.filter((t) => t.id !== null);
  const done = accepted.filter((t) => t.done !== null);
  const lastDone = done.reduce((max, t) => Math.max(max, t.done!), first);
  const wall = (lastDone - first) / 1000;
  const latency = (t: Submitted) => t.done! - t.postStart;
  const quarter = Math.floor(accepted.length / 4);
  const quarterP50 = (slice: Submitted[]) => {
    const doneSlice = slice.filter((t) => t.done !== null);
    return doneSlice.length === 0 ? null : summarize(doneSlice.map(latency)).p50_ms;
  };

  const stages = await stageBreakdown(
    db,
    done.map((t) => ({ id: t.id!, postStart: t.postStart, visible: t.done! })),
  );
  await db.end();

  return {
    label: options.label,
    offered_per_s: offered,
    submitted: tasks.length,
    accepted: accepted.length,
    rejected,
    done: done.length,
    undone: undoneIds.length,
    achieved_per_s: round(wall > 0 ? done.length / wall : 0, 1)!,
    wall_s: round(wall, 2)!,
    latency: summarize(done.map(latency)),
    first_quarter_p50_ms: quarter > 0 ? quarterP50(accepted.slice(quarter, 2 * quarter)) : null,
    last_quarter_p50_ms: quarter > 0 ? quarterP50(accepted.slice(3 * quarter)) : null,
    post: summarize(tasks.filter((t) => t.postEnd !== null).map((t) => t.postEnd! - t.postStart)),
    stages,
    projection_lag: stages.succeeded_to_visible,
    confirm: { checked: confirmLatencies.length, mismatched, get: summarize(confirmLatencies) },
    max_send_slip_ms: round(maxSlip, 1)!,
    stopped_early_after_s: stoppedEarly === null ? null : round(stoppedEarly, 1),
    poll_ms: POLL_MS,
  };
}

/** Where each task's time went, from the recorded_at of its events (PostgreSQL's clock, the same machine's). */
async function stageBreakdown(
  db: pg.Client,
  tasks: Array<{ id: string; postStart: number; visible: number }>,
): Promise<StageBreakdown> {
  const times = new Map<string, { queued?: number; started?: number; succeeded?: number }>();
  for (let i = 0; i < tasks.length; i += 2000) {
    const streams = tasks.slice(i, i + 2000).map((t) => `task-${t.id}`);
    const { rows } = await db.query<{ stream_id: string; type: string; at: number }>(
      `SELECT stream_id, type, extract(epoch FROM recorded_at) * 1000 AS at FROM events
        WHERE stream_id = ANY($1::text[]) AND type IN ('TaskQueued', 'TaskStarted', 'TaskSucceeded')
        ORDER BY revision`,
      [streams],
    );
    for (const row of rows) {
      const entry = times.get(row.stream_id) ?? {};
      const at = Number(row.at);
      if (row.type === 'TaskQueued') entry.queued ??= at;
      else if (row.type === 'TaskStarted')
        entry.started = at; // the last attempt's
      else entry.succeeded ??= at;
      times.set(row.stream_id, entry);
    }
  }
  const stage = (
    pick: (
      t: (typeof tasks)[number],
      e: { queued?: number; started?: number; succeeded?: number },
    ) => number | null,
  ) =>
    summarize(
      tasks
        .map((t) => {
          const e = times.get(`task-${t.id}`);
          return e ? pick(t, e) : null;
        })
        .filter((v): v is number => v !== null && Number.isFinite(v)),
    );
  return {
    post_to_queued: stage((t, e) => (e.queued === undefined ? null : e.queued - t.postStart)),
    queued_to_started: stage((_t, e) =>
      e.queued === undefined || e.started === undefined ? null : e.started - e.queued,
    ),
    started_to_succeeded: stage((_t, e) =>
      e.started === undefined || e.succeeded === undefined ? null : e.succeeded - e.started,
    ),
    succeeded_to_visible: stage((t, e) => (e.succeeded === undefined ? null : t.visible - e.succeeded)),
  };
}
