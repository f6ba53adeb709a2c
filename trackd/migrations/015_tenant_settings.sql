-- Per-tenant settings (`trackd tenant set`): the branding of the public tracking page and how long
-- the tenant's data is kept. NULL means "not set": the page shows trackd's own look, and retention
-- falls back to TRACKD_RETENTION_DAYS.
ALTER TABLE tenants
    ADD COLUMN IF NOT EXISTS brand_name     text,
    ADD COLUMN IF NOT EXISTS brand_logo_url text,
    ADD COLUMN IF NOT EXISTS brand_colour   text,
    ADD COLUMN IF NOT EXISTS support_url    text,
    ADD COLUMN IF NOT EXISTS retention_days integer;

-- The rules of trackd/tenant_store.py (`valid_name`, `valid_colour`, `valid_web_url`), no looser:
-- a name trimmed, of 1-80 characters and no control characters; a colour #rrggbb in lower case; an
-- http(s) URL of printable ASCII but " ' < > \, whose host is a DNS name or an IPv4 address (no
-- user info) with a port of 0-65535, at most 2048 characters. Named, so that a second run replaces them.
ALTER TABLE tenants
    DROP CONSTRAINT IF EXISTS tenants_brand_name_check,
    DROP CONSTRAINT IF EXISTS tenants_brand_logo_url_check,
    DROP CONSTRAINT IF EXISTS tenants_brand_colour_check,
    DROP CONSTRAINT IF EXISTS tenants_support_url_check,
    DROP CONSTRAINT IF EXISTS tenants_retention_days_check;
ALTER TABLE tenants
    ADD CONSTRAINT tenants_brand_name_check CHECK (
        length(brand_name) BETWEEN 1 AND 80 AND brand_name !~ '[\x01-\x1f\x7f]|^ | $'),
    ADD CONSTRAINT tenants_brand_logo_url_check CHECK (
        length(brand_logo_url) <= 2048 AND brand_logo_url ~ '^[!#-&(-;=?-\[\]-~]+$'
        AND brand_logo_url ~ '^https?://[A-Za-z0-9.-]+(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#].*)?$'),
    ADD CONSTRAINT tenants_brand_colour_check CHECK (brand_colour ~ '^#[0-9a-f]{6}$'),
    ADD CONSTRAINT tenants_support_url_check CHECK (
        length(support_url) <= 2048 AND support_url ~ '^[!#-&(-;=?-\[\]-~]+$'
        AND support_url ~ '^https?://[A-Za-z0-9.-]+(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#].*)?$'),
    ADD CONSTRAINT tenants_retention_days_check CHECK (retention_days BETWEEN 1 AND 36500);
