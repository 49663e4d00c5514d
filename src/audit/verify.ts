/**
 * src/audit: what auditors run against the log: hash-chain and anchor verification (this file), anchors, export.
 */
import type { KeyObject } from 'node:crypto';
import type { EventStore, Position, RecordedEvent } from '../infra/eventStore/eventStore.js';
import { chainHash, GENESIS_HASH } from '../infra/eventStore/hashChain.js';
import {
  ANCHOR_EVENT_TYPE,
  ANCHOR_STREAM,
  AnchorKeys,
  parseAnchorData,
  type AnchorHead,
  type RetiredAnchorKey,
} from './anchors.js';
import { readLogPages } from './export.js';

export type ProblemKind = 'hash_mismatch' | 'missing_predecessor' | 'anchor_mismatch' | 'bad_signature';

export interface VerifyProblem {
  streamId: string;
  /**
   * The event at fault. For `missing_predecessor` it is the first missing revision, which no longer exists;
   * `position` is then that of the event found after the gap.
   */
  revision: number;
  position: Position;
  kind: ProblemKind;
  detail: string;
}

export interface VerifyCounts {
  /** Events whose chain link was verified (anchor events included). */
  events: number;
  streams: number;
  /** 'off' when no public key was given: anchors are then chain-checked like any event, but not trusted. */
  anchors: 'on' | 'off';
  anchorsChecked: number;
}

export type VerifyReport =
  (VerifyCounts & { ok: true }) | (VerifyCounts & { ok: false; problem: VerifyProblem });

/** What the chain check needs of an event, whether it comes from the store or from an exported file. */
export interface ChainEvent {
  streamId: string;
  revision: number;
  position: Position;
  type: string;
  /** The exact stored data bytes, which the hash covers. */
  rawData: string;
  /** The hash stored with the event. */
  hash: string;
}

export interface StreamHead {
  revision: number;
  hash: string;
  position: Position;
}

export const toChainEvent = (event: RecordedEvent): ChainEvent => ({
  streamId: event.streamId,
  revision: event.revision,
  position: event.position,
  type: event.type,
  rawData: event.rawData,
  hash: event.metadata.hash,
});

/** One link of a stream's chain: `event` must directly follow `previous` (undefined: the stream's start). */
export function checkChainLink(previous: StreamHead | undefined, event: ChainEvent): VerifyProblem | null {
  const at = { streamId: event.streamId, position: event.position };
  const expectedRevision = previous ? previous.revision + 1 : 0;
  if (event.revision > expectedRevision)
    return {
      ...at,
      revision: expectedRevision,
      kind: 'missing_predecessor',
      detail: previous
        ? `${event.streamId}@${expectedRevision} is missing: revision ${previous.revision} is followed by ${event.revision}`
        : `${event.streamId} starts at revision ${event.revision}: revision 0 is missing`,
    };
  if (event.revision < expectedRevision)
    return {
      ...at,
      revision: event.revision,
      kind: 'missing_predecessor',
      detail: `${event.streamId}@${event.revision} appears again after revision ${expectedRevision - 1}`,
    };
  const recomputed = chainHash({
    streamId: event.streamId,
    revision: event.revision,
    type: event.type,
    rawData: event.rawData,
    previousHash: previous?.hash ?? GENESIS_HASH,
  });
  if (recomputed !== event.hash)
    return {
      ...at,
      revision: event.revision,
      kind: 'hash_mismatch',
      detail: `${event.streamId}@${event.revision}: stored hash ${event.hash}, recomputed ${recomputed}; its type or data changed, or the event before it was replaced`,
    };
  return null;
}

/**
 * How many superseded stream heads the verifier remembers. An anchor lists heads as of its `coveredUpTo`, and a
 * stream may move on before the anchor itself is appended; those few revisions are found here. Older ones are
 * looked up in the store when there is one.
 */
const RECENT_HEADS = 50000;

