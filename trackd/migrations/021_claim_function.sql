-- A sender claims a delivery in one statement: `trackd_claim_delivery` picks the endpoint to serve
-- and its delivery, then leases it, in one round trip. The endpoint's row stays locked from the pick
-- to the commit, and claims of one endpoint skip a locked one: when the two statements were sent one
-- after the other, the lock was held across two trips through a busy client, and one endpoint's
-- claims ran one at a time at that pace (about 22 a second while the server ingested 2,000 events a
-- second). Each statement in the function takes its own snapshot, so the lease is still re-checked
-- after the pick's locks are granted.
--
-- The endpoint to serve next, locked, with the delivery it would send. Endpoints are taken in
-- round-robin order: the tenant served longest ago first, then its endpoint served longest ago, so
-- one tenant's backlog or slow endpoint never holds the queue. An endpoint qualifies when it is
-- enabled, its circuit is closed (or its cool-down is over: then one probe at a time), it and its
-- tenant are below their in-flight limits, and it has a due delivery that is not leased and has no
-- earlier delivery of its (subscription, shipment) pending. An endpoint or tenant another claimer
-- holds is skipped (SKIP LOCKED, and a try of the tenant's transaction lock, taken only for the
-- endpoint about to be chosen): claimers never wait on each other, spread over tenants, and count
-- a tenant's deliveries in flight exactly.
--
-- Cheap whatever the backlog: the endpoints are sorted first and looked at lazily, in that order
-- (the nested loop keeps the sorted subquery's order), until one qualifies; within an endpoint, the
-- delivery due first among its 50 oldest due ones, or else (those all wait behind earlier ones) the
-- first due head among its next 500 shipments, walked with one index probe each.
--
-- Then the picked delivery is leased, re-checked in the next statement's snapshot, taken after the endpoint's
-- and the tenant's locks: so their in-flight counts are exact. The endpoint moves to the back of
-- the round-robin.
--
-- A pick can be outdated by the time its lock is granted: it picks again, `p_tries` times at most.
-- A lease lost in a crash only lets the delivery be sent again (under the same webhook-id), which
-- at-least-once allows: the claim's commit need not wait for the WAL flush.
CREATE OR REPLACE FUNCTION trackd_claim_delivery(
    p_now timestamptz, p_until timestamptz, p_per_endpoint integer, p_per_tenant integer,
    p_tenant_lock integer, p_tries integer
) RETURNS TABLE (
    id text, webhook_id text, tenant_id bigint, type text, payload jsonb, occurred_at timestamptz,
    tries integer, lease uuid, url text, secret_enc text, previous_secret_enc text,
    previous_secret_until timestamptz, circuit_open_until timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    picked record;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR attempt IN 1..p_tries LOOP
        SELECT w.id AS webhook_id, h.id AS delivery_id INTO picked
        FROM (
            SELECT w.id, w.tenant_id, w.circuit_open_until, w.claim_turn,
                   max(w.claim_turn) OVER (PARTITION BY w.tenant_id) AS tenant_turn
            FROM webhooks w
            WHERE w.enabled AND (w.circuit_open_until IS NULL OR w.circuit_open_until <= p_now)
            ORDER BY tenant_turn, w.claim_turn, w.id
        ) o
        JOIN webhooks w ON w.id = o.id
        CROSS JOIN LATERAL (
            (SELECT d.id
             FROM (SELECT d.id, d.webhook_id, d.order_key, d.seq, d.ord, d.next_attempt_at, d.leased_until
                   FROM webhook_deliveries d
                   WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= p_now
                   ORDER BY d.next_attempt_at
                   LIMIT 50) d
             WHERE (d.leased_until IS NULL OR d.leased_until <= p_now)
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                               WHERE e.webhook_id = d.webhook_id AND e.order_key = d.order_key AND e.status = 'pending'
                                 AND (e.seq, e.ord, e.id) < (d.seq, d.ord, d.id))
             ORDER BY d.next_attempt_at
             LIMIT 1)
            UNION ALL
            (WITH RECURSIVE lane (key, n) AS (
                 (SELECT d.order_key, 1 FROM webhook_deliveries d
                  WHERE d.webhook_id = w.id AND d.status = 'pending' ORDER BY d.order_key LIMIT 1)
                 UNION ALL
                 SELECT (SELECT d.order_key FROM webhook_deliveries d
                         WHERE d.webhook_id = w.id AND d.status = 'pending' AND d.order_key > lane.key
                         ORDER BY d.order_key LIMIT 1), lane.n + 1
                 FROM lane WHERE lane.key IS NOT NULL AND lane.n < 500
             )
             SELECT head.id FROM lane
             CROSS JOIN LATERAL (SELECT d.id, d.next_attempt_at, d.leased_until FROM webhook_deliveries d
                                 WHERE d.webhook_id = w.id AND d.order_key = lane.key AND d.status = 'pending'
                                 ORDER BY d.seq, d.ord, d.id LIMIT 1) head
             WHERE head.next_attempt_at <= p_now AND (head.leased_until IS NULL OR head.leased_until <= p_now)
             LIMIT 1)
            LIMIT 1
        ) h
        WHERE (SELECT count(*) FROM webhook_deliveries f WHERE f.webhook_id = w.id AND f.leased_until > p_now)
              < CASE WHEN w.circuit_open_until IS NULL THEN p_per_endpoint ELSE 1 END
          AND (SELECT count(*) FROM webhook_deliveries f WHERE f.tenant_id = w.tenant_id AND f.leased_until > p_now)
              < p_per_tenant
          AND CASE WHEN h.id IS NOT NULL THEN pg_try_advisory_xact_lock(p_tenant_lock, (w.tenant_id % 2147483648)::int) END
        LIMIT 1
        FOR NO KEY UPDATE OF w SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        RETURN QUERY
        WITH hook AS (
            SELECT w.* FROM webhooks w WHERE w.id = picked.webhook_id AND w.enabled
               AND (w.circuit_open_until IS NULL OR w.circuit_open_until <= p_now)
               AND (SELECT count(*) FROM webhook_deliveries f WHERE f.webhook_id = w.id AND f.leased_until > p_now)
                   < CASE WHEN w.circuit_open_until IS NULL THEN p_per_endpoint ELSE 1 END
               AND (SELECT count(*) FROM webhook_deliveries f WHERE f.tenant_id = w.tenant_id AND f.leased_until > p_now)
                   < p_per_tenant
        ), leased AS (
            UPDATE webhook_deliveries d SET leased_until = p_until, lease = gen_random_uuid()
            FROM hook
            WHERE d.id = picked.delivery_id AND d.webhook_id = hook.id AND d.status = 'pending' AND d.next_attempt_at <= p_now
              AND (d.leased_until IS NULL OR d.leased_until <= p_now)
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                              WHERE e.webhook_id = d.webhook_id AND e.order_key = d.order_key AND e.status = 'pending'
                                AND (e.seq, e.ord, e.id) < (d.seq, d.ord, d.id))
            RETURNING d.*
        ), turn AS (
            UPDATE webhooks w SET claim_turn = nextval('webhook_claim_turns')
            WHERE w.id = picked.webhook_id AND EXISTS (SELECT 1 FROM leased)
        )
        SELECT l.id, l.webhook_id, l.tenant_id, l.type, l.payload, l.occurred_at, l.tries, l.lease, h.url, h.secret_enc,
               h.previous_secret_enc, h.previous_secret_until, h.circuit_open_until
        FROM leased l JOIN hook h ON h.id = l.webhook_id;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- A successful attempt is recorded in one statement too: it closes the endpoint's circuit and clears
