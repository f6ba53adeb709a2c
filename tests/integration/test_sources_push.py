"""Sources that authenticate with the ingest secret in a header, through a real server: Traccar
forwarding (`Authorization: Bearer <secret>`) and DHL push (`DHL-API-Key: <secret>`).

For each: an authenticated delivery is stored and shows on the shipment (by device for Traccar, by
tracking number for DHL); a wrong, missing or misplaced secret, and an unknown tenant, get the same
401 and store nothing; a redelivery stores nothing new; malformed input is a 422 naming the field,
kept in quarantine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import RunEnv, Server, Tenant

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
UNIQUE_ID = "356307042441013"
DENIED = {"error": "Unauthorized", "detail": "unknown tenant or bad signature"}


def fixture(source: str, name: str) -> bytes:
    return (PAYLOADS / source / name).read_bytes()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def sender(server: Server) -> Iterator[httpx.Client]:
    """A client with no API key: what Traccar or DHL would send with."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post(client: httpx.Client, tenant: str, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post(
        f"/v1/ingest/{tenant}/{source}", content=body, headers={"content-type": "application/json", **headers}
    )


def count_events(te: RunEnv, tenant: str, source: str) -> int:
    rows = te.sql(
        "SELECT count(*) FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = %s AND e.source = %s",
        tenant,
        source,
    )
    return int(rows[0][0])


