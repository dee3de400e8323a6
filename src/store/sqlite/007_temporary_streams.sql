-- Version 7: a temporary stream (a `herald listen` session's) is deleted once past
-- `expires_at`; its connection keeps pushing the time forward while it lasts.
ALTER TABLE streams ADD COLUMN expires_at INTEGER;
CREATE INDEX streams_expiring ON streams (expires_at) WHERE expires_at IS NOT NULL;
