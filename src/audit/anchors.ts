import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomUUID,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { sleep } from '../infra/abort.js';
import type { Logger } from '../infra/logger.js';
import { HorizonTimeoutError, readLogPages } from './export.js';
import {
  WrongExpectedRevisionError,
  type EventStore,
  type JsonObject,
  type Position,
  type RecordedEvent,
} from '../infra/eventStore/eventStore.js';
import { canonicalJson } from '../infra/canonicalJson.js';

/**
 * Signed anchors. The hash chain alone cannot tell a genuine history from one rewritten by someone who also
 * recomputed every hash after the change; an anchor is a signature over the heads of the streams at a point in
 * the log, made with a key that never touches the database, so such a rewrite no longer matches a signed head.
 */
export const ANCHOR_STREAM = 'audit-anchors';
export const ANCHOR_EVENT_TYPE = 'AnchorCreated';

/** Bounds one anchor's size (a first anchor over a large log would otherwise list every stream at once). */
const MAX_HEADS_PER_ANCHOR = 10000;
const MAX_APPEND_ATTEMPTS = 5;

export interface AnchorHead {
  streamId: string;
  revision: number;
  hash: string;
}

/** What the signature covers. */
export interface AnchorPayload {
  /** Sorted by stream id. */
  heads: AnchorHead[];
  /** The last log position read: the heads are those of the log up to and including it. */
  coveredUpTo: Position;
  /** The chain hash of the previous anchor event, null for the first: anchors cannot be dropped or reordered. */
  previousAnchorHash: string | null;
  anchoredAt: string;
}

export interface AnchorData extends AnchorPayload {
  /** Base64 Ed25519 signature over canonicalJson(payload). */
  signature: string;
  /** Names the key without revealing anything: SHA-256 hex of the public key's SPKI DER. */
  publicKeyFingerprint: string;
}

export const anchorPayloadBytes = (payload: AnchorPayload): Buffer =>
  Buffer.from(
    canonicalJson({
      heads: payload.heads,
      coveredUpTo: payload.coveredUpTo,
      previousAnchorHash: payload.previousAnchorHash,
      anchoredAt: payload.anchoredAt,
    }),
    'utf8',
  );

