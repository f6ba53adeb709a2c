"""The write path's shortcuts, against the real PostgreSQL and Redis: the in-memory state rows, the
identifier table and the packed Redis stream must never change what is stored or streamed."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from ingest import sources
from tests.conftest import REDIS_URL, RunEnv
from trackd import db, ledger, registry, store, tenant_store
from trackd.bus import MemoryBus, RedisBus
from trackd.model import SourceContext
from trackd.relay import Relay
from trackd.shipment import Shipment

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def pool(testenv: RunEnv) -> AsyncIterator[AsyncConnectionPool]:
    p = await db.open_pool(testenv.dsn, 4)
    yield p
    await p.close()


async def _tenant(pool: AsyncConnectionPool) -> int:
    name = f"wp-{secrets.token_hex(4)}"
    await tenant_store.create_tenant(pool, name, None)
    async with store.transaction(pool) as conn:
        row = await (await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))).fetchone()
    assert row is not None
    return int(row["id"])


def _events(tenant_id: int, *items: dict[str, object]) -> list:
    ctx = SourceContext(tenant=str(tenant_id), received_at=datetime.now(UTC))
    return sources.get("native").normalize(orjson.dumps(list(items)), ctx)


def _position(ref: str, minutes: int, lat: float) -> dict[str, object]:
    at = T0 + timedelta(minutes=minutes)
    return {"occurred_at": at.isoformat(), "shipment": ref, "position": {"lat": lat, "lon": 4.4}}


async def _write(pool: AsyncConnectionPool, tenant_id: int, events: list) -> ledger.WriteResult:
    async with store.transaction(pool) as conn:
        return await ledger.write_events(conn, tenant_id, events, datetime.now(UTC))


async def _last(pool: AsyncConnectionPool, shipment_id: str) -> tuple[datetime, float]:
    async with store.transaction(pool) as conn:
        row = await (
            await conn.execute(
                "SELECT last_position_at, last_lat FROM shipment_state WHERE shipment_id = %s", (shipment_id,)
            )
        ).fetchone()
    assert row is not None
    return row["last_position_at"], row["last_lat"]


async def _moving(pool: AsyncConnectionPool, tracking: str) -> tuple[int, str]:
    """A new tenant's shipment, at 51.0 N at minute 10."""
    tenant_id, sid = await _tenant(pool), store.new_id("shp")
    async with store.transaction(pool) as conn:
        await registry.create_shipment(conn, tenant_id, Shipment(sid, tracking), [], T0, None)
    await _write(pool, tenant_id, _events(tenant_id, _position(tracking, 10, 51.0)))
    return tenant_id, sid


async def test_a_rolled_back_batch_leaves_nothing_behind_in_memory(pool: AsyncConnectionPool) -> None:
    tenant_id, sid = await _moving(pool, "WP-ROLLBACK-1")

    class Boom(Exception):
        pass

    async def write_then_fail() -> None:
        async with store.transaction(pool) as conn:
            await ledger.write_events(
                conn, tenant_id, _events(tenant_id, _position("WP-ROLLBACK-1", 30, 53.0)), datetime.now(UTC)
            )
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    assert await _last(pool, sid) == (T0 + timedelta(minutes=10), 51.0)
    # the batch that follows folds into the stored state, not the rolled-back one (minute 30)
    await _write(pool, tenant_id, _events(tenant_id, _position("WP-ROLLBACK-1", 20, 52.0)))
    assert await _last(pool, sid) == (T0 + timedelta(minutes=20), 52.0)


async def test_a_state_written_elsewhere_is_read_again(pool: AsyncConnectionPool) -> None:
    tenant_id, sid = await _moving(pool, "WP-ELSEWHERE-1")
    async with store.transaction(pool) as conn:  # another writer, not even bumping the version
        await conn.execute(
            "UPDATE shipment_state SET last_lat = 60, last_position_at = %s WHERE shipment_id = %s",
            (T0 + timedelta(minutes=40), sid),
        )
    await _write(pool, tenant_id, _events(tenant_id, _position("WP-ELSEWHERE-1", 20, 52.0)))
    assert await _last(pool, sid) == (T0 + timedelta(minutes=40), 60.0)  # minute 20 is older: kept as is


