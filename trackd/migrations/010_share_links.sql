-- Public tracking links: how precisely a link shows the shipment's positions (notify/links.py).
-- exact: as reported; coarse: rounded to 0.1 degree (about 11 km, city level); none: no route.
ALTER TABLE share_links
    ADD COLUMN IF NOT EXISTS position_mode text NOT NULL DEFAULT 'exact'
        CHECK (position_mode IN ('exact', 'coarse', 'none'));