export interface LogVerifierOptions {
  publicKey: string | KeyObject | null;
  /** Keys that signed anchors before a rotation, each believed within its range; see RetiredAnchorKey. */
  retiredPublicKeys?: readonly RetiredAnchorKey[];
  /** Check only this stream's anchored heads (verifying one stream rather than the log). */
  onlyStream?: string;
  /** The stored hash at a revision that fell out of the recent heads; store-backed verification only. */
  lookupHead?: (streamId: string, revision: number) => Promise<StreamHead | null>;
}

/**
 * Verifies events fed in log order, holding only each stream's head (and a bounded window of superseded heads),
 * so memory follows the number of streams, not the size of the log. Shared by the store and the NDJSON verifier.
 */
export class LogVerifier {
  private readonly heads = new Map<string, StreamHead>();
  private readonly recent = new Map<string, StreamHead>();
  private readonly keys: AnchorKeys | null;
  private verifiedEvents = 0;
  private verifiedAnchors = 0;

  constructor(private readonly options: LogVerifierOptions) {
    this.keys =
      options.publicKey === null ? null : new AnchorKeys(options.publicKey, options.retiredPublicKeys);
  }

  get events(): number {
    return this.verifiedEvents;
  }

  /** Returns the event's problem, or null; after a problem the verifier's state is no longer meaningful. */
  async add(event: ChainEvent): Promise<VerifyProblem | null> {
    const previous = this.heads.get(event.streamId);
    const problem = checkChainLink(previous, event);
    if (problem) return problem;
    this.verifiedEvents++;
    if (previous) this.rememberSuperseded(event.streamId, previous);
    this.heads.set(event.streamId, { revision: event.revision, hash: event.hash, position: event.position });
    if (event.streamId === ANCHOR_STREAM && this.keys) return this.checkAnchor(event, previous);
    return null;
  }

  report(problem: VerifyProblem | null = null): VerifyReport {
    const counts: VerifyCounts = {
      events: this.verifiedEvents,
      streams: this.heads.size,
      anchors: this.keys ? 'on' : 'off',
      anchorsChecked: this.verifiedAnchors,
    };
    return problem ? { ok: false, problem, ...counts } : { ok: true, ...counts };
  }

  private rememberSuperseded(streamId: string, head: StreamHead): void {
    this.recent.set(`${streamId}\n${head.revision}`, head);
    if (this.recent.size > RECENT_HEADS) this.recent.delete(this.recent.keys().next().value!);
  }

  private async checkAnchor(
    event: ChainEvent,
    previous: StreamHead | undefined,
  ): Promise<VerifyProblem | null> {
    const at = { streamId: ANCHOR_STREAM, revision: event.revision, position: event.position };
    const name = `anchor ${ANCHOR_STREAM}@${event.revision}`;
    if (event.type !== ANCHOR_EVENT_TYPE)
      return {
        ...at,
        kind: 'bad_signature',
        detail: `${name} is a ${event.type} event, not a signed anchor`,
      };
    let data: unknown;
    try {
      data = JSON.parse(event.rawData);
    } catch {
      return { ...at, kind: 'bad_signature', detail: `${name}: data is not JSON` };
    }
    const parsed = parseAnchorData(data);
    if ('reason' in parsed) return { ...at, kind: 'bad_signature', detail: `${name}: ${parsed.reason}` };
    const anchor = parsed.anchor;
    const badSignature = this.keys!.check(anchor);
    if (badSignature) return { ...at, kind: 'bad_signature', detail: `${name}: ${badSignature}` };
    // The chain of the anchors stream could be recomputed after dropping an anchor; this link is signed.
    const expectedPrevious = previous?.hash ?? null;
    if (anchor.previousAnchorHash !== expectedPrevious)
      return {
        ...at,
        kind: 'anchor_mismatch',
        detail: `${name} was signed after the anchor with hash ${anchor.previousAnchorHash ?? '(none)'}, but follows ${expectedPrevious ?? 'nothing'}: anchors were removed or rewritten`,
      };
    for (const head of anchor.heads) {
      if (head.streamId === ANCHOR_STREAM) continue;
      if (this.options.onlyStream !== undefined && head.streamId !== this.options.onlyStream) continue;
      const problem = await this.checkAnchoredHead(head, name, event.position);
      if (problem) return problem;
    }
    this.verifiedAnchors++;
    return null;
  }

