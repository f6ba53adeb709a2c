"""The outbox relay: one leader at a time across processes, woken by the database's notification,
and a follower that takes over when the leader goes, with every message on the bus exactly once.

These tests use a database of their own: a relay anywhere else in the run's database would lead
and keep the lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from tests.conftest import REDIS_URL, _drop_database, _make_database
from trackd import db, ledger, metrics, store, tenant_store
from trackd.bus import MemoryBus, RedisBus
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
    await tenant_store.create_tenant(own_pool, "relay-a", None)
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


async def _tenant(pool: AsyncConnectionPool, name: str) -> int:
    await tenant_store.create_tenant(pool, name, None)
    async with store.transaction(pool) as conn:
        row = await (await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))).fetchone()
    assert row is not None
    return int(row["id"])


def _resets() -> float:
    return metrics.REGISTRY.get_sample_value("trackd_stream_resets_total") or 0.0


def _stale(upto: int) -> list[dict[str, object]]:
    """What a stream kept from a history the database no longer has (it was restored)."""
    return [{"seq": s, "type": "stale"} for s in range(1, upto + 1)]


async def test_a_stream_ahead_of_the_database_is_dropped_at_start_and_new_messages_flow(
    own_pool: AsyncConnectionPool, bus: RedisBus, caplog: pytest.LogCaptureFixture
) -> None:
    tenant_id = await _tenant(own_pool, "restored")
    await _emit(own_pool, tenant_id, 3)  # the database is at seq 3 ...
    await bus.publish(tenant_id, _stale(40))  # ... its stream at 40
    assert (await bus.heads([tenant_id])) == {tenant_id: 40}
    before = _resets()
    relay = Relay(own_pool, bus, poll_s=0.1)
    with caplog.at_level(logging.WARNING, logger="trackd.relay"):
        await relay.start()  # checks before it returns: a hub started after it reads no stale message
        assert _resets() == before + 1
        try:
            await _emit(own_pool, tenant_id, 2)

            async def published() -> bool:
                return (await bus.heads([tenant_id]))[tenant_id] == 5

            await until(published)
            got = await bus.range(tenant_id, 0, 5)
            assert got is not None
            assert [(m["seq"], m["type"]) for m in got] == [(s, "shipment.updated") for s in range(1, 6)]
        finally:
            await relay.stop()
    warnings = [r for r in caplog.records if r.name == "trackd.relay" and r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["stream reset"]
    assert f"tenant {tenant_id}: bus at 40, database at 3" in warnings[0].getMessage()
    assert _resets() == before + 1  # the leader's own check found nothing more to drop


async def test_a_tenant_the_relay_has_not_asked_about_is_checked_when_it_publishes(
    own_pool: AsyncConnectionPool, bus: RedisBus
) -> None:
    level = await _tenant(own_pool, "level")
    ahead = await _tenant(own_pool, "ahead")
    for t in (level, ahead):
        await _emit(own_pool, t, 2)
    await bus.publish(level, [{"seq": 1, "type": "shipment.updated"}])  # behind the database: kept
    await bus.publish(ahead, _stale(9))
    before = _resets()
    relay = Relay(own_pool, bus)
    assert isinstance(own_pool.conninfo, str)
    async with await psycopg.AsyncConnection.connect(own_pool.conninfo, autocommit=True) as conn:
        assert await relay.publish_pending(conn) == 4
    assert _resets() == before + 1
    for t in (level, ahead):
        got = await bus.range(t, 0, 2)
        assert got is not None
        assert [(m["seq"], m["type"]) for m in got] == [(1, "shipment.updated"), (2, "shipment.updated")]


async def test_a_stream_is_dropped_only_while_it_ends_where_it_was_seen(bus: RedisBus) -> None:
    for b in (bus, MemoryBus()):
        await b.publish(7, _stale(5))
        assert not await b.drop(7, 4)  # someone reset it and published since: kept
        assert (await b.heads([7, 8])) == {7: 5, 8: 0}
        assert not await b.drop(8, 0)  # nothing there
        assert await b.drop(7, 5)
        assert (await b.heads([7])) == {7: 0}
        await b.publish(7, [{"seq": 1, "type": "shipment.updated"}])  # a new stream from seq 1
        assert await b.range(7, 0, 1) == [{"seq": 1, "type": "shipment.updated"}]
