-- Herald's embedded store, version 1. Every table carries the tenant id, and every index a
-- query uses leads with it. Times are Unix milliseconds.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- Bearer tokens, kept only as SHA-256 hashes. A NULL tenant marks a platform token.
CREATE TABLE api_tokens (
    hash       BLOB PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    tenant_id  TEXT,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

-- `destination` is the destination's JSON, credentials included, encrypted with the store's
-- secret key.
CREATE TABLE streams (
    tenant_id        TEXT NOT NULL,
    id               TEXT NOT NULL,
    name             TEXT NOT NULL,
    status           TEXT NOT NULL,
    status_reason    TEXT,
    subscriptions    TEXT NOT NULL,
    destination_type TEXT NOT NULL,
    destination      BLOB NOT NULL,
    payload_format   TEXT NOT NULL,
    retry_policy     TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT, WITHOUT ROWID;

-- Signing secrets, encrypted. The newest is current; rotated-out ones carry `expires_at`.
CREATE TABLE stream_secrets (
    seq        INTEGER PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
) STRICT;
CREATE INDEX stream_secrets_by_stream ON stream_secrets (tenant_id, stream_id);

-- The audit log. (`source`, `id`) identifies an event within a tenant: publishing it again is
-- a no-op.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    id              TEXT NOT NULL,
    source          TEXT NOT NULL,
    type            TEXT NOT NULL,
    time            INTEGER NOT NULL,
    subject         TEXT,
    datacontenttype TEXT,
    dataschema      TEXT,
    data            TEXT NOT NULL,
    extensions      TEXT,
    received_at     INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX events_by_source_id ON events (tenant_id, source, id);
CREATE INDEX events_by_id ON events (tenant_id, id);

-- One row per (event, stream). While pending, `due_at` is when it may next be claimed: the
-- retry time, or the lease's expiry while an attempt is under way (then `lease_until` is set
-- too). `lease` counts claims, so an attempt whose lease was lost cannot overwrite a newer
-- one's outcome.
CREATE TABLE deliveries (
    seq        INTEGER PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    event_seq  INTEGER NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER,
    lease      INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX deliveries_by_id ON deliveries (tenant_id, id);
CREATE UNIQUE INDEX deliveries_by_event ON deliveries (tenant_id, event_seq, stream_id);
CREATE INDEX deliveries_due ON deliveries (tenant_id, stream_id, due_at) WHERE status = 'pending';

CREATE TABLE attempts (
    seq             INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    delivery_seq    INTEGER NOT NULL,
    attempted_at    INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    error_kind      TEXT,
    error_message   TEXT
) STRICT;
CREATE INDEX attempts_by_delivery ON attempts (tenant_id, delivery_seq);
