import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import {
  call,
  quickWorkerSettings,
  registerAndLogin,
  useTestService,
  type Account,
} from '../support/service.js';
import { sleep, waitFor } from '../support/wait.js';
import { startRoleProcess, type Child } from '../support/processes.js';
import { PROJECTIONS } from '../../src/projections/index.js';
import { rebuildReadModels } from '../../src/projections/rebuild.js';
import { silentLogger } from '../../src/infra/logger.js';
import type { Config } from '../../src/config.js';

/** Missed after 1.5 s in this suite, so a downtime of a few seconds shows each catch_up policy. */
const MISSED_AFTER_MS = 1500;

/**
 * Cron schedules on the full stack (PostgreSQL, Kafka, Redis): the API, relay, projector and a worker in this
 * process, the schedulers as `task-manager start --roles scheduler` processes, so their kills are real.
 */
describe('schedules (full stack, scheduler processes)', function () {
  this.timeout(120000);
  const service = useTestService(
    'full',
    (config) => {
      quickWorkerSettings(config);
      config.scheduler.pollIntervalMs = 100;
      config.scheduler.missedAfterMs = MISSED_AFTER_MS;
    },
    ['api', 'relay', 'projector', 'worker'],
  );
  let ann: Account;
  let bob: Account;
  let admin: Account;
  const schedulers: Child[] = [];

  before(async () => {
    [ann, bob, admin] = await Promise.all([
      registerAndLogin(service.url, { label: 'schedules-ann' }),
      registerAndLogin(service.url, { label: 'schedules-bob' }),
      registerAndLogin(service.url, {
        label: 'schedules-admin',
        role: { name: 'admin', infrastructure: service.service.infrastructure },
      }),
    ]);
  });
  afterEach(async () => {
    await Promise.all(schedulers.splice(0).map((child) => child.stop()));
  });

  const startScheduler = async () => {
    const child = await startRoleProcess(structuredClone(service.config) as Config, ['scheduler']);
    schedulers.push(child);
    return child;
  };
  const killScheduler = async (child: Child) => {
    await child.kill('SIGKILL');
    schedulers.splice(schedulers.indexOf(child), 1);
  };
  const api = (
    method: string,
    path: string,
    who: Account,
    body?: unknown,
    headers?: Record<string, string>,
  ) => call(service.url, method, path, { token: who.token, body, headers });
  const create = async (body: Record<string, unknown>, who: Account = ann) => {
    const response = await api('POST', '/schedules', who, {
      name: 'test',
      task: { title: 'scheduled', type: 'echo', payload: { from: 'schedule' } },
      ...body,
    });
    expect(response.status, JSON.stringify(response.body)).to.equal(201);
    return response;
  };
  const pause = async (id: string) => {
    const response = await api('POST', `/schedules/${id}/pause`, ann);
    expect(response.status).to.equal(200);
    return response;
  };
  /** TaskQueued events that name the schedule as their origin, straight from the log. */
  const queuedFrom = async (scheduleId: string) =>
    (
      await service.service.infrastructure.pool.query<{ data: any }>(
        `SELECT data::jsonb AS data FROM events
          WHERE type = 'TaskQueued' AND data::jsonb #>> '{origin,scheduleId}' = $1`,
        [scheduleId],
      )
    ).rows.map((row) => row.data);
  const history = async (scheduleId: string) =>
    (await service.service.infrastructure.store.readStream(`schedule-${scheduleId}`)).map((event) => ({
      type: event.type,
      data: event.data as any,
    }));
  const firedTicks = async (scheduleId: string) =>
    (await history(scheduleId))
      .filter((event) => event.type === 'ScheduleFired' && !event.data.manual)
      .map((event) => ({ tick: Date.parse(event.data.tick), firedAt: Date.parse(event.data.firedAt) }));
  /** Fails unless every tick queued exactly one task and the schedule recorded each. */
  const expectOneTaskPerTick = async (scheduleId: string) => {
    const queued = await queuedFrom(scheduleId);
    const ticks = queued.map((data) => data.origin.tick as string);
    expect(new Set(ticks).size, 'one TaskQueued per tick').to.equal(ticks.length);
    const fired = (await history(scheduleId)).filter((event) => event.type === 'ScheduleFired');
    expect(fired.map((event) => event.data.tick).sort(), 'ScheduleFired per queued task').to.deep.equal(
      [...ticks].sort(),
    );
    return ticks.map((tick) => Date.parse(tick)).sort((a, b) => a - b);
  };

  it('answers bad cron, unknown time zones and bad task bodies with 400 pointing at the field', async () => {
    const bad = async (body: Record<string, unknown>, path: string) => {
      const response = await api('POST', '/schedules', ann, {
        name: 'bad',
        cron: '* * * * *',
        task: { title: 'x' },
        ...body,
      });
      expect(response.status, JSON.stringify(response.body)).to.equal(400);
      expect(response.headers.get('content-type')).to.contain('application/problem+json');
      expect(response.body.errors.map((error: { path: string }) => error.path)).to.include(path);
    };
    await bad({ cron: '61 * * * *' }, '/body/cron');
    await bad({ cron: 'every day' }, '/body/cron');
    await bad({ timezone: 'Mars/Olympus_Mons' }, '/body/timezone');
    await bad({ task: { title: 'nap', type: 'sleep', payload: { ms: -1 } } }, '/body/task/payload/ms');
    await bad({ task: { title: 'later', run_at: '2030-01-01T00:00:00Z' } }, '/body/task/run_at');
    await bad({ task: { title: 'odd', type: 'no-such-type' } }, '/body/task/type');
    await bad({ overlap: 'sometimes' }, '/body/overlap');
    const { body } = await create({ cron: '0 0 * * *' });
    const edit = await api('PATCH', `/schedules/${body.id}`, ann, { timezone: 'Nowhere/Else' });
    expect(edit.status).to.equal(400);
    expect(edit.body.errors[0].path).to.equal('/body/timezone');
  });

  it('shows a schedule with its next fire times to its owner and admins, and answers 404 to anyone else', async () => {
    const created = await create({
      cron: '0 30 9 * * 1-5',
      timezone: 'Europe/Berlin',
      name: 'weekday mornings',
    });
    const id = created.body.id as string;
    expect(created.headers.get('location')).to.equal(`/schedules/${id}`);
    expect(created.body.next_fire_times).to.have.length(5);
    for (const tick of created.body.next_fire_times as string[]) {
      const local = new Date(tick).toLocaleString('en-GB', {
        timeZone: 'Europe/Berlin',
        weekday: 'short',
        hour: '2-digit',
        minute: '2-digit',
      });
      expect(local).to.match(/^(Mon|Tue|Wed|Thu|Fri) 09:30$/);
    }
    const position = { 'x-min-position': created.headers.get('x-position')! };
    const read = await api('GET', `/schedules/${id}`, ann, undefined, position);
    expect(read.status).to.equal(200);
    expect(read.body).to.deep.include({
      id,
      name: 'weekday mornings',
      status: 'active',
      owner_id: ann.userId,
    });
    expect(read.body.next_fire_times).to.deep.equal(created.body.next_fire_times);
    expect((await api('GET', `/schedules/${id}`, admin, undefined, position)).status).to.equal(200);
    for (const [method, path] of [
      ['GET', `/schedules/${id}`],
      ['PATCH', `/schedules/${id}`],
      ['POST', `/schedules/${id}/pause`],
      ['POST', `/schedules/${id}/resume`],
      ['POST', `/schedules/${id}/run`],
      ['DELETE', `/schedules/${id}`],
    ] as const) {
      const response = await api(
        method,
        path,
        bob,
        method === 'PATCH' ? { name: 'mine now' } : undefined,
        position,
      );
      expect(response.status, `${method} ${path}`).to.equal(404);
    }
    const bobs = await api('GET', '/schedules', bob, undefined, position);
    expect(bobs.body.items.map((item: { id: string }) => item.id)).not.to.include(id);
    const anns = await api('GET', '/schedules', ann, undefined, position);
    expect(anns.body.items.map((item: { id: string }) => item.id)).to.include(id);
    const all = await api('GET', '/schedules?limit=100', admin, undefined, position);
    expect(all.body.items.map((item: { id: string }) => item.id)).to.include(id);

    const edited = await api('PATCH', `/schedules/${id}`, ann, { cron: '0 0 12 * * *', timezone: 'UTC' });
    expect(edited.status).to.equal(200);
    expect(edited.body.next_fire_at).to.match(/T12:00:00\.000Z$/);
    const paused = await pause(id);
    expect(paused.body).to.deep.include({ status: 'paused', next_fire_at: null, next_fire_times: [] });
    const resumed = await api('POST', `/schedules/${id}/resume`, ann);
    expect(resumed.body.status).to.equal('active');
    expect(resumed.body.next_fire_at).to.match(/T12:00:00\.000Z$/);
    const deleted = await api('DELETE', `/schedules/${id}`, ann);
    expect(deleted.status).to.equal(204);
    const gone = await api('GET', `/schedules/${id}`, ann, undefined, {
      'x-min-position': deleted.headers.get('x-position')!,
    });
    expect(gone.status).to.equal(404);
  });

  it('runs a schedule now: one task that names the schedule, shown by GET /tasks/{id} and ?schedule_id=', async () => {
    const { body } = await create({ cron: '0 0 1 1 *' });
    const run = await api('POST', `/schedules/${body.id}/run`, ann);
    expect(run.status, JSON.stringify(run.body)).to.equal(202);
    expect(run.body).to.deep.include({ schedule_id: body.id, title: 'scheduled', owner_id: ann.userId });
    const position = { 'x-min-position': run.headers.get('x-position')! };
    const task = await waitFor('the task done', async () => {
      const read = await api('GET', `/tasks/${run.body.id}`, ann, undefined, position);
      return read.body.status === 'done' ? read.body : undefined;
    });
    expect(task.schedule_tick).to.equal(run.body.schedule_tick);
    expect(task.result).to.deep.equal({ from: 'schedule' });
    const listed = await api('GET', `/tasks?schedule_id=${body.id}`, ann, undefined, position);
    expect(listed.body.items.map((item: { id: string }) => item.id)).to.deep.equal([run.body.id]);
    const schedule = await api('GET', `/schedules/${body.id}`, ann, undefined, position);
    expect(schedule.body).to.deep.include({ fired_count: 1, last_task_id: run.body.id });
    expect(schedule.body.next_fire_at, 'run now leaves the next tick as it was').to.equal(body.next_fire_at);
  });

  it("can list a schedule's tasks from the index tasks_by_schedule (the plan, with sequential scans off)", async () => {
    const client = await service.service.infrastructure.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL enable_seqscan = off');
      const { rows } = await client.query<{ 'QUERY PLAN': string }>(
        `EXPLAIN SELECT id FROM tasks WHERE archived_at IS NULL AND schedule_id = $1
          ORDER BY created_at DESC, id DESC LIMIT 21`,
        [randomUUID()],
      );
      expect(rows.map((row) => row['QUERY PLAN']).join('\n')).to.contain('tasks_by_schedule');
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });

  it('fires one task per second for 30 s with two schedulers, one of them killed and restarted; pause stops it', async () => {
    const [first] = await Promise.all([startScheduler(), startScheduler()]);
    const { body } = await create({ cron: '* * * * * *', name: 'every second' });
    const id = body.id as string;
    const createdAt = Date.parse(body.created_at);
    await sleep(10_000);
    await killScheduler(first!);
    await startScheduler();
    await sleep(createdAt + 30_000 - Date.now());
    const paused = await pause(id);
    const pausedAt = Date.parse(paused.body.updated_at);
    await sleep(1500);
    const ticks = await expectOneTaskPerTick(id);
    // Every whole second after creation up to the pause, bar the last one if the pause came first.
    const expected = Math.floor(pausedAt / 1000) - Math.floor(createdAt / 1000);
    expect(ticks.length, `ticks in ${((pausedAt - createdAt) / 1000).toFixed(1)} s`).to.be.within(
      expected - 1,
      expected,
    );
    expect(ticks.length).to.be.within(29, 31);
    for (let i = 1; i < ticks.length; i++)
      expect(ticks[i]! - ticks[i - 1]!, 'no tick left out').to.equal(1000);
    expect(ticks.at(-1)!).to.be.at.most(pausedAt);
    await sleep(1000);
    expect((await queuedFrom(id)).length, 'nothing fires while paused').to.equal(ticks.length);
    const resumed = await api('POST', `/schedules/${id}/resume`, ann);
    expect(resumed.status).to.equal(200);
    await waitFor('a tick after the resume', async () =>
      (await queuedFrom(id)).length > ticks.length ? true : undefined,
    );
    await pause(id);
  });

  it('overlap skip: no tick fires while the previous task is still running', async () => {
    await startScheduler();
    const { body } = await create({
      cron: '* * * * * *',
      overlap: 'skip',
      task: { title: 'slow', type: 'sleep', payload: { ms: 2200 } },
    });
    await sleep(7500);
    await pause(body.id);
    await sleep(500);
    const queued = await queuedFrom(body.id);
    expect(queued.length).to.be.within(2, 3);
    const store = service.service.infrastructure.store;
    const runs = await Promise.all(
      queued.map(async (data) => {
        const events = await store.readStream(`task-${data.taskId}`);
        return {
          queuedAt: Date.parse(data.queuedAt),
          finishedAt: events.find((e) => e.type === 'TaskSucceeded')?.data.finishedAt as string | undefined,
        };
      }),
    );
    runs.sort((a, b) => a.queuedAt - b.queuedAt);
    for (let i = 1; i < runs.length; i++) {
      expect(runs[i - 1]!.finishedAt, 'the previous run had finished').to.be.a('string');
      expect(runs[i]!.queuedAt).to.be.at.least(Date.parse(runs[i - 1]!.finishedAt!));
    }
    const skips = (await history(body.id)).filter(
      (event) => event.type === 'ScheduleTicksSkipped' && event.data.reason === 'overlap',
    );
    expect(skips.length, 'overlapping ticks recorded as skipped').to.be.at.least(2);
  });

  it('after the schedulers were down, catches up as catch_up says: none, last or all', async () => {
    const scheduler = await startScheduler();
    const made = await Promise.all(
      (['none', 'last', 'all'] as const).map(
        async (catchUp) =>
          [catchUp, (await create({ cron: '* * * * * *', catch_up: catchUp })).body.id as string] as const,
      ),
    );
    const ids = Object.fromEntries(made) as Record<'none' | 'last' | 'all', string>;
    await sleep(2000);
    await killScheduler(scheduler);
    const downAt = Date.now();
    await sleep(4000);
    await startScheduler();
    const restartedAt = Date.now();
    // On a busy machine the new scheduler's first look can take a while: pause only once each has caught up.
    await waitFor('each schedule fired again after the restart', async () => {
      const latest = await Promise.all(
        Object.values(ids).map(async (id) =>
          Math.max(...(await firedTicks(id)).map((fired) => fired.firedAt)),
        ),
      );
      return latest.every((firedAt) => firedAt >= restartedAt) ? true : undefined;
    });
    await sleep(1500);
    for (const id of Object.values(ids)) await pause(id);
    await sleep(500);

    const late = (fired: { tick: number; firedAt: number }) => fired.firedAt - fired.tick > MISSED_AFTER_MS;
    const gapOf = (ticks: number[]) => Math.max(...ticks.slice(1).map((tick, i) => tick - ticks[i]!));
    // all: every second from the first to the last, the missed ones fired late.
    const all = await expectOneTaskPerTick(ids.all);
    expect(gapOf(all), 'catch_up all leaves no tick out').to.equal(1000);
    expect((await firedTicks(ids.all)).filter(late).length).to.be.at.least(3);
    // none: a gap where the scheduler was down, and nothing fired late.
    const none = await expectOneTaskPerTick(ids.none);
    expect(gapOf(none)).to.be.at.least(3000);
    expect((await firedTicks(ids.none)).filter(late)).to.deep.equal([]);
    // last: the newest missed tick only, fired late, then on time again.
    await expectOneTaskPerTick(ids.last);
    expect((await firedTicks(ids.last)).filter(late)).to.have.length(1);
    for (const id of [ids.none, ids.last]) {
      const skipped = (await history(id)).filter((event) => event.type === 'ScheduleTicksSkipped');
      expect(skipped.map((event) => event.data.reason)).to.deep.equal(['missed']);
      expect(Date.parse(skipped[0]!.data.firstTick)).to.be.at.least(downAt - 1000);
    }
  });

  it('rebuilds the schedules and tasks read models from the log equal to the live ones', async () => {
    const { infrastructure } = service.service;
    const head = await infrastructure.store.headPosition();
    await waitFor('the projector at the head', async () => {
      const { rows } = await infrastructure.pool.query<{ n: string }>(`SELECT count(*) AS n FROM schedules`);
      return Number(rows[0]!.n) > 0 && head ? true : undefined;
    });
    await sleep(1000);
    const report = await rebuildReadModels({
      pool: infrastructure.pool,
      store: infrastructure.store,
      projections: PROJECTIONS,
      verify: true,
      swap: false,
      logger: silentLogger(),
    });
    expect(report.verified).to.equal(true);
    expect(report.differences).to.deep.equal([]);
  });
});

