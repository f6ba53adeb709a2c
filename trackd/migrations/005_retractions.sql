-- Finds a retraction that came before the event it withdraws.
CREATE INDEX IF NOT EXISTS events_retracts ON events (tenant_id, retracts) WHERE retracts IS NOT NULL;
