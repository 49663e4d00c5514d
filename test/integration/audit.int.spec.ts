import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { newEvent } from '../contract/eventStore.contract.js';
import { createTestDatabase, type TestDatabase, testEventStore } from '../support/postgres.js';
import type { PoolClient } from '../../src/infra/db/pool.js';
import type { Logger } from '../../src/infra/logger.js';
import { PostgresEventStore } from '../../src/infra/eventStore/postgres/postgresEventStore.js';
import { chainHash, GENESIS_HASH } from '../../src/infra/eventStore/hashChain.js';
import type { EventStore, NewEvent, RecordedEvent } from '../../src/infra/eventStore/eventStore.js';
import {
  ANCHOR_STREAM,
  createAnchor,
  generateAuditKeyPair,
  startAnchorSchedule,
} from '../../src/audit/anchors.js';
import { verifyLog, type VerifyReport } from '../../src/audit/verify.js';
import { exportLog, readLogPages } from '../../src/audit/export.js';
import { ExportFormatError, verifyNdjsonStream } from '../../src/audit/verifyNdjson.js';
import { createProgressReporter } from '../../src/audit/progress.js';
import { sleep, waitFor } from '../support/wait.js';

const keys = generateAuditKeyPair();
const anchorOptions = { privateKey: keys.privateKey, now: () => new Date(), newId: randomUUID };

const events = (type: string, count: number, from = 0): NewEvent[] =>
  Array.from({ length: count }, (_, i) => newEvent(type, { n: from + i, note: 'original text' }));

interface Seeded {
  account: string;
  task: string;
  note: string;
}

/** Three streams, nine events; the task stream is appended in two parts, interleaved with the others. */
async function seed(store: EventStore): Promise<Seeded> {
  const id = randomBytes(4).toString('hex');
  const seeded = { account: `account-${id}`, task: `task-${id}`, note: `note-${id}` };
  await store.append(seeded.account, events('AccountChanged', 3), { expectedRevision: 'no_stream' });
  await store.append(seeded.task, events('TaskChanged', 2), { expectedRevision: 'no_stream' });
  await store.append(seeded.note, events('NoteWritten', 2), { expectedRevision: 'no_stream' });
  await store.append(seeded.task, events('TaskChanged', 2, 2), { expectedRevision: 1 });
  return seeded;
}

/** What someone with the database's superuser can do: switch the append-only trigger off for a moment. */
async function tamper(
  database: TestDatabase,
  change: (client: PoolClient) => Promise<unknown>,
): Promise<void> {
  const client = await database.pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('ALTER TABLE events DISABLE TRIGGER events_append_only');
    await change(client);
    await client.query('ALTER TABLE events ENABLE TRIGGER events_append_only');
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  } finally {
    client.release();
  }
}

async function changeOneByte(database: TestDatabase, streamId: string, revision: number): Promise<void> {
  const { rows } = await database.pool.query<{ data: string }>(
    'SELECT data FROM events WHERE stream_id = $1 AND revision = $2',
    [streamId, revision],
  );
  const original = rows[0]!.data;
  const at = original.indexOf('original text');
  const changed = original.slice(0, at) + 'O' + original.slice(at + 1);
  expect(changed.length).to.equal(original.length);
  expect([...changed].filter((char, i) => char !== original[i])).to.have.length(1);
  await tamper(database, (client) =>
    client.query('UPDATE events SET data = $3 WHERE stream_id = $1 AND revision = $2', [
      streamId,
      revision,
      changed,
    ]),
  );
}

async function deleteEvent(database: TestDatabase, streamId: string, revision: number): Promise<void> {
  await tamper(database, (client) =>
    client.query('DELETE FROM events WHERE stream_id = $1 AND revision = $2', [streamId, revision]),
  );
}

/** Rewrites every event of a stream and recomputes its whole chain, so the chain alone still verifies. */
async function rewriteStream(
  database: TestDatabase,
  streamId: string,
  change: (data: Record<string, any>, revision: number) => Record<string, any>,
): Promise<void> {
  await tamper(database, async (client) => {
    const { rows } = await client.query<{ revision: number; type: string; data: string }>(
      'SELECT revision, type, data FROM events WHERE stream_id = $1 ORDER BY revision',
      [streamId],
    );
    let previousHash = GENESIS_HASH;
    for (const row of rows) {
      const rawData = JSON.stringify(change(JSON.parse(row.data), row.revision));
      const hash = chainHash({ streamId, revision: row.revision, type: row.type, rawData, previousHash });
      await client.query(
        `UPDATE events SET data = $3, metadata = jsonb_set(metadata, '{hash}', to_jsonb($4::text))
          WHERE stream_id = $1 AND revision = $2`,
        [streamId, row.revision, rawData, hash],
      );
      previousHash = hash;
    }
  });
}

