"""Per-message isolation on ingest, against the real Mosquitto and PostgreSQL and a real `trackd
serve`: a message too big to read, JSON nested too deep, or a message the database refuses is
kept aside alone; everything else, of every tenant, is stored, and nothing comes back as a poison
after a restart."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from ingest import mqtt as ingester_mod
from ingest import mqtt_conn
from ingest.mqtt_codec import Message
from ingest.mqtt_conn import PublisherThread, endpoint
from ingest.pipeline import Pipeline, Rejection
from ingest.sources import _common, native
from tests.conftest import MQTT_URL, ROOT, RunEnv, Server, Tenant, free_port, start_server, stop_server, wait_for
from trackd import db, ledger, ratelimit, store, tenant_store
from trackd.errors import Unavailable, ValidationError
from trackd.model import Event, derive_event_id
from trackd.settings import Settings

LIMIT = 1 << 20  # TRACKD_MAX_MESSAGE_BYTES by default


def events_of(te: RunEnv, tenant: str) -> int:
    rows = te.sql("SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant)
    return int(rows[0][0])


def quarantined(te: RunEnv, tenant: str) -> list[tuple[str, str, str, str]]:
    """(source, transport, reason, raw) of the tenant's quarantine, oldest first."""
    return [
        (r[0], r[1], r[2], r[3])
        for r in te.sql(
            "SELECT q.source, q.transport, q.reason, q.raw FROM quarantine q JOIN tenants t ON t.id = q.tenant_id"
            " WHERE t.name = %s ORDER BY q.id",
            tenant,
        )
    ]


def position(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"occurred_at": 1_790_000_000 + i, "position": {"lat": 10 + i / 1000, "lon": 20.0}, **extra})


def nested(depth: int, marker: str = "") -> bytes:
    """An event that would be valid but for a field nested `depth` levels deep."""
    return (
        b'{"occurred_at": 1790000000, "position": {"lat": 1.0, "lon": 2.0}, "m": "'
        + marker.encode()
        + b'", "x": '
        + b"[" * (depth - 1)
        + b"]" * (depth - 1)
        + b"}"
    )


class Ingester:
    """A `trackd serve --roles api,mqtt` with MQTT settings of its own (topic prefix, persistent
    session), restartable; its broker session is ended when the test is done."""

    def __init__(self, te: RunEnv, tmp: Path, protocol: str = "5", broker: str = MQTT_URL) -> None:
        run = secrets.token_hex(3)
        self.te, self.tmp, self.prefix = te, tmp, f"iso{run}/"
        self.protocol, self.broker = protocol, broker
        self.extra = {
            "TRACKD_MQTT_URL": broker,
            "TRACKD_MQTT_TOPIC_PREFIX": self.prefix,
            "TRACKD_MQTT_CLIENT_ID": f"ingest-iso-{run}",
            "TRACKD_MQTT_SHARE_GROUP": "",
            "TRACKD_MQTT_PROTOCOL": protocol,
        }
        self.server: Server | None = start_server(te, tmp, roles="api,mqtt", extra=self.extra)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def topic(self, tenant: str, device: str) -> str:
        return f"{self.prefix}trackd/{tenant}/devices/{device}/events"

    def restart(self) -> None:
        self.stop()
        self.server = start_server(self.te, self.tmp, roles="api,mqtt", extra=self.extra)

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self.server = None

    def log(self) -> str:
        return "".join(p.read_text() for p in self.tmp.glob("server-*.log"))

    def close(self) -> None:
        self.stop()
        ep = endpoint(self.broker)
        asyncio.run(mqtt_conn.end_session(ep, self.extra["TRACKD_MQTT_CLIENT_ID"], v5=self.protocol == "5"))


