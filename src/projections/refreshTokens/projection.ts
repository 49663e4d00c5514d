import type { Projection } from '../projectionRunner.js';
import type { SessionEvent } from '../../commands/identity/events.js';

/** The seed's refresh-token table: one row per live session, deleted on logout or revocation. */
export const refreshTokensProjection: Projection = {
  name: 'refresh_tokens',
  eventTypes: new Set(['SessionStarted', 'RefreshTokenRotated', 'SessionRevoked']),
  async apply(client, recorded) {
    const event = recorded as unknown as SessionEvent;
    switch (event.type) {
      case 'SessionStarted':
        await client.query(
          `INSERT INTO refresh_tokens (session_id, user_id, token_hash, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (session_id) DO NOTHING`,
          [
            event.data.sessionId,
            event.data.userId,
            event.data.refreshTokenHash,
            event.data.expiresAt,
            event.data.startedAt,
          ],
        );
        break;
      case 'RefreshTokenRotated':
        await client.query(
          'UPDATE refresh_tokens SET token_hash = $2, expires_at = $3 WHERE session_id = $1',
          [event.data.sessionId, event.data.refreshTokenHash, event.data.expiresAt],
        );
        break;
      case 'SessionRevoked':
        await client.query('DELETE FROM refresh_tokens WHERE session_id = $1', [event.data.sessionId]);
        break;
    }
    return [];
  },
};
