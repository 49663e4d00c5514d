-- No read model holds credential material: the relay publishes identity events with their token and password
-- hashes redacted (src/domain/identity/credentials.ts), so the projector never has them. Nothing read this column:
-- refresh and reuse detection fold the session stream in the event store, where the hashes stay.
ALTER TABLE refresh_tokens DROP COLUMN token_hash;
