-- Version 11: fewer index pages written per publish. Every index entry a commit adds dirties
-- a page of its index, and an index that leads with `tenant_id` has a hot page per tenant:
-- with many tenants publishing at once, each commit wrote a page per tenant per index.
-- - `events_by_id` went: the unique index now leads with (`tenant_id`, `id`), so it finds
--   an event by id whatever its source, as well as by (`source`, `id`) for idempotency.
-- - A delivery's id (a ULID) and its (`event_seq`, `stream_id`) are unique across tenants,
--   so those two indexes no longer lead with the tenant: their new entries land on one page.
-- The new indexes are built first, which reads each table once and holds off writes to it
-- (not reads); the old ones are dropped only at the end, so the exclusive locks that drops
-- take are held for the last moments of the migration alone.
CREATE UNIQUE INDEX events_by_id_source ON events (tenant_id, id, source);
CREATE UNIQUE INDEX deliveries_by_id_alone ON deliveries (id);
CREATE UNIQUE INDEX deliveries_by_event_stream ON deliveries (event_seq, stream_id);
DROP INDEX events_by_source_id;
DROP INDEX events_by_id;
ALTER INDEX events_by_id_source RENAME TO events_by_source_id;
DROP INDEX deliveries_by_id;
ALTER INDEX deliveries_by_id_alone RENAME TO deliveries_by_id;
DROP INDEX deliveries_by_event;
ALTER INDEX deliveries_by_event_stream RENAME TO deliveries_by_event;