@pytest.fixture
def publisher() -> Iterator[PublisherThread]:
    pub = PublisherThread(endpoint(MQTT_URL), f"pub-iso-{secrets.token_hex(4)}", inflight=200)
    yield pub
    pub.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_20_mb_message_stops_nothing(
    protocol: str, make_tenant: Any, testenv: RunEnv, tmp_path: Path, publisher: PublisherThread
) -> None:
    """3.1.1: the ingester skips the message as it streams in, quarantines its first 4 KB with the
    reason and acknowledges it. 5: the ingester announced its maximum packet size, so the broker
    never sends it (Mosquitto drops it for that client). Either way every message after it is
    stored, /readyz stays ready, and a restart brings nothing back."""
    t: Tenant = make_tenant("big")
    ingester = Ingester(testenv, tmp_path, protocol)
    try:
        topic = ingester.topic(t.name, "big-1")
        big = b'{"occurred_at": 1790000000, "position": {"lat": 1.0, "lon": 2.0}, "pad": "' + b"x" * 20_000_000 + b'"}'
        publisher.publish(topic, big).result(30)
        for f in [publisher.publish(topic, position(i)) for i in range(40)]:
            f.result(20)
        wait_for(lambda: events_of(testenv, t.name) >= 40, timeout=30)
        ready = httpx.get(ingester.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["mqtt_ingest"] == "ok"
        if protocol == "3.1.1":
            rows = wait_for(lambda: quarantined(testenv, t.name), timeout=10)
            reason = f"ValidationError: body: message of {len(big)} bytes is over the {LIMIT}-byte limit"
            assert rows == [("native", "mqtt", reason + " (TRACKD_MAX_MESSAGE_BYTES)", big[:4096].decode())]
        else:
            time.sleep(1.0)  # it would have been quarantined by now
            assert quarantined(testenv, t.name) == []
        expected = quarantined(testenv, t.name)
        ingester.restart()
        publisher.publish(topic, position(1000)).result(10)  # the session is read again after the restart
        wait_for(lambda: events_of(testenv, t.name) == 41, timeout=20)
        time.sleep(1.0)  # anything redelivered would show up now
        assert events_of(testenv, t.name) == 41
        assert quarantined(testenv, t.name) == expected
        assert "closing the connection" not in ingester.log()  # never a disconnect over it
    finally:
        ingester.close()


def unattributed_mqtt(url: str) -> dict[str, float]:
    """`trackd_unattributed_input_total` of the native MQTT source, by outcome."""
    out = {"sampled": 0.0, "dropped": 0.0}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith("trackd_unattributed_input_total{") and 'source="native"' in series:
            out["sampled" if 'outcome="sampled"' in series else "dropped"] = float(value)
    return out


@pytest.mark.timeout(60)
def test_messages_for_an_unknown_tenant_are_only_sampled(
    make_tenant: Any, testenv: RunEnv, tmp_path: Path, publisher: PublisherThread
) -> None:
    """An unknown tenant's topic is no one's: its messages join the unattributed sample as
    unauthenticated HTTP input does, the broker counting as one address (a burst of 10, then one a
    second), and the rest are acknowledged, counted as dropped and not stored; a tenant's message
    sent after them is stored."""
    t: Tenant = make_tenant("known")
    ingester = Ingester(testenv, tmp_path)
    try:
        nobody, marker = f"nobody{secrets.token_hex(3)}", secrets.token_hex(6)
        started = time.monotonic()
        for f in [publisher.publish(ingester.topic(nobody, "x"), position(i, m=marker)) for i in range(60)]:
            f.result(20)
        publisher.publish(ingester.topic(t.name, "d1"), position(1)).result(10)
        wait_for(lambda: events_of(testenv, t.name) == 1, timeout=20)
        got = wait_for(lambda: (c := unattributed_mqtt(ingester.url))["sampled"] + c["dropped"] == 60 and c, timeout=10)
        elapsed = time.monotonic() - started
        rows = testenv.sql(
            "SELECT source, transport, reason FROM quarantine WHERE tenant_id IS NULL AND strpos(raw, %s) > 0", marker
        )
        assert len(rows) == got["sampled"]
        assert ratelimit.SAMPLE_PER_ADDRESS_BURST <= got["sampled"] <= ratelimit.SAMPLE_PER_ADDRESS_BURST + elapsed + 1
        assert got["dropped"] == 60 - got["sampled"] > 0
        assert {r[:2] for r in rows} == {("native", "mqtt")}
        assert all(nobody in r[2] for r in rows)  # the reason names the unknown tenant
    finally:
        ingester.close()


def _broker(root: Path, lines: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto of the test's own on a free port with these configuration lines, once it listens."""
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        "\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", *lines])
        + ("\nuser root\n" if os.geteuid() == 0 else "\n")
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the broker did not start")


