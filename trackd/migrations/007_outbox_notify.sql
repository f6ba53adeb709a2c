-- A statement that writes outbox messages wakes the relay when its transaction commits: the
-- process holding the relay lock listens on `trackd_outbox`, so it publishes what any process
-- wrote without polling for it. One notification per transaction (PostgreSQL folds repeats).
CREATE OR REPLACE FUNCTION trackd_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('trackd_outbox', '');
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION trackd_outbox_notify();
