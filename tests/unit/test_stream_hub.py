"""The stream hub with the in-memory bus and an in-memory stand-in for the database."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from stream import protocol
from stream.hub import Hub
from stream.protocol import BBox, Message, ProtocolError, Selector, Subscribe
from stream.session import Session, SessionClosed
from trackd.bus import BusUnavailable, MemoryBus

EUROPE = BBox(-10, 35, 30, 60)


class Ledger:
    """The durable side: per-tenant seq, shipment state and the outbox."""

    def __init__(self) -> None:
        self.seq: dict[int, int] = {}
        self.outbox: dict[int, list[Message]] = {}
        self.ships: dict[int, dict[str, dict[str, Any]]] = {}
        self.kept_after: dict[int, int] = {}  # outbox rows up to this seq were deleted
        self.before_snapshot_returns: asyncio.Event | None = None

    def commit(self, tenant: int, *msgs: Message) -> list[Message]:
        out = []
        for m in msgs:
            self.seq[tenant] = self.seq.get(tenant, 0) + 1
            msg = {"seq": self.seq[tenant], "occurred_at": f"2024-05-01T00:00:{self.seq[tenant] % 60:02d}Z", **m}
            out.append(msg)
            self.outbox.setdefault(tenant, []).append(msg)
            ship = self.ships.setdefault(tenant, {}).setdefault(
                m["shipment_id"], {"id": m["shipment_id"], "status": "pending", "last_position": None}
            )
            if m["type"] == "position":
                ship["last_position"] = {"lat": m["lat"], "lon": m["lon"]}
            elif m["type"] == "status.changed":
                ship["status"] = m["status"]
        return out

    async def snapshot(self, tenant_id: int, selector: Selector) -> tuple[int, list[Message]]:
        seq = self.seq.get(tenant_id, 0)
        ships = [dict(s) for s in self.ships.get(tenant_id, {}).values() if _selected(s, selector)]
        if self.before_snapshot_returns is not None:
            await self.before_snapshot_returns.wait()  # the state was read; the hub moves on meanwhile
        return seq, ships

    async def outbox_after(self, tenant_id: int, after: int, limit: int) -> list[Message] | None:
        if after < self.kept_after.get(tenant_id, 0):
            return None
        return [m for m in self.outbox.get(tenant_id, []) if m["seq"] > after][:limit]


def _selected(ship: dict[str, Any], selector: Selector) -> bool:
    if selector.all:
        return True
    if selector.shipments is not None:
        return ship["id"] in selector.shipments
    last = ship["last_position"]
    assert selector.bbox is not None
    return last is not None and selector.bbox.contains(last["lat"], last["lon"])


class FlakyBus(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def read(self, cursors: dict[int, int], block_ms: int) -> list[tuple[int, Message]]:
        if self.down:
            await asyncio.sleep(0.01)
            raise BusUnavailable("connection refused")
        return await super().read(cursors, block_ms)


def pos(sid: str, lat: float = 48.0, lon: float = 2.0) -> Message:
    return {"type": "position", "shipment_id": sid, "lat": lat, "lon": lon, "speed_kmh": 50.0, "heading": 90.0}


def status(sid: str, value: str = "in_transit") -> Message:
    return {"type": "status.changed", "shipment_id": sid, "status": value, "substatus": None, "previous_status": None}


class World:
    def __init__(self, bus: MemoryBus, ledger: Ledger, hub: Hub) -> None:
        self.bus, self.ledger, self.hub = bus, ledger, hub

    async def emit(self, tenant: int, *msgs: Message, publish: bool = True) -> list[Message]:
        out = self.ledger.commit(tenant, *msgs)
        if publish:
            await self.bus.publish(tenant, out)
        return out

    async def publish_pending(self, tenant: int) -> None:
        await self.bus.publish(tenant, self.ledger.outbox.get(tenant, []))

    async def subscribe(self, client: Session, resume_from: int | None = None, **selector: Any) -> None:
        await self.hub.subscribe(client, Subscribe(Selector(**selector), resume_from), self.ledger)


async def recv(client: Session, quiet: float = 0.15, limit: float = 3.0) -> list[dict[str, Any]]:
    """Everything the client gets until nothing arrives for `quiet` seconds."""
    out: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        try:
            frames = await asyncio.wait_for(client.next_batch(), quiet)
        except TimeoutError:
            break
        out.extend(orjson.loads(f) for f in frames)
    return out


def assert_ordered(msgs: list[dict[str, Any]]) -> None:
    """Every message has a larger seq than the one before; a snapshot's is at least as large."""
    last = -1
    for m in msgs:
        if "seq" not in m:
            continue
        if m["type"] == "snapshot":
            assert m["seq"] >= last, msgs
        else:
            assert m["seq"] > last, msgs
        last = m["seq"]