@pytest.mark.timeout(60)
def test_the_shipped_broker_limit_refuses_what_the_ingester_would_not_read(
    make_tenant: Any, testenv: RunEnv, tmp_path: Path
) -> None:
    """deploy/mosquitto/mosquitto.conf limits payloads to TRACKD_MAX_MESSAGE_BYTES: the broker
    completes the publisher's QoS 1 flow for a bigger one and forwards it to no one; ingest goes on."""
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    [limit_line] = [line for line in conf if line.startswith("message_size_limit ")]
    assert int(limit_line.split()[1]) == Settings.model_fields["max_message_bytes"].default == LIMIT
    t: Tenant = make_tenant("lim")
    broker, port = _broker(tmp_path, [limit_line])
    url = f"mqtt://127.0.0.1:{port}"
    pub = PublisherThread(endpoint(url), f"pub-lim-{secrets.token_hex(4)}", inflight=200)
    ingester: Ingester | None = None
    try:
        ingester = Ingester(testenv, tmp_path, broker=url)
        topic = ingester.topic(t.name, "lim-1")
        pub.publish(topic, position(0, pad="x" * (LIMIT + 1))).result(20)  # acknowledged by the broker
        for f in [pub.publish(topic, position(1 + i)) for i in range(20)]:
            f.result(20)
        wait_for(lambda: events_of(testenv, t.name) == 20, timeout=20)
        time.sleep(0.5)
        assert events_of(testenv, t.name) == 20
        assert quarantined(testenv, t.name) == []  # it never reached the ingester
        assert httpx.get(ingester.url + "/readyz", timeout=10).status_code == 200
    finally:
        pub.close()
        if ingester is not None:
            ingester.stop()
        broker.terminate()
        broker.wait(10)


