-- Version 11: fewer index pages written per publish. Every index entry a commit adds dirties
-- a page of its index, and an index that leads with `tenant_id` has a hot page per tenant:
-- with many tenants publishing at once, each commit wrote a page per tenant per index.
-- - `events_by_id` went: the unique index now leads with (`tenant_id`, `id`), so it finds
--   an event by id whatever its source, as well as by (`source`, `id`) for idempotency.
-- - A delivery's id (a ULID) and its (`event_seq`, `stream_id`) are unique across tenants,
--   so those two indexes no longer lead with the tenant: their new entries land on one page.
-- Rebuilding them reads each table once, at the first start after the upgrade.
DROP INDEX events_by_id;
DROP INDEX events_by_source_id;
CREATE UNIQUE INDEX events_by_source_id ON events (tenant_id, id, source);
DROP INDEX deliveries_by_id;
CREATE UNIQUE INDEX deliveries_by_id ON deliveries (id);
DROP INDEX deliveries_by_event;
CREATE UNIQUE INDEX deliveries_by_event ON deliveries (event_seq, stream_id);
