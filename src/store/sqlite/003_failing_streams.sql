-- Version 3: disabling by time as well as by count. A stream is disabled for failing only
-- once it has failed continuously for `disable_after_failing_seconds` (0: the count alone
-- decides) since `failing_since`, the first failure of its current run.
ALTER TABLE streams ADD COLUMN disable_after_failing_seconds INTEGER NOT NULL DEFAULT 259200;
ALTER TABLE streams ADD COLUMN failing_since INTEGER;
