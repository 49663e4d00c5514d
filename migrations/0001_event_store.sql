-- The PostgreSQL event store: one append-only table, the source of truth.
-- Log order is (transaction_id, sequence), not sequence alone: sequences are taken before commit, so concurrent
-- transactions can make a higher sequence visible before a lower one. Readers only read transaction ids below
-- the oldest transaction still running (pg_snapshot_xmin), which can never commit "in the past".
CREATE TABLE events (
  sequence        bigint GENERATED ALWAYS AS IDENTITY,
  transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
  stream_id       text NOT NULL,
  revision        bigint NOT NULL CHECK (revision >= 0),
  event_id        uuid NOT NULL,
  type            text NOT NULL,
  -- Kept as text, not jsonb: the hash chain covers the exact bytes, and jsonb would reorder keys.
  data            text NOT NULL,
  metadata        jsonb NOT NULL,
  recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT events_pkey PRIMARY KEY (transaction_id, sequence),
  CONSTRAINT events_stream_revision_key UNIQUE (stream_id, revision),
  CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- History is append-only: refuse updates and deletes from the application role's ordinary statements.
-- (A superuser can still disable the trigger; the hash chain and signed anchors catch that.)
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'events are append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
