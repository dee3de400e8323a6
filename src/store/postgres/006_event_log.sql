-- Version 6: the event log as its readers see it (`GET /v1/events/stream`). Transactions on
-- several nodes commit in another order than the one in which they took their `seq`s, so a
-- reader that resumed after the highest `seq` it saw could skip an event committed later
-- with a lower one. Each event keeps the id of the transaction that inserted it, and readers
-- are served only events of transactions older than every transaction still open, ordered
-- by (xid, seq): nothing can later appear before what they have seen. Earlier events keep
-- xid 0 and come first, in `seq` order.
ALTER TABLE events ADD COLUMN xid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX events_by_log ON events (tenant_id, xid, seq);