def by_type(msgs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == kind]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    bus = FlakyBus()
    hub = Hub(bus, tick_s=0.05, queue_limit=2000, slow_close_s=5.0)
    await hub.start()
    try:
        yield World(bus, Ledger(), hub)
    finally:
        await hub.stop()


async def test_snapshot_then_live_only_subscribed_shipments(world: World) -> None:
    await world.emit(1, pos("a"), status("a"), pos("b"))
    client = world.hub.connect(1)
    await world.subscribe(client, shipments=frozenset({"a"}))
    await world.emit(1, pos("a", 49), pos("b", 50), status("a", "customs"), status("b"))
    got = await recv(client)
    assert got[0]["type"] == "snapshot"
    assert got[0]["seq"] == 3
    assert [s["id"] for s in got[0]["shipments"]] == ["a"]
    assert [(m["type"], m["seq"]) for m in got[1:]] == [("position", 4), ("status.changed", 6)]
    assert got[1]["lat"] == 49
    assert_ordered(got)


async def test_reader_past_the_snapshot_backfills_without_gap_or_duplicate(world: World) -> None:
    await world.emit(1, pos("a"), pos("b"))
    early = world.hub.connect(1)
    await world.subscribe(early, all=True)  # the hub now reads tenant 1
    late = world.hub.connect(1)
    gate = asyncio.Event()
    world.ledger.before_snapshot_returns = gate
    task = asyncio.create_task(world.subscribe(late, shipments=frozenset({"a"})))
    await asyncio.sleep(0.05)
    # Snapshot read at seq 2; the hub dispatches 3..5 before the subscribe completes.
    await world.emit(1, status("a"), pos("a", 47), status("b"))
    await asyncio.sleep(0.15)
    world.ledger.before_snapshot_returns = None
    gate.set()
    await task
    await world.emit(1, status("a", "customs"))
    got = await recv(late)
    assert got[0]["type"] == "snapshot"
    assert got[0]["seq"] == 2
    assert [(m["type"], m["seq"]) for m in got[1:]] == [("status.changed", 3), ("position", 4), ("status.changed", 6)]
    assert_ordered(got)
    seen_early = await recv(early)
    assert_ordered(seen_early)


async def test_database_ahead_of_bus_keeps_existing_subscription_whole(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, shipments=frozenset({"a"}))
    # Committed but not yet on the bus: the new snapshot is newer than what the hub read.
    await world.emit(1, status("a"), pos("b"), status("b"), publish=False)
    await world.subscribe(client, shipments=frozenset({"b"}))
    await world.publish_pending(1)
    await world.emit(1, status("a", "customs"), status("b", "customs"))
    got = await recv(client)
    kinds = [(m["type"], m.get("shipment_id"), m["seq"]) for m in got]
    assert kinds == [
        ("snapshot", None, 0),
        ("status.changed", "a", 1),  # the old subscription's message comes before the new snapshot
        ("snapshot", None, 3),
        ("status.changed", "a", 4),
        ("status.changed", "b", 5),
    ]
    assert_ordered(got)


async def test_resume_sends_missed_messages_then_live(world: World) -> None:
    sent = await world.emit(1, status("a"), pos("a"), status("a", "customs"), pos("a", 50))
    client = world.hub.connect(1)
    await world.subscribe(client, resume_from=sent[0]["seq"], shipments=frozenset({"a"}))
    await world.emit(1, status("a", "delivered"))
    got = await recv(client)
    assert [m["seq"] for m in got] == [2, 3, 4, 5]
    assert not by_type(got, "snapshot")


async def test_resume_too_old_gives_reset_snapshot(world: World) -> None:
    await world.emit(1, status("a"), status("a"), status("a"))
    world.ledger.kept_after[1] = 2
    client = world.hub.connect(1)
    await world.subscribe(client, resume_from=1, all=True)
    got = await recv(client)
    assert got[0] == {"type": "snapshot", "seq": 3, "shipments": got[0]["shipments"], "reset": True}


async def test_resume_from_the_future_is_refused(world: World) -> None:
    await world.emit(1, status("a"))
    client = world.hub.connect(1)
    with pytest.raises(ProtocolError, match="ahead"):
        await world.subscribe(client, resume_from=99, all=True)
    await world.subscribe(client, resume_from=1, all=True)
    await world.emit(1, status("a", "customs"))
    assert [m["seq"] for m in await recv(client)] == [2]


