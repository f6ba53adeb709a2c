-- Per-tenant settings (`trackd tenant set`): the branding of the public tracking page and how long
-- the tenant's data is kept. NULL means "not set": the page shows trackd's own look, and retention
-- falls back to TRACKD_RETENTION_DAYS.
ALTER TABLE tenants
    ADD COLUMN brand_name     text CHECK (length(brand_name) BETWEEN 1 AND 80),
    ADD COLUMN brand_logo_url text CHECK (brand_logo_url ~ '^https?://[^\s"''<>]+$' AND length(brand_logo_url) <= 2048),
    ADD COLUMN brand_colour   text CHECK (brand_colour ~ '^#[0-9a-f]{6}$'),
    ADD COLUMN support_url    text CHECK (support_url ~ '^https?://[^\s"''<>]+$' AND length(support_url) <= 2048),
    ADD COLUMN retention_days integer CHECK (retention_days BETWEEN 1 AND 36500);
