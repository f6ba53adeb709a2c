"""Fault injection: private PostgreSQL, Redis and Mosquitto that the tests may stop and restart.

The machine's shared services are never touched: each test session starts its own instances on
free loopback ports in a temporary directory, and each test gets its own database, Redis key
prefix and MQTT topic prefix on them. Everything started here is stopped by a finalizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingest.mqtt_conn import PublisherThread, endpoint
from tests.conftest import ROOT, RunEnv, Server, free_port, sign_hex, start_server, stop_server
from trackd.codes import Classifier, Milestone
from trackd.status import replay

PG_BIN = Path(os.environ.get("TRACKD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` OS user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class PrivatePostgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        subprocess.run(
            _as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"),
            check=True,
            capture_output=True,
        )

    def _ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "-o", opts, *args
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self) -> str:
        name = f"trackd_fault_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, dsn: str) -> None:
        if not self.running():
            return
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.root,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        """Killed, not shut down: what it held is gone, as after a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class PrivateBroker:
    """Mosquitto with persistence: a graceful restart keeps sessions and their queued messages,
    so what it acknowledged to a publisher survives the restart (as in the compose stack)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = root / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {root}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n" + ("user root\n" if os.geteuid() == 0 else "")
            # as root it would switch to the `mosquitto` user, which may not write here
        )

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.root / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log, stderr=log, cwd=self.root)
        _wait_port(self.port)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@dataclass
class Services:
    pg: PrivatePostgres
    redis: PrivateRedis
    broker: PrivateBroker


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    root = Path(tempfile.mkdtemp(prefix="trackd-faults-"))
    os.chmod(root, 0o755)
    pg_root = root / "pg"
    pg_root.mkdir()
    if os.geteuid() == 0:
        shutil.chown(pg_root, "postgres", "postgres")
    svc = Services(PrivatePostgres(pg_root), PrivateRedis(root), PrivateBroker(root))
    try:
        svc.pg.init()
        svc.pg.start()
        svc.redis.start()
        svc.broker.start()
        yield svc
    finally:
        svc.broker.stop()
        svc.redis.stop()
        if svc.pg.running():
            try:
                svc.pg.stop()
            except subprocess.SubprocessError:
                subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(svc.pg.data), "-m", "immediate", "stop"))
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Faults:
    """One test's database and prefixes on the private services, its tenant and its servers."""

    svc: Services
    env: RunEnv
    tmp: Path
    tenant: str = ""
    api_key: str = ""
    ingest_secret: str = ""
    servers: list[Server] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.env.env["TRACKD_MQTT_TOPIC_PREFIX"]

    def start(self, roles: str = "api,mqtt,worker", extra: dict[str, str] | None = None) -> Server:
        srv = start_server(self.env, self.tmp, roles=roles, extra=extra)
        self.servers.append(srv)
        return srv

    def kill(self, srv: Server) -> None:
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()

    def http(self, srv: Server) -> httpx.Client:
        return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30)

    def count(self, where: str = "true") -> int:
        rows = self.env.sql(f"SELECT count(*) FROM events WHERE {where}")
        return int(rows[0][0])

    def event_ids(self) -> list[str]:
        return [r[0] for r in self.env.sql("SELECT event_id FROM events ORDER BY event_id")]

    def assert_states_equal_replay(self) -> int:
        """Each shipment's status and substatus equal a replay, from scratch, of its stored actual
        milestones. Returns how many shipments were checked."""
        ships = self.env.sql("SELECT shipment_id, status, substatus FROM shipment_state ORDER BY shipment_id")
        rows = self.env.sql(
            "SELECT shipment_id, occurred_at, code, classifier FROM events"
            " WHERE kind = 'milestone' AND shipment_id IS NOT NULL AND retracted_at IS NULL"
        )
        by_ship: dict[str, list[tuple[datetime, Milestone | None, Classifier]]] = {}
        for sid, at, code, classifier in rows:
            by_ship.setdefault(sid, []).append(
                (at, Milestone(code) if code else None, Classifier(classifier or "actual"))
            )
        for sid, status, substatus in ships:
            want = replay(by_ship.get(sid, []))
            assert (status, substatus) == (str(want.status), want.substatus), sid
        return len(ships)

    def outbox(self, after: int = 0) -> list[dict[str, Any]]:
        return [r[0] for r in self.env.sql("SELECT payload FROM outbox WHERE seq > %s ORDER BY seq", after)]