async def test_tick_gathers_positions_into_one_message(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, all=True)
    await recv(client)
    await world.emit(1, *(pos(f"s{i}", 40 + i) for i in range(5)), pos("s0", 45))
    got = await recv(client)
    assert len(got) == 1
    batch = got[0]
    assert batch["type"] == "positions"
    assert batch["seq"] == 6
    items = {i["shipment_id"]: i for i in batch["items"]}
    assert sorted(items) == ["s0", "s1", "s2", "s3", "s4"]
    assert items["s0"]["lat"] == 45  # the latest position of each shipment that moved
    assert set(items["s1"]) == {"shipment_id", "lat", "lon", "speed_kmh", "heading", "occurred_at"}


async def test_status_between_positions_keeps_order(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, all=True)
    await world.emit(1, pos("a"), pos("b"), status("a"), pos("c"))
    got = await recv(client)
    assert [m["type"] for m in got] == ["snapshot", "positions", "status.changed", "positions"]
    assert_ordered(got)


async def test_slow_client_positions_coalesced_status_all_kept() -> None:
    bus = MemoryBus()
    hub = Hub(bus, tick_s=0.02, queue_limit=50, slow_close_s=30.0)
    await hub.start()
    try:
        w = World(bus, Ledger(), hub)
        slow = hub.connect(1)
        fast = hub.connect(1)
        mapper = hub.connect(1)
        await w.subscribe(slow, shipments=frozenset({"a", "b", "c"}))
        await w.subscribe(fast, shipments=frozenset({"a", "b", "c"}))
        await w.subscribe(mapper, all=True)
        fast_got: list[dict[str, Any]] = []

        async def keep_up() -> None:
            while True:
                fast_got.extend(orjson.loads(f) for f in await fast.next_batch())

        reader = asyncio.create_task(keep_up())
        rng = random.Random(7)
        statuses = 0
        for i in range(600):
            if i % 40 == 0:
                await w.emit(1, status(rng.choice("abc"), f"s{i}"))
                statuses += 1
            else:
                await w.emit(1, pos(rng.choice("abc"), rng.uniform(-80, 80), rng.uniform(-170, 170)))
            await asyncio.sleep(0.001)  # paced: a client that reads keeps up
        await asyncio.sleep(0.3)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        got = await recv(slow)
        mapped = await recv(mapper)
    finally:
        await hub.stop()
    for msgs in (got, mapped, fast_got):
        assert_ordered(msgs)
        assert len(by_type(msgs, "status.changed")) == statuses
    last = {sid: max(m["seq"] for m in w.ledger.outbox[1] if m["shipment_id"] == sid) for sid in "abc"}
    assert {m["shipment_id"]: m["seq"] for m in got if m["type"] in ("position", "status.changed")} == last
    assert len(by_type(got, "position")) < 600 - statuses
    assert slow.coalesced > 0
    assert len(by_type(fast_got, "position")) == 600 - statuses  # a client that keeps up gets them all
    items = [i for m in by_type(mapped, "positions") for i in m["items"]]
    assert len(items) < 600 - statuses
    assert_ordered(mapped)


async def test_client_stuck_over_the_limit_is_closed_1013() -> None:
    bus = MemoryBus()
    hub = Hub(bus, tick_s=0.02, queue_limit=5, slow_close_s=0.2)
    await hub.start()
    try:
        w = World(bus, Ledger(), hub)
        stuck = hub.connect(1)
        ok = hub.connect(1)
        await w.subscribe(stuck, all=True)
        await w.subscribe(ok, all=True)
        await w.emit(1, *(status("a", f"s{i}") for i in range(10)))
        got = await recv(ok)  # drains quickly: over the limit only briefly
        assert len(by_type(got, "status.changed")) == 10
        await asyncio.sleep(0.35)
        with pytest.raises(SessionClosed) as closed:
            await asyncio.wait_for(stuck.next_batch(), 1)
        assert closed.value.code == 1013
        await w.emit(1, status("a", "later"))
        assert [m["status"] for m in by_type(await recv(ok), "status.changed")] == ["later"]
        assert ok.closed is None
    finally:
        await hub.stop()


async def test_bbox_only_inside_and_moving_in(world: World) -> None:
    await world.emit(1, pos("in", 48, 2), pos("out", 40.7, -74))
    client = world.hub.connect(1)
    await world.subscribe(client, bbox=EUROPE)
    await world.emit(1, status("in"), status("out"), pos("out", 41, -70))
    await world.emit(1, pos("out", 50, 10))  # moves into the box
    await world.emit(1, status("out", "customs"), pos("in", 10, 100))
    got = await recv(client)
    assert [s["id"] for s in got[0]["shipments"]] == ["in"]
    assert_ordered(got)
    seen = [
        (m["type"], m.get("shipment_id") or sorted(i["shipment_id"] for i in m["items"]), m["seq"]) for m in got[1:]
    ]
    assert seen == [("status.changed", "in", 3), ("positions", ["out"], 6), ("status.changed", "out", 7)]


