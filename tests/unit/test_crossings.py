"""Crossing geometry: segments between fixes, late fixes, milestones at coded places, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trackd import crossings, place_store, places
from trackd.codes import EventKind, Milestone
from trackd.errors import ValidationError
from trackd.model import Event, Location, MilestoneInfo, Position
from trackd.places import Geofence
from trackd.shipment import PositionFix
from trackd.state import State

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SQUARE = Geofence("pl_sq", "Yard", "warehouse", {"type": "Polygon", "coordinates": [
    [[10, 50], [11, 50], [11, 51], [10, 51], [10, 50]]]})  # fmt: skip
# A U open to the north: a segment along lat 50.8 from west to east leaves it in the notch.
U = Geofence("pl_u", "U", "terminal", {"type": "Polygon", "coordinates": [
    [[20, 50], [23, 50], [23, 51], [22, 51], [22, 50.5], [21, 50.5], [21, 51], [20, 51], [20, 50]]]})  # fmt: skip
PORT = Geofence("unlocode:NLRTM", "Rotterdam", "port", {"type": "Point", "coordinates": [4.14, 51.95]}, 10_000.0,
                unlocode="NLRTM", builtin=True)  # fmt: skip
INDEX = crossings.Index([SQUARE, U, PORT])


def fix(n: int, lon: float, lat: float, minutes: float) -> Event:
    at = T0 + timedelta(minutes=minutes)
    return Event(f"e{n}", "native", at, EventKind.POSITION, position=Position(lat=lat, lon=lon), shipment="S")


def milestone(n: int, code: Milestone, minutes: float, **loc: str) -> Event:
    at = T0 + timedelta(minutes=minutes)
    info = MilestoneInfo(code, location=Location(**loc))
    return Event(f"m{n}", "dcsa", at, EventKind.MILESTONE, milestone=info, shipment="S")


def after(lon: float, lat: float, minutes: float) -> State:
    return State(last=PositionFix(lat, lon, T0 + timedelta(minutes=minutes)))


def found(state: State, events: list[Event]) -> list[tuple[str, str, float]]:
    """(place id, entered|exited, minutes after T0) of one shipment's crossings."""
    out = crossings.crossings(INDEX, [("s1", state, events)])
    return [
        (INDEX.fences[c.place].id, "entered" if c.entered else "exited", round((c.at - T0).total_seconds() / 60, 3))
        for _, c in out
    ]


def test_two_fixes_straddling_a_place_enter_and_leave_it_at_interpolated_times() -> None:
    # 9.5 -> 11.5 along lat 50.5 in 120 minutes: inside from a quarter to three quarters of the way.
    assert found(State(), [fix(1, 9.5, 50.5, 0), fix(2, 11.5, 50.5, 120)]) == [
        ("pl_sq", "entered", 30.0),
        ("pl_sq", "exited", 90.0),
    ]


def test_a_segment_leaving_a_concave_place_and_coming_back_is_an_exit_and_an_entry() -> None:
    assert found(after(19.0, 50.8, 0), [fix(1, 24.0, 50.8, 500)]) == [
        ("pl_u", "entered", 100.0),
        ("pl_u", "exited", 200.0),
        ("pl_u", "entered", 300.0),
        ("pl_u", "exited", 400.0),
    ]


def test_the_first_fix_inside_enters_and_a_fix_outside_leaves() -> None:
    assert found(State(), [fix(1, 10.5, 50.5, 0)]) == [("pl_sq", "entered", 0.0)]
    assert found(after(10.5, 50.5, 0), [fix(1, 12.5, 50.5, 60)]) == [("pl_sq", "exited", 15.0)]
    assert found(after(10.5, 50.5, 0), [fix(1, 10.6, 50.6, 60)]) == []


def test_a_late_older_fix_decides_nothing() -> None:
    # Last fix east of the yard; a late fix from before it, inside the yard, arrives now.
    assert found(after(12.0, 50.5, 60), [fix(1, 10.5, 50.5, 30)]) == []
    # The same late fix beside a newer one: only the newer extends the path (from 12.0 onwards).
    assert found(after(12.0, 50.5, 60), [fix(1, 10.5, 50.5, 30), fix(2, 12.5, 50.5, 90)]) == []


