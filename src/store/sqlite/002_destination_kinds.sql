-- Version 2: destination kinds beyond webhooks. A stream's CloudEvents content mode (NULL:
-- its destination kind's default), and an attempt's destination-specific record (a JSON
-- object: an AWS error code and event id, a broker's acknowledgement).
ALTER TABLE streams ADD COLUMN content_mode TEXT;
ALTER TABLE attempts ADD COLUMN detail TEXT;
