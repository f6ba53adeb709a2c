"""MQTT ingest against the real Mosquitto: QoS 1, acks after commit, nothing lost on SIGKILL."""

from __future__ import annotations

import secrets
import signal
import time

import orjson

from ingest.mqtt_conn import PublisherThread, endpoint
from tests.conftest import RunEnv, start_server, stop_server, wait_for


def publisher(prefix: str) -> PublisherThread:
    """QoS 1 by default; each publish answers a future, done once the broker has acknowledged it."""
    return PublisherThread(endpoint("mqtt://127.0.0.1:1883"), f"pub-{secrets.token_hex(4)}", inflight=200)


def count_events(te: RunEnv, tenant: str) -> int:
    rows = te.sql("SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s", tenant)
    return int(rows[0][0])


def test_mqtt_native_and_quarantine(tenant, testenv: RunEnv) -> None:
    prefix = testenv.env["TRACKD_MQTT_TOPIC_PREFIX"]
    shp = tenant.http.post("/v1/shipments", json={"tracking_number": "MQ-1"}).json()
    tenant.http.post("/v1/devices", json={"id": "phone-1", "key": f"k-{tenant.name}-p"})
    tenant.http.post(
        f"/v1/shipments/{shp['id']}/devices", json={"device_id": "phone-1", "from": "2026-01-01T00:00:00Z"}
    )
    pub = publisher(prefix)
    topic = f"{prefix}trackd/{tenant.name}/devices/phone-1/events"
    pub.publish(
        topic, orjson.dumps({"occurred_at": "2026-11-01T00:00:00Z", "position": {"lat": 48.1, "lon": 11.5}}), qos=1
    ).result(5)
    pub.publish(topic, b"garbage", qos=1).result(5)
    pub.publish(f"{prefix}trackd/nosuchtenant/devices/x/events", b"{}", qos=1).result(5)
    pub.close()
    got = wait_for(lambda: tenant.http.get(f"/v1/shipments/{shp['id']}").json()["last_position"])
    assert got["lat"] == 48.1
    q = wait_for(lambda: tenant.http.get("/v1/quarantine").json()["items"])
    assert q[0]["raw"] == "garbage"
    assert q[0]["source"] == "native"
    assert "body" in q[0]["reason"]


def test_sigkill_of_the_ingester_loses_nothing_and_stores_nothing_twice(tenant, testenv: RunEnv, tmp_path) -> None:
    run = secrets.token_hex(3)
    extra = {
        "TRACKD_MQTT_TOPIC_PREFIX": f"kill{run}/",
        "TRACKD_MQTT_CLIENT_ID": f"ingest-kill-{run}",
        "TRACKD_MQTT_SHARE_GROUP": f"kill{run}",
    }
    ingester = start_server(testenv, tmp_path, roles="api,mqtt", extra=extra)
    # Mosquitto keeps at most 1000 messages (max_queued_messages) for an offline session by default;
    # the backlog here stays under that. The compose stack raises the limit.
    total = 900
    pub = publisher(extra["TRACKD_MQTT_TOPIC_PREFIX"])
    topic = f"kill{run}/trackd/{tenant.name}/devices/gps-9/events"
    infos = []
    try:
        for i in range(total):
            body = {"occurred_at": 1_790_000_000 + i, "position": {"lat": (i % 1800) / 20 - 45, "lon": 10.0}}
            infos.append(pub.publish(topic, orjson.dumps(body), qos=1))
            if i == total // 3:
                wait_for(lambda: count_events(testenv, tenant.name) > 0, timeout=20, interval=0.005)
                ingester.proc.send_signal(signal.SIGKILL)
                ingester.proc.wait()
        for info in infos:
            info.result(20)  # every message acknowledged by the broker
        stored_at_kill = count_events(testenv, tenant.name)
        assert stored_at_kill < total
        time.sleep(0.5)
        ingester = start_server(testenv, tmp_path, roles="api,mqtt", extra=extra)
        wait_for(lambda: count_events(testenv, tenant.name) >= total, timeout=60)
        time.sleep(1.0)  # anything redelivered twice would show up now
        assert count_events(testenv, tenant.name) == total
        distinct = testenv.sql(
            "SELECT count(DISTINCT occurred_at) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s",
            tenant.name,
        )[0][0]
        assert distinct == total
    finally:
        pub.close()
        stop_server(ingester)
