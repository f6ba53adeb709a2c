-- The ocean release of a shipment (last free day, availability for pickup, holds), kept with its
-- state and written in the same statement as the rest of it.
ALTER TABLE shipment_state ADD COLUMN IF NOT EXISTS release jsonb;
