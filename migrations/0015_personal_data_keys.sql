-- Personal data sealed with a key per person (src/infra/secrets/personalData.ts). One row per person: the data key,
-- wrapped by the deployment's master key, and when it was destroyed. Forgetting a person sets the key to NULL: the
-- sealed emails in the log can then never be opened, while the log and its hash chain stay as they are. Not derived
-- from the log (a rebuild does not touch it); backups of this table hold keys until they expire.
CREATE TABLE person_keys (
  person_id    uuid PRIMARY KEY,
  wrapped_key  bytea,
  created_at   timestamptz NOT NULL DEFAULT now(),
  destroyed_at timestamptz,
  CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
REVOKE ALL ON person_keys FROM PUBLIC;

-- The users read model keeps no email: accounts are found by the keyed hash in their stream's id, and an email is
-- only ever shown by opening the sealed one in the account's stream (GET /users/{id}). Rows of forgotten users stay
-- as tombstones (their tasks still name them as owner). One live account per account stream: the unique email
-- constraint of before, for streams whose ids are now hashes.
ALTER TABLE users ADD COLUMN account_stream text;
UPDATE users SET account_stream = 'account-' || encode(sha256(convert_to(email, 'UTF8')), 'hex');
ALTER TABLE users
  ALTER COLUMN account_stream SET NOT NULL,
  DROP COLUMN email,
  ADD COLUMN forgotten_at timestamptz;
CREATE UNIQUE INDEX users_live_account_stream ON users (account_stream) WHERE forgotten_at IS NULL;