async def test_bbox_across_the_antimeridian(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, bbox=BBox(170, -30, -170, 10))
    await world.emit(1, pos("fiji", -17, 178), pos("samoa", -13.8, -172), pos("sydney", -33.9, 151))
    got = await recv(client)
    items = [i["shipment_id"] for m in by_type(got, "positions") for i in m["items"]]
    assert sorted(items) == ["fiji", "samoa"]


async def test_tenants_never_see_each_other(world: World) -> None:
    one, two = world.hub.connect(1), world.hub.connect(2)
    await world.subscribe(one, all=True)
    await world.subscribe(two, all=True)
    await world.emit(1, status("a"), pos("a"))
    await world.emit(2, status("z"), pos("z"))
    got_one, got_two = await recv(one), await recv(two)
    assert {m.get("shipment_id") for m in got_one[1:]} == {"a", None}
    assert {i["shipment_id"] for m in by_type(got_one, "positions") for i in m["items"]} == {"a"}
    assert {m.get("shipment_id") for m in got_two[1:]} == {"z", None}
    assert {i["shipment_id"] for m in by_type(got_two, "positions") for i in m["items"]} == {"z"}


async def test_unsubscribe_stops_messages(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, shipments=frozenset({"a", "b"}))
    world.hub.unsubscribe(client, Selector(shipments=frozenset({"a"})))
    await world.emit(1, status("a"), status("b"))
    got = await recv(client)
    assert [m.get("shipment_id") for m in got] == [None, "b"]


async def test_degraded_bus_tells_clients_then_continues(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, shipments=frozenset({"a"}))
    assert isinstance(world.bus, FlakyBus)
    world.bus.down = True
    await asyncio.sleep(0.2)
    await world.emit(1, status("a"), pos("a"))  # reaches the bus while the hub cannot read
    world.bus.down = False
    got = await recv(client, quiet=0.5, limit=8)
    errors = by_type(got, "error")
    assert errors
    assert errors[0]["error"] == "StreamDegraded"
    assert [m["seq"] for m in got if m["type"] in ("status.changed", "position")] == [1, 2]
    assert world.hub.degraded is None


async def test_messages_the_bus_lost_come_from_the_outbox(world: World) -> None:
    client = world.hub.connect(1)
    await world.subscribe(client, shipments=frozenset({"a"}))
    first, lost, last = world.ledger.commit(1, status("a"), pos("a"), status("a", "customs"))
    await world.bus.publish(1, [first])
    await world.bus.publish(1, [last])  # `lost` never reached the bus
    got = await recv(client)
    assert [(m["type"], m["seq"]) for m in got] == [
        ("snapshot", 0),
        ("status.changed", 1),
        ("position", 2),
        ("status.changed", 3),
    ]
    assert got[2]["lat"] == lost["lat"]


async def test_random_interleavings_keep_seq_increasing_and_complete(world: World) -> None:
    rng = random.Random(11)
    ships = [f"s{i}" for i in range(6)]
    watchers = [world.hub.connect(1) for _ in range(4)]
    follows = [frozenset(rng.sample(ships, 2)) for _ in watchers]
    tasks = []
    for i in range(40):
        await world.emit(1, rng.choice([pos, status])(rng.choice(ships)))
        if i % 10 == 0:
            c = i // 10
            tasks.append(asyncio.create_task(world.subscribe(watchers[c], shipments=follows[c])))
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01]))
    await asyncio.gather(*tasks)
    got = [await recv(c) for c in watchers]
    for c_msgs, follow in zip(got, follows, strict=True):
        assert_ordered(c_msgs)
        snap = c_msgs[0]
        assert snap["type"] == "snapshot"
        expected = [m["seq"] for m in world.ledger.outbox[1] if m["seq"] > snap["seq"] and m["shipment_id"] in follow]
        assert [m["seq"] for m in c_msgs[1:]] == expected


async def test_stop_closes_clients_going_away() -> None:
    hub = Hub(MemoryBus())
    await hub.start()
    client = hub.connect(1)
    await hub.stop()
    with pytest.raises(SessionClosed) as closed:
        await client.next_batch()
    assert closed.value.code == 1001


async def test_control_frames_and_encoding_shared() -> None:
    hub = Hub(MemoryBus())
    client = hub.connect(1)
    client.push(protocol.pong())
    assert await client.next_batch() == ['{"type":"pong"}']
    hub.disconnect(client)
    assert hub.stats()["clients"] == 0
