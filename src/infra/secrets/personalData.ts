/**
 * Personal data sealed with a key per person (crypto-shredding). The log is immutable and hash-chained, so an email
 * written to it can never be taken out; what is written is the email sealed (AES-256-GCM) with a data key of that
 * person's own. The keys live in `person_keys`, apart from the log, each wrapped (AES-256-GCM again) by a key derived
 * from the deployment's master key. Forgetting a person destroys their key: the sealed bytes stay in the log, so the
 * hash chain still verifies, but nobody can open them any more.
 *
 * The master key also gives the keyed hash that stands in for an email wherever one must be found by email (the
 * account stream's id, rate-limit keys): an HMAC, so a list of guessed emails cannot be matched against stream ids
 * without the key, as it could against a plain SHA-256.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import type { Pool } from '../db/pool.js';

/** Sealed values start with this, so a reader tells them from the emails in clear of events written before. */
export const SEALED_PREFIX = 'pd1.';
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** A master key must carry at least this much: the strength of the AES-256 keys derived from it. */
export const MIN_MASTER_KEY_BYTES = 32;
/** Fewer distinct byte values than this in the key: a pattern, not random bytes (which almost never come close). */
const MIN_DISTINCT_KEY_BYTES = 16;

export const isSealed = (value: string): boolean => value.startsWith(SEALED_PREFIX);

/**
 * The master key as configured: base64, base64url or hex of at least 32 bytes. Throws naming what is wrong, never
 * the key itself.
 */
export function parseMasterKey(text: string): Buffer {
  const trimmed = text.trim();
  const bytes =
    /^[0-9a-fA-F]+$/.test(trimmed) && trimmed.length % 2 === 0
      ? Buffer.from(trimmed, 'hex')
      : /^[A-Za-z0-9+/_-]+=*$/.test(trimmed)
        ? Buffer.from(trimmed, 'base64url')
        : null;
  if (!bytes) throw new Error('the data key must be hex or base64');
  if (bytes.length < MIN_MASTER_KEY_BYTES)
    throw new Error(
      `the data key must hold at least ${MIN_MASTER_KEY_BYTES} bytes; it holds ${bytes.length}`,
    );
  // 32 random bytes hold about 31 distinct values; a typed pattern (`abab…`, a repeated word) holds a handful.
  if (new Set(bytes).size < MIN_DISTINCT_KEY_BYTES)
    throw new Error(
      'the data key looks typed, not random (too few distinct bytes): make one with `openssl rand -base64 32`',
    );
  return bytes;
}

function seal(key: Buffer, plaintext: Buffer, additionalData: Buffer): Buffer {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(additionalData);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([iv, body, cipher.getAuthTag()]);
}

function open(key: Buffer, sealed: Buffer, additionalData: Buffer): Buffer {
  if (sealed.length < IV_BYTES + TAG_BYTES) throw new Error('sealed value is too short');
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, IV_BYTES));
  decipher.setAAD(additionalData);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  return Buffer.concat([
    decipher.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)),
    decipher.final(),
  ]);
}

/** What the command side needs of personal data; one implementation, on PostgreSQL, whatever the event store. */
export interface PersonalData {
  /** The keyed hash (hex) of an already normalised email: what stream ids and lookups use instead of it. */
  emailHash(normalisedEmail: string): string;
  /** `value` sealed with the person's key, made now if they have none. Refused for a forgotten person. */
  seal(personId: string, value: string): Promise<string>;
  /** The value in clear; null when the person's key was destroyed (they were forgotten). */
  open(personId: string, sealed: string): Promise<string | null>;
  /** Destroys the person's key, for good; doing it again changes nothing. */
  destroyKey(personId: string): Promise<void>;
  /**
   * Destroys the keys of users the read model shows forgotten that still have one: a forget whose process died
   * between its UserForgotten and the key's destruction is finished here. Returns how many it destroyed.
   */
  destroyKeysOfForgottenUsers(): Promise<number>;
}

export class ForgottenPersonError extends Error {
  override name = 'ForgottenPersonError';
}

/**
 * `person_keys` (migration 0015): one row per person, the wrapped key, and when it was destroyed (the row stays, its
 * key set to null, so "was there ever a key, and when did it go" can still be answered).
 */
export class PostgresPersonalData implements PersonalData {
  private readonly lookupKey: Buffer;
  private readonly wrappingKey: Buffer;

  constructor(
    private readonly pool: Pool,
    masterKey: Buffer,
  ) {
    // Two keys for two uses, so neither use can leak something about the other's.
    const derive = (purpose: string) =>
      Buffer.from(hkdfSync('sha256', masterKey, Buffer.alloc(0), `task-manager ${purpose} v1`, KEY_BYTES));
    this.lookupKey = derive('email lookup');
    this.wrappingKey = derive('person key wrapping');
  }

  emailHash(normalisedEmail: string): string {
    return createHmac('sha256', this.lookupKey).update(normalisedEmail, 'utf8').digest('hex');
  }

  async seal(personId: string, value: string): Promise<string> {
    // The person's id is bound into the ciphertext, so a sealed value copied into another person's event fails to open.
    const key = await this.keyFor(personId, { create: true });
    if (!key)
      throw new ForgottenPersonError(`person ${personId} was forgotten; nothing can be sealed for them`);
    return SEALED_PREFIX + seal(key, Buffer.from(value, 'utf8'), Buffer.from(personId)).toString('base64url');
  }

  async open(personId: string, sealed: string): Promise<string | null> {
    if (!isSealed(sealed)) throw new Error('not a sealed value');
    const key = await this.keyFor(personId, { create: false });
    if (!key) return null;
    const bytes = Buffer.from(sealed.slice(SEALED_PREFIX.length), 'base64url');
    return open(key, bytes, Buffer.from(personId)).toString('utf8');
  }

  async destroyKey(personId: string): Promise<void> {
    // A person who never had a key gets a destroyed row too, so a later seal for them is refused as well.
    await this.pool.query(
      `INSERT INTO person_keys (person_id, wrapped_key, destroyed_at) VALUES ($1, NULL, now())
       ON CONFLICT (person_id) DO UPDATE SET wrapped_key = NULL, destroyed_at = coalesce(person_keys.destroyed_at, now())`,
      [personId],
    );
  }

  async destroyKeysOfForgottenUsers(): Promise<number> {
    const { rowCount } = await this.pool.query(
      `UPDATE person_keys k SET wrapped_key = NULL, destroyed_at = now()
         FROM users u WHERE u.id = k.person_id AND u.forgotten_at IS NOT NULL AND k.wrapped_key IS NOT NULL`,
    );
    return rowCount ?? 0;
  }

  /** The person's key unwrapped; null once destroyed (or, without `create`, when there never was one). */
  private async keyFor(personId: string, options: { create: boolean }): Promise<Buffer | null> {
    if (options.create) {
      const fresh = seal(this.wrappingKey, randomBytes(KEY_BYTES), Buffer.from(personId));
      // First writer wins: two registrations racing for one id read back the same key.
      await this.pool.query(
        'INSERT INTO person_keys (person_id, wrapped_key) VALUES ($1, $2) ON CONFLICT (person_id) DO NOTHING',
        [personId, fresh],
      );
    }
    const { rows } = await this.pool.query<{ wrapped_key: Buffer | null }>(
      'SELECT wrapped_key FROM person_keys WHERE person_id = $1',
      [personId],
    );
    const wrapped = rows[0]?.wrapped_key ?? null;
    return wrapped && open(this.wrappingKey, wrapped, Buffer.from(personId));
  }
}
