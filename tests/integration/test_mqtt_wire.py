"""The ingester's MQTT connection against the real Mosquitto: a persistent session hands back
exactly what was not acknowledged, acknowledgements written in one go all count, and the ingester
stops reading while too much waits; over TLS the broker's certificate is checked."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from ingest import mqtt as ingester_mod
from ingest import mqtt_codec, mqtt_conn
from ingest.mqtt_codec import Message
from ingest.pipeline import Pipeline
from tests.conftest import MQTT_URL, free_port
from trackd import db, registry, store, tenant_store
from trackd.settings import Settings
from trackd.shipment import Shipment


async def publish(topic: str, payloads: list[bytes]) -> None:
    """QoS 1, one at a time: each once the broker has acknowledged the one before."""
    pub = mqtt_conn.Publisher(mqtt_conn.endpoint(MQTT_URL), f"pub-{secrets.token_hex(4)}")
    try:
        for p in payloads:
            await asyncio.wait_for(pub.publish(topic, p, qos=1), 5)
    finally:
        await pub.close()


async def session(client_id: str, v5: bool, got: list[Message], clean: bool = False) -> mqtt_conn.Connection:
    conn, _ = await mqtt_conn.open_connection(
        mqtt_conn.endpoint(MQTT_URL),
        client_id,
        v5=v5,
        clean=clean,
        keepalive=30,
        on_message=got.append,
        session_expiry=300 if v5 else 0,
        receive_maximum=100 if v5 else 0,
    )
    return conn


async def until(pred, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("v5", [True, False])
async def test_unacknowledged_messages_come_back_and_acknowledged_ones_do_not(v5: bool) -> None:
    run = secrets.token_hex(4)
    topic, client_id = f"wire{run}/t", f"wire-{run}"
    got: list[Message] = []
    conn = await session(client_id, v5, got)
    await mqtt_conn.subscribe(conn, 1, [topic])
    await publish(topic, [b"m%d" % i for i in range(10)])
    await until(lambda: len(got) == 10)
    assert [m.payload for m in got] == [b"m%d" % i for i in range(10)]
    assert all(m.qos == 1 and m.topic == topic for m in got)
    conn.send(b"".join(mqtt_codec.puback_packet(m.pid) for m in got[:6]))  # one write, six acks
    await asyncio.sleep(0.3)
    conn.send(mqtt_codec.BYE)
    assert conn.transport is not None
    conn.transport.close()
    await asyncio.wait_for(conn.lost, 5)

    again: list[Message] = []
    conn2 = await session(client_id, v5, again)
    try:
        await until(lambda: len(again) == 4)
        await asyncio.sleep(0.3)
        assert [m.payload for m in again] == [b"m%d" % i for i in range(6, 10)]
        conn2.send(b"".join(mqtt_codec.puback_packet(m.pid) for m in again))
        await asyncio.sleep(0.2)
    finally:
        conn2.send(mqtt_codec.BYE)
        if conn2.transport is not None:
            conn2.transport.close()
    # the session is now empty: a clean connection ends it
    conn3 = await session(client_id, v5, [], clean=True)
    conn3.send(mqtt_codec.BYE)
    assert conn3.transport is not None
    conn3.transport.close()


async def test_the_ingester_stops_reading_while_too_much_waits_and_loses_nothing(testenv, monkeypatch) -> None:
    """Backpressure: with the database holding the batches up, the ingester stops reading at
    MAX_WAITING (the broker keeps the rest); once they go through, every message is stored once."""
    monkeypatch.setattr(ingester_mod, "MAX_WAITING", 40)
    run = secrets.token_hex(4)
    name, prefix = f"bp-{run}", f"bp{run}/"
    pool = await db.open_pool(testenv.dsn, 4)
    stop = asyncio.Event()
    task = None
    try:
        await tenant_store.create_tenant(pool, name, None)
        tenant = await tenant_store.tenant_with_secret(pool, name, None)
        assert tenant is not None
        sid = store.new_id("shp")
        async with store.transaction(pool) as conn:
            await registry.create_shipment(conn, tenant[0].id, Shipment(sid, "BP-1"), [], datetime.now(UTC), None)
        settings = Settings(
            database_url=testenv.dsn, mqtt_url=MQTT_URL, mqtt_topic_prefix=prefix, mqtt_client_id=f"bp-{run}"
        )
        ingester = ingester_mod.MqttIngester(settings, Pipeline(pool))
        task = asyncio.create_task(ingester.run(stop))
        await asyncio.wait_for(ingester.subscribed.wait(), 10)
        with psycopg.connect(testenv.dsn) as blocker:  # holds the shipment's state row
            blocker.execute("SELECT 1 FROM shipment_state WHERE shipment_id = %s FOR UPDATE", (sid,))
            payloads = [
                orjson.dumps({"occurred_at": f"2026-11-01T00:{i // 60:02d}:{i % 60:02d}Z", "shipment": "BP-1",
                              "position": {"lat": 10 + i / 1000, "lon": 20.0}})
                for i in range(600)
            ]  # fmt: skip
            topic = f"{prefix}trackd/{name}/devices/d1/events"
            await publish(topic, payloads)
            try:  # the broker hands the messages on as the machine allows: on a busy one, in seconds
                await until(lambda: ingester.conn is not None and ingester.conn.paused, within_s=20.0)
            except AssertionError:
                paused = ingester.conn is not None and ingester.conn.paused
                raise AssertionError(f"reading not paused: {ingester.queue.qsize()} waiting, paused {paused}") from None
            waiting = ingester.queue.qsize()
            assert 40 <= waiting < 600
            await asyncio.sleep(0.3)
            assert ingester.queue.qsize() == waiting  # not reading: the broker holds the rest
            blocker.rollback()

        async def stored() -> int:
            async with store.transaction(pool) as conn:
                row = await (
                    await conn.execute("SELECT count(*) AS n FROM events WHERE tenant_id = %s", (tenant[0].id,))
                ).fetchone()
            return int(row["n"]) if row else 0

        for _ in range(250):
            if await stored() == 600:
                break
            await asyncio.sleep(0.04)
        assert await stored() == 600
        assert ingester.conn is not None
        assert not ingester.conn.paused
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 10)
        end = await session(f"bp-{run}", True, [], clean=True)  # the persistent session goes too
        end.send(mqtt_codec.BYE)
        if end.transport is not None:
            end.transport.close()
        await pool.close()


def _certificates(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for localhost that it signed: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trackd test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = root / "ca.pem", root / "cert.pem", root / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for p in paths:
        p.chmod(0o644)
    return paths


def _tls_broker(root: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A Mosquitto of this test's with a TLS listener: (process, port, CA file), once it listens."""
    ca, cert, key = _certificates(root)
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {cert}\nkeyfile {key}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port, ca
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the TLS broker did not start")