async def test_changed_references_resolve_and_other_tenants_never_match(pool: AsyncConnectionPool) -> None:
    tenant_id, other = await _tenant(pool), await _tenant(pool)
    sid = store.new_id("shp")
    async with store.transaction(pool) as conn:
        await registry.create_shipment(conn, tenant_id, Shipment(sid, "WP-REF-1", references=("PO-1",)), [], T0, None)
        await registry.create_shipment(conn, other, Shipment(store.new_id("shp"), "WP-REF-X"), [], T0, None)
    async with store.transaction(pool) as conn:
        await registry.update_shipment(conn, tenant_id, Shipment(sid, "WP-REF-1", references=("PO-2",)), T0, None)
    events = _events(tenant_id, _position("PO-2", 1, 50.0), _position("PO-1", 2, 50.0), _position("WP-REF-X", 3, 50.0))
    await _write(pool, tenant_id, events)
    async with store.transaction(pool) as conn:
        rows = await (
            await conn.execute(
                "SELECT event_id, shipment_id FROM events WHERE tenant_id = %s AND event_id = ANY(%s)",
                (tenant_id, [e.event_id for e in events]),
            )
        ).fetchall()
    by_id = {r["event_id"]: r["shipment_id"] for r in rows}
    found = [by_id[e.event_id] for e in events]
    assert found == [sid, None, None]


async def test_the_redis_stream_packs_messages_and_reads_from_any_seq(testenv: RunEnv) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    bus = RedisBus(client, f"trackd_test_{testenv.run_id}_packs")
    try:
        msgs = [{"seq": n, "type": "position", "shipment_id": "s"} for n in range(1, 6)]
        await bus.publish(7, msgs[:3])
        await bus.publish(7, msgs[2:])  # seq 3 again: skipped
        await bus.publish(7, msgs)  # all again: nothing new
        assert await client.xlen(bus.key(7)) == 2
        got = await bus.read({7: 2}, 100)  # from inside the first pack
        assert [m["seq"] for _, m in got] == [3, 4, 5]
        assert [m["seq"] for m in await bus.range(7, 1, 4) or []] == [2, 3, 4]
        assert await bus.range(7, 4, 9) is None  # not all there yet
    finally:
        await client.delete(bus.key(7))
        await bus.close()


async def test_the_relay_moves_past_messages_that_retention_deleted(pool: AsyncConnectionPool) -> None:
    tenant_id = await _tenant(pool)
    at = T0.isoformat()
    async with store.transaction(pool) as conn:
        sent = await ledger.emit(conn, tenant_id, [{"type": "shipment.updated", "occurred_at": at}] * 3)
    assert [m["seq"] for m in sent] == [1, 2, 3]
    async with store.transaction(pool) as conn:
        await conn.execute("DELETE FROM outbox WHERE tenant_id = %s", (tenant_id,))
    relay = Relay(pool, MemoryBus())
    async with store.transaction(pool) as conn:
        while await relay.publish_pending(conn, tenant_id):
            pass
    async with store.transaction(pool) as conn:
        row = await (await conn.execute("SELECT seq FROM relay_marks WHERE tenant_id = %s", (tenant_id,))).fetchone()
    assert row is not None
    assert row["seq"] == 3  # nothing left to wait for below the tenant's last seq


async def test_concurrent_deliveries_share_a_transaction_but_not_their_outcome(pool: AsyncConnectionPool) -> None:
    """Group commit: deliveries waiting together are written in one transaction; each caller gets its
    own counts, and the one that makes the transaction fail fails alone."""
    from ingest.pipeline import Pipeline, lane

    tenant_id = await _tenant(pool)
    names = [f"WP-GROUP-{i}" for i in range(5)] + ["WP-GROUP-BAD"]
    async with store.transaction(pool) as conn:
        for name in names:
            await registry.create_shipment(conn, tenant_id, Shipment(store.new_id("shp"), name), [], T0, None)
    txids: dict[str, list[int]] = {}

    async def evaluator(conn, row, _before, state, _now):  # type: ignore[no-untyped-def]
        txid = (await (await conn.execute("SELECT txid_current() AS t")).fetchone())["t"]
        txids.setdefault(row["tracking_number"], []).append(txid)
        if row["tracking_number"] == "WP-GROUP-BAD":
            raise ValueError("this delivery cannot be folded")
        return state, []

    pipeline = Pipeline(pool, evaluator)
    tenant = store.Tenant(tenant_id, "wp")
    first = _events(tenant_id, _position("WP-GROUP-0", 1, 51.0), _position("WP-GROUP-1", 1, 51.0))
    deliveries = [
        first,
        first[:1] + _events(tenant_id, _position("WP-GROUP-2", 1, 51.0)),  # one event the first one has
        _events(tenant_id, _position("WP-GROUP-BAD", 1, 51.0)),
        _events(tenant_id, _position("WP-GROUP-3", 1, 51.0), _position("WP-GROUP-3", 2, 51.1)),
        _events(tenant_id, _position("WP-GROUP-4", 1, 51.0)),
    ]
    writes = (pipeline.store_events(tenant, d, "api") for d in deliveries)
    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    assert isinstance(outcomes[2], ValueError)
    counts = [(o.accepted, o.stored, o.duplicates) for o in outcomes if isinstance(o, ledger.WriteResult)]
    assert counts == [(2, 2, 0), (2, 1, 1), (2, 2, 0), (1, 1, 0)]
    async with store.transaction(pool) as conn:
        rows = await (
            await conn.execute("SELECT count(*) AS n FROM events WHERE tenant_id = %s", (tenant_id,))
        ).fetchone()
    assert rows is not None
    assert rows["n"] == 6
    # the first attempt folded every shipment of a write lane in one transaction; then each delivery
    # of the failed lane went alone, and those of the other lane were not written again
    first_try = {name: seen[0] for name, seen in txids.items()}
    assert set(first_try) == {*names}
    lanes = {name: lane(name) for name in names}
    for ln in set(lanes.values()):
        assert len({first_try[n] for n in names if lanes[n] == ln}) == 1
    assert len(set(first_try.values())) == len(set(lanes.values()))
    assert len(txids["WP-GROUP-BAD"]) == 2
    for name in names:
        assert len(txids[name]) == (2 if lanes[name] == lanes["WP-GROUP-BAD"] else 1), name


