-- Version 13: statistics rollups per node. Every node added its outcomes for a stream, hour
-- and event type to the same row, and held that row until its transaction committed: two
-- nodes recording for the same stream took turns, each waiting out the other's transaction
-- (most of the waits seen with two nodes). A row now also carries the `shard` of the node
-- that wrote it, a number each node draws at start, so nodes never wait on each other's
-- rollups; readers sum over the shards. Rows written before keep shard 0.
ALTER TABLE stream_stats ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE stream_stats DROP CONSTRAINT stream_stats_pkey;
ALTER TABLE stream_stats ADD PRIMARY KEY (tenant_id, stream_id, hour, event_type, shard);
