-- The unattributed quarantine sample's size, kept up to date by triggers: its rows and bytes (raw
-- and reason) in one row, so that a write to the sample reads its size from there instead of
-- walking the whole sample (about 10 ms of PostgreSQL's time for 1,000 rows), and trims only when
-- it is over a cap. Every insert and delete of a row without a tenant counts, whoever makes it.
CREATE TABLE IF NOT EXISTS quarantine_sample (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    rows bigint NOT NULL,
    bytes bigint NOT NULL
);

CREATE OR REPLACE FUNCTION trackd_quarantine_sample_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint := 0;
    b bigint := 0;
    dn bigint;
    db bigint;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT count(*), coalesce(sum(octet_length(raw) + octet_length(reason)), 0) INTO dn, db
        FROM new_rows WHERE tenant_id IS NULL;
        n := n + dn;
        b := b + db;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT count(*), coalesce(sum(octet_length(raw) + octet_length(reason)), 0) INTO dn, db
        FROM old_rows WHERE tenant_id IS NULL;
        n := n - dn;
        b := b - db;
    END IF;
    IF n <> 0 OR b <> 0 THEN
        UPDATE quarantine_sample SET rows = rows + n, bytes = bytes + b;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS quarantine_sample_insert ON quarantine;
CREATE TRIGGER quarantine_sample_insert AFTER INSERT ON quarantine
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_quarantine_sample_count();
DROP TRIGGER IF EXISTS quarantine_sample_delete ON quarantine;
CREATE TRIGGER quarantine_sample_delete AFTER DELETE ON quarantine
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_quarantine_sample_count();
DROP TRIGGER IF EXISTS quarantine_sample_update ON quarantine;
CREATE TRIGGER quarantine_sample_update AFTER UPDATE ON quarantine
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_quarantine_sample_count();

-- The size as it is now (under the table's lock, so that no write falls between the count and the
-- triggers).
LOCK TABLE quarantine IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO quarantine_sample (one, rows, bytes)
SELECT true, count(*), coalesce(sum(octet_length(raw) + octet_length(reason)), 0)
FROM quarantine WHERE tenant_id IS NULL
ON CONFLICT (one) DO UPDATE SET rows = EXCLUDED.rows, bytes = EXCLUDED.bytes;