describe('schedules (embedded default, every role in one process)', function () {
  this.timeout(60000);
  const service = useTestService('embedded', (config) => {
    quickWorkerSettings(config);
    config.scheduler.pollIntervalMs = 100;
  });
  let ann: Account;

  before(async () => {
    ann = await registerAndLogin(service.url, { label: 'schedules-embedded' });
  });

  it('fires a schedule with the default roles, the scheduler among them, and its tasks run', async () => {
    const created = await call(service.url, 'POST', '/schedules', {
      token: ann.token,
      body: { name: 'often', cron: '* * * * * *', task: { title: 'tick', payload: { n: 1 } } },
    });
    expect(created.status).to.equal(201);
    const id = created.body.id as string;
    const done = await waitFor(
      'two scheduled tasks done',
      async () => {
        const list = await call(service.url, 'GET', `/tasks?schedule_id=${id}&status=done`, {
          token: ann.token,
        });
        return list.body.items.length >= 2 ? list.body.items : undefined;
      },
      { timeoutMs: 20000 },
    );
    const paused = await call(service.url, 'POST', `/schedules/${id}/pause`, { token: ann.token });
    expect(paused.status).to.equal(200);
    for (const item of done) {
      expect(item.schedule_id).to.equal(id);
      expect(Date.parse(item.schedule_tick) % 1000, 'a whole second').to.equal(0);
      expect(item.result).to.deep.equal({ n: 1 });
    }
    const metrics = await call(service.url, 'GET', '/metrics');
    const fired = /^scheduler_events_total\{type="ScheduleFired"\} (\d+)$/m.exec(String(metrics.body));
    expect(Number(fired?.[1]), 'scheduler_events_total on /metrics').to.be.at.least(2);
  });
});
