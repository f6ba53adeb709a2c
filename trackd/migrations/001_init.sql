-- trackd schema, version 1. Every time is timestamptz (UTC), named *_at.

CREATE TABLE IF NOT EXISTS keyring (
    name        text PRIMARY KEY,
    key         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    api_key_hash        bytea NOT NULL UNIQUE,           -- sha256 of the API key
    ingest_secret_enc   text NOT NULL,                   -- Fernet-encrypted ingest secret
    seq                 bigint NOT NULL DEFAULT 0,       -- last stream message sequence
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shipments (
    id                  text PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    tracking_number     text NOT NULL,
    carrier             text,
    "references"        text[] NOT NULL DEFAULT '{}',
    ref_keys            text[] NOT NULL DEFAULT '{}',    -- upper case, no spaces or hyphens
    mode                text,
    legs                jsonb NOT NULL DEFAULT '[]',
    promised_at         timestamptz,
    weight_kg           double precision,
    temperature_min_c   double precision,
    temperature_max_c   double precision,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shipments_tenant_created ON shipments (tenant_id, created_at DESC, id DESC);
CREATE INDEX shipments_tenant_updated ON shipments (tenant_id, updated_at);
CREATE INDEX shipments_ref_keys ON shipments USING gin (ref_keys);
CREATE UNIQUE INDEX shipments_tenant_tracking ON shipments (tenant_id, upper(tracking_number));

-- The current state of a shipment, kept off the shipments row so ingest updates stay narrow.
CREATE TABLE shipment_state (
    shipment_id         text PRIMARY KEY REFERENCES shipments(id) ON DELETE CASCADE,
    tenant_id           bigint NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    substatus           text,
    status_at           timestamptz,
    last_lat            double precision,
    last_lon            double precision,
    last_speed_kmh      double precision,
    last_heading        double precision,
    last_position_at    timestamptz,
    last_event_at       timestamptz,
    last_sensor         jsonb,
    carrier_eta         timestamptz,
    carrier_eta_created_at timestamptz,
    eta                 jsonb,
    exceptions          jsonb NOT NULL DEFAULT '[]',
    emissions           jsonb,
    delivered_at        timestamptz,
    started_at          timestamptz,
    milestones          jsonb NOT NULL DEFAULT '[]',     -- actual milestones so far, oldest first
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shipment_state_tenant_status ON shipment_state (tenant_id, status);

CREATE TABLE devices (
    tenant_id           bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    id                  text NOT NULL,
    key                 text NOT NULL UNIQUE,
    name                text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE device_attachments (
    id                  bigserial PRIMARY KEY,
    tenant_id           bigint NOT NULL,
    shipment_id         text NOT NULL REFERENCES shipments(id) ON DELETE CASCADE,
    device_id           text NOT NULL,
    from_at             timestamptz NOT NULL,
    until_at            timestamptz,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices(tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX device_attachments_device ON device_attachments (tenant_id, device_id, from_at);
CREATE INDEX device_attachments_shipment ON device_attachments (shipment_id);

-- The append-only event log: the normalized row beside the raw payload.
CREATE TABLE events (
    tenant_id           bigint NOT NULL,
    event_id            text NOT NULL,
    occurred_at         timestamptz NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz,
    shipment_id         text,
    device_id           text,
    source              text NOT NULL,
    kind                text NOT NULL,
    code                text,
    raw_code            text,
    classifier          text,
    match_keys          text[] NOT NULL DEFAULT '{}',
    retracted_at        timestamptz,
    retracts            text,
    data                jsonb NOT NULL,
    raw                 jsonb NOT NULL,
    PRIMARY KEY (tenant_id, event_id, occurred_at)
);
CREATE INDEX events_occurred ON events (occurred_at);
CREATE INDEX events_shipment ON events (shipment_id, occurred_at) WHERE shipment_id IS NOT NULL;
CREATE INDEX events_unmatched ON events USING gin (match_keys) WHERE shipment_id IS NULL;

CREATE TABLE positions (
    tenant_id           bigint NOT NULL,
    shipment_id         text,
    device_id           text,
    occurred_at         timestamptz NOT NULL,
    event_id            text NOT NULL,
    lat                 double precision NOT NULL,
    lon                 double precision NOT NULL,
    speed_kmh           double precision,
    heading             double precision,
    accuracy_m          double precision,
    altitude_m          double precision
);
CREATE INDEX positions_occurred ON positions (occurred_at);
CREATE INDEX positions_shipment ON positions (shipment_id, occurred_at) WHERE shipment_id IS NOT NULL;
CREATE INDEX positions_device ON positions (tenant_id, device_id, occurred_at);

CREATE TABLE quarantine (
    id                  bigserial PRIMARY KEY,
    tenant_id           bigint,
    received_at         timestamptz NOT NULL DEFAULT now(),
    source              text NOT NULL,
    transport           text NOT NULL,
    reason              text NOT NULL,
    raw                 text NOT NULL
);
CREATE INDEX quarantine_tenant ON quarantine (tenant_id, id DESC);

-- Stream messages, written in the same transaction as the change that causes them; relayed to
-- Redis after commit in seq order, read back for resume.
CREATE TABLE outbox (
    tenant_id           bigint NOT NULL,
    seq                 bigint NOT NULL,
    type                text NOT NULL,
    shipment_id         text,
    occurred_at         timestamptz NOT NULL,
    payload             jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    published           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX outbox_unpublished ON outbox (tenant_id, seq) WHERE NOT published;
CREATE INDEX outbox_created ON outbox (created_at);

CREATE TABLE eta_history (
    shipment_id         text NOT NULL REFERENCES shipments(id) ON DELETE CASCADE,
    computed_at         timestamptz NOT NULL,
    predicted_at        timestamptz NOT NULL,
    earliest            timestamptz,
    latest              timestamptz,
    carrier_eta         timestamptz,
    method              text NOT NULL,
    eta                 jsonb NOT NULL
);
CREATE INDEX eta_history_shipment ON eta_history (shipment_id, computed_at);