  private async checkAnchoredHead(
    head: AnchorHead,
    anchorName: string,
    anchorPosition: Position,
  ): Promise<VerifyProblem | null> {
    const signed = `${anchorName} (position ${anchorPosition}) signed ${head.streamId}@${head.revision}`;
    const fail = (detail: string, position = anchorPosition): VerifyProblem => ({
      streamId: head.streamId,
      revision: head.revision,
      position,
      kind: 'anchor_mismatch',
      detail,
    });
    const current = this.heads.get(head.streamId);
    if (!current) return fail(`${signed}, but the log has no such stream before it`);
    if (current.revision < head.revision)
      return fail(
        `${signed}, but the stream ends at revision ${current.revision} there: events were removed`,
      );
    let found =
      current.revision === head.revision
        ? current
        : (this.recent.get(`${head.streamId}\n${head.revision}`) ?? null);
    if (!found && this.options.lookupHead)
      found = await this.options.lookupHead(head.streamId, head.revision);
    if (!found)
      return fail(
        `${signed}, which cannot be checked here: the stream moved on by more than ${RECENT_HEADS} events before the anchor; verify against the database`,
      );
    if (found.hash !== head.hash)
      return fail(
        `${signed} with hash ${head.hash}, the log has ${found.hash}: the stream was rewritten up to here`,
        found.position,
      );
    return null;
  }
}

export interface VerifyLogOptions {
  /** Verify this stream alone (and the anchors that list it) rather than the whole log. */
  stream?: string;
  /** Ed25519 public key (PEM, SPKI); null turns anchor checks off. */
  publicKey: string | null;
  retiredPublicKeys?: readonly RetiredAnchorKey[];
  onProgress?: (progress: { events: number }) => void;
}

/**
 * Recomputes every stream's hash chain in log order and checks the signed anchors, stopping at the first
 * problem. The log is read a page at a time up to its head when called; see LogVerifier for what is kept in
 * memory.
 */
export async function verifyLog(store: EventStore, options: VerifyLogOptions): Promise<VerifyReport> {
  const verifier = new LogVerifier({
    publicKey: options.publicKey,
    retiredPublicKeys: options.retiredPublicKeys,
    onlyStream: options.stream,
    // Reads the rest of the stream from there: only reached for anchors far behind their coverage.
    lookupHead: async (streamId, revision) => {
      const [event] = await store.readStream(streamId, { fromRevision: revision });
      return event?.revision === revision
        ? { revision, hash: event.metadata.hash, position: event.position }
        : null;
    },
  });
  if (options.stream !== undefined) return verifyStream(store, options.stream, verifier, options);
  for await (const page of readLogPages(store, { after: null })) {
    for (const event of page) {
      const problem = await verifier.add(toChainEvent(event));
      if (problem) return verifier.report(problem);
    }
    options.onProgress?.({ events: verifier.events });
  }
  return verifier.report();
}

async function verifyStream(
  store: EventStore,
  streamId: string,
  verifier: LogVerifier,
  options: VerifyLogOptions,
): Promise<VerifyReport> {
  // Anchors first: every head they list was appended before them, so it is in the stream read after.
  const anchors =
    options.publicKey !== null && streamId !== ANCHOR_STREAM ? await store.readStream(ANCHOR_STREAM) : [];
  for (const event of [...(await store.readStream(streamId)), ...anchors]) {
    const problem = await verifier.add(toChainEvent(event));
    if (problem) return verifier.report(problem);
  }
  options.onProgress?.({ events: verifier.events });
  return verifier.report();
}
