"""Places through the real server: CRUD and isolation, crossings between fixes and by milestones,
late fixes, visit stats, and learned dwell reaching the ETA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.conftest import RunEnv, Tenant

NOW = datetime.now(UTC).replace(microsecond=0)
FIELD = {"type": "Polygon", "coordinates": [[[30, 50], [31, 50], [31, 51], [30, 51], [30, 50]]]}
SQUARE = {"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]]}


@pytest.fixture(scope="module")
def a(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant("pla")
    return t


@pytest.fixture(scope="module")
def b(make_tenant: Any) -> Tenant:
    t: Tenant = make_tenant("plb")
    return t


def tenant_id(testenv: RunEnv, t: Tenant) -> int:
    return int(testenv.sql("SELECT id FROM tenants WHERE name = %s", t.name)[0][0])


def place_messages(testenv: RunEnv, t: Tenant, shipment_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = testenv.sql(
        "SELECT type, payload FROM outbox WHERE tenant_id = %s AND shipment_id = %s AND type LIKE 'place.%%'"
        " ORDER BY seq",
        tenant_id(testenv, t),
        shipment_id,
    )
    return [(r[0], r[1]["occurred_at"], r[1]["place"]) for r in rows]


def fix(tracking: str, lon: float, lat: float, at: datetime) -> dict[str, Any]:
    return {"occurred_at": at.isoformat(), "shipment": tracking, "position": {"lat": lat, "lon": lon}}


def post_events(t: Tenant, events: list[dict[str, Any]]) -> None:
    r = t.http.post("/v1/events", json=events)
    assert r.status_code == 202, r.text


def shipment(t: Tenant, tracking: str, **extra: Any) -> str:
    r = t.http.post("/v1/shipments", json={"tracking_number": tracking, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def iso(d: datetime) -> str:
    return d.isoformat()


def test_places_crud_builtins_and_isolation(a: Tenant, b: Tenant) -> None:
    r = a.http.post("/v1/places", json={"name": "Yard", "kind": "warehouse", "geometry": SQUARE, "unlocode": "de xyz"})
    assert r.status_code == 201, r.text
    yard = r.json()
    assert (yard["name"], yard["kind"], yard["unlocode"], yard["builtin"]) == ("Yard", "warehouse", "DEXYZ", False)
    pid = yard["id"]
    circle = {"name": "Gate", "kind": "depot", "geometry": {"type": "Point", "coordinates": [5, 50]}, "radius_m": 500}
    assert a.http.post("/v1/places", json=circle).status_code == 201

    assert a.http.get(f"/v1/places/{pid}").json()["name"] == "Yard"
    assert b.http.get(f"/v1/places/{pid}").status_code == 404
    assert b.http.patch(f"/v1/places/{pid}", json={"name": "Mine"}).status_code == 404
    assert b.http.delete(f"/v1/places/{pid}").status_code == 404
    assert b.http.get("/v1/places", params={"builtin": "false"}).json() == {"items": [], "next_cursor": None}
    own = a.http.get("/v1/places", params={"builtin": "false"}).json()["items"]
    assert sorted(p["name"] for p in own) == ["Gate", "Yard"]

    # the bundled places: every tenant sees them, read-only, by stable ids
    rtm = b.http.get("/v1/places/unlocode:NLRTM").json()
    assert (rtm["kind"], rtm["builtin"], rtm["geometry"]["type"]) == ("port", True, "Point")
    assert b.http.get("/v1/places/iata:FRA").json()["kind"] == "airport"
    for call in (a.http.patch("/v1/places/iata:FRA", json={"name": "x"}), a.http.delete("/v1/places/iata:FRA")):
        assert call.status_code == 403
        assert call.json()["error"] == "Forbidden"
        assert "bundled" in call.json()["detail"]
    near = a.http.get("/v1/places", params={"bbox": "8.4,49.9,8.7,50.2", "kind": "airport"}).json()["items"]
    assert "iata:FRA" in [p["id"] for p in near]
    assert all(p["kind"] == "airport" for p in near)

    # one list, paged by id: the tenant's own and the bundled ones together
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        page = a.http.get("/v1/places", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == 9
    assert seen == sorted(seen)

    # validation
    open_ring = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}
    r = a.http.post("/v1/places", json={"name": "x", "kind": "other", "geometry": open_ring})
    assert r.status_code == 422
    assert "closed" in r.json()["detail"]
    r = a.http.post("/v1/places", json={**circle, "radius_m": 1_000_000})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("radius_m")
    assert a.http.post("/v1/places", json={**circle, "kind": "moon"}).status_code == 422

    r = a.http.patch(f"/v1/places/{pid}", json={"name": "Yard 2"})
    assert r.status_code == 200
    assert r.json()["name"] == "Yard 2"
    assert r.json()["geometry"] == SQUARE
    assert a.http.delete(f"/v1/places/{pid}").status_code == 204
    assert a.http.get(f"/v1/places/{pid}").status_code == 404


def test_two_fixes_straddling_a_place_enter_and_leave_it_and_a_late_fix_changes_nothing(
    a: Tenant, testenv: RunEnv
) -> None:
    t = a
    pid = t.http.post("/v1/places", json={"name": "Field", "kind": "customs", "geometry": FIELD}).json()["id"]
    hook = t.http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["place.entered", "place.exited"]})
    assert hook.status_code == 201, hook.text
    sid = shipment(t, "PLX-1")
    start = NOW - timedelta(hours=4)
    # 29.5 -> 31.5 at lat 50.5 in two hours: inside from half an hour to an hour and a half
    post_events(t, [fix("PLX-1", 29.5, 50.5, start)])
    post_events(t, [fix("PLX-1", 31.5, 50.5, start + timedelta(hours=2))])
    place = {"id": pid, "name": "Field", "kind": "customs"}
    expected = [
        ("place.entered", iso(start + timedelta(minutes=30)), place),
        ("place.exited", iso(start + timedelta(minutes=90)), place),
    ]
    assert place_messages(testenv, t, sid) == expected
    # a late fix from inside the field, older than the last one: stored, no second pair
    post_events(t, [fix("PLX-1", 30.5, 50.5, start + timedelta(hours=1))])
    assert place_messages(testenv, t, sid) == expected
    assert len(t.http.get(f"/v1/shipments/{sid}/events").json()["items"]) == 3
    stats = t.http.get(f"/v1/places/{pid}/stats").json()
    assert stats == {"visits": 1, "dwell_h": {"p50": 1.0, "p90": 1.0}}
    queued = testenv.sql(
        "SELECT type FROM webhook_deliveries WHERE tenant_id = %s AND shipment_id = %s ORDER BY type",
        tenant_id(testenv, t),
        sid,
    )
    assert [r[0] for r in queued] == ["place.entered", "place.exited"]
    got = t.http.get("/v1/places/visits", params={"shipment_id": sid}).json()["items"]
    at = datetime.fromisoformat
    assert [(v["place"], at(v["entered_at"]), at(v["exited_at"])) for v in got] == [
        (place, start + timedelta(minutes=30), start + timedelta(minutes=90))
    ]


def test_a_dcsa_arrival_enters_the_bundled_port(a: Tenant, testenv: RunEnv) -> None:
    t = a
    sid = shipment(t, "MAEU240599001")
    arrived = NOW - timedelta(hours=3)
    event = {
        "eventID": "5e51e72c-d872-11ea-811c-0f8f10a32ff1",
        "eventCreatedDateTime": iso(arrived),
        "eventType": "TRANSPORT",
        "eventClassifierCode": "ACT",
        "eventDateTime": iso(arrived),
        "transportEventTypeCode": "ARRI",
        "transportCall": {
            "transportCallID": "8b64d20b-523b-4491-b2e5-32cfa5174eee",
            "UNLocationCode": "NLRTM",
            "modeOfTransport": "VESSEL",
            "location": {"locationName": "Port of Rotterdam", "UNLocationCode": "NLRTM"},
        },
        "documentReferences": [{"documentReferenceType": "TRD", "documentReferenceValue": "MAEU240599001"}],
    }
    r = t.signed("dcsa", orjson.dumps([event]), header="Notification-Signature")
    assert r.status_code in (200, 202, 204), r.text
    assert place_messages(testenv, t, sid) == [
        ("place.entered", iso(arrived), {"id": "unlocode:NLRTM", "name": "Rotterdam", "kind": "port"})
    ]


RTM = (4.14, 51.95)
AWAY = (4.14, 52.40)  # 50 km north: outside the port's 10 km circle


def visits(
    tracking: str, first: datetime, n: int, stay: timedelta, apart: timedelta = timedelta(hours=8)
) -> list[dict[str, Any]]:
    """n visits of the port: from 50 km away in one hour (entering 48 minutes in), a stay, one hour
    out (leaving 12 minutes in), and `apart` away before the next."""
    out, at = [], first
    for _ in range(n):
        out += [fix(tracking, *AWAY, at), fix(tracking, *RTM, at + timedelta(hours=1))]
        at += timedelta(hours=1) + stay
        out += [fix(tracking, *RTM, at), fix(tracking, *AWAY, at + timedelta(hours=1))]
        at += apart
    return out


def test_a_return_within_hours_is_the_same_stay(make_tenant: Any) -> None:
    """Back at the port less than `place_store.STAY_GAP` after leaving (the trucker's pickup at the
    terminal a container just left) is one stay, from the first entry to the last exit; a return
    after longer is a stay of its own."""
    t: Tenant = make_tenant("plc")
    shipment(t, "PLE-BACK")
    first = NOW - timedelta(days=20)
    # entered at +0:48, left at +21:12; back at +24:48 (3 h 36 min later), left at +28:12
    events = visits("PLE-BACK", first, 1, timedelta(hours=20))
    events += visits("PLE-BACK", first + timedelta(hours=24), 1, timedelta(hours=3))
    post_events(t, events)
    stats = t.http.get("/v1/places/unlocode:NLRTM/stats").json()
    assert stats == {"visits": 1, "dwell_h": {"p50": 27.4, "p90": 27.4}}
    # a third visit two days later: a stay of its own (3.4 h)
    post_events(t, visits("PLE-BACK", first + timedelta(days=3), 1, timedelta(hours=3)))
    stats = t.http.get("/v1/places/unlocode:NLRTM/stats").json()
    assert stats["visits"] == 2
    assert stats["dwell_h"]["p50"] == pytest.approx((27.4 + 3.4) / 2, abs=0.01)


def test_dwell_learned_from_visits_shows_in_stats_and_moves_the_eta(a: Tenant, b: Tenant) -> None:
    shipment(a, "PLE-VISITS")
    post_events(a, visits("PLE-VISITS", NOW - timedelta(days=30), 5, timedelta(hours=120)))
    stats = a.http.get("/v1/places/unlocode:NLRTM/stats").json()
    assert stats["visits"] == 5
    assert stats["dwell_h"]["p50"] == pytest.approx(120.4, abs=0.01)
    assert b.http.get("/v1/places/unlocode:NLRTM/stats").json() == {"visits": 0, "dwell_h": {"p50": None, "p90": None}}

    legs = [
        {"mode": "sea", "origin": {"unlocode": "CNSHA"}, "destination": {"unlocode": "NLRTM"}},
        {"mode": "road", "origin": {"unlocode": "NLRTM"}, "destination": {"unlocode": "DEDUS"}},
    ]
    predicted = []
    for t in (a, b):
        sid = shipment(t, "PLE-ETA", legs=legs)
        post_events(t, [fix("PLE-ETA", 72.0, 10.0, NOW - timedelta(hours=1))])  # the Arabian Sea
        eta = t.http.get(f"/v1/shipments/{sid}").json()["eta"]
        predicted.append(datetime.fromisoformat(eta["predicted_at"]))
    # the learned 120 h at Rotterdam in place of the prior there
    assert predicted[0] - predicted[1] > timedelta(hours=20)
