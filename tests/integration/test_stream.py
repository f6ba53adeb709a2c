"""The websocket stream against running servers, real PostgreSQL and real Redis."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import RunEnv, Server, _drop_database, _make_database, free_port, start_server, stop_server

T0 = datetime(2026, 11, 1, tzinfo=UTC)
EUROPE = [-10, 35, 30, 60]


def ws_url(server: Server, token: str | None = None) -> str:
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    return f"{url}?token={token}" if token else url


class Stream:
    """One websocket client that records everything it receives."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.got: list[dict[str, Any]] = []

    async def send(self, **op: Any) -> None:
        await self.conn.send(orjson.dumps(op).decode())

    async def next(self, within: float = 10) -> dict[str, Any]:
        msg: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.conn.recv(), within))
        self.got.append(msg)
        return msg

    async def until(self, pred: Any, within: float = 15) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no matching message; got {self.got[-10:]}")
            msg = await self.next(left)
            if pred(msg):
                return msg

    async def quiet(self, seconds: float = 1.0) -> list[dict[str, Any]]:
        """Everything that arrives until nothing does for `seconds`."""
        out = []
        while True:
            try:
                out.append(await self.next(seconds))
            except TimeoutError:
                return out

    async def close_code(self, seconds: float = 1.0) -> int | None:
        """Read until the server closes (its close code) or nothing arrives for `seconds` (None)."""
        try:
            await self.quiet(seconds)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else -1
        return None


@asynccontextmanager
async def stream(server: Server, api_key: str, **kw: Any) -> AsyncIterator[Stream]:
    async with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {api_key}"}, **kw) as conn:
        yield Stream(conn)


def seqs(msgs: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in msgs if "seq" in m]


def assert_increasing(msgs: list[dict[str, Any]]) -> None:
    last = -1
    for m in msgs:
        if "seq" in m:
            assert m["seq"] >= last if m["type"] == "snapshot" else m["seq"] > last, msgs
            last = m["seq"]


class Api:
    def __init__(self, server: Server, api_key: str) -> None:
        self.http = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        self.clock = 0

    async def shipment(self, tracking: str) -> str:
        r = await self.http.post("/v1/shipments", json={"tracking_number": tracking})
        assert r.status_code == 201, r.text
        sid: str = r.json()["id"]
        return sid

    async def events(self, *events: dict[str, Any]) -> None:
        r = await self.http.post("/v1/events", json=list(events))
        assert r.status_code == 202, r.text

    def at(self) -> str:
        self.clock += 1
        return (T0 + timedelta(minutes=self.clock)).isoformat()

    async def move(self, tracking: str, lat: float, lon: float) -> None:
        pos = {"lat": lat, "lon": lon, "speed_kmh": 40}
        await self.events({"occurred_at": self.at(), "shipment": tracking, "position": pos})

    async def milestone(self, tracking: str, code: str) -> None:
        await self.events({"occurred_at": self.at(), "shipment": tracking, "milestone": {"code": code}})


@pytest.fixture
async def api(server: Server, tenant: Any) -> AsyncIterator[Api]:
    client = Api(server, tenant.api_key)
    yield client
    await client.http.aclose()


def outbox(testenv: RunEnv, tenant: Any, after: int, shipment_id: str | None = None) -> list[dict[str, Any]]:
    """The tenant's messages after `after` as the database keeps them."""
    rows = testenv.sql(
        "SELECT o.payload FROM outbox o JOIN tenants t ON t.id = o.tenant_id WHERE t.name = %s AND o.seq > %s"
        " ORDER BY o.seq",
        tenant.name,
        after,
    )
    msgs = [r[0] for r in rows]
    return [m for m in msgs if shipment_id is None or m.get("shipment_id") == shipment_id]


