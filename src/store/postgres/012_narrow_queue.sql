-- Version 12: the narrow queue. A pending delivery has a row in `queue` as well, and only
-- that row is claimed, leased and given back; `deliveries` keeps the history. Claims and
-- outcomes used to change `due_at` and `status` on `deliveries`, columns of its due index,
-- so neither could be a HOT update: each wrote a new version of the row with a new entry
-- in every index of the table. Now the outcome is the only change to a delivery's row
-- while it is sent, and touches no indexed column (a HOT update, on the row's own page,
-- which the fill factor leaves room for), and what churns is a table of a few columns and
-- two small indexes, removed from as deliveries finish.
-- `deliveries.lease` now keeps the lease generation a delivery had when it left the queue,
-- so a delivery queued again carries on from it and an attempt still finishing under an
-- older lease can never match the new one.
CREATE TABLE queue (
    seq         BIGINT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    stream_id   TEXT NOT NULL,
    due_at      BIGINT NOT NULL,
    lease       BIGINT NOT NULL,
    lease_until BIGINT,
    created_at  BIGINT NOT NULL
);
INSERT INTO queue (seq, tenant_id, stream_id, due_at, lease, lease_until, created_at)
SELECT seq, tenant_id, stream_id, COALESCE(due_at, created_at), lease, lease_until, created_at
FROM deliveries WHERE status = 'pending';
CREATE INDEX queue_due ON queue (tenant_id, stream_id, due_at);
-- Rows come and go many times a second: vacuum early.
ALTER TABLE queue SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.01);
DROP INDEX deliveries_due;
ALTER TABLE deliveries DROP COLUMN lease_until;
-- Room on each page for the row's one update, so it stays HOT (pages written before this
-- keep their fill; only new pages get the room).
ALTER TABLE deliveries SET (fillfactor = 80);