const rewriteNotes = (data: Record<string, any>) => ({ ...data, note: 'rewritten' });

/** Changes the first character, which (unlike the last before the padding) always changes the bytes. */
const flipBase64 = (text: string) => (text[0] === 'A' ? 'B' : 'A') + text.slice(1);

async function eventAt(store: EventStore, streamId: string, revision: number): Promise<RecordedEvent> {
  const event = (await store.readStream(streamId)).find((e) => e.revision === revision);
  expect(event, `${streamId}@${revision}`).to.not.equal(undefined);
  return event!;
}

function expectProblem(
  report: VerifyReport,
  expected: { kind: string; streamId: string; revision: number; position?: string },
  detail?: RegExp,
): void {
  expect(report.ok, JSON.stringify(report)).to.equal(false);
  if (report.ok) return;
  const { kind, streamId, revision, position } = report.problem;
  expect({ kind, streamId, revision, ...(expected.position ? { position } : {}) }).to.deep.equal(expected);
  if (detail) expect(report.problem.detail).to.match(detail);
}

/** Delegates to `store`, with some methods replaced: a way to watch or bound what the audit code reads. */
function wrapStore(store: EventStore, overrides: Partial<EventStore>): EventStore {
  return {
    name: store.name,
    append: (streamId, newEvents, options) => store.append(streamId, newEvents, options),
    readStream: (streamId, options) => store.readStream(streamId, options),
    readAll: (options) => store.readAll(options),
    subscribeToAll: (options) => store.subscribeToAll(options),
    headPosition: () => store.headPosition(),
    ping: () => store.ping(),
    close: async () => undefined,
    ...overrides,
  };
}

/** readAll alone can stop short while another test's transaction on this server holds the horizon back. */
async function wholeLog(store: EventStore): Promise<RecordedEvent[]> {
  const log: RecordedEvent[] = [];
  for await (const page of readLogPages(store, { after: null })) log.push(...page);
  return log;
}

class StringSink extends Writable {
  text = '';
  override _write(chunk: Buffer | string, _encoding: string, callback: () => void): void {
    this.text += String(chunk);
    callback();
  }
}

async function exportText(store: EventStore, options: { from?: string; to?: string } = {}): Promise<string> {
  const sink = new StringSink();
  await exportLog(store, { ...options, out: sink });
  return sink.text;
}

const parseLines = (text: string): any[] =>
  text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line));

