import { checkColumn, defineProjection } from '../readModel.js';
import type { AccountEvent } from '../../domain/identity/events.js';

export const userCacheKey = (userId: string) => `user:${userId}`;

interface UserRow {
  id: string;
  email: string;
  role: string;
  created_at: string;
}

/** As the database would check it, so a bad value is caught at its event even if a later one overwrites it. */
function checked(row: UserRow | null): UserRow | null {
  if (row) {
    checkColumn('id', 'uuid', false, row.id);
    checkColumn('email', 'text', false, row.email);
    checkColumn('role', 'text', false, row.role);
    checkColumn('created_at', 'timestamptz', false, row.created_at);
  }
  return row;
}

const stringField = (value: unknown, name: string): string => {
  if (typeof value !== 'string') throw new TypeError(`${name} is not a string`);
  return value;
};

export const usersProjection = defineProjection<UserRow>({
  name: 'users',
  eventTypes: new Set(['UserRegistered', 'RoleGranted']),
  // Stored emails are already normalised, so their hash is the account stream's (accountStreamId).
  tables: [{ name: 'users', streamOf: `'account-' || encode(sha256(convert_to(r.email, 'UTF8')), 'hex')` }],
  keyOf: (event) => stringField((event.data as { userId?: unknown }).userId, 'userId'),
  async load(client, keys) {
    const { rows } = await client.query<{ id: string; email: string; role: string; created_at: Date }>(
      'SELECT id, email, role, created_at FROM users WHERE id = ANY ($1::uuid[]) FOR UPDATE',
      [keys],
    );
    return new Map(rows.map((row) => [row.id, { ...row, created_at: row.created_at.toISOString() }]));
  },
  evolve(row, recorded) {
    const event = recorded as unknown as AccountEvent;
    switch (event.type) {
      case 'UserRegistered':
        // A user is registered once; a second registration of the id changes nothing.
        return (
          row ??
          checked({
            id: event.data.userId,
            email: event.data.email,
            role: event.data.role,
            created_at: event.data.registeredAt,
          })
        );
      case 'RoleGranted':
        return row && checked({ ...row, role: event.data.role });
    }
  },
  async write(client, changed) {
    const rows = changed.flatMap(({ row }) => (row ? [row] : []));
    await client.query(
      `INSERT INTO users (id, email, role, created_at)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
       ON CONFLICT (id) DO UPDATE SET email = excluded.email, role = excluded.role, created_at = excluded.created_at`,
      [
        rows.map((r) => r.id),
        rows.map((r) => r.email),
        rows.map((r) => r.role),
        rows.map((r) => r.created_at),
      ],
    );
    return changed.map(({ key }) => userCacheKey(key));
  },
});
