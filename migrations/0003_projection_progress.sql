-- How far each projection has applied each stream. Written in the same transaction as the read-model change,
-- so an event delivered twice (at-least-once) is recognised and skipped: effects happen exactly once.
CREATE TABLE projection_stream_progress (
  projection  text NOT NULL,
  stream_id   text NOT NULL,
  revision    bigint NOT NULL,
  position    text NOT NULL,
  PRIMARY KEY (projection, stream_id)
);

-- The newest log position each projection has applied, for read-your-writes waits and lag metrics.
CREATE TABLE projection_positions (
  projection  text PRIMARY KEY,
  position    text NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