describe('audit', function () {
  this.timeout(60000);
  let database: TestDatabase;
  let store: PostgresEventStore;

  // Tampering breaks the log for good, so every test has a database of its own.
  beforeEach(async () => {
    database = await createTestDatabase('audit');
    store = testEventStore(database);
  });

  afterEach(async () => {
    await store?.close();
    await database?.drop();
  });

  describe('verify', () => {
    it('passes an untouched log and counts the events, streams and anchors it checked', async () => {
      const { task } = await seed(store);
      const progress: number[] = [];
      expect(
        await verifyLog(store, { publicKey: keys.publicKey, onProgress: (p) => progress.push(p.events) }),
      ).to.deep.equal({ ok: true, events: 9, streams: 3, anchors: 'on', anchorsChecked: 0 });
      expect(progress.at(-1)).to.equal(9);

      await createAnchor(store, anchorOptions);
      expect(await verifyLog(store, { publicKey: keys.publicKey })).to.deep.equal({
        ok: true,
        events: 10,
        streams: 4,
        anchors: 'on',
        anchorsChecked: 1,
      });
      // One stream: its four events and the anchors stream that vouches for it.
      expect(await verifyLog(store, { stream: task, publicKey: keys.publicKey })).to.deep.equal({
        ok: true,
        events: 5,
        streams: 2,
        anchors: 'on',
        anchorsChecked: 1,
      });
    });

    it('names the stream and revision of an event whose data changed by one byte', async () => {
      const { task, account } = await seed(store);
      const changed = await eventAt(store, task, 2);
      await changeOneByte(database, task, 2);
      const expected = { kind: 'hash_mismatch', streamId: task, revision: 2, position: changed.position };
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), expected);
      expectProblem(await verifyLog(store, { stream: task, publicKey: null }), expected);
      expect((await verifyLog(store, { stream: account, publicKey: null })).ok).to.equal(true);
    });

    it('names a deleted event as the missing predecessor of the next', async () => {
      const { account, note } = await seed(store);
      const after = await eventAt(store, account, 2);
      await deleteEvent(database, account, 1);
      const expected = {
        kind: 'missing_predecessor',
        streamId: account,
        revision: 1,
        position: after.position,
      };
      expectProblem(await verifyLog(store, { publicKey: null }), expected);
      expectProblem(await verifyLog(store, { stream: account, publicKey: null }), expected);

      await deleteEvent(database, note, 0);
      expectProblem(await verifyLog(store, { stream: note, publicKey: null }), {
        kind: 'missing_predecessor',
        streamId: note,
        revision: 0,
      });
    });

    it('catches a stream rewritten with a valid chain, through the anchor signed before', async () => {
      const { task } = await seed(store);
      const anchor = await createAnchor(store, anchorOptions);
      expect(anchor?.heads.find((head) => head.streamId === task)?.revision).to.equal(3);
      await rewriteStream(database, task, rewriteNotes);
      expect((await eventAt(store, task, 0)).data.note).to.equal('rewritten');

      // The chain alone cannot see it: that is what anchors are for.
      expect(await verifyLog(store, { publicKey: null })).to.include({ ok: true, anchors: 'off' });
      const expected = { kind: 'anchor_mismatch', streamId: task, revision: 3 };
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), expected);
      expectProblem(await verifyLog(store, { stream: task, publicKey: keys.publicKey }), expected);
    });

    it('catches the newest event of a stream removed, which leaves a valid chain, through an anchor', async () => {
      const { task } = await seed(store);
      await createAnchor(store, anchorOptions);
      await deleteEvent(database, task, 3);
      expect((await verifyLog(store, { publicKey: null })).ok).to.equal(true);
      expectProblem(
        await verifyLog(store, { publicKey: keys.publicKey }),
        { kind: 'anchor_mismatch', streamId: task, revision: 3 },
        /ends at revision 2 there: events were removed/,
      );
    });

    it('rejects an anchor whose signature was altered, even with the anchors chain recomputed', async () => {
      await seed(store);
      await createAnchor(store, anchorOptions);
      await rewriteStream(database, ANCHOR_STREAM, (data) => ({
        ...data,
        signature: flipBase64(data.signature),
      }));
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), {
        kind: 'bad_signature',
        streamId: ANCHOR_STREAM,
        revision: 0,
      });
      expectProblem(await verifyLog(store, { stream: ANCHOR_STREAM, publicKey: keys.publicKey }), {
        kind: 'bad_signature',
        streamId: ANCHOR_STREAM,
        revision: 0,
      });
    });

    it('rejects an anchor edited to match a rewritten stream', async () => {
      const { task } = await seed(store);
      await createAnchor(store, anchorOptions);
      await rewriteStream(database, task, rewriteNotes);
      const newHead = await eventAt(store, task, 3);
      await rewriteStream(database, ANCHOR_STREAM, (data) => ({
        ...data,
        heads: data.heads.map((head: any) =>
          head.streamId === task ? { ...head, hash: newHead.metadata.hash } : head,
        ),
      }));
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), {
        kind: 'bad_signature',
        streamId: ANCHOR_STREAM,
        revision: 0,
      });
    });

    it('rejects an anchor signed with another key', async () => {
      await seed(store);
      const other = generateAuditKeyPair();
      await createAnchor(store, { ...anchorOptions, privateKey: other.privateKey });
      const report = await verifyLog(store, { publicKey: keys.publicKey });
      expectProblem(
        report,
        { kind: 'bad_signature', streamId: ANCHOR_STREAM, revision: 0 },
        /signed with key [0-9a-f]{64}, not the configured public key/,
      );
      expect((await verifyLog(store, { publicKey: other.publicKey })).ok).to.equal(true);
    });

    it('catches an anchor removed from the anchors stream with its chain recomputed', async () => {
      const { note } = await seed(store);
      await createAnchor(store, anchorOptions);
      await store.append(note, events('NoteWritten', 1, 2), { expectedRevision: 1 });
      await createAnchor(store, anchorOptions);
      await tamper(database, async (client) => {
        await client.query('DELETE FROM events WHERE stream_id = $1 AND revision = 0', [ANCHOR_STREAM]);
        await client.query('UPDATE events SET revision = 0 WHERE stream_id = $1', [ANCHOR_STREAM]);
      });
      await rewriteStream(database, ANCHOR_STREAM, (data) => data);
      expect((await verifyLog(store, { publicKey: null })).ok).to.equal(true);
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), {
        kind: 'anchor_mismatch',
        streamId: ANCHOR_STREAM,
        revision: 0,
      });
    });

    it('says that anchors are off without a public key, and does not check them', async () => {
      await seed(store);
      await createAnchor(store, anchorOptions);
      await rewriteStream(database, ANCHOR_STREAM, (data) => ({
        ...data,
        signature: flipBase64(data.signature),
      }));
      expect(await verifyLog(store, { publicKey: null })).to.deep.equal({
        ok: true,
        events: 10,
        streams: 4,
        anchors: 'off',
        anchorsChecked: 0,
      });
      expect((await verifyLog(store, { publicKey: keys.publicKey })).ok).to.equal(false);
    });
  });

  describe('anchors', () => {
    it('verifies anchors across a key rotation: a retired key within its range, and no further', async () => {
      const at = (iso: string) => () => new Date(iso);
      const rotatedAt = '2026-06-01T00:00:00.000Z';
      const { task } = await seed(store);
      await createAnchor(store, { ...anchorOptions, now: at('2026-05-01T00:00:00.000Z') });
      const next = generateAuditKeyPair();
      await store.append(task, events('Noted', 1, 10), { expectedRevision: 'any' });
      await createAnchor(store, {
        privateKey: next.privateKey,
        now: at('2026-07-01T00:00:00.000Z'),
        newId: randomUUID,
      });
      const retired = [{ key: keys.publicKey, validFrom: null, validUntil: rotatedAt }];
      const anchorAt = (revision: number) => ({ kind: 'bad_signature', streamId: ANCHOR_STREAM, revision });

      // Only the new key: the anchor of May names a key it does not know.
      expectProblem(
        await verifyLog(store, { publicKey: next.publicKey }),
        anchorAt(0),
        /not the configured public key/,
      );
      // With the old key retired at the rotation, both anchors verify, the whole log and one stream alike.
      expect(await verifyLog(store, { publicKey: next.publicKey, retiredPublicKeys: retired })).to.include({
        ok: true,
        anchorsChecked: 2,
      });
      expect(
        await verifyLog(store, { stream: task, publicKey: next.publicKey, retiredPublicKeys: retired }),
      ).to.include({ ok: true, anchorsChecked: 2 });
      // A range that ends before the anchor was made does not vouch for it.
      expectProblem(
        await verifyLog(store, {
          publicKey: next.publicKey,
          retiredPublicKeys: [
            { key: keys.publicKey, validFrom: null, validUntil: '2026-04-01T00:00:00.000Z' },
          ],
        }),
        anchorAt(0),
        /outside its validity/,
      );

      // The old private key, leaked after the rotation, signs a new anchor: refused, though its signature is good.
      await store.append(task, events('Noted', 1, 20), { expectedRevision: 'any' });
      await createAnchor(store, { ...anchorOptions, now: at('2026-08-01T00:00:00.000Z') });
      expectProblem(
        await verifyLog(store, { publicKey: next.publicKey, retiredPublicKeys: retired }),
        anchorAt(2),
        /signed at 2026-08-01T00:00:00.000Z with retired key .* outside its validity/,
      );
    });

    it('anchors the heads changed since the last anchor, linked to it, and nothing when nothing changed', async () => {
      expect(await createAnchor(store, anchorOptions)).to.equal(null);
      const { account, task, note } = await seed(store);
      const first = await createAnchor(store, anchorOptions);
      const heads = async (streamId: string, revision: number) => ({
        streamId,
        revision,
        hash: (await eventAt(store, streamId, revision)).metadata.hash,
      });
      expect(first?.heads).to.deep.equal(
        [await heads(account, 2), await heads(note, 1), await heads(task, 3)].sort((a, b) =>
          a.streamId < b.streamId ? -1 : 1,
        ),
      );
      expect(await createAnchor(store, anchorOptions)).to.equal(null);

      await store.append(note, events('NoteWritten', 1, 2), { expectedRevision: 1 });
      const second = await createAnchor(store, anchorOptions);
      expect(second?.heads).to.deep.equal([await heads(note, 2)]);
      expect(await createAnchor(store, anchorOptions)).to.equal(null);

      const anchors = await store.readStream(ANCHOR_STREAM);
      expect(anchors.map((a) => a.position)).to.deep.equal([first!.position, second!.position]);
      expect(anchors[0]!.data.previousAnchorHash).to.equal(null);
      expect(anchors[1]!.data.previousAnchorHash).to.equal(anchors[0]!.metadata.hash);
      expect(await verifyLog(store, { publicKey: keys.publicKey })).to.include({
        ok: true,
        anchorsChecked: 2,
      });
      // The private key signs in memory only; nothing of it reaches the log.
      const keyBody = keys.privateKey.split('\n')[1]!;
      const { rows } = await database.pool.query('SELECT 1 FROM events WHERE data LIKE $1', [`%${keyBody}%`]);
      expect(rows).to.have.length(0);
    });

    it('checks an anchor whose streams moved on between what it read and its append', async () => {
      const { task } = await seed(store);
      const coveredUpTo = (await store.headPosition())!;
      await store.append(task, events('TaskChanged', 3, 4), { expectedRevision: 3 });
      // As if the anchorer's read stopped at `coveredUpTo` (an open transaction holding the horizon back).
      const lagging = wrapStore(store, {
        readAll: async (options) => (await store.readAll(options)).filter((e) => e.position <= coveredUpTo),
        headPosition: async () => coveredUpTo,
      });
      const anchor = await createAnchor(lagging, anchorOptions);
      expect(anchor?.heads.find((head) => head.streamId === task)?.revision).to.equal(3);

      expect(await verifyLog(store, { publicKey: keys.publicKey })).to.include({
        ok: true,
        anchorsChecked: 1,
      });
      // Offline there is no database to ask: the verifier must remember task@3 itself.
      expect(await verifyNdjsonStream(Readable.from([await exportText(store)]), keys.publicKey)).to.include({
        ok: true,
        anchorsChecked: 1,
      });

      await rewriteStream(database, task, rewriteNotes);
      expectProblem(await verifyLog(store, { publicKey: keys.publicKey }), {
        kind: 'anchor_mismatch',
        streamId: task,
        revision: 3,
      });
      expectProblem(await verifyNdjsonStream(Readable.from([await exportText(store)]), keys.publicKey), {
        kind: 'anchor_mismatch',
        streamId: task,
        revision: 3,
      });
    });

    it('anchors at start and every interval until stopped, logging a failed round and going on', async () => {
      await seed(store);
      let failNextRead = true;
      const flaky = wrapStore(store, {
        readStream: async (streamId, options) => {
          if (failNextRead) {
            failNextRead = false;
            throw new Error('connection lost');
          }
          return store.readStream(streamId, options);
        },
      });
      const errors: unknown[] = [];
      const logger = {
        info: () => undefined,
        debug: () => undefined,
        warn: () => undefined,
        error: (...args: unknown[]) => errors.push(args),
      } as unknown as Logger;
      const controller = new AbortController();
      const schedule = startAnchorSchedule({
        store: flaky,
        privateKey: keys.privateKey,
        intervalSeconds: 0.05,
        logger,
        signal: controller.signal,
      });
      const anchorCount = async () => (await store.readStream(ANCHOR_STREAM)).length;
      try {
        await waitFor('the first anchor', async () => ((await anchorCount()) === 1 ? true : undefined), {
          timeoutMs: 10000,
          intervalMs: 20,
        });
        expect(errors).to.have.length(1);
        await store.append(`later-${randomBytes(4).toString('hex')}`, events('Later', 1), {
          expectedRevision: 'no_stream',
        });
        await waitFor('the second anchor', async () => ((await anchorCount()) === 2 ? true : undefined), {
          timeoutMs: 10000,
          intervalMs: 20,
        });
      } finally {
        controller.abort();
      }
      await schedule;
      const stoppedAt = await anchorCount();
      await store.append(`after-${randomBytes(4).toString('hex')}`, events('After', 1), {
        expectedRevision: 'no_stream',
      });
      await sleep(200);
      expect(await anchorCount()).to.equal(stoppedAt);
      expect(await verifyLog(store, { publicKey: keys.publicKey })).to.include({
        ok: true,
        anchorsChecked: 2,
      });
    });
  });

  describe('export', () => {
    it('writes one NDJSON line per event with its exact data, metadata and hash', async () => {
      await seed(store);
      await createAnchor(store, anchorOptions);
      const stored = await wholeLog(store);
      const lines = parseLines(await exportText(store));
      expect(lines).to.have.length(10);
      expect(lines).to.deep.equal(
        stored.map((event) => ({
          stream_id: event.streamId,
          revision: event.revision,
          position: event.position,
          type: event.type,
          data: JSON.parse(event.rawData),
          raw_data: event.rawData,
          metadata: {
            event_id: event.metadata.eventId,
            correlation_id: event.metadata.correlationId,
            causation_id: event.metadata.causationId,
            user_id: event.metadata.userId,
            timestamp: event.metadata.timestamp,
            hash: event.metadata.hash,
          },
          recorded_at: event.recordedAt,
        })),
      );
    });

    it('exports from a position (exclusive) to a position (inclusive)', async () => {
      await seed(store);
      const positions = (await wholeLog(store)).map((e) => e.position);
      const exported = async (options: { from?: string; to?: string }) =>
        parseLines(await exportText(store, options)).map((line) => line.position);
      expect(await exported({ from: positions[2], to: positions[5] })).to.deep.equal(positions.slice(3, 6));
      expect(await exported({ from: positions[6] })).to.deep.equal(positions.slice(7));
      expect(await exported({ to: positions[1] })).to.deep.equal(positions.slice(0, 2));
      let refused: unknown;
      await exportText(store, { from: 'not-a-position' }).catch((error) => (refused = error));
      expect(refused).to.have.property('name', 'InvalidPositionError');
    });

    it('does not stop early while an older transaction holds the log back', async () => {
      const holder = await database.pool.connect();
      try {
        // An open transaction with an id older than the events below: readAll cannot show them until it ends.
        await holder.query('BEGIN');
        await holder.query('SELECT pg_current_xact_id()');
        const { task } = await seed(store);
        const exporting = exportText(store);
        const verifying = verifyLog(store, { publicKey: null });
        await sleep(300);
        await holder.query('COMMIT');
        expect(parseLines(await exporting)).to.have.length(9);
        expect(await verifying).to.include({ ok: true, events: 9 });
        expect((await createAnchor(store, anchorOptions))?.heads.map((head) => head.streamId)).to.include(
          task,
        );
      } finally {
        holder.release();
      }
    });

    it('verifies offline, and fails on a line whose raw_data or data was altered', async () => {
      const { task } = await seed(store);
      await createAnchor(store, anchorOptions);
      const text = await exportText(store);
      expect(await verifyNdjsonStream(Readable.from([text]), keys.publicKey)).to.deep.equal(
        await verifyLog(store, { publicKey: keys.publicKey }),
      );
      expect(await verifyNdjsonStream(Readable.from([text]))).to.include({ ok: true, anchors: 'off' });

      const alter = (change: (line: any) => void) =>
        parseLines(text)
          .map((line) => {
            if (line.stream_id === task && line.revision === 2) change(line);
            return JSON.stringify(line);
          })
          .join('\n');
      const alteredRaw = alter((line) => (line.raw_data = line.raw_data.replace('original', 'Original')));
      expectProblem(await verifyNdjsonStream(Readable.from([alteredRaw]), keys.publicKey), {
        kind: 'hash_mismatch',
        streamId: task,
        revision: 2,
      });
      const alteredData = alter((line) => (line.data.note = 'altered'));
      expectProblem(await verifyNdjsonStream(Readable.from([alteredData]), keys.publicKey), {
        kind: 'hash_mismatch',
        streamId: task,
        revision: 2,
      });

      let refused: unknown;
      await verifyNdjsonStream(Readable.from([text + '{"not":"an event"}\n'])).catch(
        (error) => (refused = error),
      );
      expect(refused).to.be.instanceOf(ExportFormatError).and.have.property('line', 11);
    });

    it('streams a large log: a page at a time, waiting for a slow reader to drain', async () => {
      const total = 3000;
      for (let s = 0; s < total / 100; s++)
        await store.append(`bulk-${s}-${randomBytes(3).toString('hex')}`, events('Bulk', 100), {
          expectedRevision: 'no_stream',
        });
      const trace: string[] = [];
      const limits: number[] = [];
      let streamReads = 0;
      const watched = wrapStore(store, {
        readAll: async (options) => {
          trace.push('read');
          limits.push(options.limit);
          return store.readAll(options);
        },
        readStream: async (streamId, options) => {
          streamReads++;
          return store.readStream(streamId, options);
        },
      });

      const sink = new (class extends Writable {
        chunks: string[] = [];
        override _write(chunk: Buffer | string, _encoding: string, callback: () => void): void {
          this.chunks.push(String(chunk));
          setTimeout(callback, 1);
        }
      })({ highWaterMark: 16 * 1024 });
      let writesWhileFull = 0;
      let writesThatFilledIt = 0;
      let maxBuffered = 0;
      const write = sink.write.bind(sink) as (chunk: string) => boolean;
      (sink as any).write = (chunk: string) => {
        trace.push('write');
        if (sink.writableNeedDrain) writesWhileFull++;
        maxBuffered = Math.max(maxBuffered, sink.writableLength);
        const writable = write(chunk);
        if (!writable) writesThatFilledIt++;
        return writable;
      };

      const progress: number[] = [];
      const result = await exportLog(watched, { out: sink, onProgress: (p) => progress.push(p.events) });
      expect(result.events).to.equal(total);
      expect(Math.max(...limits)).to.be.at.most(1000);
      // Writing began before the last page was read: the export did not gather the log first.
      expect(trace.indexOf('write')).to.be.lessThan(trace.lastIndexOf('read'));
      expect(writesThatFilledIt, 'the slow reader never pushed back').to.be.greaterThan(0);
      expect(writesWhileFull, 'wrote without waiting for drain').to.equal(0);
      expect(maxBuffered).to.be.lessThan(16 * 1024);
      expect(progress.length).to.be.greaterThan(2);
      await new Promise<void>((resolve) => sink.end(resolve));
      const text = sink.chunks.join('');
      expect(parseLines(text)).to.have.length(total);

      trace.length = 0;
      limits.length = 0;
      const verifyProgress: number[] = [];
      expect(
        await verifyLog(watched, { publicKey: null, onProgress: (p) => verifyProgress.push(p.events) }),
      ).to.include({ ok: true, events: total, streams: total / 100 });
      expect(limits.length).to.be.greaterThan(2);
      expect(Math.max(...limits)).to.be.at.most(1000);
      expect(streamReads).to.equal(0);
      // Pages can come short while another transaction on the server holds the horizon back; they still add up.
      expect(verifyProgress.at(-1)).to.equal(total);
      expect(verifyProgress).to.deep.equal([...verifyProgress].sort((a, b) => a - b));
      expect(await verifyNdjsonStream(Readable.from([text]))).to.include({ ok: true, events: total });
    });
  });
});

