import type { Projection } from '../projectionRunner.js';
import type { AccountEvent } from '../../commands/identity/events.js';

export const userCacheKey = (userId: string) => `user:${userId}`;

export const usersProjection: Projection = {
  name: 'users',
  eventTypes: new Set(['UserRegistered', 'RoleGranted']),
  async apply(client, recorded) {
    const event = recorded as unknown as AccountEvent;
    switch (event.type) {
      case 'UserRegistered':
        await client.query(
          'INSERT INTO users (id, email, role, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING',
          [event.data.userId, event.data.email, event.data.role, event.data.registeredAt],
        );
        return [userCacheKey(event.data.userId)];
      case 'RoleGranted':
        await client.query('UPDATE users SET role = $2 WHERE id = $1', [event.data.userId, event.data.role]);
        return [userCacheKey(event.data.userId)];
    }
  },
};
