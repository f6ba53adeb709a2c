"""Planned routes against the running server: a leg's booked route is kept, served as the plan, and
`off_route` is measured against it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Tenant

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
# Amsterdam area to Hanover area by a detour to the north: the straight line between the ends is
# about 160 km from the plan at its middle.
ROUTE = {"type": "LineString", "coordinates": [[5.0, 52.0], [7.0, 53.5], [9.0, 52.0]]}
LEG = {"mode": "road", "origin": {"lat": 52.0, "lon": 5.0}, "destination": {"lat": 52.0, "lon": 9.0}}


def position(tracking: str, minutes: int, lat: float, lon: float) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minutes)
    return {"occurred_at": at.isoformat(), "shipment": tracking, "position": {"lat": lat, "lon": lon, "speed_kmh": 70}}


def off_route(t: Tenant, sid: str) -> list[dict[str, Any]]:
    exceptions: list[dict[str, Any]] = t.http.get(f"/v1/shipments/{sid}").json()["exceptions"]
    return [e for e in exceptions if e["kind"] == "off_route"]


@pytest.fixture(scope="module")
def tenant(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant("plan")
    return t


def test_a_planned_route_makes_off_route_fire_and_clear(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/shipments", json={"tracking_number": "PLAN-1", "legs": [{**LEG, "route": ROUTE}]})
    assert r.status_code == 201, r.text
    shipment = r.json()
    sid = shipment["id"]
    assert shipment["legs"][0]["route"] == {"type": "LineString", "coordinates": ROUTE["coordinates"]}
    plan = tenant.http.get(f"/v1/shipments/{sid}/route").json()
    assert plan["features"][0]["geometry"]["coordinates"] == ROUTE["coordinates"]
    assert plan["features"][0]["properties"] == {"leg": 0, "mode": "road", "planned": True}

    assert tenant.http.post("/v1/events", json=[position("PLAN-1", 0, 52.0, 5.1)]).status_code == 202
    assert tenant.http.post("/v1/events", json=[position("PLAN-1", 60, 53.4, 6.9)]).status_code == 202
    assert off_route(tenant, sid) == []
    # On the straight line between the ends, but far from the plan.
    assert tenant.http.post("/v1/events", json=[position("PLAN-1", 120, 52.05, 7.0)]).status_code == 202
    [raised] = off_route(tenant, sid)
    assert raised["raised_at"] == (T0 + timedelta(minutes=120)).isoformat()
    assert raised["cleared_at"] is None
    assert raised["detail"].endswith("km off the planned road route")
    assert tenant.http.post("/v1/events", json=[position("PLAN-1", 180, 53.0, 7.8)]).status_code == 202
    [cleared] = off_route(tenant, sid)
    assert cleared["cleared_at"] == (T0 + timedelta(minutes=180)).isoformat()


def test_without_a_route_the_plan_is_computed_and_a_bad_route_is_422(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/shipments", json={"tracking_number": "PLAN-2", "legs": [LEG]})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    plan = tenant.http.get(f"/v1/shipments/{sid}/route").json()
    assert plan["features"][0]["geometry"]["coordinates"] == [[5.0, 52.0], [9.0, 52.0]]
    assert plan["features"][0]["properties"]["planned"] is False
    bad = {**LEG, "route": {"type": "LineString", "coordinates": [[5.0, 52.0], [190.0, 52.0]]}}
    r = tenant.http.post("/v1/shipments", json={"tracking_number": "PLAN-3", "legs": [bad]})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("legs.0.route.coordinates[1]:")
    # PATCH keeps a route it is not given, and replaces it when it is.
    r = tenant.http.patch(f"/v1/shipments/{sid}", json={"carrier": "acme"})
    assert r.status_code == 200, r.text
    r = tenant.http.patch(f"/v1/shipments/{sid}", json={"legs": [{**LEG, "route": ROUTE}]})
    assert r.json()["legs"][0]["route"]["coordinates"] == ROUTE["coordinates"]
    r = tenant.http.patch(f"/v1/shipments/{sid}", json={"carrier": "other"})
    assert r.json()["legs"][0]["route"]["coordinates"] == ROUTE["coordinates"]