async def test_mqtts_verifies_the_broker_and_carries_messages(tmp_path: Path, monkeypatch) -> None:
    """`mqtts://`: TLS with the system's trust store (here SSL_CERT_FILE names the test CA); a
    broker whose certificate is not trusted is refused."""
    broker, port, ca = await asyncio.to_thread(_tls_broker, tmp_path)
    try:
        ep = mqtt_conn.endpoint(f"mqtts://localhost:{port}")
        with pytest.raises(ssl.SSLCertVerificationError):  # the test CA is not trusted yet
            await mqtt_conn.open_connection(ep, "tls-a", v5=True, clean=True, keepalive=30, on_message=print)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        got: list[Message] = []
        conn, _ = await mqtt_conn.open_connection(ep, "tls-b", v5=True, clean=True, keepalive=30, on_message=got.append)
        await mqtt_conn.subscribe(conn, 1, ["tls/t"])
        conn.send(mqtt_codec.publish_packet(b"tls/t", b"over tls", 1, 7, v5=True))
        await until(lambda: len(got) == 1)
        assert (got[0].topic, got[0].payload) == ("tls/t", b"over tls")
        assert conn.transport is not None
        conn.transport.close()
    finally:
        broker.terminate()
        await asyncio.to_thread(broker.wait, 10)