async def test_handshake_without_a_valid_key_is_http_401(server: Server, tenant: Any) -> None:
    for url, headers in [
        (ws_url(server), {}),
        (ws_url(server, "wrong-key"), {}),
        (ws_url(server), {"Authorization": "Bearer wrong-key"}),
    ]:
        with pytest.raises(InvalidStatus) as err:
            async with connect(url, additional_headers=headers):
                pass
        assert err.value.response.status_code == 401
        assert orjson.loads(err.value.response.body or b"{}")["error"] == "Unauthorized"
    async with connect(ws_url(server, tenant.api_key)) as conn:
        await conn.send('{"op": "ping"}')
        assert orjson.loads(await asyncio.wait_for(conn.recv(), 10)) == {"type": "pong"}


async def test_bad_frames_answered_then_1008(server: Server, tenant: Any) -> None:
    async with stream(server, tenant.api_key) as s:
        await s.conn.send("{nope")
        err = await s.next()
        assert err["type"] == "error"
        assert err["error"] == "MalformedMessage"
        await s.send(op="subscribe", all=True)
        assert (await s.next())["type"] == "snapshot"  # still open, and the bad count starts over
        for _ in range(11):
            await s.send(op="dance")
        assert await s.close_code(5) == 1008
        assert [m["error"] for m in s.got if m["type"] == "error"][-1] == "UnknownOp"


async def test_snapshot_then_live(server: Server, tenant: Any, api: Api) -> None:
    a = await api.shipment("LIVE-A")
    await api.shipment("LIVE-B")
    await api.move("LIVE-A", 48.85, 2.35)
    async with stream(server, tenant.api_key) as s:
        await s.send(op="subscribe", shipments=[a])
        snap = await s.next()
        assert snap["type"] == "snapshot"
        assert [x["id"] for x in snap["shipments"]] == [a]
        assert snap["shipments"][0]["last_position"]["lat"] == pytest.approx(48.85)
        await api.move("LIVE-B", 1, 1)
        await api.move("LIVE-A", 48.9, 2.4)
        await api.milestone("LIVE-A", "picked_up")
        status = await s.until(lambda m: m["type"] == "status.changed")
        assert status["shipment_id"] == a
        assert status["status"] == "in_transit"
        live = [m for m in s.got[1:] if "seq" in m]
        assert {m["shipment_id"] for m in live} == {a}
        position = next(m for m in live if m["type"] == "position")
        assert position["lat"] == pytest.approx(48.9)
        assert {"seq", "shipment_id", "occurred_at", "lat", "lon", "speed_kmh", "heading"} <= set(position)
        assert all(m["seq"] > snap["seq"] for m in live)
        assert_increasing(s.got)


async def test_resume_after_disconnect_delivers_exactly_the_missed(
    server: Server, tenant: Any, api: Api, testenv: RunEnv
) -> None:
    a = await api.shipment("RESUME-A")
    async with stream(server, tenant.api_key) as s:
        await s.send(op="subscribe", shipments=[a])
        await s.next()
        await api.milestone("RESUME-A", "picked_up")
        last = (await s.until(lambda m: m["type"] == "status.changed"))["seq"]
    await api.move("RESUME-A", 50, 8)
    await api.move("RESUME-A", 50.5, 8.5)
    await api.milestone("RESUME-A", "customs_hold")
    await asyncio.sleep(0.5)
    missed = outbox(testenv, tenant, last, a)
    moves = [m["type"] for m in missed if m["type"] in {"position", "status.changed"}]
    assert moves == ["position", "position", "status.changed"]
    async with stream(server, tenant.api_key) as s:
        await s.send(op="subscribe", shipments=[a], resume_from=last)
        got = await s.quiet(1.5)
    assert not [m for m in got if m["type"] == "snapshot"]
    assert [(m["seq"], m["type"]) for m in got] == [(m["seq"], m["type"]) for m in missed]


