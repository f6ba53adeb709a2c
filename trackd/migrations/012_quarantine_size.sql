-- The size of what was received, next to what is kept of it: input no tenant could be
-- authenticated for keeps only its first 4 KB (trackd/store.py, the quarantine sample).
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS size bigint;
