-- The notification that deliveries were queued (migration 019) now names their endpoints: the
-- distinct webhook ids of the statement's new rows, comma-separated (empty when they would make a
-- payload over 4,000 bytes: then it names none, as `wake_senders` does). A deliverer that already
-- sends to every endpoint named as many deliveries as an endpoint may have in flight lets no idle
-- slot look: no claim could take those deliveries before one of its sends ends, and the slot
-- that sent it looks again then. Before, each such notification (one per transaction that queued
-- deliveries for a slow endpoint at its limit) cost a claim that found nothing.
CREATE OR REPLACE FUNCTION trackd_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text;
BEGIN
    SELECT string_agg(DISTINCT webhook_id, ',') INTO ids FROM new_rows;
    IF ids IS NOT NULL THEN
        PERFORM pg_notify('trackd_deliveries', CASE WHEN length(ids) <= 4000 THEN ids ELSE '' END);
    END IF;
    RETURN NULL;
END
$$;
