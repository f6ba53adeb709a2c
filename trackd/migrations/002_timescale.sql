-- Runs only where the timescaledb extension exists (the compose stack); plain PostgreSQL skips
-- it and the worker's retention job deletes old rows instead.
SELECT create_hypertable('events', 'occurred_at', migrate_data => true, if_not_exists => true,
                         chunk_time_interval => interval '1 day');
SELECT create_hypertable('positions', 'occurred_at', migrate_data => true, if_not_exists => true,
                         chunk_time_interval => interval '1 day');
ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'tenant_id',
                        timescaledb.compress_orderby = 'occurred_at DESC');
ALTER TABLE positions SET (timescaledb.compress, timescaledb.compress_segmentby = 'tenant_id',
                           timescaledb.compress_orderby = 'occurred_at DESC');
SELECT add_compression_policy('events', interval '7 days', if_not_exists => true);
SELECT add_compression_policy('positions', interval '7 days', if_not_exists => true);
SELECT add_retention_policy('events', interval '{retention_days} days', if_not_exists => true);
SELECT add_retention_policy('positions', interval '{retention_days} days', if_not_exists => true);
