import { expect } from 'chai';
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { call } from '../support/service.js';
import { adminDatabaseUrl } from '../support/postgres.js';
import {
  LOAD_FACTOR,
  checkHistories,
  kafkaReport,
  readLog,
  readModelDifferences,
  startLoad,
  waitUntilAllTerminal,
  useFaultStack,
} from './support/stack.js';
import { sleep, waitFor } from '../support/wait.js';
import type { Child } from '../support/processes.js';

const TRANSIENT = new Set([500, 502, 503]);
const PROBLEM_JSON = 'application/problem+json';

/** Tasks that may lose an attempt or two to a killed connection, and must still end done. */
const patientTask = (index: number) =>
  index % 2 === 0
    ? { title: `echo ${index}`, type: 'echo', payload: { index }, timeout_ms: 2000, max_attempts: 10 }
    : { title: `sleep ${index}`, type: 'sleep', payload: { ms: 50 }, timeout_ms: 2000, max_attempts: 10 };

describe('fault: PostgreSQL connections killed, and the database unreachable for a while', function () {
  this.timeout(240000);
  // The in-process API only sets up the user; it is idle while the connections are killed.
  const stack = useFaultStack(['api']);
  let admin: pg.Client;
  let database: string;
  // Every role in processes of their own, so a crash is seen as one: the API's, and the others'.
  let api: { child: Child; url: string };
  let backend: Child;
  const accepted: string[] = [];

  before(async () => {
    api = await stack.apiProcess();
    backend = await stack.roleProcess(['relay', 'projector', 'worker']);
    database = new URL(stack.config.databaseUrl!).pathname.slice(1);
    admin = new pg.Client({ connectionString: adminDatabaseUrl() });
    await admin.connect();
  });
  after(async () => {
    if (admin) {
      await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS true`).catch(() => undefined);
      await admin.end();
    }
  });

  /** Both processes still run: a fault may cost a request, never the process. */
  const expectAlive = () => {
    for (const child of [api.child, backend])
      expect(child.running(), `${child.name} died:\n${child.output().slice(-2500)}`).to.equal(true);
  };
  const client = () => ({ url: api.url, token: stack.token });

  const terminateBackends = async (): Promise<number> =>
    (
      await admin.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
        [database],
      )
    ).rowCount ?? 0;

  it('loses no task while every connection of the service is killed again and again', async () => {
    const load = startLoad(client(), {
      count: 300 * LOAD_FACTOR,
      concurrency: 8,
      perSecond: 30 * LOAD_FACTOR,
      spec: patientTask,
      retryable: TRANSIENT,
    });
    await waitFor('the load to get going', async () => load.submitted >= 30 * LOAD_FACTOR || undefined, {
      timeoutMs: 30000,
      intervalMs: 100,
      ignoreErrors: true,
    });
    let killed = 0;
    let rounds = 0;
    for (const stopAt = Date.now() + 10000; Date.now() < stopAt; rounds++) {
      killed += await terminateBackends();
      await sleep(700);
    }
    expectAlive();
    await load.done;
    accepted.push(...load.ids);
    console.log(
      `      [postgres] ${killed} backends terminated in ${rounds} rounds; answers other than 202 (retried): ${JSON.stringify(Object.fromEntries(load.rejections))}`,
    );
    expect(load.failures, 'submissions that never got through').to.deep.equal([]);
    expect(load.rejections.get(500) ?? 0, '500 answers (a killed connection must be a 503)').to.equal(0);
    expect(await waitUntilAllTerminal(stack.db, load.ids, 120000)).to.deep.equal({ done: 300 * LOAD_FACTOR });
  });

  it('answers 503 while the database is unreachable, and recovers without a restart', async () => {
    expectAlive();
    const load = startLoad(client(), {
      count: 100 * LOAD_FACTOR,
      concurrency: 4,
      perSecond: 20 * LOAD_FACTOR,
      spec: patientTask,
      retryable: TRANSIENT,
      retryForMs: 90000,
    });
    await waitFor('the load to get going', async () => load.submitted >= 20 * LOAD_FACTOR || undefined, {
      timeoutMs: 30000,
      intervalMs: 100,
      ignoreErrors: true,
    });
    const probeKey = `probe-${randomBytes(4).toString('hex')}`;
    const submitProbe = () =>
      call(api.url, 'POST', '/tasks', {
        body: { title: 'probe', type: 'echo', payload: 'probe' },
        token: stack.token,
        headers: { 'idempotency-key': probeKey },
      });

    await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS false`);
    const answers: string[] = [];
    try {
      await terminateBackends();
      for (const stopAt = Date.now() + 4000; Date.now() < stopAt;) {
        for (const response of [
          await submitProbe(),
          await call(api.url, 'GET', '/tasks?limit=5', { token: stack.token }),
        ]) {
          answers.push(
            `${response.status} ${response.headers.get('content-type')?.split(';')[0]} retry-after=${response.headers.get('retry-after')}`,
          );
        }
        await sleep(250);
      }
      const ready = await call(api.url, 'GET', '/ready');
      expect(ready.status, '/ready while the database is unreachable').to.equal(503);
    } finally {
      await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS true`);
    }
    expectAlive();
    const distinct = [...new Set(answers)];
    console.log(`      [postgres] answers while unreachable: ${distinct.join(' | ')}`);
    expect(distinct, 'every answer while the database was unreachable').to.deep.equal([
      `503 ${PROBLEM_JSON} retry-after=5`,
    ]);

    // The same process, not restarted, answers again.
    const probe = await waitFor(
      'the API to accept tasks again',
      async () => {
        const response = await submitProbe();
        return response.status === 202 ? (response.body.id as string) : undefined;
      },
      { timeoutMs: 30000, intervalMs: 250, ignoreErrors: true },
    );
    expect((await call(api.url, 'GET', '/tasks?limit=5', { token: stack.token })).status).to.equal(200);
    expect((await call(api.url, 'GET', '/ready')).status).to.equal(200);

    await load.done;
    expectAlive();
    expect(load.failures, 'submissions that never got through').to.deep.equal([]);
    accepted.push(...load.ids, probe);
    expect(await waitUntilAllTerminal(stack.db, accepted, 120000)).to.deep.equal({ done: accepted.length });

    const events = await readLog(stack);
    expect(checkHistories(events, accepted).problems).to.deep.equal([]);
    // Retried requests made no second task: one task stream per accepted task, no more.
    const queued = events.filter((event) => event.type === 'TaskQueued').length;
    expect(queued, 'tasks in the log').to.equal(new Set(accepted).size);
    expect(await readModelDifferences(stack, events)).to.deep.equal([]);
    const kafka = await kafkaReport(stack, events);
    expect(kafka.missing, 'log events missing from Kafka').to.deep.equal([]);
    console.log(`      [postgres] ${events.length} events, ${kafka.messages} Kafka messages`);
  });
});
