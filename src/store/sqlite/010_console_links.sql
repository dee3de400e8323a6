-- Version 10: sign-in links to a tenant's console, and the sessions they open. A link is
-- issued by a platform token for one tenant and some of that token's scopes; the store keeps
-- only the SHA-256 hash of its secret (`hash`), and opening it deletes its row, so it serves
-- once. `token_hash` is the issuing token's: a link, and a session it opened, serve only
-- while that token is valid. A session opened by a link has the link's tenant in `tenant_id`
-- (deleting the tenant deletes it), the scopes it was granted in `scopes` (a JSON array;
-- NULL for a session opened with a token, which has the token's scopes) and the name it is
-- shown under in `name`.
ALTER TABLE console_sessions ADD COLUMN scopes TEXT;
ALTER TABLE console_sessions ADD COLUMN name TEXT;
CREATE TABLE console_links (
    hash       BLOB PRIMARY KEY,
    token_hash BLOB NOT NULL,
    tenant_id  TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    name       TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX console_links_expiring ON console_links (expires_at);
