"""The ingester's MQTT connection against the real Mosquitto: a persistent session hands back
exactly what was not acknowledged, and acknowledgements written in one go all count."""

from __future__ import annotations

import asyncio
import secrets

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest import mqtt_wire
from ingest.mqtt_wire import Message
from tests.conftest import MQTT_URL


def publish(topic: str, payloads: list[bytes]) -> None:
    ep = mqtt_wire.endpoint(MQTT_URL)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{secrets.token_hex(4)}")
    c.connect(ep.host, ep.port)
    c.loop_start()
    try:
        for p in payloads:
            c.publish(topic, p, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


async def session(client_id: str, v5: bool, got: list[Message], clean: bool = False) -> mqtt_wire.Connection:
    conn, _ = await mqtt_wire.open_connection(
        mqtt_wire.endpoint(MQTT_URL),
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
    await mqtt_wire.subscribe(conn, 1, [topic])
    await asyncio.to_thread(publish, topic, [b"m%d" % i for i in range(10)])
    await until(lambda: len(got) == 10)
    assert [m.payload for m in got] == [b"m%d" % i for i in range(10)]
    assert all(m.qos == 1 and m.topic == topic for m in got)
    conn.send(b"".join(mqtt_wire.puback_packet(m.pid) for m in got[:6]))  # one write, six acks
    await asyncio.sleep(0.3)
    conn.send(mqtt_wire.BYE)
    assert conn.transport is not None
    conn.transport.close()
    await asyncio.wait_for(conn.lost, 5)

    again: list[Message] = []
    conn2 = await session(client_id, v5, again)
    try:
        await until(lambda: len(again) == 4)
        await asyncio.sleep(0.3)
        assert [m.payload for m in again] == [b"m%d" % i for i in range(6, 10)]
        conn2.send(b"".join(mqtt_wire.puback_packet(m.pid) for m in again))
        await asyncio.sleep(0.2)
    finally:
        conn2.send(mqtt_wire.BYE)
        if conn2.transport is not None:
            conn2.transport.close()
    # the session is now empty: a clean connection ends it
    conn3 = await session(client_id, v5, [], clean=True)
    conn3.send(mqtt_wire.BYE)
    assert conn3.transport is not None
    conn3.transport.close()
