-- Rotation of a tenant's API key and ingest secret (`trackd tenant rotate`): the value replaced by
-- the last rotation stays valid until its *_expires_at, so senders can switch over without a gap.
-- Only one previous value is kept: a second rotation ends the first one's grace at once.
ALTER TABLE tenants
    ADD COLUMN previous_api_key_hash             bytea,        -- sha256 of the replaced API key
    ADD COLUMN previous_api_key_expires_at       timestamptz,
    ADD COLUMN previous_ingest_secret_enc        text,         -- Fernet-encrypted, like ingest_secret_enc
    ADD COLUMN previous_ingest_secret_expires_at timestamptz;

CREATE INDEX tenants_previous_api_key ON tenants (previous_api_key_hash) WHERE previous_api_key_hash IS NOT NULL;
