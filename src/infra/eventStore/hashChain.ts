import { createHash } from 'node:crypto';

/**
 * The per-stream hash chain that lets auditors verify history. Each event's hash covers its stream, revision,
 * type, the exact bytes of its data and the hash of the event before it, so changing, removing or reordering
 * any event breaks every hash after it. Fields are separated by newlines, which stream ids and event types
 * cannot contain, so no two different inputs share an encoding.
 */
export const GENESIS_HASH = '';

export function chainHash(input: {
  streamId: string;
  revision: number;
  type: string;
  rawData: string;
  previousHash: string;
}): string {
  return createHash('sha256')
    .update(`${input.streamId}\n${input.revision}\n${input.type}\n${input.previousHash}\n`)
    .update(input.rawData, 'utf8')
    .digest('hex');
}

/** Hashes a run of new events that follows `previousHash`, returning one hash per event. */
export function chainHashes(
  streamId: string,
  firstRevision: number,
  previousHash: string,
  events: ReadonlyArray<{ type: string; rawData: string }>,
): string[] {
  const hashes: string[] = [];
  let previous = previousHash;
  events.forEach((event, index) => {
    previous = chainHash({
      streamId,
      revision: firstRevision + index,
      type: event.type,
      rawData: event.rawData,
      previousHash: previous,
    });
    hashes.push(previous);
  });
  return hashes;
}
