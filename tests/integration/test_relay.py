"""The outbox relay: one leader at a time across processes, woken by the database's notification,
and a follower that takes over when the leader goes, with every message on the bus exactly once.

These tests use a database of their own: a relay anywhere else in the run's database would lead
and keep the lock.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from tests.conftest import REDIS_URL, _drop_database, _make_database
from trackd import db, ledger, store
from trackd.bus import RedisBus
from trackd.relay import Relay


@pytest.fixture
async def own_pool() -> AsyncIterator[AsyncConnectionPool]:
    _run_id, dsn = _make_database()
    try:
        db.migrate(dsn)
        pool = await db.open_pool(dsn, 4)
        yield pool
        await pool.close()
    finally:
        _drop_database(dsn)


@pytest.fixture
async def bus() -> AsyncIterator[RedisBus]:
    prefix = f"trackd_test_relay_{secrets.token_hex(4)}"
    b = RedisBus.from_url(REDIS_URL, prefix)
    yield b
    r = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in r.scan_iter(f"{prefix}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()
    await b.close()


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _emit(pool: AsyncConnectionPool, tenant_id: int, n: int) -> None:
    at = datetime.now(UTC).isoformat()
    async with store.transaction(pool) as conn:
        await ledger.emit(conn, tenant_id, [{"type": "shipment.updated", "occurred_at": at}] * n)


async def test_one_relay_leads_woken_by_commits_and_a_follower_takes_over(
    own_pool: AsyncConnectionPool, bus: RedisBus
) -> None:
    await store.create_tenant(own_pool, "relay-a", None)
    async with store.transaction(own_pool) as conn:
        row = await (await conn.execute("SELECT id FROM tenants WHERE name = 'relay-a'")).fetchone()
    assert row is not None
    tenant_id = int(row["id"])

    # The deferring relay (as in a process with the api role) starts first, yet the other leads.
    # The leader looks on its own only every 60 s: what it publishes sooner, a commit woke it for.
    follower = Relay(own_pool, bus, poll_s=0.1, defer=True)
    leader = Relay(own_pool, bus, poll_s=60.0)
    await follower.start()
    await asyncio.sleep(0.1)
    await leader.start()

    async def leading() -> bool:
        return leader.leading

    await until(leading)
    await asyncio.sleep(1.5)  # past the follower's deferral: it has tried for the lock and failed
    assert not follower.leading

    def published(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            got = await bus.range(tenant_id, 0, n)
            return got is not None and len(got) == n

        return check

    await _emit(own_pool, tenant_id, 3)
    await until(published(3), within=5.0)

    await leader.stop()  # its connection closes with it, and with it the lock

    async def follower_leads() -> bool:
        return follower.leading

    await until(follower_leads)
    await _emit(own_pool, tenant_id, 2)
    await _emit(own_pool, tenant_id, 1)
    await until(published(6))
    # each seq once, in order (`range` answers None for a gap or a repeat)
    got = await bus.range(tenant_id, 0, 6)
    assert got is not None
    assert [m["seq"] for m in got] == [1, 2, 3, 4, 5, 6]

    async def marked() -> bool:  # written when the relay is idle
        async with store.transaction(own_pool) as conn:
            r = await (await conn.execute("SELECT seq FROM relay_marks WHERE tenant_id = %s", (tenant_id,))).fetchone()
        return r is not None and r["seq"] == 6

    await until(marked)
    await follower.stop()
