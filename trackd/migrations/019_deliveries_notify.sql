-- A statement that queues webhook deliveries (the outbox trigger's, a replay's) wakes the senders
-- when its transaction commits: every worker listens on `trackd_deliveries` and lets one idle
-- sender slot look at the queue at once, instead of finding the delivery at its next poll. One
-- notification per transaction (PostgreSQL folds repeats), and none when nothing was queued.
CREATE OR REPLACE FUNCTION trackd_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('trackd_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS deliveries_notify ON webhook_deliveries;
CREATE TRIGGER deliveries_notify AFTER INSERT ON webhook_deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION trackd_deliveries_notify();
