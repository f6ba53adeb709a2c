"""Installations sharing one Redis and one key prefix, and a database restored under a Redis that
kept its streams: every Redis key carries the deployment's identity (made at `trackd migrate`),
and a stream ahead of the database is reset by the relay."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL, RunEnv, Server, _drop_database, _make_database, start_server, stop_server
from tests.integration.test_stream import Api, outbox, seqs, stream
from trackd.bus import RedisBus

PG_BIN = Path(os.environ.get("TRACKD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class Deployment:
    """One installation: its own database, migrated on its own, and one tenant."""

    env: RunEnv
    identity: str
    tenant: SimpleNamespace  # name, api_key
    tenant_id: int


@pytest.fixture
def prefix() -> Iterator[str]:
    """One Redis key prefix for every installation of the test, as two operators could both keep
    the default; its keys are deleted after."""
    value = f"trackd_test_iso_{secrets.token_hex(4)}"
    yield value
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{value}:*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def databases() -> Iterator[list[str]]:
    """The databases a test makes (`_new_env`), dropped after."""
    made: list[str] = []
    yield made
    for dsn in made:
        _drop_database(dsn)


def _new_env(testenv: RunEnv, prefix: str, made: list[str], *, migrate: bool = True) -> RunEnv:
    run_id, dsn = _make_database()
    made.append(dsn)
    env = RunEnv(run_id, dsn, {**testenv.env, "TRACKD_DATABASE_URL": dsn, "TRACKD_REDIS_PREFIX": prefix})
    if migrate:
        res = env.trackd("migrate")
        assert res.returncode == 0, res.stderr
    return env


def _deployment(env: RunEnv, tenant_name: str) -> Deployment:
    res = env.trackd("tenant", "create", tenant_name)
    assert res.returncode == 0, res.stderr
    key = orjson.loads(res.stdout)["api_key"]
    tenant_id = env.sql("SELECT id FROM tenants WHERE name = %s", tenant_name)[0][0]
    identity = env.sql("SELECT id FROM deployment")[0][0]
    assert re.fullmatch(r"[0-9a-f]{16}", identity)
    return Deployment(env, identity, SimpleNamespace(name=tenant_name, api_key=key), int(tenant_id))


async def _head(prefix: str, d: Deployment) -> int:
    bus = RedisBus.from_url(REDIS_URL, prefix, deployment=d.identity)
    try:
        return (await bus.heads([d.tenant_id]))[d.tenant_id]
    finally:
        await bus.close()


async def _relayed(prefix: str, d: Deployment, within: float = 10.0) -> int:
    """Wait until the tenant's stream on Redis holds all its database has; that seq."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        seq = int(d.env.sql("SELECT seq FROM tenants WHERE id = %s", d.tenant_id)[0][0])
        if await _head(prefix, d) == seq:
            return seq
        assert asyncio.get_running_loop().time() < deadline, "the relay did not publish"
        await asyncio.sleep(0.05)