def test_fixes_in_any_order_in_one_batch_follow_event_time() -> None:
    events = [fix(2, 11.5, 50.5, 120), fix(1, 9.5, 50.5, 0)]
    assert found(State(), events) == [("pl_sq", "entered", 30.0), ("pl_sq", "exited", 90.0)]


def test_milestones_at_a_coded_place_enter_and_leave_it() -> None:
    arrived = milestone(1, Milestone.ARRIVED, 0, unlocode="NLRTM")
    departed = milestone(2, Milestone.DEPARTED, 600, unlocode="NL RTM")
    assert found(State(), [arrived]) == [("unlocode:NLRTM", "entered", 0.0)]
    assert found(State(), [arrived, departed]) == [
        ("unlocode:NLRTM", "entered", 0.0),
        ("unlocode:NLRTM", "exited", 600.0),
    ]
    # Arrived by code (its point is the port's), then a fix 50 km away: it left on the way there.
    left = found(State(), [arrived, fix(3, 4.14, 52.40, 60)])
    assert [(p, k) for p, k, _ in left] == [("unlocode:NLRTM", "entered"), ("unlocode:NLRTM", "exited")]
    assert 10 < left[1][2] < 15  # about 10 of the 50 km: a fifth of the hour


def test_a_stored_arrival_is_where_the_shipment_is() -> None:
    at = T0.isoformat()
    state = State(milestones=({"code": "arrived", "at": at, "location": {"unlocode": "NLRTM"}},))
    assert found(state, [fix(1, 4.15, 51.96, 30)]) == []  # still in the port
    assert found(state, [milestone(1, Milestone.DEPARTED, 90, unlocode="NLRTM")]) == [
        ("unlocode:NLRTM", "exited", 90.0)
    ]


def test_a_segment_across_the_antimeridian_does_not_cross_the_world() -> None:
    assert found(after(179.5, 50.5, 0), [fix(1, -179.5, 50.5, 60)]) == []


def test_the_bundled_places_have_stable_ids_and_circles() -> None:
    rtm, fra = places.builtin_fence("unlocode:NLRTM"), places.builtin_fence("iata:FRA")
    assert rtm is not None
    assert (rtm.kind, rtm.builtin, rtm.unlocode) == ("port", True, "NLRTM")
    assert fra is not None
    assert (fra.kind, fra.builtin, fra.iata) == ("airport", True, "FRA")
    _, s, _, n = fra.bbox()
    assert 0.05 < n - s < 0.06  # 3 km each way


def poly(ring: list[list[float]]) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.mark.parametrize(
    ("geometry", "radius", "field"),
    [
        (poly([[0, 0], [1, 0], [1, 1], [0, 1]]), None, "geometry.coordinates[0]"),  # not closed
        (poly([[0, 0], [1, 0], [0, 0]]), None, "geometry.coordinates[0]"),  # too few positions
        (poly([[0, 0], [1, 0], [1, 95], [0, 0]]), None, "geometry.coordinates[0][2]"),  # latitude
        (poly([[-170, 0], [170, 0], [170, 1], [-170, 0]]), None, "geometry.coordinates[0]"),  # 340 degrees
        (poly([[0, 0], [1, 0], [1, 1], [0, 0]]), 50.0, "radius_m"),
        (poly([[i / 1000, 0] for i in range(1000)] + [[0, 1], [0, 0]]), None, "geometry.coordinates"),
        (poly([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]), None, "geometry.coordinates"),  # a bow tie
        ({"type": "Point", "coordinates": [5, 50]}, None, "radius_m"),
        ({"type": "Point", "coordinates": [5, 50]}, 5.0, "radius_m"),
        ({"type": "Point", "coordinates": [5, 50]}, 200_000.0, "radius_m"),
        ({"type": "LineString", "coordinates": [[5, 50], [6, 50]]}, None, "geometry.type"),
    ],
)
def test_bad_geometries_are_refused_naming_the_field(
    geometry: dict[str, object], radius: float | None, field: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Geofence("pl_x", "x", "other", geometry, radius)
    assert err.value.field == field


def test_bbox_filter_meets_boxes_across_the_antimeridian() -> None:
    assert place_store.parse_bbox("170,-10,-170,10") == (170.0, -10.0, -170.0, 10.0)
    with pytest.raises(ValidationError):
        place_store.parse_bbox("1,2,3")
