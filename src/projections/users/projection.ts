import { checkColumn, defineProjection } from '../readModel.js';
import type { AccountEvent } from '../../domain/identity/events.js';

/**
 * A user: which account stream holds them, their role, and whether they were forgotten. No email: accounts are
 * found by the keyed hash in their stream's id, and an email is shown only by opening the sealed one in the log.
 * A forgotten user's row stays as a tombstone, since their tasks still name them as owner.
 */
interface UserRow {
  id: string;
  account_stream: string;
  role: string;
  created_at: string;
  forgotten_at: string | null;
}

/** As the database would check it, so a bad value is caught at its event even if a later one overwrites it. */
function checked(row: UserRow | null): UserRow | null {
  if (row) {
    checkColumn('id', 'uuid', false, row.id);
    checkColumn('account_stream', 'text', false, row.account_stream);
    checkColumn('role', 'text', false, row.role);
    checkColumn('created_at', 'timestamptz', false, row.created_at);
    checkColumn('forgotten_at', 'timestamptz', true, row.forgotten_at);
  }
  return row;
}

const stringField = (value: unknown, name: string): string => {
  if (typeof value !== 'string') throw new TypeError(`${name} is not a string`);
  return value;
};

const iso = (value: Date | null) => value && value.toISOString();

export const usersProjection = defineProjection<UserRow>({
  name: 'users',
  eventTypes: new Set(['UserRegistered', 'RoleGranted', 'UserForgotten']),
  tables: [{ name: 'users', streamOf: 'r.account_stream' }],
  keyOf: (event) => stringField((event.data as { userId?: unknown }).userId, 'userId'),
  async load(client, keys, lock) {
    const { rows } = await client.query<{
      id: string;
      account_stream: string;
      role: string;
      created_at: Date;
      forgotten_at: Date | null;
    }>(
      `SELECT id, account_stream, role, created_at, forgotten_at FROM users WHERE id = ANY ($1::uuid[])${lock ? ' FOR UPDATE' : ''}`,
      [keys],
    );
    return new Map(
      rows.map((row) => [
        row.id,
        { ...row, created_at: row.created_at.toISOString(), forgotten_at: iso(row.forgotten_at) },
      ]),
    );
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
            account_stream: recorded.streamId,
            role: event.data.role,
            created_at: event.data.registeredAt,
            forgotten_at: null,
          })
        );
      case 'RoleGranted':
        return row && checked({ ...row, role: event.data.role });
      case 'UserForgotten':
        return row && checked({ ...row, forgotten_at: row.forgotten_at ?? event.data.forgottenAt });
    }
  },
  async write(client, changed) {
    // In the order the batch first touched them: a forgotten user's row is written before the live one that
    // re-registered in the same stream, as the unique index on live account streams needs.
    const rows = changed.flatMap(({ row }) => (row ? [row] : []));
    await client.query(
      `INSERT INTO users (id, account_stream, role, created_at, forgotten_at)
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
       ON CONFLICT (id) DO UPDATE SET account_stream = excluded.account_stream, role = excluded.role,
         created_at = excluded.created_at, forgotten_at = excluded.forgotten_at`,
      [
        rows.map((r) => r.id),
        rows.map((r) => r.account_stream),
        rows.map((r) => r.role),
        rows.map((r) => r.created_at),
        rows.map((r) => r.forgotten_at),
      ],
    );
  },
});
