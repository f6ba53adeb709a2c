"""Per-tenant retention against the real PostgreSQL: a tenant's retention deletes only its own old
rows, in bounded batches."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import orjson
from psycopg_pool import AsyncConnectionPool

from ingest import sources
from tests.conftest import RunEnv
from trackd import db, ledger, retention_store, store, tenant_store
from trackd.model import SourceContext
from trackd.retention_store import purge

NOW = datetime.now(UTC)
LOCK = 7_242_019_917  # a lock of the test's own: the session server's worker may purge at the same time


async def _tenant(pool: AsyncConnectionPool, retention_days: int | None) -> tuple[str, int]:
    name = f"ret-{secrets.token_hex(4)}"
    await tenant_store.create_tenant(pool, name, None)
    if retention_days is not None:
        await tenant_store.update_settings(pool, name, {"retention_days": retention_days})
    async with store.transaction(pool) as conn:
        row = await (await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))).fetchone()
    assert row is not None
    return name, int(row["id"])


async def _positions(pool: AsyncConnectionPool, tenant_id: int, *days_ago: int) -> None:
    items = [
        {
            "occurred_at": (NOW - timedelta(days=d)).isoformat(),
            "device": "dev-1",
            "position": {"lat": 1.0, "lon": d / 100},
        }
        for d in days_ago
    ]
    events = sources.get("native").normalize(orjson.dumps(items), SourceContext(str(tenant_id), NOW))
    async with store.transaction(pool) as conn:
        await ledger.write_events(conn, tenant_id, events, NOW)


async def _rows(pool: AsyncConnectionPool, tenant_id: int) -> tuple[list[int], list[int]]:
    """(days ago of the tenant's events, of its positions), oldest first."""
    out = []
    async with store.transaction(pool) as conn:
        for table in ("events", "positions"):
            rows = await (
                await conn.execute(
                    f"SELECT occurred_at FROM {table} WHERE tenant_id = %s ORDER BY occurred_at", (tenant_id,)
                )
            ).fetchall()
            out.append([round((NOW - r["occurred_at"]) / timedelta(days=1)) for r in rows])
    return out[0], out[1]


async def test_a_tenants_retention_deletes_only_its_own_old_rows(testenv: RunEnv) -> None:
    pool = await db.open_pool(testenv.dsn, 2)
    try:
        _, short = await _tenant(pool, 30)
        _, default = await _tenant(pool, None)
        _, long = await _tenant(pool, 400)
        for tenant_id in (short, default, long):
            await _positions(pool, tenant_id, 4000, 500, 90, 45, 31, 29, 1)
        # The default here keeps ten years (older rows are nobody's in this database but these
        # tenants'): the first tenant keeps 30 days, the third 400.
        deleted = await purge(pool, 3650, LOCK, batch=2)
        assert deleted is not None
        assert deleted >= 16  # events + positions: 5 + 5 of the first tenant, 1 + 1 of the second, 2 + 2 of the third
        assert await _rows(pool, short) == ([29, 1], [29, 1])
        assert await _rows(pool, default) == ([500, 90, 45, 31, 29, 1], [500, 90, 45, 31, 29, 1])
        assert await _rows(pool, long) == ([90, 45, 31, 29, 1], [90, 45, 31, 29, 1])
    finally:
        await pool.close()


async def test_with_chunk_retention_only_shorter_tenants_are_deleted_row_by_row(testenv: RunEnv) -> None:
    """With TimescaleDB whole chunks go at the longest retention any tenant has; the row deletes are
    planned for the tenants keeping less (the plan, on plain PostgreSQL: the chunk policy itself
    needs the extension)."""
    pool = await db.open_pool(testenv.dsn, 2)
    try:
        _, short = await _tenant(pool, 30)
        _, long = await _tenant(pool, 9000)  # longer than any other test's tenant
        async with store.transaction(pool) as conn:
            assert await retention_store.horizon(conn, 365) == 9000
            plan = await retention_store.groups(conn, 365, chunks_after=9000)
            everything = await retention_store.groups(conn, 365)
        by_days = {g.days: g for g in plan}
        assert 9000 not in by_days  # kept by the chunks alone
        assert short in (by_days[30].tenant_ids or ())
        assert by_days[365].tenant_ids is None
        assert long in by_days[365].except_ids
        assert {g.days for g in everything} >= {30, 365, 9000}
    finally:
        await pool.close()