async def test_a_shared_identifier_goes_to_the_oldest_shipment(pool: AsyncConnectionPool) -> None:
    tenant_id = await _tenant(pool)
    old, new = store.new_id("shp"), store.new_id("shp")
    async with store.transaction(pool) as conn:  # the newer one is written first
        for sid, name, at in ((new, "WP-NEW", T0 + timedelta(minutes=5)), (old, "WP-OLD", T0)):
            shipment = Shipment(sid, name, references=("PO-SHARED",))
            await registry.create_shipment(conn, tenant_id, shipment, [], at, None)
    await _write(pool, tenant_id, _events(tenant_id, _position("PO-SHARED", 10, 50.0)))
    assert (await _last(pool, old))[1] == 50.0
    async with store.transaction(pool) as conn:
        query = "SELECT last_lat FROM shipment_state WHERE shipment_id = %s"
        row = await (await conn.execute(query, (new,))).fetchone()
    assert row is not None
    assert row["last_lat"] is None


async def test_a_delivery_across_lanes_fails_if_any_part_fails(pool: AsyncConnectionPool) -> None:
    """A delivery split into write lanes answers only once every part is settled: the counts of all
    parts when they are stored, the error when one is not (the sender retries; the rest dedupes)."""
    from ingest.pipeline import Pipeline, lane

    tenant_id = await _tenant(pool)
    good = next(f"WP-SPLIT-{i}" for i in range(100) if lane(f"WP-SPLIT-{i}") == 0)
    bad = next(f"WP-SPLIT-BAD-{i}" for i in range(100) if lane(f"WP-SPLIT-BAD-{i}") == 1)
    async with store.transaction(pool) as conn:
        for name in (good, bad):
            await registry.create_shipment(conn, tenant_id, Shipment(store.new_id("shp"), name), [], T0, None)
    failing = {bad}

    async def evaluator(conn, row, _before, state, _now):  # type: ignore[no-untyped-def]
        if row["tracking_number"] in failing:
            raise ValueError("this part cannot be folded")
        return state, []

    pipeline = Pipeline(pool, evaluator)
    tenant = store.Tenant(tenant_id, "wp")
    delivery = _events(tenant_id, _position(good, 1, 51.0), _position(bad, 1, 51.0), _position(good, 2, 51.1))
    with pytest.raises(ValueError, match="cannot be folded"):
        await pipeline.store_events(tenant, delivery, "api")
    async with store.transaction(pool) as conn:
        rows = await (
            await conn.execute("SELECT count(*) AS n FROM events WHERE tenant_id = %s", (tenant_id,))
        ).fetchone()
    assert rows is not None
    assert rows["n"] == 2  # the good lane's part is stored
    failing.clear()  # the sender tries again: the stored part is found as duplicates
    result = await pipeline.store_events(tenant, delivery, "api")
    assert (result.accepted, result.stored, result.duplicates) == (3, 1, 2)