def events_of(t: Tenant, shipment_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 500, **({"kind": kind} if kind else {})}
    r = t.http.get(f"/v1/shipments/{shipment_id}/events", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def quarantine(t: Tenant, source: str) -> list[dict[str, Any]]:
    r = t.http.get("/v1/quarantine", params={"source": source, "limit": 50})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def refused(client: httpx.Client, t: Tenant, source: str, body: bytes, header: str, value: str) -> None:
    """Every way of not holding this tenant's secret gets the one 401."""
    attempts = [
        post(client, t.name, source, body, {header: value.replace(t.ingest_secret, t.ingest_secret + "x")}),
        post(client, t.name, source, body, {header: value.replace(t.ingest_secret, t.api_key)}),
        post(client, t.name, source, body, {}),
        post(client, t.name + "zz", source, body, {header: value}),  # unknown tenant, a real secret
    ]
    assert [(r.status_code, r.json()) for r in attempts] == [(401, DENIED)] * 4


def test_traccar_forwarding_with_a_bearer_secret(
    tenant: Tenant, testenv: RunEnv, sender: httpx.Client, server: Server
) -> None:
    t = tenant
    assert t.http.post("/v1/devices", json={"id": UNIQUE_ID, "key": f"tc-{t.name}-reefer17"}).status_code == 201
    shp = t.http.post("/v1/shipments", json={"tracking_number": f"TRC-{t.name}"}).json()
    r = t.http.post(f"/v1/shipments/{shp['id']}/devices", json={"device_id": UNIQUE_ID, "from": "2024-05-01T00:00:00Z"})
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {t.ingest_secret}"}

    refused(sender, t, "traccar", fixture("traccar", "position.json"), "Authorization", auth["Authorization"])
    assert count_events(testenv, t.name, "traccar") == 0

    names = [
        "position.json",  # a position and a reading
        "event_geofence_enter.json",  # a position and `arrived`
        "event_geofence_exit.json",  # a position, a reading and `departed`
        "event_alarm.json",  # a position and the alarm, without a code
        "event_device_offline.json",  # nothing
        "event_ignition_on.json",  # the first position and reading again: duplicates
    ]
    stored = []
    for name in names:
        r = post(sender, t.name, "traccar", fixture("traccar", name), auth)
        assert r.status_code == 202, r.text
        stored.append((r.json()["stored"], r.json()["duplicates"]))
    assert stored == [(2, 0), (2, 0), (3, 0), (2, 0), (0, 0), (0, 2)]
    assert count_events(testenv, t.name, "traccar") == 9

    assert len(events_of(t, shp["id"])) == 9
    assert {e["device_id"] for e in events_of(t, shp["id"])} == {UNIQUE_ID}
    milestones = [(e["code"], e["raw_code"], at(e["occurred_at"])) for e in events_of(t, shp["id"], "milestone")]
    assert sorted(milestones, key=lambda m: m[2]) == [
        ("arrived", "geofenceEnter", at("2024-06-01T11:02:10Z")),
        ("departed", "geofenceExit", at("2024-06-01T14:40:00Z")),
        (None, "alarm:tampering", at("2024-06-01T15:05:44Z")),
    ]
    got = t.http.get(f"/v1/shipments/{shp['id']}").json()
    assert got["status"] == "in_transit"
    last = got["last_position"]
    assert (last["lat"], last["lon"], at(last["at"])) == (
        pytest.approx(51.89117),
        pytest.approx(4.3125),
        at("2024-06-01T15:05:44Z"),
    )
    speeds = sorted(e["data"]["speed_kmh"] for e in events_of(t, shp["id"], "position"))
    assert speeds == [0.0, pytest.approx(8.1 * 1.852), pytest.approx(21.6 * 1.852), pytest.approx(27.0 * 1.852)]

    bad = orjson.loads(fixture("traccar", "position.json"))
    bad["position"]["latitude"] = 123.0
    r = post(sender, t.name, "traccar", orjson.dumps(bad), auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "ValidationError"
    assert "position.lat" in r.json()["detail"]
    (kept,) = quarantine(t, "traccar")
    assert "position.lat" in kept["reason"]
    assert count_events(testenv, t.name, "traccar") == 9


def test_dhl_push_with_the_secret_in_dhl_api_key(tenant: Tenant, testenv: RunEnv, sender: httpx.Client) -> None:
    t = tenant
    shp = t.http.post("/v1/shipments", json={"tracking_number": "7777777770"}).json()
    auth = {"DHL-API-Key": t.ingest_secret}
    transit, delivered = fixture("dhl", "push_express_transit.json"), fixture("dhl", "push_express_delivered.json")

    refused(sender, t, "dhl", transit, "DHL-API-Key", t.ingest_secret)
    wrong_header = post(sender, t.name, "dhl", transit, {"Authorization": f"Bearer {t.ingest_secret}"})
    assert (wrong_header.status_code, wrong_header.json()) == (401, DENIED)
    assert count_events(testenv, t.name, "dhl") == 0

    for body, n in ((transit, 4), (delivered, 2)):
        r = post(sender, t.name, "dhl", body, auth)
        assert r.status_code == 202, r.text
        assert r.json()["stored"] == n
    assert count_events(testenv, t.name, "dhl") == 6
    milestones = [
        (e["code"], e["raw_code"], e["classifier"], at(e["occurred_at"])) for e in events_of(t, shp["id"], "milestone")
    ]
    assert sorted(milestones, key=lambda m: m[3]) == [
        ("info_received", "pre-transit", "actual", at("2024-05-29T09:40:00Z")),
        ("in_transit", "transit", "actual", at("2024-05-29T18:05:00Z")),
        ("in_transit", "transit", "actual", at("2024-05-31T06:12:00Z")),
        ("in_transit", "transit", "actual", at("2024-06-01T07:50:00Z")),
        ("delivered", "delivered", "actual", at("2024-06-01T13:27:00Z")),
        ("delivered", "estimatedTimeOfDelivery", "estimated", at("2024-06-03T18:00:00Z")),
    ]
    assert t.http.get(f"/v1/shipments/{shp['id']}").json()["status"] == "delivered"

    again = post(sender, t.name, "dhl", transit, auth)
    assert (again.status_code, again.json()["stored"], again.json()["duplicates"]) == (202, 0, 4)
    assert count_events(testenv, t.name, "dhl") == 6

    bad = orjson.loads(transit)
    del bad["shipments"][0]["events"][1]["statusCode"]
    r = post(sender, t.name, "dhl", orjson.dumps(bad), auth)
    assert r.status_code == 422, r.text
    assert "shipments[0].events[1].statusCode" in r.json()["detail"]
    assert len(quarantine(t, "dhl")) == 1
    assert count_events(testenv, t.name, "dhl") == 6
