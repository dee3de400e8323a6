-- Version 4: fan-outs too large for their publish's own commit. The publish commits its
-- events with one row here naming them and the streams they go to (as subscribed then);
-- the deliveries are created in chunks (a few events to a few streams each), each moving
-- the cursor (`next`, `next_stream`, `row_end`) forward in its own commit, so a crash resumes
-- where it stopped. `first_seq`..`last_seq` bound the events, which retention
-- keeps while the row exists.
CREATE TABLE fanouts (
    seq             INTEGER PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    event_seqs      TEXT NOT NULL,     -- JSON array of the events' seqs, in publish order
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    streams         TEXT NOT NULL,     -- JSON array of [stream id, [subscription patterns]]
    next            INTEGER NOT NULL DEFAULT 0,  -- index in event_seqs of the first not done
    next_stream     INTEGER NOT NULL DEFAULT 0,  -- index in streams of the next chunk's first
    row_end         INTEGER NOT NULL DEFAULT 0,  -- where the row of chunks under way ends
    created_at      INTEGER NOT NULL
);
CREATE INDEX fanouts_tenant ON fanouts (tenant_id);