def _prepared(statement: str) -> tuple[str, list[str]]:
    """A psycopg statement as PREPARE takes it: `%(name)s` as `$n`, and the names in that order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, statement), names


async def _many_shipments(pool: AsyncConnectionPool) -> int:
    """A new tenant with 10,000 shipments (each with an identifier) and their state rows, analyzed."""
    tenant_id = await _tenant(pool)
    async with store.transaction(pool) as conn:
        await conn.execute(
            "INSERT INTO shipments (id, tenant_id, tracking_number, ref_keys)"
            " SELECT 'shp_plan' || %s || '_' || g, %s, 'PLAN-' || g, ARRAY['t:PLAN-' || g]"
            " FROM generate_series(1, 10000) g",
            (tenant_id, tenant_id),
        )
        await conn.execute(
            "INSERT INTO shipment_state (shipment_id, tenant_id) SELECT id, tenant_id FROM shipments"
            " WHERE tenant_id = %s",
            (tenant_id,),
        )
    async with store.connection(pool) as conn:
        await conn.set_autocommit(True)
        await conn.execute("ANALYZE shipments, shipment_keys, shipment_state")
        await conn.set_autocommit(False)
    return tenant_id


async def _generic_plan(
    pool: AsyncConnectionPool, statement: str, values: dict[str, object]
) -> list[tuple[object, object]]:
    """The (node type, relation) of every node of the statement's generic plan, as a prepared
    statement runs once PostgreSQL settles on it."""
    text, names = _prepared(statement)
    async with store.connection(pool) as conn:
        await conn.set_autocommit(True)
        try:
            await conn.execute(f"PREPARE planned AS {text}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            args = ", ".join("'" + str(values[n]).replace("'", "''") + "'" for n in names)
            rows = await (await conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE planned({args})")).fetchall()
        finally:
            await conn.execute("DEALLOCATE ALL")
            await conn.execute("RESET plan_cache_mode")
            await conn.set_autocommit(False)

    def nodes(node: dict[str, Any]) -> list[tuple[object, object]]:
        found = [(node.get("Node Type"), node.get("Relation Name"))]
        for child in node.get("Plans", []):
            found += nodes(child)
        return found

    return nodes(next(iter(rows[0].values()))[0]["Plan"])


async def test_saving_states_looks_rows_up_by_key_whatever_the_plan(pool: AsyncConnectionPool) -> None:
    """The statement that saves a batch's states finds their rows by primary key in the generic
    plan: that plan counts 100 rows for any `jsonb_to_recordset`, and a hash join over every state
    row once looked as cheap, which cost milliseconds of the database's CPU for each one-shipment
    batch."""
    tenant_id = await _many_shipments(pool)
    sid = f"shp_plan{tenant_id}_7"
    values = {"states": f'[{{"id": "{sid}"}}]', "ids": f"{{{sid}}}", "n": 0, "tenant": tenant_id, "rows": "[]"}
    plan = await _generic_plan(pool, ledger.SAVE_AND_EMIT, values)
    assert ("Seq Scan", "shipment_state") not in plan, plan
    assert ("Index Scan", "shipment_state") in plan, plan


async def test_the_events_statement_looks_rows_up_by_key_in_its_generic_plan(pool: AsyncConnectionPool) -> None:
    """In the generic plan a prepared statement may settle on, the events statement still finds
    each event's shipment, its identifier and the state rows it locks by key."""
    tenant_id = await _many_shipments(pool)
    row = {
        "event_id": "plan-1", "occurred_at": T0.isoformat(), "created_at": T0.isoformat(), "device_id": None,
        "source": "native", "kind": "position", "code": None, "raw_code": None, "classifier": None,
        "match_keys": ["t:PLAN-7"], "retracts": None, "data": {"lat": 1.0, "lon": 2.0}, "raw": {},
        "named_shipment": None,
    }  # fmt: skip
    values = {"tenant": tenant_id, "rows": orjson.dumps([row]).decode(), "received_at": T0.isoformat()}
    plan = await _generic_plan(pool, ledger.INSERT_EVENTS_LOCKING, values)
    for table in ("shipments", "shipment_keys", "shipment_state", "device_attachments"):
        assert ("Seq Scan", table) not in plan, plan
    assert ("Index Scan", "shipment_keys") in plan, plan


async def test_the_write_pool_asks_for_generic_plans_beside_the_dsns_options(testenv: RunEnv) -> None:
    """The ingest write path's pool (`serve/roles.py`) opens its connections with generic plans,
    and keeps the options the DSN names."""
    write = await db.open_pool(f"{testenv.dsn}?options=-c%20statement_timeout%3D12345", 1, generic_plans=True)
    plain = await db.open_pool(testenv.dsn, 1)
    try:
        async with store.connection(write) as conn:
            got = await (
                await conn.execute(
                    "SELECT current_setting('plan_cache_mode') AS m, current_setting('statement_timeout') AS t"
                )
            ).fetchone()
        async with store.connection(plain) as conn:
            other = await (await conn.execute("SELECT current_setting('plan_cache_mode') AS m")).fetchone()
    finally:
        await write.close()
        await plain.close()
    assert got == {"m": "force_generic_plan", "t": "12345ms"}
    assert other == {"m": "auto"}