@pytest.fixture
def faults(services: Services, tmp_path: Path) -> Iterator[Faults]:
    run = secrets.token_hex(4)
    dsn = services.pg.create_database()
    env = RunEnv(
        run,
        dsn,
        {
            **os.environ,
            "TRACKD_DATABASE_URL": dsn,
            "TRACKD_REDIS_URL": services.redis.url,
            "TRACKD_REDIS_PREFIX": f"fault_{run}",
            "TRACKD_MQTT_URL": services.broker.url,
            "TRACKD_MQTT_TOPIC_PREFIX": f"f{run}/",
            "TRACKD_MQTT_CLIENT_ID": f"trackd-fault-{run}",
            "TRACKD_MQTT_SHARE_GROUP": f"g{run}",
            "TRACKD_LOG_LEVEL": "info",
            "TRACKD_WEBHOOK_ALLOW_PRIVATE": "1",
            "PYTHONPATH": str(ROOT),
        },
    )
    res = env.trackd("migrate")
    assert res.returncode == 0, res.stderr
    res = env.trackd("tenant", "create", f"fault{run}")
    assert res.returncode == 0, res.stderr
    data = orjson.loads(res.stdout)
    f = Faults(services, env, tmp_path, data["tenant"], data["api_key"], data["ingest_secret"])
    try:
        yield f
    finally:
        for srv in f.servers:
            if srv.proc.poll() is None:
                stop_server(srv)
        # Whatever a test stopped comes back for the next one.
        if not services.pg.running():
            services.pg.start()
        if services.redis.proc is None:
            services.redis.start()
        if services.broker.proc is None:
            services.broker.start()
        services.pg.drop_database(dsn)


# -- workload -------------------------------------------------------------------------------------

CODES = ["picked_up", "departed", "customs_hold", "customs_released", "arrived", "out_for_delivery", "delivered"]


def make_events(n: int, shipments: list[str], tag: str) -> list[dict[str, Any]]:
    """`n` trackd events with explicit ids over the given tracking numbers: positions and actual
    milestones whose event times are shuffled, so late, older milestones arrive after newer ones."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        ship = shipments[i % len(shipments)]
        # a permutation of event times: arrival order differs from event-time order
        at = T0 + timedelta(minutes=(i * 37) % n)
        ev: dict[str, Any] = {"event_id": f"{tag}-{i}", "occurred_at": at.isoformat(), "shipment": ship}
        if i % 3 == 0:
            ev["milestone"] = {"code": CODES[(i // 3) % len(CODES)], "classifier": "actual"}
        elif i % 3 == 1:
            ev["milestone"] = {"code": CODES[(i * 5) % len(CODES)], "classifier": "estimated"}
        else:
            ev["position"] = {"lat": 40 + (i % 100) / 10, "lon": 5 + (i % 50) / 10, "speed_kmh": 50}
        out.append(ev)
    return out


@dataclass
class WebhookLog:
    accepted: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    connection_errors: int = 0
    retry_afters: list[str] = field(default_factory=list)


async def post_until_accepted(
    faults: Faults,
    urls: list[str],
    batches: list[list[dict[str, Any]]],
    log: WebhookLog,
    *,
    pace_s: float = 0.01,
    give_up_s: float = 45,
) -> None:
    """Post each batch as a signed native webhook until it is answered 2xx, as a carrier would:
    a 503 is retried after its Retry-After (shortened here), a refused connection soon. The ids
    of a batch count as accepted only on 2xx. Any other answer fails the test."""
    deadline = asyncio.get_running_loop().time() + give_up_s
    async with httpx.AsyncClient(timeout=20) as client:
        for batch in batches:
            body = orjson.dumps(batch)
            headers = {"X-Trackd-Signature": "sha256=" + sign_hex(faults.ingest_secret, body)}
            headers["content-type"] = "application/json"
            attempt = 0
            while True:
                url = urls[attempt % len(urls)] + f"/v1/ingest/{faults.tenant}/native"
                attempt += 1
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"batch not accepted within {give_up_s}s; answers {log.statuses[-20:]}")
                try:
                    r = await client.post(url, content=body, headers=headers)
                except httpx.TransportError:
                    log.connection_errors += 1
                    await asyncio.sleep(0.1)
                    continue
                log.statuses.append(r.status_code)
                if r.status_code == 202:
                    log.accepted.update(e["event_id"] for e in batch)
                    break
                assert r.status_code == 503, (r.status_code, r.text)
                retry_after = r.headers.get("retry-after")
                assert retry_after is not None, r.headers
                assert retry_after.isdigit(), r.headers
                assert r.json()["error"] == "ServiceUnavailable"
                log.retry_afters.append(retry_after)
                await asyncio.sleep(0.2)
            await asyncio.sleep(pace_s)


class Publisher:
    """A QoS 1 publisher that counts a message as accepted only once the broker's PUBACK came. Its
    connection comes back by itself and sends again (same bytes, so the same event id) whatever was
    not acknowledged when it dropped; what is published while it is down waits for it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = PublisherThread(
            endpoint(f"mqtt://127.0.0.1:{port}"), f"pub-{secrets.token_hex(4)}", inflight=100, reconnect_s=(0.1, 1.0)
        )
        self.sent: dict[str, concurrent.futures.Future[None]] = {}

    def publish(self, key: str, topic: str, payload: bytes) -> None:
        self.sent[key] = self.client.publish(topic, payload, qos=1)

    @staticmethod
    def _acked(done: concurrent.futures.Future[None]) -> bool:
        return done.done() and not done.cancelled() and done.exception() is None

    def acked(self) -> set[str]:
        return {k for k, done in self.sent.items() if self._acked(done)}

    def settle(self, timeout: float = 30) -> set[str]:
        """Wait for every PUBACK (the connection sends again what was not acknowledged); the acked keys."""
        concurrent.futures.wait(list(self.sent.values()), timeout)
        return self.acked()

    def close(self) -> None:
        self.client.close(grace_s=0)


