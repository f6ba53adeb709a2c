"""Spherical geometry on (lat, lon) degrees: distances, bearings, projection onto paths.

Every function here works on the mean-radius sphere; the error against the WGS 84 ellipsoid is
under 0.5 %, far below what a shipment's ETA or corridor check can tell apart. Points are
`(lat, lon)` tuples in degrees; a path is a sequence of such points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius

LatLon = tuple[float, float]


def haversine_km(a: LatLon, b: LatLon) -> float:
    """Great-circle distance between two points, in km."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    dlat, dlon = lat2 - lat1, lon2 - lon1
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(a: LatLon, b: LatLon) -> float:
    """Initial bearing from `a` towards `b`, degrees clockwise from north in [0, 360)."""
    lat1, lat2 = math.radians(a[0]), math.radians(b[0])
    dlon = math.radians(b[1] - a[1])
    y = math.sin(dlon) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return (math.degrees(math.atan2(y, x)) + 360.0) % 360.0


def interpolate(a: LatLon, b: LatLon, fraction: float) -> LatLon:
    """The point `fraction` (0..1) of the way from `a` to `b` along the great circle."""
    d = haversine_km(a, b) / EARTH_RADIUS_KM
    if d == 0.0:
        return a
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    wa = math.sin((1 - fraction) * d) / math.sin(d)
    wb = math.sin(fraction * d) / math.sin(d)
    x = wa * math.cos(lat1) * math.cos(lon1) + wb * math.cos(lat2) * math.cos(lon2)
    y = wa * math.cos(lat1) * math.sin(lon1) + wb * math.cos(lat2) * math.sin(lon2)
    z = wa * math.sin(lat1) + wb * math.sin(lat2)
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


@dataclass(frozen=True, slots=True)
class Projection:
    """Where a point falls on a segment: its distance off it and how far along it (km)."""

    distance_km: float
    along_km: float


def project_on_segment(p: LatLon, a: LatLon, b: LatLon) -> Projection:
    """Project `p` onto the great-circle segment `a`-`b` (cross-track / along-track).

    Beyond either end the nearest end point is used, so `along_km` stays in [0, |ab|].
    """
    d_ab = haversine_km(a, b)
    d_ap = haversine_km(a, p)
    if d_ab < 1e-9:
        return Projection(d_ap, 0.0)
    theta = math.radians(bearing_deg(a, p) - bearing_deg(a, b))
    if math.cos(theta) <= 0.0:  # p lies behind a
        return Projection(d_ap, 0.0)
    delta = d_ap / EARTH_RADIUS_KM
    xt = math.asin(max(-1.0, min(1.0, math.sin(delta) * math.sin(theta))))
    cos_xt = math.cos(xt)
    along = math.acos(max(-1.0, min(1.0, math.cos(delta) / cos_xt))) * EARTH_RADIUS_KM if cos_xt else 0.0
    if along >= d_ab:
        return Projection(haversine_km(p, b), d_ab)
    return Projection(abs(xt) * EARTH_RADIUS_KM, along)


def path_length_km(path: Sequence[LatLon]) -> float:
    return sum(haversine_km(path[i], path[i + 1]) for i in range(len(path) - 1))


@dataclass(frozen=True, slots=True)
class PathProjection:
    """A point against a path: its distance off the path, and path km before/after its foot."""

    distance_km: float
    along_km: float
    remaining_km: float


def project_on_path(p: LatLon, path: Sequence[LatLon]) -> PathProjection:
    """The nearest point of `path` to `p` and how much of the path lies before and after it."""
    if not path:
        raise ValueError("empty path")
    if len(path) == 1:
        return PathProjection(haversine_km(p, path[0]), 0.0, 0.0)
    total = path_length_km(path)
    best: PathProjection | None = None
    walked = 0.0
    for i in range(len(path) - 1):
        seg = project_on_segment(p, path[i], path[i + 1])
        if best is None or seg.distance_km < best.distance_km:
            along = walked + seg.along_km
            best = PathProjection(seg.distance_km, along, max(0.0, total - along))
        walked += haversine_km(path[i], path[i + 1])
    assert best is not None
    return best


def distance_to_path_km(p: LatLon, path: Sequence[LatLon]) -> float:
    """Shortest distance from `p` to any segment of `path` (the corridor test)."""
    return project_on_path(p, path).distance_km


def stationary_since(fixes: Sequence[tuple[datetime, LatLon]], radius_m: float = 500.0) -> datetime | None:
    """Since when the fixes (oldest first) have stayed within `radius_m` of the last one."""
    if not fixes:
        return None
    last = fixes[-1][1]
    since = fixes[-1][0]
    for at, p in reversed(fixes[:-1]):
        if haversine_km(p, last) * 1000.0 > radius_m:
            break
        since = at
    return since
