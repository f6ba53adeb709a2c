-- Feeds trackd pulls (`trackd source add dcsa ...`), polled by the worker role (ingest/poller.py).
-- A pass pages through `<url>/events` by `Next-Page-Cursor`; the cursor of an unfinished pass and
-- the query it belongs to are kept after every page, so a restarted worker resumes where the last
-- one stopped. `updated_since` is the latest eventUpdatedDateTime seen: the next pass asks from
-- there. A worker leases a due source (`leased_until`) so that no two poll it at once.
CREATE TABLE IF NOT EXISTS pull_sources (
    id                  text PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('dcsa')),
    url                 text NOT NULL,
    api_key_enc         text,                                   -- Fernet-encrypted, as ingest secrets
    interval_s          integer NOT NULL DEFAULT 30 CHECK (interval_s BETWEEN 1 AND 86400),
    cursor              text,
    cursor_query        jsonb,
    updated_since       timestamptz,
    next_poll_at        timestamptz NOT NULL DEFAULT now(),
    leased_until        timestamptz,
    failures            integer NOT NULL DEFAULT 0,
    last_error          text,
    last_polled_at      timestamptz,
    last_success_at     timestamptz,
    events_received     bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pull_sources_due ON pull_sources (next_poll_at);
CREATE INDEX IF NOT EXISTS pull_sources_tenant ON pull_sources (tenant_id, created_at);

-- The versions of one DCSA 3.0.0 event (ids `<family>@v<time>`, trackd/ledger.py `superseded`).
CREATE INDEX IF NOT EXISTS events_versions
    ON events (tenant_id, (substring(event_id from '^(.+)@v\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$')))
    WHERE event_id LIKE '%@v%';
