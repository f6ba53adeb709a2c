"""The path and distance of a leg, and how much of it remains from a position.

Sea legs follow the sea-lane network of `searoute` (Eurostat's maritime graph), so a
Shanghai-Rotterdam leg goes round Singapore and through Suez instead of over land. Land legs
have no road or rail graph here: their distance is the great circle times a circuity factor, the
ratio of network to straight-line distance (about 1.2-1.3 for roads, slightly less for rail
trunk lines, in the transport-geography literature). Air legs fly the great circle.
"""

from __future__ import annotations

from functools import lru_cache

import searoute

from trackd.codes import Mode
from trackd.errors import ValidationError
from trackd.geo import LatLon, haversine_km, path_length_km, project_on_path
from trackd.places import resolve
from trackd.shipment import Leg

CIRCUITY = {Mode.ROAD: 1.25, Mode.RAIL: 1.2, Mode.AIR: 1.0, Mode.SEA: 1.0}
ResolvedLeg = tuple[Leg, LatLon, LatLon]
_ROUND = 3  # ~100 m: enough to share cached sea routes between nearby positions


@lru_cache(maxsize=4096)
def _sea_path(a: LatLon, b: LatLon) -> tuple[LatLon, ...]:
    # searoute speaks GeoJSON order: [lon, lat].
    feature = searoute.searoute([a[1], a[0]], [b[1], b[0]], units="km")
    coords = feature["geometry"]["coordinates"]
    path = [(float(lat), float(lon)) for lon, lat in coords]
    # searoute snaps the ends to its network; keep the true ends so the path starts and ends
    # where the leg does.
    return (a, *path, b)


def sea_path(a: LatLon, b: LatLon) -> tuple[LatLon, ...]:
    """The sea-lane polyline from `a` to `b`, as (lat, lon) points, cached."""
    key_a = (round(a[0], _ROUND), round(a[1], _ROUND))
    key_b = (round(b[0], _ROUND), round(b[1], _ROUND))
    if key_a == key_b:
        return (key_a,)
    return _sea_path(key_a, key_b)


def endpoints(leg: Leg) -> tuple[LatLon, LatLon]:
    """The leg's origin and destination coordinates (ValidationError when unresolvable)."""
    return resolve(leg.origin), resolve(leg.destination)


def path_between(mode: Mode, a: LatLon, b: LatLon) -> tuple[LatLon, ...]:
    """The path a vehicle of `mode` takes from `a` to `b`; land and air legs are two points."""
    if mode is Mode.SEA:
        return sea_path(a, b)
    return (a, b)


def leg_path(leg: Leg) -> tuple[LatLon, ...]:
    a, b = endpoints(leg)
    return path_between(leg.mode, a, b)


def distance_between_km(mode: Mode, a: LatLon, b: LatLon) -> float:
    """Expected travel distance by `mode` from `a` to `b`, km."""
    if mode is Mode.SEA:
        return path_length_km(sea_path(a, b))
    return haversine_km(a, b) * CIRCUITY[mode]


def leg_distance_km(leg: Leg) -> float:
    """Travel distance of the whole leg, km (sea lanes; land great circle x circuity; air GCD)."""
    a, b = endpoints(leg)
    return distance_between_km(leg.mode, a, b)


def remaining_km(leg: Leg, here: LatLon) -> tuple[float, float]:
    """(remaining travel km from `here` to the leg's end, km `here` lies off the leg's path).

    Sea: the sea-lane distance from the foot of `here` on the leg's polyline to its end (a
    vessel on the lane has the rest of the lane to go). Land and air: the remaining great
    circle from `here` to the destination, with the mode's circuity.
    """
    a, b = endpoints(leg)
    path = path_between(leg.mode, a, b)
    proj = project_on_path(here, path)
    if leg.mode is Mode.SEA:
        return proj.remaining_km, proj.distance_km
    return haversine_km(here, b) * CIRCUITY[leg.mode], proj.distance_km


@lru_cache(maxsize=2048)
def resolve_legs(legs: tuple[Leg, ...]) -> tuple[ResolvedLeg, ...] | None:
    """Each leg with its end coordinates; None when there are none or one cannot be resolved."""
    if not legs:
        return None
    try:
        return tuple((leg, *endpoints(leg)) for leg in legs)
    except ValidationError:
        return None


def nodes(legs: tuple[ResolvedLeg, ...]) -> list[LatLon]:
    """The journey's nodes: the origin, then each leg's destination (hand-overs, then the end)."""
    return [legs[0][1], *(b for _, _, b in legs)]


def nearest_node(legs: tuple[ResolvedLeg, ...], p: LatLon, radius_km: float) -> int | None:
    """The index of the node nearest to `p` (later on ties), if within `radius_km`."""
    j, at = min(enumerate(nodes(legs)), key=lambda jn: (haversine_km(p, jn[1]), -jn[0]))
    return j if haversine_km(p, at) <= radius_km else None


def nearest_leg(legs: tuple[ResolvedLeg, ...], p: LatLon, first: int = 0) -> tuple[int, float, float]:
    """(index of the leg from `first` on whose path is nearest to `p`, km left on it, km off it).

    An earlier leg wins unless a later one is more than a kilometre nearer: a point at a
    hand-over belongs to the leg that ends there.
    """
    best: tuple[int, float, float] | None = None
    for i in range(first, len(legs)):
        rem, off = remaining_km(legs[i][0], p)
        if best is None or off < best[2] - 1.0:
            best = (i, rem, off)
    assert best is not None
    return best
