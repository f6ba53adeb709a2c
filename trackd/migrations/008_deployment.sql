-- This installation's identity, made once here and kept: every Redis key trackd writes carries it,
-- so two installations sharing a Redis and a key prefix never see each other's messages. A
-- database restored from a backup keeps it (it is the same installation; trackd/relay.py notices
-- that the restored database is behind its Redis streams and resets them).
CREATE TABLE deployment (
    only_row            boolean PRIMARY KEY DEFAULT true CHECK (only_row),  -- one row at most
    id                  text NOT NULL CHECK (id ~ '^[0-9a-f]{16}$'),
    created_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment (id) VALUES (left(replace(gen_random_uuid()::text, '-', ''), 16));
