"""POST /v1/promise from the tenant's completed journeys, and `p_late`/`revision` on a shipment's ETA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

ORIGIN = {"name": "Monterrey", "lat": 25.67, "lon": -100.31}
DESTINATION = {"name": "Chicago", "lat": 41.88, "lon": -87.63}
LANE = "25.67,-100.31|41.88,-87.63|road"
TRANSIT_H = (30.0, 34.0, 38.0)


@pytest.fixture(scope="module")
def history(make_tenant: Any) -> Any:
    """A tenant whose three journeys on the lane took 30, 34 and 38 hours door to door."""
    t = make_tenant("promise")
    now = datetime.now(UTC).replace(microsecond=0)
    for i, transit in enumerate(TRANSIT_H):
        tn = f"PROMISE-{i}"
        r = t.http.post(
            "/v1/shipments",
            json={"tracking_number": tn, "legs": [{"mode": "road", "origin": ORIGIN, "destination": DESTINATION}]},
        )
        assert r.status_code == 201, r.text
        picked = now - timedelta(hours=100 - 10 * i)
        events = [
            {"occurred_at": picked.isoformat(), "shipment": tn, "milestone": {"code": "picked_up", "location": ORIGIN}},
            {
                "occurred_at": (picked + timedelta(hours=transit)).isoformat(),
                "shipment": tn,
                "milestone": {"code": "delivered", "location": DESTINATION},
            },
        ]
        assert t.http.post("/v1/events", json=events).status_code == 202
    return t


def test_quote_from_the_lane_history(history: Any) -> None:
    ship_at = datetime(2030, 5, 1, 8, tzinfo=UTC)
    r = history.http.post(
        "/v1/promise",
        json={"origin": ORIGIN, "destination": DESTINATION, "mode": "road", "ship_at": ship_at.isoformat()},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["basis"] == {"journeys": 3, "lane": LANE}
    assert out["confidence"] == 0.8
    # three journeys: the middle one is likely, the 80 % interval spans the fastest and the slowest
    assert datetime.fromisoformat(out["likely"]) == ship_at + timedelta(hours=34)
    assert datetime.fromisoformat(out["earliest"]) == ship_at + timedelta(hours=30)
    assert datetime.fromisoformat(out["latest"]) == ship_at + timedelta(hours=38)
    # the same lane given as legs
    legs = history.http.post(
        "/v1/promise",
        json={"legs": [{"mode": "road", "origin": ORIGIN, "destination": DESTINATION}], "ship_at": ship_at.isoformat()},
    )
    assert legs.json() == out


def test_unseen_lane_gets_the_stated_prior(history: Any) -> None:
    ship_at = datetime(2030, 5, 1, 8, tzinfo=UTC)
    body = {"origin": DESTINATION, "destination": ORIGIN, "mode": "road", "ship_at": ship_at.isoformat()}
    out = history.http.post("/v1/promise", json=body).json()
    assert out["basis"] == {"journeys": 0, "lane": "41.88,-87.63|25.67,-100.31|road"}
    earliest, likely, latest = (datetime.fromisoformat(out[k]) for k in ("earliest", "likely", "latest"))
    assert ship_at < earliest < likely < latest
    # the physics prior: about 2,000 km by road at 60 km/h, plus the dwell at both ends
    assert 40 < (likely - ship_at).total_seconds() / 3600 < 80


def test_bad_quotes_are_422(history: Any) -> None:
    assert history.http.post("/v1/promise", json={"origin": ORIGIN, "mode": "road"}).status_code == 422
    bad = {"origin": {"unlocode": "ZZZZZ"}, "destination": DESTINATION, "mode": "road"}
    r = history.http.post("/v1/promise", json=bad)
    assert r.status_code == 422
    assert r.json()["error"] == "ValidationError"


def test_eta_carries_p_late_and_revision(history: Any) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    r = history.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "PROMISE-LIVE",
            "legs": [{"mode": "road", "origin": ORIGIN, "destination": DESTINATION}],
            "promised_at": (now + timedelta(hours=2)).isoformat(),
        },
    )
    created = r.json()
    sid = created["id"]
    assert created["eta"]["revision"] == 0  # predicted at booking: waiting at the origin
    picked = {"occurred_at": (now - timedelta(hours=1)).isoformat(), "shipment": "PROMISE-LIVE"}
    history.http.post("/v1/events", json={**picked, "milestone": {"code": "picked_up", "location": ORIGIN}})
    first = history.http.get(f"/v1/shipments/{sid}").json()["eta"]
    # picked up an hour ago, the lane takes 30-38 h: the two hours promised will not be kept
    assert first["p_late"] > 0.9
    assert first["revision"] == 1
    near = {"occurred_at": now.isoformat(), "shipment": "PROMISE-LIVE", "position": {"lat": 41.8, "lon": -87.7}}
    history.http.post("/v1/events", json=near)
    second = history.http.get(f"/v1/shipments/{sid}").json()["eta"]
    assert second["revision"] == 2
    assert second["predicted_at"] < first["predicted_at"]
    bare = history.http.post(
        "/v1/shipments",
        json={
            "tracking_number": "PROMISE-NONE",
            "legs": [{"mode": "road", "origin": ORIGIN, "destination": DESTINATION}],
        },
    ).json()
    assert bare["eta"] is None or bare["eta"]["p_late"] is None
