-- Queue webhook deliveries once per outbox INSERT statement rather than once per row: the writers
-- insert a batch's messages in one statement, so a batch costs one trigger call and one join.
DROP TRIGGER IF EXISTS outbox_webhooks ON outbox;

CREATE OR REPLACE FUNCTION trackd_enqueue_webhooks_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, seq, ord, type, shipment_id, order_key,
                                    occurred_at, payload, next_attempt_at)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, n.tenant_id, n.seq, k.ord, k.type,
           n.shipment_id, COALESCE(n.shipment_id, ''), n.occurred_at, n.payload, now()
    FROM new_rows n
    JOIN webhooks w ON w.tenant_id = n.tenant_id AND w.enabled
    CROSS JOIN LATERAL (VALUES (1::smallint, n.type),
                               (2::smallint, CASE WHEN n.type = 'status.changed'
                                                   AND n.payload ->> 'status' = 'delivered'
                                                  THEN 'delivered' END)) AS k(ord, type)
    WHERE k.type IS NOT NULL AND k.type = ANY (w.events)
      AND (cardinality(w.shipment_ids) = 0 OR n.shipment_id = ANY (w.shipment_ids))
    ORDER BY n.tenant_id, n.seq, k.ord;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_webhooks AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_enqueue_webhooks_batch();

DROP FUNCTION IF EXISTS trackd_enqueue_webhooks();

-- A writer keeps decoded state rows in memory, valid while a row's (xmin, version) is unchanged:
-- xmin tells transactions apart (any write changes it), version the updates within one
-- transaction (trackd's writers bump it on each update).
ALTER TABLE shipment_state ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;

-- Identifier lookups run on every ingest batch. A GIN index's pending list (fastupdate) is scanned
-- in full by each lookup until a vacuum merges it, which turned a batch's lookup into seconds
-- after a burst of new shipments; insert into the index directly instead.
ALTER INDEX shipments_ref_keys SET (fastupdate = off);
DO $$
BEGIN
    ALTER INDEX events_unmatched SET (fastupdate = off);  -- read only when a shipment is created
EXCEPTION WHEN others THEN  -- a hypertable's index may refuse it: keep the default there
    RAISE NOTICE 'events_unmatched keeps fastupdate: %', SQLERRM;
END
$$;

-- Every identifier of a shipment, one row each, kept by a trigger: an ingest batch resolves its
-- thousand identifiers with one btree probe each (an array overlap over `ref_keys` scanned every
-- shipment of the tenant once a batch held more than a few).
CREATE TABLE IF NOT EXISTS shipment_keys (
    tenant_id           bigint NOT NULL,
    key                 text NOT NULL,
    shipment_id         text NOT NULL REFERENCES shipments(id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL,               -- the shipment's: the oldest one wins a key
    PRIMARY KEY (tenant_id, key, shipment_id)
);
CREATE INDEX IF NOT EXISTS shipment_keys_shipment ON shipment_keys (shipment_id);

CREATE OR REPLACE FUNCTION trackd_shipment_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.ref_keys = OLD.ref_keys AND NEW.tenant_id = OLD.tenant_id THEN
            RETURN NULL;
        END IF;
        DELETE FROM shipment_keys WHERE shipment_id = NEW.id;
    END IF;
    INSERT INTO shipment_keys (tenant_id, key, shipment_id, created_at)
    SELECT DISTINCT NEW.tenant_id, k, NEW.id, NEW.created_at FROM unnest(NEW.ref_keys) AS k
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS shipments_keys ON shipments;
CREATE TRIGGER shipments_keys AFTER INSERT OR UPDATE OF ref_keys, tenant_id ON shipments
    FOR EACH ROW EXECUTE FUNCTION trackd_shipment_keys();

INSERT INTO shipment_keys (tenant_id, key, shipment_id, created_at)
SELECT DISTINCT s.tenant_id, k, s.id, s.created_at FROM shipments s, unnest(s.ref_keys) AS k
ON CONFLICT DO NOTHING;

-- Most state updates change only unindexed columns, so PostgreSQL can write them as heap-only
-- tuples (no index entries) when the page has room: leave room, and do not index last_event_at,
-- which every event moves (the worker's 30 s sweep for quiet shipments reads the table instead).
DROP INDEX IF EXISTS shipment_state_open;
ALTER TABLE shipment_state SET (fillfactor = 50);

-- The relay's progress, one row per tenant: the messages up to `seq` are on the bus. It replaces
-- a flag on every outbox row, which cost an update and an index entry per message.
CREATE TABLE IF NOT EXISTS relay_marks (
    tenant_id           bigint PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    seq                 bigint NOT NULL
);
INSERT INTO relay_marks (tenant_id, seq)
SELECT tenant_id, max(seq) FROM outbox WHERE published GROUP BY tenant_id
ON CONFLICT DO NOTHING;
DROP INDEX IF EXISTS outbox_unpublished;
ALTER TABLE outbox DROP COLUMN IF EXISTS published;
