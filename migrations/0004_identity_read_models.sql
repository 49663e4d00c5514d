-- Read models built by projections from the identity events; never written by commands.
CREATE TABLE users (
  id          uuid PRIMARY KEY,
  email       text NOT NULL UNIQUE,
  role        text NOT NULL,
  created_at  timestamptz NOT NULL
);

-- One row per live session: its current refresh token's hash. Logout and reuse detection delete the row.
CREATE TABLE refresh_tokens (
  session_id  uuid PRIMARY KEY,
  user_id     uuid NOT NULL,
  token_hash  text NOT NULL UNIQUE,
  expires_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL
);
CREATE INDEX refresh_tokens_user_id ON refresh_tokens (user_id);
