"""Connections and migrations. Numbered `.sql` files applied in order under an advisory lock.

Files named `*_timescale.sql` run only when `CREATE EXTENSION timescaledb` succeeds; on plain
PostgreSQL they are recorded as skipped and the retention job in `store.py` does their work.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from trackd.errors import ConfigError

log = logging.getLogger("trackd.db")

set_json_loads(orjson.loads)  # jsonb columns decoded by orjson: several times faster than json
set_json_dumps(lambda v: orjson.dumps(v, default=str).decode())

MIGRATION_LOCK = 7_242_019_001  # pg_advisory_lock key shared by every trackd process


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("trackd") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(n, (folder / n).read_text(encoding="utf-8")) for n in names]


def connect_sync(dsn: str) -> psycopg.Connection[dict[str, object]]:
    try:
        return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, connect_timeout=5)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection refused"
        raise ConfigError(f"database unreachable: {first}") from None


def _try_timescale(conn: psycopg.Connection[dict[str, object]]) -> bool:
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        return True
    except psycopg.Error:
        return False


def migrate(dsn: str, retention_days: int = 365) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run from many processes."""
    applied: list[str] = []
    with connect_sync(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(),"
                " skipped boolean NOT NULL DEFAULT false)"
            )
            done = {r["name"] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
            timescale: bool | None = None
            for name, sql in migration_files():
                if name in done:
                    continue
                skipped = False
                if name.endswith("_timescale.sql"):
                    if timescale is None:
                        timescale = _try_timescale(conn)
                    skipped = not timescale
                with conn.transaction():
                    if not skipped:
                        conn.execute(sql.replace("{retention_days}", str(int(retention_days))).encode())
                    conn.execute("INSERT INTO schema_migrations (name, skipped) VALUES (%s, %s)", (name, skipped))
                applied.append(name + (" (skipped: no timescaledb)" if skipped else ""))
                log.info("migration applied: %s%s", name, " (skipped)" if skipped else "")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def check_schema(dsn: str) -> None:
    """Stop early, with one clear line, if the database is unreachable or not migrated."""
    with connect_sync(dsn) as conn:
        row = conn.execute("SELECT to_regclass('public.schema_migrations') AS t").fetchone()
        if not row or row["t"] is None:
            raise ConfigError("database is not migrated: run `trackd migrate` first")
        names = {r["name"] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
        missing = [n for n, _ in migration_files() if n not in names]
        if missing:
            raise ConfigError(f"database schema is behind ({', '.join(missing)}): run `trackd migrate`")


DEPLOYMENT = "SELECT id FROM deployment"
NOT_MIGRATED = "database is not migrated: run `trackd migrate` first"


def deployment(dsn: str) -> str:
    """This installation's identity (made once by `trackd migrate`, migration 008), which every
    Redis key carries; a `ConfigError` when the database is not migrated that far."""
    with connect_sync(dsn) as conn:
        try:
            row = conn.execute(DEPLOYMENT).fetchone()
        except psycopg.errors.UndefinedTable:
            raise ConfigError(NOT_MIGRATED) from None
    if row is None:
        raise ConfigError(NOT_MIGRATED)
    return str(row["id"])


async def read_deployment(pool: AsyncConnectionPool) -> str:
    """`deployment`, through the pool: what each process reads at start to build its bus."""
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        try:
            row = await (await cur.execute(DEPLOYMENT)).fetchone()
        except psycopg.errors.UndefinedTable:
            raise ConfigError(NOT_MIGRATED) from None
    if row is None:
        raise ConfigError(NOT_MIGRATED)
    return str(row[0])


def has_timescale(dsn: str) -> bool:
    with connect_sync(dsn) as conn:
        row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        return row is not None


# What the write path's connections ask of the planner: its statements find their rows by key, and
# PostgreSQL kept planning them again on every run (the custom plans looked cheaper than the
# generic one, the same key lookups): 0.42 ms to plan the events statement against 0.11 ms to run
# it, with 10,000 shipments. Asked at connect time, it costs no statement of its own.
GENERIC_PLANS = "-c plan_cache_mode=force_generic_plan"


async def open_pool(
    dsn: str, size: int = 10, autocommit: bool = False, generic_plans: bool = False
) -> AsyncConnectionPool:
    """`autocommit`: a statement outside `store.transaction` is its own transaction (one round
    trip, no BEGIN and COMMIT around it). `generic_plans`: prepared statements always use their
    generic plan (`GENERIC_PLANS`), for a pool that only runs key lookups."""
    kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": autocommit}
    if generic_plans:  # beside any options the DSN names (they would be replaced otherwise)
        given = psycopg.conninfo.conninfo_to_dict(dsn).get("options")
        kwargs["options"] = f"{given} {GENERIC_PLANS}" if given else GENERIC_PLANS
    pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        open=False,
        kwargs=kwargs,
        timeout=10,
        reconnect_timeout=3600,
    )
    await pool.open(wait=True, timeout=10)
    return pool


async def ping(pool: AsyncConnectionPool, timeout_s: float) -> None:
    """One round trip to the database; raises when it does not answer within `timeout_s`."""
    async with pool.connection(timeout=timeout_s) as conn:
        await conn.execute("SELECT 1")


def ensure_database(admin_dsn: str, name: str) -> None:
    """Create the database `name` through `admin_dsn` unless it exists (the demo's own server)."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
