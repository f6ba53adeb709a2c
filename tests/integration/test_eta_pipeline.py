"""ETA, exceptions and emissions through the pipeline, seen on the shipment and the websocket."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
from websockets.sync.client import connect

LEG = {
    "mode": "road",
    "origin": {"name": "Monterrey", "lat": 25.67, "lon": -100.31},
    "destination": {"name": "Chicago", "lat": 41.88, "lon": -87.63},
}


def _collect(ws, want: set[str], timeout: float = 20.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= {m["type"] for m in got}:
        try:
            got.append(orjson.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except TimeoutError:
            break
    return got


def test_a_shipment_running_late_raises_delayed_and_streams_eta_changes(tenant, server) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    shp = tenant.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "LATE-ETA-1",
            "carrier": "acme-trucking",
            "legs": [LEG],
            "weight_kg": 12000,
            "promised_at": (now + timedelta(hours=10)).isoformat(),
        },
    ).json()
    sid = shp["id"]
    assert shp["emissions"]["legs"][0]["mode"] == "road"
    assert shp["emissions"]["co2e_kg"] > 0
    ws_url = server.url.replace("http", "ws") + f"/v1/stream?token={tenant.api_key}"
    with connect(ws_url) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "shipments": [sid]}).decode())
        snap = orjson.loads(ws.recv(timeout=10))
        assert snap["type"] == "snapshot"
        # near the destination, on time
        r = tenant.http.post(
            "/v1/events",
            json={
                "occurred_at": (now - timedelta(minutes=5)).isoformat(),
                "shipment": "LATE-ETA-1",
                "position": {"lat": 41.5, "lon": -87.9, "speed_kmh": 70},
            },
        )
        assert r.status_code == 202
        first = _collect(ws, {"eta.changed"})
        early = [m for m in first if m["type"] == "eta.changed"][-1]
        assert datetime.fromisoformat(early["eta"]["predicted_at"]) < now + timedelta(hours=10)
        # then back at the origin: a day and more away, far past the promise
        r = tenant.http.post(
            "/v1/events",
            json={
                "occurred_at": now.isoformat(),
                "shipment": "LATE-ETA-1",
                "position": {"lat": 25.7, "lon": -100.3, "speed_kmh": 0},
            },
        )
        assert r.status_code == 202
        later = _collect(ws, {"eta.changed", "exception.raised"})
    types = [m["type"] for m in later]
    assert "eta.changed" in types, types
    raised = [m for m in later if m["type"] == "exception.raised"]
    assert raised
    assert raised[0]["exception"]["kind"] == "delayed"
    assert raised[0]["shipment_id"] == sid
    eta_msg = [m for m in later if m["type"] == "eta.changed"][-1]
    assert eta_msg["previous_predicted_at"] == early["eta"]["predicted_at"]
    seqs = [m["seq"] for m in first + later]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    got = tenant.http.get(f"/v1/shipments/{sid}").json()
    eta = got["eta"]
    assert (
        datetime.fromisoformat(eta["earliest"])
        <= datetime.fromisoformat(eta["predicted_at"])
        <= datetime.fromisoformat(eta["latest"])
    )
    assert eta["promised_at"] is not None
    assert any(e["kind"] == "delayed" and e["cleared_at"] is None for e in got["exceptions"])
    history = tenant.http.get(f"/v1/shipments/{sid}/eta").json()
    assert len(history) >= 2
    assert tenant.http.get("/v1/shipments", params={"exception": "delayed"}).json()["items"][0]["id"] == sid


def test_temperature_excursion_raised_and_cleared(tenant) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    shp = tenant.http.post(
        "/v1/shipments", json={"tracking_number": "REEFER-1", "legs": [LEG], "temperature_range_c": [2, 8]}
    ).json()

    def sensor(t: float, minutes: int) -> None:
        r = tenant.http.post(
            "/v1/events",
            json={
                "occurred_at": (now - timedelta(minutes=minutes)).isoformat(),
                "shipment": "REEFER-1",
                "sensor": {"temperature_c": t},
            },
        )
        assert r.status_code == 202

    sensor(5.0, 30)
    sensor(12.5, 20)
    got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
    assert [e["kind"] for e in got["exceptions"] if e["cleared_at"] is None] == ["temperature_excursion"]
    sensor(4.0, 10)
    got = tenant.http.get(f"/v1/shipments/{shp['id']}").json()
    exc = [e for e in got["exceptions"] if e["kind"] == "temperature_excursion"]
    assert len(exc) == 1
    assert exc[0]["cleared_at"] is not None