async def test_resume_from_a_seq_no_longer_kept_gives_reset_snapshot(
    server: Server, tenant: Any, api: Api, testenv: RunEnv
) -> None:
    await api.shipment("RESET-A")
    await api.milestone("RESET-A", "picked_up")
    await api.milestone("RESET-A", "departed")
    testenv.sql(
        "DELETE FROM outbox o USING tenants t WHERE t.id = o.tenant_id AND t.name = %s RETURNING 1", tenant.name
    )
    async with stream(server, tenant.api_key) as s:
        await s.send(op="subscribe", all=True, resume_from=0)
        snap = await s.next()
    assert snap["type"] == "snapshot"
    assert snap["reset"] is True
    assert [x["tracking_number"] for x in snap["shipments"]] == ["RESET-A"]


async def test_bbox_only_inside(server: Server, tenant: Any, api: Api) -> None:
    inside = await api.shipment("BOX-IN")
    outside = await api.shipment("BOX-OUT")
    await api.move("BOX-IN", 48.85, 2.35)
    await api.move("BOX-OUT", 40.7, -74.0)
    async with stream(server, tenant.api_key) as s:
        await s.send(op="subscribe", bbox=EUROPE)
        snap = await s.next()
        assert [x["id"] for x in snap["shipments"]] == [inside]
        await api.move("BOX-OUT", 41.0, -70.0)
        await api.move("BOX-IN", 50.1, 8.7)
        await api.milestone("BOX-OUT", "picked_up")
        await api.milestone("BOX-IN", "picked_up")
        await s.until(lambda m: m["type"] == "status.changed")
        await api.move("BOX-OUT", 51.5, -0.1)  # into the box
        batch = await s.until(lambda m: m["type"] == "positions" and outside in {i["shipment_id"] for i in m["items"]})
        assert batch["items"][-1]["lat"] == pytest.approx(51.5)
        await s.quiet(0.7)  # what it receives lands in s.got too
        got = s.got
    live = [m for m in got[1:] if "seq" in m]
    moved = [(i["shipment_id"], i["lat"]) for m in live if m["type"] == "positions" for i in m["items"]]
    assert moved == [(inside, pytest.approx(50.1)), (outside, pytest.approx(51.5))]
    statuses = [m["shipment_id"] for m in live if m["type"] == "status.changed"]
    assert statuses == [inside]
    assert_increasing(got)


async def test_two_api_processes_share_messages(
    server: Server, tenant: Any, api: Api, testenv: RunEnv, tmp_path: Path
) -> None:
    other = await asyncio.to_thread(start_server, testenv, tmp_path, "api")
    try:
        a = await api.shipment("TWO-A")
        async with stream(server, tenant.api_key) as one, stream(other, tenant.api_key) as two:
            await one.send(op="subscribe", shipments=[a])
            await two.send(op="subscribe", all=True)
            await one.next()
            await two.next()
            posted = Api(other, tenant.api_key)
            try:
                await posted.milestone("TWO-A", "picked_up")  # posted to the second process
            finally:
                await posted.http.aclose()
            await api.milestone("TWO-A", "customs_hold")  # and to the first
            for s in (one, two):
                while len([m for m in s.got if m["type"] == "status.changed"]) < 2:
                    await s.until(lambda m: m["type"] == "status.changed")
                got = [m for m in s.got if m["type"] == "status.changed"]
                assert len(got) == 2
                assert_increasing(s.got)
    finally:
        await asyncio.to_thread(stop_server, other)


