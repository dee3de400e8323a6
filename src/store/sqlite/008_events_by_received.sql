-- Version 8: a reader that starts at a time (`GET /v1/events/stream?from_timestamp=`) looks
-- for the tenant's first event received since then. In `seq` order that meant reading every
-- event received before it; this index finds the ones received since, so the search costs
-- no more than what the reader then reads. `seq` is the row id, so the index covers it.
CREATE INDEX events_by_received ON events (tenant_id, received_at);
