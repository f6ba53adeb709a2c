-- Vessels for AIS: a sea leg's `vessel {imo, mmsi, name}` lives in the shipment's legs (jsonb). The ais
-- role keeps the linked vessels in memory and reads them again when a notification on
-- `trackd_vessels` says they changed (and once a minute, for shipments that reached a final status).

-- The shipments whose legs name a vessel: the ais role's read scans only these.
CREATE INDEX IF NOT EXISTS shipments_with_vessel ON shipments (id) WHERE legs @? '$[*].vessel';

-- What AIS static data (message type 5) said of a vessel linked by its IMO number only: its MMSI.
-- Public broadcast data, shared by every tenant; one row per IMO number.
CREATE TABLE IF NOT EXISTS vessels (
    imo                 integer PRIMARY KEY,
    mmsi                integer NOT NULL,
    name                text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION trackd_vessels_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('trackd_vessels', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS shipments_vessels_insert ON shipments;
CREATE TRIGGER shipments_vessels_insert AFTER INSERT ON shipments
    FOR EACH ROW WHEN (NEW.legs @? '$[*].vessel') EXECUTE FUNCTION trackd_vessels_changed();
DROP TRIGGER IF EXISTS shipments_vessels_update ON shipments;
CREATE TRIGGER shipments_vessels_update AFTER UPDATE OF legs, tracking_number ON shipments
    FOR EACH ROW WHEN (OLD.legs @? '$[*].vessel' OR NEW.legs @? '$[*].vessel')
    EXECUTE FUNCTION trackd_vessels_changed();
DROP TRIGGER IF EXISTS shipments_vessels_delete ON shipments;
CREATE TRIGGER shipments_vessels_delete AFTER DELETE ON shipments
    FOR EACH ROW WHEN (OLD.legs @? '$[*].vessel') EXECUTE FUNCTION trackd_vessels_changed();
DROP TRIGGER IF EXISTS vessels_changed ON vessels;
CREATE TRIGGER vessels_changed AFTER INSERT OR UPDATE OR DELETE ON vessels
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_vessels_changed();
