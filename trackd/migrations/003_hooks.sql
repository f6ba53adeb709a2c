-- Customer notification hooks (webhook subscriptions, their durable delivery queue and log) and
-- public tracking links.

CREATE TABLE webhooks (
    id                      text PRIMARY KEY,
    tenant_id               bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    url                     text NOT NULL,
    events                  text[] NOT NULL,
    shipment_ids            text[] NOT NULL DEFAULT '{}',    -- empty: every shipment
    description             text,
    enabled                 boolean NOT NULL DEFAULT true,
    disabled_reason         text,
    secret_enc              text NOT NULL,                   -- Fernet-encrypted whsec_...
    previous_secret_enc     text,                            -- still signed with until ...
    previous_secret_until   timestamptz,
    failing_since           timestamptz,                     -- first failure since the last success
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at DESC, id DESC);
CREATE INDEX webhooks_tenant_enabled ON webhooks (tenant_id) WHERE enabled;

-- One row per (subscription, stream message): the webhook-id, stable across retries. The message
-- is copied in, so deliveries outlive the outbox's retention.
CREATE TABLE webhook_deliveries (
    id                  text PRIMARY KEY,                    -- msg_..., the webhook-id header
    webhook_id          text NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    tenant_id           bigint NOT NULL,
    seq                 bigint NOT NULL,                     -- the stream message's seq
    ord                 smallint NOT NULL DEFAULT 1,         -- 2: the `delivered` copy of a status change
    type                text NOT NULL,
    shipment_id         text,
    order_key           text NOT NULL,                       -- deliveries with one key go out in order
    occurred_at         timestamptz NOT NULL,
    payload             jsonb NOT NULL,
    status              text NOT NULL DEFAULT 'pending',     -- pending | succeeded | failed
    tries               integer NOT NULL DEFAULT 0,          -- attempts since (re)queued
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (webhook_id, order_key, seq, ord, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'pending';

CREATE TABLE webhook_attempts (
    id                  bigserial PRIMARY KEY,
    delivery_id         text NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    at                  timestamptz NOT NULL,
    status_code         integer,
    latency_ms          integer,
    error               text,
    response_body       text                                 -- at most 1 KB
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Queue a delivery for every enabled subscription that wants this message, in the transaction
-- that writes the message. A status change to `delivered` is also queued, as type `delivered`,
-- for subscriptions to `delivered`. A tenant without subscriptions costs one index probe.
CREATE FUNCTION trackd_enqueue_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, seq, ord, type, shipment_id, order_key,
                                    occurred_at, payload, next_attempt_at)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), w.id, NEW.tenant_id, NEW.seq, k.ord, k.type,
           NEW.shipment_id, COALESCE(NEW.shipment_id, ''), NEW.occurred_at, NEW.payload, now()
    FROM webhooks w
    CROSS JOIN LATERAL (VALUES (1::smallint, NEW.type),
                               (2::smallint, CASE WHEN NEW.type = 'status.changed'
                                                   AND NEW.payload ->> 'status' = 'delivered'
                                                  THEN 'delivered' END)) AS k(ord, type)
    WHERE w.tenant_id = NEW.tenant_id AND w.enabled
      AND k.type IS NOT NULL AND k.type = ANY (w.events)
      AND (cardinality(w.shipment_ids) = 0 OR NEW.shipment_id = ANY (w.shipment_ids));
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_webhooks AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION trackd_enqueue_webhooks();

-- Public tracking links: only a hash of the token is kept.
CREATE TABLE share_links (
    token_hash          bytea PRIMARY KEY,                   -- sha256 of the token
    tenant_id           bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    shipment_id         text NOT NULL REFERENCES shipments(id) ON DELETE CASCADE,
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX share_links_shipment ON share_links (shipment_id);
CREATE INDEX share_links_expires ON share_links (expires_at);
