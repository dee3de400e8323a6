-- Version 5: stream names are unique per tenant, checked on create and rename (the store
-- looks for another stream of the name with this index). Not a unique index: streams
-- created before may share a name, and keep working until renamed.
CREATE INDEX streams_tenant_name ON streams (tenant_id, name);
