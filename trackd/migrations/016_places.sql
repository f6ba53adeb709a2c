-- Places: a tenant's own geofences (the bundled ports and airports live in code, not here), the
-- version counter that tells other processes a tenant's places changed, and the visits that
-- crossings open and close (dwell per place, for `/v1/places/{id}/stats` and the ETA).
CREATE TABLE places (
    id          text PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    kind        text NOT NULL,
    geometry    jsonb NOT NULL,                 -- GeoJSON Polygon or Point
    radius_m    double precision,               -- for a Point
    unlocode    text,
    iata        text,
    min_lon     double precision NOT NULL,      -- bounding box, for the bbox filter
    min_lat     double precision NOT NULL,
    max_lon     double precision NOT NULL,
    max_lat     double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX places_tenant ON places (tenant_id, id);

CREATE TABLE place_versions (
    tenant_id   bigint PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL DEFAULT 0
);

CREATE TABLE place_visits (
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    place_id    text NOT NULL,                  -- a tenant place, or a bundled one (unlocode:..., iata:...)
    shipment_id text NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    entered_at  timestamptz NOT NULL,
    exited_at   timestamptz,
    PRIMARY KEY (tenant_id, place_id, shipment_id, entered_at)
);
CREATE INDEX place_visits_open ON place_visits (shipment_id, place_id) WHERE exited_at IS NULL;
