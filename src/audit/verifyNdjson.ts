import type { RetiredAnchorKey } from './anchors.js';
import type { Readable } from 'node:stream';
import { createInterface } from 'node:readline';
import { isPosition } from '../infra/eventStore/eventStore.js';
import { canonicalJson } from '../infra/canonicalJson.js';
import type { ExportedEvent } from './export.js';
import { LogVerifier, type ChainEvent, type VerifyProblem, type VerifyReport } from './verify.js';

/** The input is not an export (as opposed to an export whose history does not verify). */
export class ExportFormatError extends Error {
  override name = 'ExportFormatError';
  constructor(
    readonly line: number,
    reason: string,
  ) {
    super(`line ${line}: ${reason}`);
  }
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function parseLine(text: string, line: number): { event: ChainEvent; exported: ExportedEvent } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ExportFormatError(line, 'not JSON');
  }
  if (!isObject(value)) throw new ExportFormatError(line, 'not a JSON object');
  const { stream_id, revision, position, type, raw_data, metadata } = value;
  if (typeof stream_id !== 'string') throw new ExportFormatError(line, 'stream_id is missing');
  if (!Number.isSafeInteger(revision) || (revision as number) < 0)
    throw new ExportFormatError(line, 'revision is not a revision');
  if (!isPosition(position)) throw new ExportFormatError(line, 'position is not a log position');
  if (typeof type !== 'string') throw new ExportFormatError(line, 'type is missing');
  if (typeof raw_data !== 'string') throw new ExportFormatError(line, 'raw_data is missing');
  if (!('data' in value)) throw new ExportFormatError(line, 'data is missing');
  if (!isObject(metadata) || typeof metadata.hash !== 'string')
    throw new ExportFormatError(line, 'metadata.hash is missing');
  return {
    event: {
      streamId: stream_id,
      revision: revision as number,
      position,
      type,
      rawData: raw_data,
      hash: metadata.hash,
    },
    exported: value as unknown as ExportedEvent,
  };
}

/** `data` is what a reader of the file looks at, but only `raw_data` is hashed: they must say the same. */
function dataProblem(event: ChainEvent, exported: ExportedEvent): VerifyProblem | null {
  if (canonicalJson(exported.data) === canonicalJson(JSON.parse(event.rawData))) return null;
  return {
    streamId: event.streamId,
    revision: event.revision,
    position: event.position,
    kind: 'hash_mismatch',
    detail: `${event.streamId}@${event.revision}: the line's data differs from its raw_data, which is what the hash covers`,
  };
}

/**
 * Verifies an export (exportLog's NDJSON) offline, with the same checks as verifyLog. It must be an export of
 * the log from its start (no `from`): a stream whose first events are not in the file cannot be chain-checked.
 * Throws ExportFormatError on a line that is not an exported event.
 */
export async function verifyNdjsonStream(
  input: Readable,
  publicKey?: string | null,
  options: {
    onProgress?: (progress: { events: number }) => void;
    retiredPublicKeys?: readonly RetiredAnchorKey[];
  } = {},
): Promise<VerifyReport> {
  const verifier = new LogVerifier({
    publicKey: publicKey ?? null,
    retiredPublicKeys: options.retiredPublicKeys,
  });
  const lines = createInterface({ input, crlfDelay: Infinity });
  let lineNumber = 0;
  try {
    for await (const text of lines) {
      lineNumber++;
      if (text.trim() === '') continue;
      const { event, exported } = parseLine(text, lineNumber);
      // The chain check comes first: once it passes, raw_data is the stored JSON and parses.
      const problem = (await verifier.add(event)) ?? dataProblem(event, exported);
      if (problem) return verifier.report(problem);
      if (verifier.events % 1000 === 0) options.onProgress?.({ events: verifier.events });
    }
  } finally {
    lines.close();
  }
  options.onProgress?.({ events: verifier.events });
  return verifier.report();
}
