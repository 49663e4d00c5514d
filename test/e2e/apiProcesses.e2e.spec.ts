import { expect } from 'chai';
import { execFileSync } from 'node:child_process';

import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startCli, type StartedCli } from '../support/processes.js';
import { call, registerAndLogin } from '../support/service.js';
import { waitFor } from '../support/wait.js';

/** The API processes the primary forked: its children running the CLI (the embedded PostgreSQL's are not). */
const apiProcessesOf = (pid: number): number[] =>
  execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(pid)], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes('task-manager.mjs'))
    .map((line) => Number(line.trim().split(/\s+/)[0]));

describe('the API in several processes (start --processes 2, embedded default)', function () {
  this.timeout(180_000);
  let workDir: string;
  let service: StartedCli | null = null;
  before(() => {
    workDir = mkdtempSync(path.join(tmpdir(), 'tm-processes-'));
    chmodSync(workDir, 0o755); // as root, PostgreSQL's own user must reach ./.data
  });
  after(async () => {
    await service?.stop();
    rmSync(workDir, { recursive: true, force: true });
  });

  it('serves one API from two processes, never a stale cached task, and stops them all on SIGTERM', async () => {
    service = await startCli(workDir, ['start', '--processes', '2']);
    expect(service.output()).to.include('the API in 2 processes');
    const children = apiProcessesOf(service.pid);
    expect(children, 'two API processes forked').to.have.length(2);

    const { token } = await registerAndLogin(service.url, {
      label: 'processes',
      password: 'correct horse battery',
    });
    const delayed = await call(service.url, 'POST', '/tasks', {
      body: { title: 'later', run_at: new Date(Date.now() + 1500).toISOString() },
      token,
    });
    expect(delayed.status).to.equal(202);
    const id = delayed.body.id as string;
    // Read it while it waits, through both processes (connections are spread over them), so any cache holds it.
    for (let i = 0; i < 20; i++) {
      const seen = await call(service.url, 'GET', `/tasks/${id}`, { token });
      if (seen.status === 200) expect(seen.body.status).to.equal('pending');
    }
    // Done within seconds, as every process shows it: a cache no projection invalidates would say pending for a
    // minute.
    let statuses: string[] = [];
    await waitFor(
      'every process to show the task done',
      async () => {
        statuses = await Promise.all(
          Array.from(
            { length: 6 },
            async () => (await call(service!.url, 'GET', `/tasks/${id}`, { token })).body.status,
          ),
        );
        return statuses.every((status) => status === 'done') || undefined;
      },
      { timeoutMs: 20_000, intervalMs: 200, describe: () => `Statuses seen: ${statuses.join(', ')}.` },
    );
    expect(statuses).to.deep.equal(Array(6).fill('done'));

    expect(await service.stop(), 'a graceful stop exits 0').to.equal(0);
    service = null;
    for (const child of children) {
      let alive = true;
      try {
        process.kill(child, 0);
      } catch {
        alive = false;
      }
      expect(alive, `API process ${child} stopped with the primary`).to.equal(false);
    }
  });
});
