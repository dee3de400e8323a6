-- Version 8: a reader that starts at a time (`GET /v1/events/stream?from_timestamp=`) looks
-- for the tenant's first visible event received since then. In log order that meant reading
-- every event received before it; this index finds the ones received since, with their log
-- positions, so the search costs no more than what the reader then reads.
CREATE INDEX events_by_received ON events (tenant_id, received_at) INCLUDE (xid, seq);
