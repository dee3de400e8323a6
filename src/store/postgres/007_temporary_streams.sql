-- Version 7: a temporary stream (a `herald listen` session's) is deleted once past
-- `expires_at`; the connection that holds it (`held_by`) keeps pushing the time forward.
ALTER TABLE streams ADD COLUMN expires_at BIGINT;
ALTER TABLE streams ADD COLUMN held_by TEXT;
CREATE INDEX streams_expiring ON streams (expires_at) WHERE expires_at IS NOT NULL;