class Watcher:
    """A websocket client subscribed to some shipments that records every message, and after any
    disconnect comes back with `resume_from` its last seq."""

    def __init__(self, faults: Faults, url: str, shipment_ids: list[str]) -> None:
        self.faults = faults
        self.url = url
        self.ids = shipment_ids
        self.got: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.resumes = 0
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.bounce = asyncio.Event()  # set: drop the connection and come back with resume_from

    @property
    def last_seq(self) -> int:
        return max((m["seq"] for m in self.got if "seq" in m), default=0)

    def _op(self) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "subscribe", "shipments": self.ids}
        if self.ready.is_set():
            op["resume_from"] = self.last_seq
        return op

    async def run(self) -> None:
        while not self.stop.is_set():
            url = self.url.replace("http://", "ws://") + f"/v1/stream?token={self.faults.api_key}"
            try:
                async with connect(url, open_timeout=5) as conn:
                    if self.ready.is_set():
                        self.resumes += 1
                    await conn.send(orjson.dumps(self._op()).decode())
                    while not self.stop.is_set() and not self.bounce.is_set():
                        try:
                            raw = await asyncio.wait_for(conn.recv(), 0.2)
                        except TimeoutError:
                            continue
                        msg = orjson.loads(raw)
                        if msg["type"] == "error":
                            self.errors.append(msg["error"])
                            if msg["error"] != "StreamDegraded":  # the subscribe failed: again
                                await asyncio.sleep(0.3)
                                await conn.send(orjson.dumps(self._op()).decode())
                            continue
                        if msg["type"] == "snapshot":
                            assert not self.ready.is_set(), f"a snapshot after resume_from: {msg}"
                            self.ready.set()
                        self.got.append(msg)
                    self.bounce.clear()
            except (OSError, ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.2)
            except Exception as exc:  # an HTTP error at the handshake while the server restarts
                if type(exc).__name__ not in {"InvalidStatus", "InvalidMessage", "InvalidHandshake"}:
                    raise
                await asyncio.sleep(0.2)

    async def caught_up(self, within: float = 20) -> None:
        """Until it has received the last message of its shipments that the outbox holds."""
        want = max((m["seq"] for m in self.faults.outbox() if m.get("shipment_id") in set(self.ids)), default=0)
        deadline = asyncio.get_running_loop().time() + within
        while self.last_seq < want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"websocket client stuck at seq {self.last_seq}, outbox at {want}")
            await asyncio.sleep(0.1)

    def assert_missed_nothing(self, outbox: list[dict[str, Any]]) -> None:
        """Every message of its shipments after the first snapshot, once each, in order; positions,
        which a slow client may have coalesced, at least the latest of each shipment."""
        snap = next(m for m in self.got if m["type"] == "snapshot")
        live = [m for m in self.got if "seq" in m and m["type"] != "snapshot"]
        mine = [m for m in outbox if m.get("shipment_id") in set(self.ids) and m["seq"] > snap["seq"]]
        seqs = [m["seq"] for m in live]
        assert seqs == sorted(set(seqs)), "duplicates or out of order"
        assert [m["seq"] for m in live if m["type"] != "position"] == [
            m["seq"] for m in mine if m["type"] != "position"
        ]
        assert set(seqs) <= {m["seq"] for m in mine}
        last_pos: dict[str, int] = {}
        for m in mine:
            if m["type"] == "position":
                last_pos[m["shipment_id"]] = m["seq"]
        assert set(last_pos.values()) <= set(seqs)
