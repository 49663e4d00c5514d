-- Where each log reader (the Kafka relay, a direct-bus consumer group) has got to in the global log.
-- A reader writes its checkpoint only after the work for those events is durable.
CREATE TABLE log_checkpoints (
  name        text PRIMARY KEY,
  position    text NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
