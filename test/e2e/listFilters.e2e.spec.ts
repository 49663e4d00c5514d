import { expect } from 'chai';
import { call, registerAndLogin, stackLabel, STACK_MODES, useTestService } from '../support/service.js';
import { titleMatches, titleQuery } from '../../src/projections/tasks/table.js';

for (const mode of STACK_MODES) {
  describe(`GET /tasks filters: created_after, created_before, q, group_key (${stackLabel(mode)})`, function () {
    this.timeout(60000);
    // A queue no worker serves: the tasks stay pending and the list stays still.
    const service = useTestService(mode, (config) => {
      config.workers.onlyQueues = ['default'];
    });
    let token: string;
    const ids = new Map<string, string>();
    let position = '';

    before(async () => {
      // The test clock moves to 2030 first: tokens are checked against the same clock.
      service.clock.advance(Date.UTC(2030, 0, 1, 11, 59) - service.clock.now().getTime());
      token = (await registerAndLogin(service.url, { label: 'filters' })).token;
      // Submitted one after another, each on the test clock's own minute, so times filter them apart.
      const titles = ['Quarterly report Q3', 'Resize images', 'Report to the board', 'Räksmörgås order 7'];
      for (const [index, title] of titles.entries()) {
        service.clock.advance(Date.UTC(2030, 0, 1, 12, index) - service.clock.now().getTime());
        const submitted = await call(service.url, 'POST', '/tasks', {
          token,
          body: { title, queue: 'filters' },
        });
        expect(submitted.status).to.equal(202);
        ids.set(title, submitted.body.id as string);
        position = submitted.headers.get('x-position')!;
      }
    });

    const list = async (query: Record<string, string>) => {
      const response = await call(
        service.url,
        'GET',
        `/tasks?${new URLSearchParams({ queue: 'filters', ...query })}`,
        {
          token,
          headers: { 'x-min-position': position },
        },
      );
      return response;
    };
    const titlesOf = async (query: Record<string, string>) => {
      const response = await list(query);
      expect(response.status, JSON.stringify(response.body)).to.equal(200);
      return (response.body.items as Array<{ title: string }>).map((item) => item.title);
    };

    it('finds titles by the beginnings of their words, any case, every word required', async () => {
      expect(await titlesOf({ q: 'report' })).to.deep.equal(['Report to the board', 'Quarterly report Q3']);
      expect(await titlesOf({ q: 'REP q3' })).to.deep.equal(['Quarterly report Q3']);
      expect(await titlesOf({ q: 'räksm' })).to.deep.equal(['Räksmörgås order 7']);
      expect(await titlesOf({ q: 'port' })).to.deep.equal([]); // a prefix of a word, not any substring
      // Query syntax is only words: operators and quotes are not read as tsquery.
      expect(await titlesOf({ q: "report & !board | '" })).to.deep.equal(['Report to the board']);
    });

    it('filters by submission time: created_after inclusive, created_before exclusive, with pages', async () => {
      expect(
        await titlesOf({ created_after: '2030-01-01T12:01:00Z', created_before: '2030-01-01T12:03:00Z' }),
      ).to.deep.equal(['Report to the board', 'Resize images']);
      expect(await titlesOf({ created_after: '2030-01-01T13:01:00+01:00' })).to.deep.equal([
        'Räksmörgås order 7',
        'Report to the board',
        'Resize images',
      ]);
      const first = await list({ created_before: '2030-01-01T12:03:00Z', limit: '2' });
      expect((first.body.items as Array<{ title: string }>).map((item) => item.title)).to.deep.equal([
        'Report to the board',
        'Resize images',
      ]);
      expect(
        await titlesOf({
          created_before: '2030-01-01T12:03:00Z',
          limit: '2',
          cursor: first.body.next_cursor,
        }),
      ).to.deep.equal(['Quarterly report Q3']);
      expect(await titlesOf({ q: 'report', created_after: '2030-01-01T12:01:00Z' })).to.deep.equal([
        'Report to the board',
      ]);
    });

    it('answers a malformed filter with a 400 problem pointing at it', async () => {
      for (const [query, path] of [
        [{ q: '' }, '/query/q'],
        [{ q: '&& !!' }, '/query/q'],
        [{ created_after: 'yesterday' }, '/query/created_after'],
        [{ created_before: '2016-12-31T23:59:60Z' }, '/query/created_before'],
      ] as const) {
        const response = await list(query);
        expect(response.status, JSON.stringify(query)).to.equal(400);
        expect(response.headers.get('content-type')).to.contain('application/problem+json');
        expect((response.body.errors as Array<{ path: string }>).map((error) => error.path)).to.include(path);
      }
    });

    it('can answer a title search from the index tasks_title_words (the plan, with sequential scans off)', async () => {
      const client = await service.service.infrastructure.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SET LOCAL enable_seqscan = off');
        const { rows } = await client.query<{ 'QUERY PLAN': string }>(
          `EXPLAIN SELECT id FROM tasks WHERE ${titleMatches('$1')}`,
          [titleQuery(['report'])],
        );
        expect(rows.map((row) => row['QUERY PLAN']).join('\n')).to.contain('tasks_title_words');
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    });

    // Last: it submits tasks of its own, later on the clock than the ones the tests above list.
    it('lists the tasks of one group_key, from the index tasks_group_listing', async () => {
      const keyed = [];
      for (const title of ['for acme 1', 'for acme 2']) {
        const submitted = await call(service.url, 'POST', '/tasks', {
          token,
          body: { title, queue: 'filters', group_key: 'acme' },
        });
        expect(submitted.status).to.equal(202);
        expect(submitted.body.group_key).to.equal('acme');
        keyed.push(submitted.body.id as string);
        position = submitted.headers.get('x-position')!;
      }
      const response = await list({ group_key: 'acme' });
      expect(response.status).to.equal(200);
      expect(response.body.items.map((item: { id: string }) => item.id)).to.deep.equal(keyed.reverse());
      const client = await service.service.infrastructure.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SET LOCAL enable_seqscan = off');
        const { rows } = await client.query<{ 'QUERY PLAN': string }>(
          `EXPLAIN SELECT id FROM tasks WHERE archived_at IS NULL AND group_key = $1
            ORDER BY created_at DESC, id DESC LIMIT 21`,
          ['acme'],
        );
        expect(rows.map((row) => row['QUERY PLAN']).join('\n')).to.contain('tasks_group_listing');
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    });
  });
}
