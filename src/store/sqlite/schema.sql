-- Herald's embedded store, version 1. Every table carries the tenant id, and every index a
-- query uses leads with it (version 11 made two exceptions, for ids unique across tenants).
-- Times are Unix milliseconds.

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
    -- Disable the stream after this many failed attempts in a row (0: never).
    max_consecutive_failures INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
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
-- a no-op. `projectid` and `userid` repeat the extension attributes of those names so the log
-- can be queried by them; `erased_at` marks an event whose payload was erased.
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
    projectid       TEXT,
    userid          TEXT,
    received_at     INTEGER NOT NULL,
    erased_at       INTEGER
) STRICT;
CREATE UNIQUE INDEX events_by_source_id ON events (tenant_id, source, id);
CREATE INDEX events_by_id ON events (tenant_id, id);
CREATE INDEX events_by_seq ON events (tenant_id, seq);
CREATE INDEX events_by_type ON events (tenant_id, type, seq);
CREATE INDEX events_by_subject ON events (tenant_id, subject, seq) WHERE subject IS NOT NULL;
CREATE INDEX events_by_project ON events (tenant_id, projectid, seq) WHERE projectid IS NOT NULL;
CREATE INDEX events_by_user ON events (tenant_id, userid, seq) WHERE userid IS NOT NULL;

-- One row per (event, stream). While pending, `due_at` is when it may next be attempted.
-- Which deliveries are being attempted right now is kept in memory by the one process that
-- owns the store, so a claim writes nothing. `attempts` counts every attempt ever made; a
-- redelivery starts a new round of the retry policy at `round_start`. A `seq` freed by a
-- delete may be reused, so outcomes are matched on the delivery's tenant and id as well.
CREATE TABLE deliveries (
    seq        INTEGER PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    event_seq  INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    round_start INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER,
    last_attempt_at      INTEGER,
    last_response_status INTEGER,
    last_error_kind      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX deliveries_by_id ON deliveries (tenant_id, id);
CREATE UNIQUE INDEX deliveries_by_event ON deliveries (tenant_id, event_seq, stream_id);
CREATE INDEX deliveries_due ON deliveries (tenant_id, stream_id, due_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_stream ON deliveries (tenant_id, stream_id, seq);

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

-- Hourly rollups of delivery outcomes per stream and event type, kept by the writer as it
-- records attempts, so statistics never scan attempts. `l0` to `l14` count attempts by
-- round-trip time: `lN` holds durations up to `store::LATENCY_BOUNDS_MS[N]` (`l14`: beyond).
CREATE TABLE stream_stats (
    tenant_id  TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    hour       INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    succeeded  INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    l0         INTEGER NOT NULL DEFAULT 0,
    l1         INTEGER NOT NULL DEFAULT 0,
    l2         INTEGER NOT NULL DEFAULT 0,
    l3         INTEGER NOT NULL DEFAULT 0,
    l4         INTEGER NOT NULL DEFAULT 0,
    l5         INTEGER NOT NULL DEFAULT 0,
    l6         INTEGER NOT NULL DEFAULT 0,
    l7         INTEGER NOT NULL DEFAULT 0,
    l8         INTEGER NOT NULL DEFAULT 0,
    l9         INTEGER NOT NULL DEFAULT 0,
    l10        INTEGER NOT NULL DEFAULT 0,
    l11        INTEGER NOT NULL DEFAULT 0,
    l12        INTEGER NOT NULL DEFAULT 0,
    l13        INTEGER NOT NULL DEFAULT 0,
    l14        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, stream_id, hour, event_type)
) STRICT, WITHOUT ROWID;

-- Event types a tenant defines beside the built-in catalog, with an optional JSON Schema
-- that published `data` must match.
CREATE TABLE event_types (
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    category    TEXT NOT NULL,
    description TEXT NOT NULL,
    schema      TEXT,
    sample_data TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) STRICT, WITHOUT ROWID;
