-- Fair notification delivery (notify/delivery.py, notify/store.py).
--
-- A delivery being sent carries a lease instead of a row lock held for the whole send: the sender
-- holds no database connection while it waits on the endpoint, the claim can count what each
-- endpoint and tenant has in flight, and a lease that is not renewed (its worker died) lapses so
-- another worker sends the delivery again under the same webhook-id.
ALTER TABLE webhook_deliveries
    ADD COLUMN IF NOT EXISTS leased_until timestamptz,        -- in flight until then (renewed while sending)
    ADD COLUMN IF NOT EXISTS lease uuid;                      -- the claim that holds it

-- Per endpoint: its turn in the round-robin (the claim order), and its circuit breaker.
ALTER TABLE webhooks
    ADD COLUMN IF NOT EXISTS claim_turn bigint NOT NULL DEFAULT 0,           -- last served, in claim order
    ADD COLUMN IF NOT EXISTS consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS circuit_open_until timestamptz;                 -- no sends until then, then one probe
CREATE SEQUENCE IF NOT EXISTS webhook_claim_turns;

-- The claim starts from the endpoints: each one's due deliveries, and what it has in flight.
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint_due ON webhook_deliveries (webhook_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_leased ON webhook_deliveries (webhook_id, leased_until)
    WHERE leased_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_tenant_leased ON webhook_deliveries (tenant_id, leased_until)
    WHERE leased_until IS NOT NULL;
DROP INDEX IF EXISTS webhook_deliveries_due;                 -- the global due order is no longer read
