-- What the ETA engine and the dwell rule read between events: a downsampled trail of recent
-- fixes (one every 10 minutes or 500 m), kept on the state row so no query is needed per event.
ALTER TABLE shipment_state ADD COLUMN IF NOT EXISTS recent_positions jsonb NOT NULL DEFAULT '[]';
CREATE INDEX IF NOT EXISTS shipment_state_open ON shipment_state (last_event_at)
    WHERE status NOT IN ('delivered', 'returned', 'cancelled', 'expired');
CREATE INDEX IF NOT EXISTS shipment_state_delivered ON shipment_state (tenant_id, delivered_at)
    WHERE delivered_at IS NOT NULL;
