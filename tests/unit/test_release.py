"""The ocean release (fold, PATCH merge, the demurrage rule) and planned routes, from values alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest import sources
from trackd import eta, geo, rules
from trackd import release as rel
from trackd.codes import Milestone, Mode, Status
from trackd.errors import ValidationError
from trackd.model import Location, SourceContext
from trackd.shipment import Leg, OpenException, PositionFix, Shipment, StatusState, route_from_geojson
from trackd.state import State, advance

T0 = datetime(2026, 5, 1, tzinfo=UTC)
CTX = SourceContext(tenant="t", received_at=T0 + timedelta(days=30))
M = Milestone


def h(x: float) -> timedelta:
    return timedelta(hours=x)


def dcsa(*items: dict[str, object]) -> list:
    return sources.get("dcsa").normalize(orjson.dumps(list(items)), CTX)


def shipment_event(code: str, at: datetime, reason: str | None = None, doc: str = "TRD") -> dict[str, object]:
    body: dict[str, object] = {
        "eventType": "SHIPMENT",
        "eventClassifierCode": "ACT",
        "eventDateTime": at.isoformat(),
        "shipmentEventTypeCode": code,
        "documentTypeCode": doc,
        "documentID": "MAEU123",
    }
    if reason:
        body["reason"] = reason
    return body


def available(at: datetime) -> dict[str, object]:
    return {
        "eventType": "EQUIPMENT",
        "eventClassifierCode": "ACT",
        "eventDateTime": at.isoformat(),
        "equipmentEventTypeCode": "AVAILABLE_FOR_PICKUP",
        "equipmentReference": "MSKU1234565",
    }


def folded(events: list) -> rel.Release:
    r = rel.Release()
    for ev in sorted(events, key=lambda e: e.occurred_at):
        r = rel.fold(r, ev)
    return r


def test_dcsa_events_set_availability_and_holds() -> None:
    events = dcsa(
        available(T0 + h(5)),
        shipment_event("HOLD", T0, doc="CUS"),
        shipment_event("RELS", T0 + h(3), doc="CUS"),
        shipment_event("HOLD", T0 + h(4), reason="Terminal hold: inspection", doc="TRD"),
        shipment_event("HOLD", T0 + h(4.5), reason="Freight not paid", doc="TRD"),
        shipment_event("RELS", T0 + h(6), reason="terminal released", doc="TRD"),
    )
    assert events[0].milestone is not None
    assert events[0].milestone.code is M.AVAILABLE_FOR_PICKUP
    got = folded(events).to_dict()
    assert got == {
        "last_free_day": None,
        "available_for_pickup_at": (T0 + h(5)).isoformat(),
        "holds": [
            {"kind": "customs", "since": T0.isoformat(), "cleared_at": (T0 + h(3)).isoformat()},
            {"kind": "terminal", "since": (T0 + h(4)).isoformat(), "cleared_at": (T0 + h(6)).isoformat()},
            {"kind": "freight", "since": (T0 + h(4.5)).isoformat(), "cleared_at": None},
        ],
    }


def test_a_repeated_hold_is_one_hold_and_a_release_naming_no_kind_clears_the_rest() -> None:
    events = dcsa(
        shipment_event("HOLD", T0, reason="Line hold"),
        shipment_event("HOLD", T0 + h(1), reason="Line hold"),
        shipment_event("RELS", T0 + h(2), reason="released"),
    )
    got = folded(events)
    assert [(x.kind, x.since, x.cleared_at) for x in got.holds] == [("other", T0, T0 + h(2))]


def test_the_fold_emits_release_changed_once_and_keeps_the_stored_form() -> None:
    events = dcsa(available(T0 + h(5)), shipment_event("HOLD", T0, doc="CUS"))
    s, msgs = advance(State(), "shp_1", events, T0 + h(6))
    changed = [m for m in msgs if m["type"] == "release.changed"]
    assert len(changed) == 1
    assert changed[0]["release"] == s.release
    assert s.release is not None
    assert s.release["available_for_pickup_at"] == (T0 + h(5)).isoformat()
    again, msgs = advance(s, "shp_1", events, T0 + h(7))
    assert again.release == s.release
    assert [m for m in msgs if m["type"] == "release.changed"] == []


def test_merge_replaces_given_fields_and_null_clears() -> None:
    current = rel.Release(available_for_pickup_at=T0, holds=(rel.Hold("customs", T0),)).to_dict()
    lfd = T0 + timedelta(days=4)
    merged = rel.merge(current, {"last_free_day": lfd}, T0)
    assert merged == rel.Release(lfd, T0, (rel.Hold("customs", T0),))
    assert rel.merge(current, {"holds": []}, T0).holds == ()
    assert rel.stored(rel.merge(current, None, T0)) is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"last_free_day": datetime(2026, 5, 3)}, "release.last_free_day"),  # no offset
        ({"last_free_day": datetime(1990, 1, 1, tzinfo=UTC)}, "release.last_free_day"),
        ({"holds": [{"kind": "customs", "since": T0, "cleared_at": T0 - h(1)}]}, "release.holds[0].cleared_at"),
        ({"holds": [{"kind": "port", "since": T0}]}, "release.holds[0].kind"),
        ({"holds": [{"kind": "customs", "since": None}]}, "release.holds[0].since"),
    ],
)
def test_merge_names_the_bad_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        rel.merge(None, patch, T0)
    assert err.value.field == field


def test_demurrage_from_a_day_before_the_lfd_until_pickup() -> None:
    lfd = T0 + timedelta(days=5)
    r = rel.Release(last_free_day=lfd, available_for_pickup_at=T0 + h(2))
    sea = [(T0 - timedelta(days=20), M.GATE_OUT), (T0 - timedelta(days=19), M.LOADED), (T0, M.DISCHARGED)]
    assert rel.demurrage(r, sea, lfd - h(25))[0] is False
    assert rel.demurrage(r, sea, lfd - h(23)) == (True, lfd - h(24), f"last free day {lfd.isoformat()}, not picked up")
    picked = [*sea, (lfd - h(10), M.GATE_OUT)]
    assert rel.demurrage(r, picked, lfd - h(5)) == (False, lfd - h(10), "picked up")
    # the export gate-out before loading is not the pickup
    assert rel.picked_up_at(r, sea) is None


def run(journey: eta.Journey, now: datetime, release: dict[str, object] | None, open_: dict | None = None) -> list:
    moving = StatusState(Status.AVAILABLE_FOR_PICKUP, None, T0)
    return rules.evaluate(
        journey, None, open_ or {}, now, last_event_at=T0, last_sensor=None, status=moving, release=release
    )


def test_demurrage_risk_raised_and_cleared_by_the_rules() -> None:
    lfd = T0 + timedelta(days=3)
    s = Shipment("s1", "TN1", legs=(Leg(Mode.SEA, Location(unlocode="CNSHA"), Location(unlocode="NLRTM")),))
    stored = rel.Release(last_free_day=lfd).to_dict()
    j = eta.Journey(s, ((T0, M.DISCHARGED, None),))
    assert [c for c in run(j, lfd - h(30), stored) if c.kind.value == "demurrage_risk"] == []
    raised = [c for c in run(j, lfd - h(20), stored) if c.kind.value == "demurrage_risk"]
    assert [(c.action, c.at) for c in raised] == [("raise", lfd - h(24))]
    open_ = {"demurrage_risk": OpenException("demurrage_risk", lfd - h(24))}
    picked = eta.Journey(s, ((T0, M.DISCHARGED, None), (lfd - h(2), M.GATE_OUT, None)))
    cleared = [c for c in run(picked, lfd, stored, open_) if c.kind.value == "demurrage_risk"]
    assert [(c.action, c.at) for c in cleared] == [("clear", lfd - h(2))]


ROAD = Leg(
    Mode.ROAD,
    Location(lat=52.0, lon=5.0),
    Location(lat=52.0, lon=9.0),
    route=route_from_geojson({"type": "LineString", "coordinates": [[5.0, 52.0], [7.0, 53.5], [9.0, 52.0]]}),
)


def off_route(fix: PositionFix, leg: Leg = ROAD, open_: dict | None = None) -> list[tuple[str, str]]:
    s = Shipment("s2", "TN2", legs=(leg,))
    j = eta.Journey(s, ((T0, M.PICKED_UP, leg.origin),), fix)
    moving = StatusState(Status.IN_TRANSIT, None, T0)
    out = rules.evaluate(j, None, open_ or {}, fix.at, last_event_at=fix.at, last_sensor=None, status=moving)
    return [(c.action, c.kind.value) for c in out if c.kind.value == "off_route"]


def test_off_route_is_measured_against_the_planned_route() -> None:
    # On the straight line between the ends, but 160 km from the planned detour by the north.
    straight = PositionFix(52.0, 7.0, T0 + h(2), speed_kmh=80)
    assert off_route(straight) == [("raise", "off_route")]
    # The same fix is on the computed (straight) route of a leg without a plan.
    assert off_route(straight, Leg(Mode.ROAD, ROAD.origin, ROAD.destination)) == []
    on_plan = PositionFix(53.45, 7.0, T0 + h(3), speed_kmh=80)
    opened = {"off_route": OpenException("off_route", T0 + h(2))}
    assert off_route(on_plan, open_=opened) == [("clear", "off_route")]


@pytest.mark.parametrize(
    ("route", "field"),
    [
        ({"type": "Point", "coordinates": [1, 2]}, "route"),
        ({"type": "LineString", "coordinates": [[1, 2]]}, "route.coordinates"),
        ({"type": "LineString", "coordinates": [[1, 2], [200, 2]]}, "route.coordinates[1]"),
        ({"type": "LineString", "coordinates": [[1, 2], [1, 95]]}, "route.coordinates[1]"),
        ({"type": "LineString", "coordinates": [[1, 2], [True, 3]]}, "route.coordinates[1]"),
        ({"type": "LineString", "coordinates": [[0, 0]] * 5001}, "route.coordinates"),
    ],
)
def test_a_route_is_a_bounded_valid_linestring(route: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        route_from_geojson(route)
    assert err.value.field == field


def test_a_leg_keeps_its_route_through_its_stored_form() -> None:
    assert Leg.from_dict(ROAD.to_dict()) == ROAD
    assert ROAD.to_dict()["route"]["coordinates"][1] == [7.0, 53.5]
    plan = rules.plan_geojson((ROAD, Leg(Mode.ROAD, ROAD.destination, Location(lat=50.0, lon=9.0))))
    assert [f["properties"]["planned"] for f in plan["features"]] == [True, False]
    assert plan["features"][1]["geometry"]["coordinates"] == [[9.0, 52.0], [9.0, 50.0]]


def test_the_route_index_finds_the_same_distance_as_every_segment() -> None:
    wiggly = tuple((52 + i * 0.0015 + (i % 7) * 0.001, 5 + i * 0.004) for i in range(1000))
    across = ((10.0, 179.0), (10.0, -179.0), (12.0, -170.0))  # over the antimeridian
    for route, points in ((wiggly, [(52.5, 6.0), (60.0, 10.0), (52.6, 7.5), (-30.0, 100.0)]),
                          (across, [(10.0, 180.0), (10.5, -179.5), (11.0, 179.9), (-10.0, 0.0)])):  # fmt: skip
        for p in points:
            assert rules.route_distance_km(p, route) == pytest.approx(geo.distance_to_path_km(p, route), abs=1e-9)


def test_a_shipments_routes_are_capped_in_all() -> None:
    line = tuple((0.0, i * 0.001) for i in range(4000))
    leg = Leg(Mode.ROAD, Location(lat=0, lon=0), Location(lat=0, lon=4), route=line)
    Shipment("s", "TN", legs=(leg, leg))
    with pytest.raises(ValidationError) as err:
        Shipment("s", "TN", legs=(leg, leg, leg))
    assert err.value.field == "legs"