@pytest.fixture
def refusing(testenv: RunEnv) -> Iterator[str]:
    """A trigger of the test's own on `events`: PostgreSQL refuses a row whose raw `m` is
    `refuse-<run>` (a data exception, SQLSTATE 22023) or `break-<run>` (an internal error, XX000),
    as it would refuse a value past one of its limits. Yields `<run>`."""
    run = secrets.token_hex(3)
    fn = f"refuse_{run}"
    with psycopg.connect(testenv.dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.raw->>'m' = 'refuse-{run}' THEN"
            "  RAISE EXCEPTION 'refused by a constraint of the test' USING ERRCODE = '22023'; END IF;"
            f" IF NEW.raw->>'m' = 'break-{run}' THEN"
            "  RAISE EXCEPTION 'broken by the test' USING ERRCODE = 'XX000'; END IF;"
            " RETURN NEW; END $$"
        )
        conn.execute(f"CREATE TRIGGER {fn} BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION {fn}()")
    try:
        yield run
    finally:
        with psycopg.connect(testenv.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER {fn} ON events")
            conn.execute(f"DROP FUNCTION {fn}()")


@pytest.mark.timeout(60)
def test_a_poison_message_is_quarantined_alone_and_the_rest_of_its_batch_stored(
    make_tenant: Any, testenv: RunEnv, tmp_path: Path, publisher: PublisherThread, refusing: str
) -> None:
    """In one burst: tenant A sends JSON nested 300 levels deep (refused on reading), an event the
    database refuses on writing and one on which it fails unexpectedly (so their batch is
    bisected), among ten valid events of its own and tenant B's fifty. Everything valid is stored,
    each poison quarantined once, and after a restart of the ingester nothing is redelivered."""
    a, b = make_tenant("pa"), make_tenant("pb")
    ingester = Ingester(testenv, tmp_path)
    try:
        ta, tb = ingester.topic(a.name, "a-1"), ingester.topic(b.name, "b-1")
        burst = [(ta, nested(300, "deep"))]
        burst += [(tb, position(i)) for i in range(25)]
        burst += [(ta, position(100 + i)) for i in range(5)]
        burst += [(ta, position(200, m=f"refuse-{refusing}"))]
        burst += [(tb, position(25 + i)) for i in range(25)]
        burst += [(ta, position(300, m=f"break-{refusing}"))]
        burst += [(ta, position(105 + i)) for i in range(5)]
        for f in [publisher.publish(topic, body) for topic, body in burst]:
            f.result(20)
        # The burst's batches are stored concurrently: A's last events may land after B's and the poison.
        wait_for(
            lambda: (
                events_of(testenv, b.name) == 50
                and len(quarantined(testenv, a.name)) == 3
                and events_of(testenv, a.name) >= 10
            ),
            timeout=30,
        )
        assert events_of(testenv, a.name) == 10
        rows = quarantined(testenv, a.name)
        assert [(s, tr) for s, tr, _, _ in rows] == [("native", "mqtt")] * 3
        assert sorted((reason, orjson.loads(raw)["m"]) for _, _, reason, raw in rows) == [
            ("Error: could not be processed (InternalError_); the error has been logged", f"break-{refusing}"),
            ("ValidationError: body: JSON nested deeper than 64 levels", "deep"),
            ("ValidationError: refused by a constraint of the test", f"refuse-{refusing}"),
        ]
        assert quarantined(testenv, b.name) == []
        assert ingester.log().count("could not be stored; quarantined") == 1  # the unexpected one, logged once
        ingester.restart()
        publisher.publish(tb, position(1000)).result(10)
        wait_for(lambda: events_of(testenv, b.name) == 51, timeout=20)
        time.sleep(1.0)
        assert events_of(testenv, a.name) == 10
        assert len(quarantined(testenv, a.name)) == 3  # no poison came back
        assert "not stored" not in ingester.log()
    finally:
        ingester.close()


class InProcess:
    """An MQTT ingester on the test's own event loop and a pipeline of the test's `kind`, with a
    tenant, a topic prefix and a persistent session of its own (ended at exit); `restart` starts
    a new ingester on the same session."""

    def __init__(self, testenv: RunEnv, tag: str, kind: type[Pipeline]) -> None:
        run = secrets.token_hex(4)
        self.testenv, self.kind = testenv, kind
        self.name, self.client_id = f"{tag}-{run}", f"{tag}-{run}"
        prefix = f"{tag}{run}/"
        self.topic = f"{prefix}trackd/{self.name}/devices/d1/events"
        self.settings = Settings(
            database_url=testenv.dsn, mqtt_url=MQTT_URL, mqtt_topic_prefix=prefix, mqtt_client_id=self.client_id
        )
        self.pub = mqtt_conn.Publisher(endpoint(MQTT_URL), f"pub-{run}")
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcess:
        self.pool = await db.open_pool(self.testenv.dsn, 4)
        await tenant_store.create_tenant(self.pool, self.name, None)
        found = await tenant_store.tenant_with_secret(self.pool, self.name, None)
        assert found is not None
        self.tenant_id = found[0].id
        await self.start()
        return self

    async def start(self) -> None:
        self.stop = asyncio.Event()
        ingester = ingester_mod.MqttIngester(self.settings, self.kind(self.pool))
        self.task = asyncio.create_task(ingester.run(self.stop))
        await asyncio.wait_for(ingester.subscribed.wait(), 10)

    async def end(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)
            self.task = None

    async def restart(self) -> None:
        await self.end()
        await self.start()

    async def publish(self, *bodies: bytes) -> None:
        for f in [self.pub.publish(self.topic, body) for body in bodies]:
            await asyncio.wait_for(f, 10)

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.end()
        finally:
            await self.pub.close()
            await mqtt_conn.end_session(endpoint(MQTT_URL), self.client_id)
            await self.pool.close()


async def test_a_message_that_keeps_failing_while_the_database_answers_is_quarantined(
    testenv: RunEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message whose write fails with a database error every time while the database answers
    (as some limits of PostgreSQL are reported) is retried alone, then quarantined and
    acknowledged: it does not stay unacknowledged for ever, and the rest of its batch is stored."""
    monkeypatch.setattr(ingester_mod, "ALONE_WAIT_S", 0.05)
    attempts: list[int] = []

    class Refusing(Pipeline):
        async def _write(self, tenant: store.Tenant, events: list[Event], transport: str) -> ledger.WriteResult:
            if any(e.shipment == "STUCK" for e in events):
                attempts.append(len(events))
                raise Unavailable("database unavailable: program limit exceeded")
            return await super()._write(tenant, events, transport)

    async with InProcess(testenv, "st", Refusing) as ing:
        bodies = [position(i) for i in range(10)]
        bodies.insert(4, position(99, shipment="STUCK"))
        await ing.publish(*bodies)

        async def counts() -> tuple[int, int]:
            async with store.transaction(ing.pool) as conn:
                row = await (
                    await conn.execute(
                        "SELECT (SELECT count(*) FROM events WHERE tenant_id = %(t)s) AS e,"
                        " (SELECT count(*) FROM quarantine WHERE tenant_id = %(t)s) AS q",
                        {"t": ing.tenant_id},
                    )
                ).fetchone()
            assert row is not None
            return int(row["e"]), int(row["q"])

        for _ in range(200):
            if await counts() == (10, 1):
                break
            await asyncio.sleep(0.05)
        assert await counts() == (10, 1)
        assert attempts[-ingester_mod.ALONE_TRIES :] == [1] * ingester_mod.ALONE_TRIES  # alone, then given up
        # A new ingester on the same session: the quarantined message was acknowledged.
        attempts[:] = []
        await ing.restart()
        await asyncio.sleep(1.0)
        assert attempts == []
        assert await counts() == (10, 1)


@pytest.mark.parametrize("where", ["array", "object"])
def test_json_depth_is_checked_once_for_every_source_and_ids_never_fail(where: str) -> None:
    """64 levels pass and 65 do not (brackets inside strings do not count), in the one `loads` every
    JSON source reads with; the content hash of an event id copes with any depth anyway."""

    def deep(n: int) -> bytes:
        return b"[" * n + b"]" * n if where == "array" else b'{"a":' * (n - 1) + b"{}" + b"}" * (n - 1)

    assert native.loads(deep(64)) is not None
    for n in (65, 256, 1024, 1025, 100_000):
        with pytest.raises(ValidationError) as refused:
            native.loads(deep(n))
        assert refused.value.detail == "body: JSON nested deeper than 64 levels"
    assert native.loads(b'{"s": "' + b"[{" * 5000 + b'"}') == {"s": "[{" * 5000}
    assert _common.loads is native.loads
    value = orjson.loads(deep(1000))  # past orjson's 255 levels for encoding
    assert derive_event_id("native", {"x": value}) == derive_event_id("native", {"x": orjson.loads(deep(1000))})
    assert derive_event_id("native", {"x": value}) != derive_event_id("native", {"x": orjson.loads(deep(999))})
    assert derive_event_id("native", {"a": 1}) == "native:" + hashlib.sha256(b'{"a":1}').hexdigest()[:40]


# -- HTTP ----------------------------------------------------------------------------------------------

SCHEMES = {  # header and prefix of each source's signature (see ingest/sources/<source>.py)
    "native": ("X-Trackd-Signature", "sha256=", "hex"),
    "dcsa": ("Notification-Signature", "sha256=", "hex"),
    "onerecord": ("X-Trackd-Signature", "sha256=", "hex"),
    "aftership": ("aftership-hmac-sha256", "", "base64"),
    "easypost": ("X-Hmac-Signature", "hmac-sha256-hex=", "hex"),
}


def signed(t: Tenant, source: str, body: bytes) -> httpx.Response:
    header, prefix, encoding = SCHEMES[source]
    mac = hmac.new(t.ingest_secret.encode(), body, hashlib.sha256).digest()
    value = prefix + (mac.hex() if encoding == "hex" else base64.b64encode(mac).decode())
    return t.signed(source, body, header=header, value=value)


@pytest.mark.timeout(60)
def test_json_nested_too_deep_is_422_and_quarantined_on_every_json_source(tenant: Tenant, testenv: RunEnv) -> None:
    key = f"deep-{secrets.token_hex(12)}"
    r = tenant.http.post("/v1/devices", json={"id": "deep-1", "key": key})
    assert r.status_code == 201, r.text
    answers: list[tuple[str, int, httpx.Response]] = []
    with httpx.Client(base_url=str(tenant.http.base_url), timeout=30) as anonymous:
        for depth in (256, 1024):
            for source in SCHEMES:
                answers.append((source, depth, signed(tenant, source, nested(depth, f"{source}-{depth}"))))
            answers.append(("events", depth, tenant.http.post("/v1/events", content=nested(depth, f"api-{depth}"))))
            answers.append(
                (
                    "osmand",
                    depth,
                    anonymous.post(
                        f"/v1/osmand?id={key}",
                        content=nested(depth, f"osmand-{depth}"),
                        headers={"content-type": "application/json"},
                    ),
                )
            )
    for where, depth, r in answers:
        assert r.status_code == 422, (where, depth, r.status_code, r.text[:300])
        assert r.json() == {"error": "ValidationError", "detail": "body: JSON nested deeper than 64 levels"}
    rows = quarantined(testenv, tenant.name)
    assert len(rows) == len(answers) == 14
    got = sorted((source, transport, reason, orjson.loads(raw)["m"]) for source, transport, reason, raw in rows)
    reason = "ValidationError: body: JSON nested deeper than 64 levels"
    expected = [(s, "webhook", reason, f"{s}-{d}") for s in SCHEMES for d in (256, 1024)]
    expected += [("native", "api", reason, f"api-{d}") for d in (256, 1024)]
    expected += [("osmand", "http", reason, f"osmand-{d}") for d in (256, 1024)]
    assert got == sorted(expected)
    assert events_of(testenv, tenant.name) == 0


@pytest.mark.timeout(60)
async def test_a_delivery_the_database_refuses_fails_alone_among_concurrent_ones(
    tenant: Tenant, testenv: RunEnv, server: Server, refusing: str
) -> None:
    """Deliveries written together (group commit), one of which the database refuses and one on
    which it fails unexpectedly: the first is a 422, the second a 500 logged once, both
    quarantined; every other is 202 and stored."""
    bodies = [position(i, device=f"dev-{i}", event_id=f"grp-{i}") for i in range(30)]
    bodies[13] = position(13, device="dev-13", event_id="grp-13", m=f"refuse-{refusing}")
    bodies[21] = position(21, device="dev-21", event_id="grp-21", m=f"break-{refusing}")
    logged = server.log.read_text().count("unhandled error")
    headers = {"Authorization": f"Bearer {tenant.api_key}"}
    async with httpx.AsyncClient(base_url=str(tenant.http.base_url), headers=headers, timeout=30) as http:
        answers = await asyncio.gather(*(http.post("/v1/events", content=b) for b in bodies))
    codes = [r.status_code for r in answers]
    assert codes == [{13: 422, 21: 500}.get(i, 202) for i in range(30)]
    assert answers[13].json() == {"error": "ValidationError", "detail": "refused by a constraint of the test"}
    assert answers[21].json()["error"] == "InternalError"
    stored = testenv.sql(
        "SELECT e.event_id FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant.name
    )
    assert sorted(r[0] for r in stored) == sorted(f"grp-{i}" for i in range(30) if i not in (13, 21))
    rows = quarantined(testenv, tenant.name)
    assert sorted((source, transport, orjson.loads(raw)["event_id"]) for source, transport, _, raw in rows) == [
        ("native", "api", "grp-13"),
        ("native", "api", "grp-21"),
    ]
    assert server.log.read_text().count("unhandled error") == logged + 1


async def test_a_rejected_message_leaves_no_cycle_for_the_collector(testenv: RunEnv) -> None:
    """Servers run with the automatic cyclic collector off and walk the heap themselves: a rejected
    message must be freed by reference counting. Its error kept with its traceback held the frame
    that handled the batch, a cycle with every message of the batch (hundreds of thousands of
    objects a minute under poison, the one long pause of the hostile bench)."""
    run = secrets.token_hex(4)
    name, prefix = f"gc-{run}", f"gc{run}/"
    pool = await db.open_pool(testenv.dsn, 2)
    settings = Settings(database_url=testenv.dsn, mqtt_url=MQTT_URL, mqtt_topic_prefix=prefix, mqtt_client_id=name)
    was_enabled, debug = gc.isenabled(), gc.get_debug()
    try:
        await tenant_store.create_tenant(pool, name, None)
        ingester = ingester_mod.MqttIngester(settings, Pipeline(pool))
        topic = f"{prefix}trackd/{name}/devices/d1/events"
        kinds = [nested(300), b"\x00\xffnot json", b"{", orjson.dumps({"occurred_at": "soon"}), position(1)]
        batch = [Message(topic, body, 1, i + 1, 1) for i, body in enumerate(kinds)]
        batch.append(Message(topic, b"x" * 64, 1, 99, 1, oversize=LIMIT + 1))
        batch.append(Message(f"{prefix}trackd/nobody-{run}/devices/d1/events", position(2), 1, 100, 1))
        gc.disable()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees stays in gc.garbage, to look at
        kept: set[int] = set()
        await ingester._handle(batch, kept)
        assert len(kept) == len(batch) - 1  # all but the valid position quarantined
        del batch
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, (Message, ValidationError, types.FrameType))]
        assert cyclic == [], cyclic[:5]
        assert len(quarantined(testenv, name)) == 5  # the unknown tenant's goes to the unattributed sample
        assert events_of(testenv, name) == 1
    finally:
        gc.set_debug(debug)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
        await pool.close()


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    """`wait_for` for a test whose event loop must keep running meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_inputs_to_quarantine_wait_together_and_one_refused_fails_alone(testenv: RunEnv) -> None:
    """A flood of inputs to keep aside costs one transaction at a time: what waits while one is in
    flight goes in the next. One whose write the database refuses fails alone: every other caller's
    inputs are kept."""
    run = secrets.token_hex(4)
    pool = await db.open_pool(testenv.dsn, 4)
    groups: list[int] = []

    class Counting(Pipeline):
        async def _keep(self, group: list[Any]) -> None:
            groups.append(len(group))
            await super()._keep(group)

    def rejection(tenant_id: int, i: int) -> Rejection:
        return Rejection(tenant_id, "native", ValidationError("body", f"bad {run} {i}"), b"junk %d" % i)

    try:
        await tenant_store.create_tenant(pool, f"qg-{run}", None)
        found = await tenant_store.tenant_with_secret(pool, f"qg-{run}", None)
        assert found is not None
        tid, pipeline = found[0].id, Counting(pool)

        def kept() -> list[str]:
            rows = testenv.sql("SELECT reason FROM quarantine WHERE tenant_id = %s ORDER BY id", tid)
            return [r[0] for r in rows]

        await asyncio.gather(
            *(pipeline.reject_many([rejection(tid, i), rejection(tid, i + 100)], "mqtt") for i in range(50))
        )
        assert len(kept()) == 100
        assert len(groups) <= 2, groups  # not one transaction per caller
        groups.clear()
        outcomes = await asyncio.gather(
            *(pipeline.reject_many([rejection(1 << 70 if i == 7 else tid, 200 + i)], "api") for i in range(20)),
            return_exceptions=True,
        )
        assert [i for i, o in enumerate(outcomes) if o is not None] == [7]
        assert isinstance(outcomes[7], ValidationError)
        assert sorted(kept()[100:]) == sorted(
            f"ValidationError: body: bad {run} {200 + i}" for i in range(20) if i != 7
        )
        assert groups[0] == 20  # the group failed, then each was written alone
        assert groups[1:] == [1] * 20
    finally:
        await pool.close()


async def test_a_batch_waiting_to_quarantine_does_not_hold_up_the_next_one(
    testenv: RunEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one batch in flight at a time, a batch whose poison message cannot be kept aside yet
    (its quarantine write waits) lets the next batches be stored meanwhile; it is acknowledged
    once its poison is kept, and nothing comes back after."""
    monkeypatch.setattr(ingester_mod, "BATCHES_IN_FLIGHT", 1)
    gate, waiting = asyncio.Event(), asyncio.Event()

    class Slow(Pipeline):
        async def reject_many(self, rejections: list[Rejection], transport: str) -> None:
            waiting.set()
            await gate.wait()
            await super().reject_many(rejections, transport)

    try:
        async with InProcess(testenv, "qs", Slow) as ing:
            await ing.publish(nested(300))
            await asyncio.wait_for(waiting.wait(), 10)
            await ing.publish(*(position(i) for i in range(20)))
            await until(lambda: events_of(testenv, ing.name) == 20)
            assert quarantined(testenv, ing.name) == []  # still waiting, and the others went past it
            gate.set()
            await until(lambda: len(quarantined(testenv, ing.name)) == 1)
            await asyncio.sleep(0.5)  # the acknowledgement leaves once the ingester hears of the commit
            # The same session again: everything was acknowledged, so nothing is sent again.
            waiting.clear()
            await ing.restart()
            await asyncio.sleep(1.0)
            assert not waiting.is_set()
            assert events_of(testenv, ing.name) == 20
            assert len(quarantined(testenv, ing.name)) == 1
    finally:
        gate.set()