async def test_slow_client_does_not_hold_up_others(server: Server, tenant: Any, api: Api, testenv: RunEnv) -> None:
    a = await api.shipment("SLOW-A")
    # The slow client reads nothing, through a tiny receive window: what the server sends it
    # (bulky shipment.updated messages and positions) backs up in the server.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server.url.removeprefix("http://").split(":")
    raw.connect((host, int(port)))
    raw.setblocking(False)
    async with (
        connect(ws_url(server, tenant.api_key), sock=raw, max_queue=1) as slow_conn,
        stream(server, tenant.api_key) as fast,
    ):
        slow = Stream(slow_conn)
        await slow.send(op="subscribe", shipments=[a])
        await fast.send(op="subscribe", shipments=[a])
        await slow.next()
        snap = await fast.next()
        for i in range(120):
            refs = [f"{i:04d}-{j:02d}-" + "r" * 90 for j in range(50)]
            r = await api.http.patch(f"/v1/shipments/{a}", json={"references": refs})
            assert r.status_code == 200, r.text
            await api.move("SLOW-A", 10 + i / 100, 20)
        for code in ("picked_up", "customs_hold", "out_for_delivery"):
            await api.milestone("SLOW-A", code)
        started = asyncio.get_running_loop().time()
        await fast.until(lambda m: m["type"] == "status.changed" and m["status"] == "out_for_delivery", within=60)
        assert asyncio.get_running_loop().time() - started < 5  # not held up by the slow one
        await fast.quiet(0.5)  # what the same transactions emitted after the status (ETA, exceptions)
        want = outbox(testenv, tenant, snap["seq"], a)
        assert seqs(fast.got[1:]) == [m["seq"] for m in want]  # kept up: every message, in order
        code = await slow.close_code(1.0)
        assert code in (None, 1013)  # 1013: too far behind, it may resume
        if code is None:
            slow_live = [m for m in slow.got[1:] if "seq" in m]
            kept = [m["seq"] for m in want if m["type"] != "position"]
            assert [m["seq"] for m in slow_live if m["type"] != "position"] == kept  # never dropped
            assert slow_live[-1]["seq"] == want[-1]["seq"]
        assert_increasing(slow.got)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """A Redis of this test's own, that it may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()

    class Private:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            assert binary is not None
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("private redis did not start")

        def stop(self) -> None:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
                self.proc = None

    private = Private()
    private.start()
    yield private
    private.stop()


@pytest.fixture
def own_env(testenv: RunEnv, private_redis: Any) -> Iterator[RunEnv]:
    """A database of this test's own, on the private Redis: no other server relays its outbox."""
    run_id, dsn = _make_database()
    env = RunEnv(run_id, dsn, {**testenv.env, "TRACKD_DATABASE_URL": dsn, "TRACKD_REDIS_URL": private_redis.url})
    res = env.trackd("migrate")
    assert res.returncode == 0, res.stderr
    yield env
    _drop_database(dsn)


async def test_redis_restart_mid_stream(own_env: RunEnv, tmp_path: Path, private_redis: Any) -> None:
    res = await asyncio.to_thread(own_env.trackd, "tenant", "create", "redisrestart")
    assert res.returncode == 0, res.stderr
    tenant = SimpleNamespace(name="redisrestart", api_key=orjson.loads(res.stdout)["api_key"])
    srv = await asyncio.to_thread(start_server, own_env, tmp_path, "api,worker")
    api = Api(srv, tenant.api_key)
    try:
        a = await api.shipment("REDIS-A")
        async with stream(srv, tenant.api_key) as s:
            await s.send(op="subscribe", shipments=[a])
            snap = await s.next()
            await api.milestone("REDIS-A", "picked_up")
            await s.until(lambda m: m["type"] == "status.changed")
            await asyncio.to_thread(private_redis.stop)
            err = await s.until(lambda m: m["type"] == "error")
            assert err["error"] == "StreamDegraded"
            await api.move("REDIS-A", 10, 10)  # durable in the outbox while Redis is down
            await api.milestone("REDIS-A", "customs_hold")
            await asyncio.to_thread(private_redis.start)
            await s.until(lambda m: m["type"] == "status.changed" and m["status"] == "customs")
            await s.quiet(1.0)
        want = [m["seq"] for m in outbox(own_env, tenant, snap["seq"], a)]
        assert seqs(s.got[1:]) == want
    finally:
        await api.http.aclose()
        await asyncio.to_thread(stop_server, srv)