def _resets(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(r"^trackd_stream_resets_total (\S+)$", text, re.M)
    assert found is not None, "trackd_stream_resets_total is not exported"
    return float(found.group(1))


def _moved(got: list[dict[str, Any]]) -> int:
    """How many shipment positions the `positions` batches received so far held."""
    return sum(len(m["items"]) for m in got if m["type"] == "positions")


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        await asyncio.to_thread(stop_server, s)


async def _start(env: RunEnv, tmp: Path, started: list[Server]) -> Server:
    srv = await asyncio.to_thread(start_server, env, tmp, "api")
    started.append(srv)
    return srv


async def test_two_deployments_on_one_redis_and_prefix_see_only_their_own(
    testenv: RunEnv, prefix: str, databases: list[str], servers: list[Server], tmp_path: Path
) -> None:
    one = _deployment(_new_env(testenv, prefix, databases), "one")
    two = _deployment(_new_env(testenv, prefix, databases), "two")
    assert one.tenant_id == two.tenant_id == 1  # the same tenant id, the same seqs from 1
    assert one.identity != two.identity
    srv_one, srv_two = await _start(one.env, tmp_path, servers), await _start(two.env, tmp_path, servers)
    api_one, api_two = Api(srv_one, one.tenant.api_key), Api(srv_two, two.tenant.api_key)
    counts = {"one": 3, "two": 4}
    try:
        async with stream(srv_one, one.tenant.api_key) as s1, stream(srv_two, two.tenant.api_key) as s2:
            for s in (s1, s2):
                await s.send(op="subscribe", all=True)
                assert (await s.next())["type"] == "snapshot"
            own: dict[str, set[str]] = {"one": set(), "two": set()}
            for i in range(max(counts.values())):  # interleaved: both streams grow at once
                for name, api in (("one", api_one), ("two", api_two)):
                    if i < counts[name]:
                        own[name].add(await api.shipment(f"{name.upper()}-{i}"))
                        await api.move(f"{name.upper()}-{i}", 48 + i, 2 + i)
            for name, s in (("one", s1), ("two", s2)):
                while _moved(s.got) < counts[name]:
                    await s.until(lambda m: m["type"] == "positions", within=10)
                await s.quiet(1.0)
        for name, d, s in (("one", one, s1), ("two", two, s2)):
            live = s.got[1:]
            created = [m["shipment_id"] for m in live if m["type"] == "shipment.created"]
            items = [i["shipment_id"] for m in live if m["type"] == "positions" for i in m["items"]]
            assert sorted(created) == sorted(own[name]), name
            assert sorted(items) == sorted(own[name]), name  # one move each, nothing of the other's
            assert {m["shipment_id"] for m in live if "shipment_id" in m} <= own[name]
            # every other message of its own database, in order, once
            kept = [m["seq"] for m in outbox(d.env, d.tenant, 0) if m["type"] != "position"]
            assert [m["seq"] for m in live if m["type"] != "positions"] == kept, name
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = sorted([k.decode() async for k in r.scan_iter(f"{prefix}:*")])
        finally:
            await r.aclose()
        assert keys == sorted(f"{prefix}:{d.identity}:stream:1" for d in (one, two))
    finally:
        await api_one.http.aclose()
        await api_two.http.aclose()


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (TRACKD_TEST_PG_BIN)")
    return found


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


async def test_a_database_restored_from_an_older_backup_keeps_its_live_stream(
    testenv: RunEnv, prefix: str, databases: list[str], servers: list[Server], tmp_path: Path
) -> None:
    pg_dump, pg_restore = _pg_tool("pg_dump"), _pg_tool("pg_restore")
    d = _deployment(_new_env(testenv, prefix, databases), "restored")
    srv = await _start(d.env, tmp_path, servers)
    api = Api(srv, d.tenant.api_key)
    try:
        sid = await api.shipment("BACKUP-1")
        await api.move("BACKUP-1", 40, 1)
        backed_up = await _relayed(prefix, d)
        dump = tmp_path / "backup.dump"
        await asyncio.to_thread(_run, pg_dump, "-Fc", "-f", str(dump), d.env.dsn)
        for i in range(12):  # the history the restore loses; Redis keeps it
            await api.move("BACKUP-1", 60 + i, 1)
        lost = await _relayed(prefix, d)
        assert lost >= backed_up + 12
    finally:
        await api.http.aclose()
    servers.remove(srv)
    await asyncio.to_thread(stop_server, srv)
    _drop_database(d.env.dsn)

    restored = _new_env(testenv, prefix, databases, migrate=False)
    await asyncio.to_thread(_run, pg_restore, "--no-owner", "-d", restored.dsn, str(dump))
    res = restored.trackd("migrate")  # what an operator runs after a restore: the schema may be behind
    assert res.returncode == 0, res.stderr
    d = Deployment(restored, d.identity, d.tenant, d.tenant_id)
    assert restored.sql("SELECT id FROM deployment")[0][0] == d.identity  # the same installation
    assert await _head(prefix, d) == lost  # its stream is ahead of it

    srv = await _start(restored, tmp_path, servers)
    assert _resets(srv) == 1.0
    api2 = Api(srv, d.tenant.api_key)
    api2.clock = api.clock  # event times go on from before the restore
    try:
        async with stream(srv, d.tenant.api_key) as s:
            # a client that kept a seq of the lost history is told so, and subscribes afresh
            await s.send(op="subscribe", shipments=[sid], resume_from=lost)
            err = await s.next()
            assert (err["type"], err["error"]) == ("error", "ValidationError")
            assert err["detail"] == f"resume_from {lost} is ahead of the stream ({backed_up})"
            s.got.clear()
            await s.send(op="subscribe", shipments=[sid])
            snap = await s.next()
            assert (snap["type"], snap["seq"]) == ("snapshot", backed_up)
            started = asyncio.get_running_loop().time()
            for i in range(3):
                await api2.move("BACKUP-1", 10 + i, 1)
            while len([m for m in s.got if m["type"] == "position"]) < 3:
                await s.until(lambda m: m["type"] == "position", within=5)
            assert asyncio.get_running_loop().time() - started < 5
            await s.quiet(1.0)
        positions = [m["lat"] for m in s.got[1:] if m["type"] == "position"]
        assert positions == [10, 11, 12]  # the new ones, none of the lost history
        assert seqs(s.got[1:]) == [m["seq"] for m in outbox(restored, d.tenant, backed_up, sid)]
    finally:
        await api2.http.aclose()
    assert _resets(srv) == 1.0
    lines = [line for line in srv.log.read_text().splitlines() if "stream reset" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0]
    assert f"tenant {d.tenant_id}: bus at {lost}, database at {backed_up}" in lines[0]


async def test_a_database_made_anew_beside_an_old_redis_uses_keys_of_its_own(
    testenv: RunEnv, prefix: str, databases: list[str], servers: list[Server], tmp_path: Path
) -> None:
    old = _deployment(_new_env(testenv, prefix, databases), "first")
    srv = await _start(old.env, tmp_path, servers)
    api = Api(srv, old.tenant.api_key)
    try:
        await api.shipment("OLD-1")
        for i in range(8):
            await api.move("OLD-1", 30 + i, 1)
        old_head = await _relayed(prefix, old)
    finally:
        await api.http.aclose()
    servers.remove(srv)
    await asyncio.to_thread(stop_server, srv)
    _drop_database(old.env.dsn)

    new = _deployment(_new_env(testenv, prefix, databases), "first")  # the same name, the same tenant id
    assert new.tenant_id == old.tenant_id
    assert new.identity != old.identity
    srv = await _start(new.env, tmp_path, servers)
    api = Api(srv, new.tenant.api_key)
    try:
        sid = await api.shipment("NEW-1")
        async with stream(srv, new.tenant.api_key) as s:
            await s.send(op="subscribe", shipments=[sid])
            snap = await s.next()
            assert snap["type"] == "snapshot"
            for i in range(2):
                await api.move("NEW-1", 10 + i, 1)
            while len([m for m in s.got if m["type"] == "position"]) < 2:
                await s.until(lambda m: m["type"] == "position", within=5)
            await s.quiet(1.0)
        assert [m["lat"] for m in s.got[1:] if m["type"] == "position"] == [10, 11]
        assert seqs(s.got[1:]) == [m["seq"] for m in outbox(new.env, new.tenant, snap["seq"], sid)]
    finally:
        await api.http.aclose()
    assert _resets(srv) == 0.0  # nothing to reset: the old stream is under the old identity, untouched
    assert await _head(prefix, old) == old_head
