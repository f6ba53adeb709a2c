"""Geometry, place resolution and leg routing."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from trackd import geo, places, routing
from trackd.codes import Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import Location
from trackd.shipment import Leg

DEG_KM = 2 * math.pi * geo.EARTH_RADIUS_KM / 360  # one degree of a great circle, 111.195 km


def test_haversine_one_degree_and_a_real_pair() -> None:
    assert geo.haversine_km((0, 0), (0, 1)) == pytest.approx(DEG_KM, rel=1e-9)
    assert geo.haversine_km((0, 0), (1, 0)) == pytest.approx(DEG_KM, rel=1e-9)
    # Paris - London city centres: about 344 km
    assert geo.haversine_km((48.86, 2.35), (51.51, -0.13)) == pytest.approx(344, abs=2)
    assert geo.haversine_km((10, 10), (10, 10)) == 0


def test_bearing_cardinal_directions() -> None:
    assert geo.bearing_deg((0, 0), (1, 0)) == pytest.approx(0)
    assert geo.bearing_deg((0, 0), (0, 1)) == pytest.approx(90)
    assert geo.bearing_deg((0, 0), (-1, 0)) == pytest.approx(180)
    assert geo.bearing_deg((0, 0), (0, -1)) == pytest.approx(270)


def test_interpolate_midpoint_and_ends() -> None:
    lat, lon = geo.interpolate((0, 0), (0, 10), 0.5)
    assert (lat, lon) == pytest.approx((0, 5), abs=1e-9)
    assert geo.interpolate((0, 0), (0, 10), 0.0)[1] == pytest.approx(0, abs=1e-9)
    assert geo.interpolate((0, 0), (0, 10), 1.0)[1] == pytest.approx(10)
    assert geo.interpolate((5, 5), (5, 5), 0.3) == (5, 5)


def test_project_on_segment_cross_and_along_track() -> None:
    proj = geo.project_on_segment((1, 0.5), (0, 0), (0, 1))
    assert proj.distance_km == pytest.approx(DEG_KM, rel=1e-3)
    assert proj.along_km == pytest.approx(DEG_KM / 2, rel=1e-3)
    behind = geo.project_on_segment((0, -1), (0, 0), (0, 1))
    assert (behind.distance_km, behind.along_km) == pytest.approx((DEG_KM, 0.0))
    beyond = geo.project_on_segment((0, 3), (0, 0), (0, 1))
    assert (beyond.distance_km, beyond.along_km) == pytest.approx((2 * DEG_KM, DEG_KM))


def test_project_on_path_remaining() -> None:
    path = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    proj = geo.project_on_path((0.1, 0.5), path)
    assert proj.distance_km == pytest.approx(0.1 * DEG_KM, rel=1e-3)
    assert proj.along_km == pytest.approx(0.5 * DEG_KM, rel=1e-3)
    assert proj.remaining_km == pytest.approx(1.5 * DEG_KM, rel=1e-3)
    assert geo.distance_to_path_km((0.5, 1.2), path) == pytest.approx(0.2 * DEG_KM, rel=1e-2)


def test_stationary_since() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    fixes = [
        (t, (0.0, 0.0)),
        (t + timedelta(hours=1), (0.0, 0.1)),
        (t + timedelta(hours=2), (0.0, 0.1001)),
        (t + timedelta(hours=3), (0.0, 0.1002)),
    ]
    assert geo.stationary_since(fixes) == t + timedelta(hours=1)
    assert geo.stationary_since([]) is None


def test_places_resolve_each_kind() -> None:
    assert places.resolve(Location(lat=1.5, lon=2.5, unlocode="NLRTM")) == (1.5, 2.5)
    lat, lon = places.resolve(Location(unlocode="NLRTM"))
    assert (lat, lon) == pytest.approx((51.95, 4.1), abs=0.3)
    lat, lon = places.resolve(Location(iata="HKG"))
    assert (lat, lon) == pytest.approx((22.31, 113.92), abs=0.05)
    assert places.resolve(Location(unlocode="us lrd"))[0] == pytest.approx(27.5, abs=0.1)
    with pytest.raises(ValidationError, match="XXZZZ"):
        places.resolve(Location(unlocode="XXZZZ"))
    assert places.try_resolve(Location(name="nowhere")) is None


def test_places_keys_countries_and_dwells() -> None:
    assert places.place_key(Location(unlocode="nlrtm")) == "NLRTM"
    assert places.place_key(Location(iata="fra")) == "IATA:FRA"
    assert places.place_key(Location(lat=1.234, lon=5.678)) == "1.23,5.68"
    assert places.country_of(Location(unlocode="MXNLD")) == "MX"
    assert places.country_of(Location(iata="JFK")) == "US"
    assert places.with_coordinates(Location(unlocode="DEHAM")).country == "DE"
    t = datetime(2024, 1, 1, tzinfo=UTC)
    port, dest = Location(unlocode="NLRTM"), Location(unlocode="DEBER")
    rows = [
        (t, Milestone.ARRIVED, port),
        (t + timedelta(hours=30), Milestone.DEPARTED, port),
        (t + timedelta(hours=40), Milestone.ARRIVED, dest),
        (t + timedelta(hours=41), Milestone.DELIVERED, dest),
    ]
    assert places.dwells(rows) == [("NLRTM", 30.0)]


def test_every_bundled_unlocode_resolves_to_valid_coordinates() -> None:
    table = places._unlocodes()
    assert len(table) >= 150
    for code, place in table.items():
        assert len(code) == 5
        assert code[:2] == place.country
        assert -90 <= place.lat <= 90
        assert -180 <= place.lon <= 180


def test_leg_distances_per_mode() -> None:
    a, b = Location(lat=0, lon=0), Location(lat=0, lon=1)
    assert routing.leg_distance_km(Leg(Mode.ROAD, a, b)) == pytest.approx(DEG_KM * 1.25)
    assert routing.leg_distance_km(Leg(Mode.RAIL, a, b)) == pytest.approx(DEG_KM * 1.2)
    assert routing.leg_distance_km(Leg(Mode.AIR, a, b)) == pytest.approx(DEG_KM)
    sha, rtm = Location(unlocode="CNSHA"), Location(unlocode="NLRTM")
    sea = routing.leg_distance_km(Leg(Mode.SEA, sha, rtm))
    great_circle = geo.haversine_km(places.resolve(sha), places.resolve(rtm))
    # by sea round Singapore and through Suez: about 19,500 km, far more than the great circle
    assert 18_000 < sea < 21_500
    assert sea > great_circle * 1.8


def test_sea_path_is_cached_and_keeps_true_ends() -> None:
    leg = Leg(Mode.SEA, Location(unlocode="CNYTN"), Location(unlocode="USLAX"))
    first = routing.leg_path(leg)
    assert routing.leg_path(leg) is first
    assert first[0] == pytest.approx(places.resolve(leg.origin))
    assert first[-1] == pytest.approx(places.resolve(leg.destination))


def test_remaining_km_from_a_position() -> None:
    road = Leg(Mode.ROAD, Location(lat=0, lon=0), Location(lat=0, lon=1))
    rem, off = routing.remaining_km(road, (0.0, 0.25))
    assert rem == pytest.approx(0.75 * DEG_KM * 1.25, rel=1e-6)
    assert off == pytest.approx(0, abs=1e-6)
    sea = Leg(Mode.SEA, Location(unlocode="SGSIN"), Location(unlocode="NLRTM"))
    total = routing.leg_distance_km(sea)
    rem_sea, off_sea = routing.remaining_km(sea, (12.5, 45.0))  # Gulf of Aden
    assert 0.4 * total < rem_sea < 0.75 * total
    assert off_sea < 150
