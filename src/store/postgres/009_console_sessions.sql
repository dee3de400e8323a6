-- Version 9: the web console's sign-in sessions. The browser's cookie holds a session's id;
-- the store keeps only its SHA-256 hash (`hash`), as it does for API tokens, so a copy of the
-- database signs nobody in. `token_hash` is the hash of the API token the session was opened
-- with: the session serves only while that token is valid. `tenant_id` is the token's (NULL
-- for a platform token), so deleting a tenant deletes its sessions. `expires_at` is the
-- earlier of the session's idle and absolute ends, moved forward as it is used. Like a token,
-- a session is looked up by its hash alone: a cookie does not say which tenant it belongs to.
CREATE TABLE console_sessions (
    hash       BYTEA PRIMARY KEY,
    token_hash BYTEA NOT NULL,
    tenant_id  TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiring ON console_sessions (expires_at);
