import { checkColumn, defineProjection } from '../readModel.js';
import type { SessionEvent } from '../../domain/identity/events.js';

interface RefreshTokenRow {
  session_id: string;
  user_id: string;
  expires_at: string;
  created_at: string;
}

/** As the database would check it, so a bad value is caught at its event even if a later one overwrites it. */
function checked(row: RefreshTokenRow): RefreshTokenRow {
  checkColumn('session_id', 'uuid', false, row.session_id);
  checkColumn('user_id', 'uuid', false, row.user_id);
  checkColumn('expires_at', 'timestamptz', false, row.expires_at);
  checkColumn('created_at', 'timestamptz', false, row.created_at);
  return row;
}

/**
 * The seed's refresh-token table: one row per live session (its user and expiry, no token hash: see migration 0014),
 * deleted on logout or revocation.
 */
export const refreshTokensProjection = defineProjection<RefreshTokenRow>({
  name: 'refresh_tokens',
  eventTypes: new Set(['SessionStarted', 'RefreshTokenRotated', 'SessionRevoked']),
  tables: [{ name: 'refresh_tokens', streamOf: `'session-' || r.session_id` }],
  keyOf(event) {
    const sessionId = (event.data as { sessionId?: unknown }).sessionId;
    if (typeof sessionId !== 'string') throw new TypeError(`${event.type} names no session`);
    return sessionId;
  },
  async load(client, keys, lock) {
    const { rows } = await client.query<{
      session_id: string;
      user_id: string;
      expires_at: Date;
      created_at: Date;
    }>(
      `SELECT session_id, user_id, expires_at, created_at FROM refresh_tokens
        WHERE session_id = ANY ($1::uuid[])${lock ? ' FOR UPDATE' : ''}`,
      [keys],
    );
    return new Map(
      rows.map((row) => [
        row.session_id,
        { ...row, expires_at: row.expires_at.toISOString(), created_at: row.created_at.toISOString() },
      ]),
    );
  },
  evolve(row, recorded) {
    const event = recorded as unknown as SessionEvent;
    switch (event.type) {
      case 'SessionStarted':
        return (
          row ??
          checked({
            session_id: event.data.sessionId,
            user_id: event.data.userId,
            expires_at: event.data.expiresAt,
            created_at: event.data.startedAt,
          })
        );
      case 'RefreshTokenRotated':
        return row && checked({ ...row, expires_at: event.data.expiresAt });
      case 'SessionRevoked':
        return null;
      default:
        return row;
    }
  },
  async write(client, changed) {
    const gone = changed.filter(({ row }) => row === null).map(({ key }) => key);
    const rows = changed.flatMap(({ row }) => (row ? [row] : []));
    if (gone.length > 0)
      await client.query('DELETE FROM refresh_tokens WHERE session_id = ANY ($1::uuid[])', [gone]);
    if (rows.length > 0)
      await client.query(
        `INSERT INTO refresh_tokens (session_id, user_id, expires_at, created_at)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[])
         ON CONFLICT (session_id) DO UPDATE SET user_id = excluded.user_id,
           expires_at = excluded.expires_at, created_at = excluded.created_at`,
        [
          rows.map((r) => r.session_id),
          rows.map((r) => r.user_id),
          rows.map((r) => r.expires_at),
          rows.map((r) => r.created_at),
        ],
      );
  },
});
