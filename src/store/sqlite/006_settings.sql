-- Version 6: installation-wide facts. `key_check` is a known value sealed with the current
-- secret key, `retired_key_check` the same with the key a rotation replaced (see
-- `store::keys`), so a node started with another key is refused instead of failing to read
-- every stream.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