/** PEM key pairs for tests and for operators setting up anchors (see the README's auditor section). */
export function generateAuditKeyPair(): { privateKey: string; publicKey: string } {
  return generateKeyPairSync('ed25519', {
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
}

export function loadPrivateKey(key: string | KeyObject): KeyObject {
  const keyObject = typeof key === 'string' ? createPrivateKey(key) : key;
  if (keyObject.type !== 'private' || keyObject.asymmetricKeyType !== 'ed25519')
    throw new Error('the audit private key must be an Ed25519 private key (PEM, PKCS#8)');
  return keyObject;
}

export function loadPublicKey(key: string | KeyObject): KeyObject {
  const keyObject = typeof key === 'string' ? createPublicKey(key) : key;
  if (keyObject.type !== 'public' || keyObject.asymmetricKeyType !== 'ed25519')
    throw new Error('the audit public key must be an Ed25519 public key (PEM, SPKI)');
  return keyObject;
}

/** Accepts either half of the pair: a private key's fingerprint is its public key's. */
export function publicKeyFingerprint(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** Checks the shape of an anchor event's data; returns a reason when it is not an anchor. */
export function parseAnchorData(data: unknown): { anchor: AnchorData } | { reason: string } {
  if (!isObject(data)) return { reason: 'data is not an object' };
  const { heads, coveredUpTo, previousAnchorHash, anchoredAt, signature, publicKeyFingerprint } = data;
  if (!Array.isArray(heads)) return { reason: 'heads is not a list' };
  for (const head of heads) {
    if (
      !isObject(head) ||
      typeof head.streamId !== 'string' ||
      typeof head.hash !== 'string' ||
      !Number.isSafeInteger(head.revision) ||
      (head.revision as number) < 0
    )
      return { reason: `bad head ${JSON.stringify(head)}` };
  }
  if (typeof coveredUpTo !== 'string') return { reason: 'coveredUpTo is not a position' };
  if (previousAnchorHash !== null && typeof previousAnchorHash !== 'string')
    return { reason: 'previousAnchorHash is neither a hash nor null' };
  if (typeof anchoredAt !== 'string') return { reason: 'anchoredAt is not a time' };
  if (typeof signature !== 'string') return { reason: 'signature is missing' };
  if (typeof publicKeyFingerprint !== 'string') return { reason: 'publicKeyFingerprint is missing' };
  return { anchor: data as unknown as AnchorData };
}

/**
 * A public key that signed anchors before a rotation: it is believed only for anchors made in its range
 * (`anchoredAt` from `validFrom`, null: since ever, up to `validUntil`, exclusive), so a retired private key that
 * leaks later cannot sign an anchor the verifier accepts as new.
 */
export interface RetiredAnchorKey {
  key: string;
  validFrom: string | null;
  validUntil: string;
}

/**
 * The keys anchors are checked with: the configured public key (the signing key's, any time) and the retired ones,
 * each within its range. Anchors name their key by fingerprint, so each is checked with the key that made it.
 */
export class AnchorKeys {
  private readonly current: KeyObject;
  private readonly currentFingerprint: string;
  private readonly retired: Array<{ key: KeyObject; fingerprint: string; from: number; until: number }>;

  constructor(current: string | KeyObject, retired: readonly RetiredAnchorKey[] = []) {
    this.current = loadPublicKey(current);
    this.currentFingerprint = publicKeyFingerprint(this.current);
    this.retired = retired.map((setting) => {
      const key = loadPublicKey(setting.key);
      const from = setting.validFrom === null ? -Infinity : Date.parse(setting.validFrom);
      const until = Date.parse(setting.validUntil);
      if (Number.isNaN(from) || Number.isNaN(until) || from >= until)
        throw new Error(
          `retired audit key ${publicKeyFingerprint(key)}: validFrom must be before validUntil (ISO 8601 times)`,
        );
      return { key, fingerprint: publicKeyFingerprint(key), from, until };
    });
  }

  /** null when the anchor's signature is good and made by a key believed at its time, otherwise why not. */
  check(anchor: AnchorData): string | null {
    const current = this.currentFingerprint;
    if (anchor.publicKeyFingerprint === current) return checkAnchorSignature(anchor, this.current);
    const retired = this.retired.find((key) => key.fingerprint === anchor.publicKeyFingerprint);
    if (!retired)
      return `signed with key ${anchor.publicKeyFingerprint}, not the configured public key ${current}${
        this.retired.length > 0 ? ' nor a retired one' : ''
      }`;
    const at = Date.parse(anchor.anchoredAt);
    if (!(at >= retired.from && at < retired.until))
      return `signed at ${anchor.anchoredAt} with retired key ${retired.fingerprint}, outside its validity (${
        Number.isFinite(retired.from) ? new Date(retired.from).toISOString() : 'since ever'
      } to ${new Date(retired.until).toISOString()})`;
    return checkAnchorSignature(anchor, retired.key);
  }
}

/** null when the signature is good, otherwise why not. */
export function checkAnchorSignature(anchor: AnchorData, publicKey: KeyObject): string | null {
  const expected = publicKeyFingerprint(publicKey);
  if (anchor.publicKeyFingerprint !== expected)
    return `signed with key ${anchor.publicKeyFingerprint}, not the configured public key ${expected}`;
  const signature = Buffer.from(anchor.signature, 'base64');
  const good = verify(null, anchorPayloadBytes(anchor), publicKey, signature);
  return good ? null : 'the signature does not match the anchored heads';
}

interface LastAnchor {
  revision: number;
  hash: string;
  coveredUpTo: Position | null;
}

/**
 * The port cannot read a stream backwards, so the newest anchor would cost a read of the whole anchors stream
 * each time. Remember it per store and re-read from its revision instead; a mismatch (the stream was rewritten
 * or another process anchored) falls back to a full read.
 */
const lastAnchors = new WeakMap<EventStore, LastAnchor>();

async function readLastAnchor(store: EventStore): Promise<LastAnchor | null> {
  const remembered = lastAnchors.get(store);
  let events: RecordedEvent[] | null = null;
  if (remembered) {
    const tail = await store.readStream(ANCHOR_STREAM, { fromRevision: remembered.revision });
    if (tail[0]?.metadata.hash === remembered.hash) events = tail;
  }
  events ??= await store.readStream(ANCHOR_STREAM);
  const last = events[events.length - 1];
  if (!last) return null;
  const parsed = parseAnchorData(last.data);
  if (!('anchor' in parsed))
    throw new Error(
      `${ANCHOR_STREAM}@${last.revision} is not an anchor (${parsed.reason}); run audit verify`,
    );
  const anchor = {
    revision: last.revision,
    hash: last.metadata.hash,
    coveredUpTo: parsed.anchor.coveredUpTo,
  };
  lastAnchors.set(store, anchor);
  return anchor;
}

/** The newest head of every stream changed after `after`, up to the bound on heads per anchor. */
async function changedHeads(
  store: EventStore,
  after: Position | null,
): Promise<{ heads: Map<string, AnchorHead>; coveredUpTo: Position | null }> {
  const heads = new Map<string, AnchorHead>();
  let coveredUpTo = after;
  try {
    for await (const page of readLogPages(store, { after })) {
      for (const event of page) {
        if (event.streamId !== ANCHOR_STREAM) {
          // Stop before a new stream that would not fit; the next anchor starts exactly here.
          if (!heads.has(event.streamId) && heads.size >= MAX_HEADS_PER_ANCHOR) return { heads, coveredUpTo };
          heads.set(event.streamId, {
            streamId: event.streamId,
            revision: event.revision,
            hash: event.metadata.hash,
          });
        }
        coveredUpTo = event.position;
      }
    }
  } catch (error) {
    // A long transaction holds the rest back: anchoring what is readable still protects it.
    if (!(error instanceof HorizonTimeoutError)) throw error;
  }
  return { heads, coveredUpTo };
}

export interface CreateAnchorOptions {
  privateKey: string | KeyObject;
  now: () => Date;
  newId: () => string;
}

/**
 * Signs the heads of every stream changed since the last anchor and appends them to `audit-anchors`. Returns
 * null when nothing changed. Concurrent anchorers (several service processes) meet on the expected revision:
 * the loser reads again and anchors what is left, if anything.
 */
export async function createAnchor(
  store: EventStore,
  options: CreateAnchorOptions,
): Promise<{ position: Position; heads: AnchorHead[] } | null> {
  const privateKey = loadPrivateKey(options.privateKey);
  const fingerprint = publicKeyFingerprint(privateKey);
  for (let attempt = 1; ; attempt++) {
    const previous = await readLastAnchor(store);
    const { heads, coveredUpTo } = await changedHeads(store, previous?.coveredUpTo ?? null);
    if (heads.size === 0 || coveredUpTo === null) return null;
    const payload: AnchorPayload = {
      heads: [...heads.values()].sort((a, b) =>
        a.streamId < b.streamId ? -1 : a.streamId > b.streamId ? 1 : 0,
      ),
      coveredUpTo,
      previousAnchorHash: previous?.hash ?? null,
      anchoredAt: options.now().toISOString(),
    };
    const data: AnchorData = {
      ...payload,
      signature: sign(null, anchorPayloadBytes(payload), privateKey).toString('base64'),
      publicKeyFingerprint: fingerprint,
    };
    try {
      const result = await store.append(
        ANCHOR_STREAM,
        [
          {
            eventId: options.newId(),
            type: ANCHOR_EVENT_TYPE,
            data: data as unknown as JsonObject,
            metadata: {
              correlationId: options.newId(),
              causationId: null,
              userId: null,
              timestamp: payload.anchoredAt,
            },
          },
        ],
        { expectedRevision: previous?.revision ?? 'no_stream' },
      );
      return { position: result.position, heads: payload.heads };
    } catch (error) {
      lastAnchors.delete(store);
      if (!(error instanceof WrongExpectedRevisionError) || attempt >= MAX_APPEND_ATTEMPTS) throw error;
    }
  }
}

export interface AnchorScheduleOptions {
  store: EventStore;
  privateKey: string | KeyObject;
  intervalSeconds: number;
  logger: Logger;
  signal: AbortSignal;
  now?: () => Date;
  newId?: () => string;
}

/**
 * Anchors once at start (so a service restarted more often than the interval still anchors) and then every
 * interval, until the signal aborts. Resolves when stopped; a failed round is logged and tried again next time.
 */
export async function startAnchorSchedule(options: AnchorScheduleOptions): Promise<void> {
  const { store, intervalSeconds, logger, signal } = options;
  // Parsed once, so a bad key fails at start-up rather than at every round; it stays in memory only.
  const privateKey = loadPrivateKey(options.privateKey);
  const now = options.now ?? (() => new Date());
  const newId = options.newId ?? randomUUID;
  while (!signal.aborted) {
    try {
      // A backlog larger than one anchor's bound is worked off in several anchors in the same round.
      for (let round = 0; round < 100 && !signal.aborted; round++) {
        const anchor = await createAnchor(store, { privateKey, now, newId });
        if (!anchor) break;
        logger.info({ position: anchor.position, streams: anchor.heads.length }, 'audit anchor created');
        if (anchor.heads.length < MAX_HEADS_PER_ANCHOR) break;
      }
    } catch (error) {
      logger.error({ err: error }, 'audit anchor failed; retrying at the next interval');
    }
    await sleep(intervalSeconds * 1000, signal);
  }
}