-- its failure streak (writing, and so locking, the endpoint's row only when there was one: a claim
-- skips a locked endpoint), logs the attempt, and ends the delivery when `p_lease` still holds it.
-- The endpoint's row is taken before the delivery's, as a claim takes them. False when the delivery
-- is gone (its subscription was deleted) or another sender holds it now (its lease lapsed). As for
-- a claim, the commit need not wait for the WAL flush: a record lost in a crash only lets the
-- delivery be sent again.
CREATE OR REPLACE FUNCTION trackd_record_success(
    p_delivery text, p_webhook text, p_lease uuid, p_at timestamptz, p_status_code integer,
    p_latency_ms integer, p_response_body text, p_tries integer
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    held uuid;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE webhooks SET consecutive_failures = 0, circuit_open_until = NULL, failing_since = NULL
    WHERE id = p_webhook
      AND (consecutive_failures <> 0 OR circuit_open_until IS NOT NULL OR failing_since IS NOT NULL);
    SELECT d.lease INTO held FROM webhook_deliveries d WHERE d.id = p_delivery FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO webhook_attempts (delivery_id, at, status_code, latency_ms, error, response_body)
    VALUES (p_delivery, p_at, p_status_code, p_latency_ms, NULL, p_response_body);
    IF held IS DISTINCT FROM p_lease THEN
        RETURN false;
    END IF;
    UPDATE webhook_deliveries SET status = 'succeeded', tries = p_tries, next_attempt_at = p_at,
        leased_until = NULL, lease = NULL, finished_at = p_at
    WHERE id = p_delivery;
    RETURN true;
END
$$;
