-- Public tracking links: when a link was revoked, by the database's clock (NULL: not revoked). A
-- revoked link answers 410 whatever the clock of the process that serves it says.
ALTER TABLE share_links ADD COLUMN IF NOT EXISTS revoked_at timestamptz;
