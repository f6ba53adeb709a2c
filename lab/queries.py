"""The SQL of the tools in lab/, named and kept together: seeding, measuring and clearing a bench
run's data, and reading history for `trackd eta-eval`. The server's own SQL is in the storage
modules of the core (trackd/store.py, ledger.py, ...); these statements touch only what a tool made
or reads, always scoped to its tenant."""

from __future__ import annotations

# -- bench data (lab/bench_env.py, bench_query.py) ----------------------------------------------

SEED_SHIPMENTS = """
INSERT INTO shipments (id, tenant_id, tracking_number, ref_keys, mode, created_at, updated_at)
SELECT %(idp)s || lpad(i::text, 6, '0'), %(tenant)s, %(trk)s || lpad(i::text, 6, '0'),
       ARRAY[%(trk)s || lpad(i::text, 6, '0')], 'road', now() - make_interval(secs => i), now()
FROM generate_series(0, %(n)s::int - 1) AS i
"""
# A full trail (the 50 fixes a state keeps), 10 minutes apart and ending at `until`: a shipment
# that has been on the move for a while, as most are in a running system.
FILL_TRAILS = """
UPDATE shipment_state st SET recent_positions = (
  SELECT jsonb_agg(jsonb_build_object('lat', 10 + i * 0.01, 'lon', 20 + i * 0.01, 'at',
                                      %(until)s::timestamptz - make_interval(mins => 10 * (50 - i)),
                                      'speed_kmh', 60.0, 'heading', 45.0) ORDER BY i)
  FROM generate_series(1, 50) AS i)
WHERE st.tenant_id = %(tenant)s
"""
SEED_STATES = (
    "INSERT INTO shipment_state (shipment_id, tenant_id) SELECT id, tenant_id FROM shipments WHERE tenant_id = %s"
)
DELETE_ROWS = (
    "DELETE FROM positions WHERE tenant_id = %s",
    "DELETE FROM events WHERE tenant_id = %s",
    "DELETE FROM outbox WHERE tenant_id = %s",
    "DELETE FROM quarantine WHERE tenant_id = %s",
    "DELETE FROM tenants WHERE id = %s",  # shipments, state, devices, attachments, ETA history cascade
)
TENANT_ID = "SELECT id FROM tenants WHERE name = %s"
COUNT_EVENTS = "SELECT count(*) FROM events WHERE tenant_id = %s"
VACUUM = "VACUUM (ANALYZE) tenants, relay_marks, shipments, shipment_keys, shipment_state, events, positions, outbox"
SEED_POSITIONS = """
INSERT INTO positions (tenant_id, shipment_id, device_id, occurred_at, event_id, lat, lon, speed_kmh, heading)
SELECT %(tenant)s, %(idp)s || lpad(s::text, 6, '0'), NULL,
       %(now)s::timestamptz - make_interval(secs => (k + 0.5) * %(step)s::float8),
       'seed:' || s || ':' || k, 40 + (k %% 500) * 0.01, -30 + s * 0.001 + k * 0.001, 60, 90
FROM generate_series(%(last)s::int, %(first)s::int, -1) AS k, generate_series(0, %(shipments)s::int - 1) AS s
"""
SEED_LAST = """
UPDATE shipment_state SET last_lat = 40, last_lon = -30, last_speed_kmh = 60, last_heading = 90,
       last_position_at = %s, status = 'in_transit'
WHERE tenant_id = %s
"""
ANALYZE_READ_TABLES = ("ANALYZE positions", "ANALYZE shipments", "ANALYZE shipment_state")

# -- bench hostile (lab/bench_hostile.py) --------------------------------------------------------

QUARANTINED_BY_TENANT = "SELECT tenant_id = %s, count(*) FROM quarantine WHERE tenant_id IN (%s, %s) GROUP BY 1"
# What no tenant could be named for, of this run: its poison carries the run's marker.
DELETE_RUN_SAMPLE = "DELETE FROM quarantine WHERE tenant_id IS NULL AND received_at >= %s AND strpos(raw, %s) > 0"
# The valid tenant's stored events of a run, by the parity of their index (MQTT even, webhook odd).
STORED_BY_PARITY = (
    "SELECT (round(extract(epoch FROM occurred_at) * 1000)::bigint - %(base_ms)s) %% 2, count(*)"
    " FROM events WHERE tenant_id = %(tenant)s AND occurred_at >= to_timestamp(%(base)s)"
    " AND occurred_at < to_timestamp(%(base)s + %(span)s) GROUP BY 1"
)

# -- the COPY ceiling (lab/bench_ingest.py): tables shaped like trackd's, made and dropped by the run


def copy_tables(events: str, positions: str) -> tuple[str, str, str]:
    """Create the two ceiling tables, and drop them."""
    return (
        f"CREATE TABLE {events} (LIKE events INCLUDING ALL)",
        f"CREATE TABLE {positions} (LIKE positions INCLUDING ALL)",
        f"DROP TABLE IF EXISTS {events}, {positions}",
    )


# -- eta-eval (lab/etaeval_cli.py) ---------------------------------------------------------------

DELIVERED_SHIPMENTS = (
    "SELECT s.* FROM shipments s JOIN shipment_state st ON st.shipment_id = s.id WHERE st.delivered_at IS NOT NULL"
)
SHIPMENT_EVENTS = (
    "SELECT * FROM events WHERE shipment_id = %s AND retracted_at IS NULL AND kind <> 'sensor' ORDER BY occurred_at"
)

# -- PostgreSQL's own state around a run (lab/bench_hostile.py) ---------------------------------

CHECKPOINT = "CHECKPOINT"
WAL_POSITION = "SELECT pg_current_wal_lsn()::text"
WAL_SINCE = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)"
CHECKPOINTS_STARTED = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"  # until PostgreSQL 17