describe('progress', () => {
  const recorder = (isTTY: boolean) => {
    const writes: string[] = [];
    return { writes, output: { isTTY, write: (text: string) => writes.push(text) } };
  };

  it('rewrites one line in place on a terminal, with the rate and the time left', () => {
    let clock = 0;
    const { writes, output } = recorder(true);
    const progress = createProgressReporter({ label: 'verify', total: 1000, output, now: () => clock });
    clock = 2000;
    progress.update({ events: 200 });
    clock = 2050;
    progress.update({ events: 210 });
    clock = 4000;
    progress.update({ events: 400 });
    progress.done();
    expect(writes).to.deep.equal([
      '\rverify: 200 events, 100/s of 1,000 (20%), 0:08 left\x1b[K',
      '\rverify: 400 events, 100/s of 1,000 (40%), 0:06 left\x1b[K',
      '\rverify: 400 events, 100/s of 1,000 (40%), 0:06 left\x1b[K\n',
    ]);
  });

  it('writes plain lines at most every few seconds when not on a terminal', () => {
    let clock = 0;
    const { writes, output } = recorder(false);
    const progress = createProgressReporter({
      label: 'export',
      output,
      now: () => clock,
      plainIntervalMs: 5000,
    });
    for (let second = 1; second <= 10; second++) {
      clock = second * 1000;
      progress.update({ events: second * 1000 });
    }
    progress.done();
    expect(writes).to.deep.equal([
      'export: 1,000 events, 1,000/s\n',
      'export: 6,000 events, 1,000/s\n',
      'export: 10,000 events, 1,000/s\n',
    ]);
  });
});
