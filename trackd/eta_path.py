"""How much of a leg is left from a position, fast enough to ask on every prediction.

The same answer as `routing.nearest_leg` / `routing.remaining_km`, but a sea lane (hundreds of
vertices) is searched with flat-earth arithmetic around the position first, and only the few
nearest segments are projected exactly; the lane's cumulative length is computed once.
"""

from __future__ import annotations

import heapq
import math
from functools import lru_cache

from trackd import geo, routing
from trackd.codes import Mode
from trackd.shipment import Leg

CANDIDATES = 3  # segments projected exactly, nearest first by the flat-earth distance


@lru_cache(maxsize=1024)
def _walked(path: tuple[geo.LatLon, ...]) -> tuple[tuple[float, ...], float]:
    """Km along `path` at each vertex, and its length."""
    out, km = [0.0], 0.0
    for i in range(len(path) - 1):
        km += geo.haversine_km(path[i], path[i + 1])
        out.append(km)
    return tuple(out), km


def _flat_d2(p: geo.LatLon, a: geo.LatLon, b: geo.LatLon, k: float) -> float:
    """Squared flat-earth distance (degrees) from `p` to segment `a`-`b`, longitudes unwrapped
    around `p` and scaled by `k` = cos(latitude of p)."""
    ax, ay = ((a[1] - p[1] + 180.0) % 360.0 - 180.0) * k, a[0] - p[0]
    bx, by = ((b[1] - p[1] + 180.0) % 360.0 - 180.0) * k, b[0] - p[0]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0.0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    x, y = ax + t * dx, ay + t * dy
    return x * x + y * y


def remaining_km(leg: Leg, a: geo.LatLon, b: geo.LatLon, here: geo.LatLon) -> tuple[float, float]:
    """(km left on the leg from `here`, km `here` lies off its path), as `routing.remaining_km`."""
    if leg.mode is not Mode.SEA:
        return routing.remaining_km(leg, here)
    path = routing.sea_path(a, b)
    if len(path) < 2:
        return 0.0, geo.haversine_km(here, path[0])
    walked, total = _walked(path)
    k = math.cos(math.radians(here[0]))
    near = heapq.nsmallest(CANDIDATES, range(len(path) - 1), key=lambda i: _flat_d2(here, path[i], path[i + 1], k))
    best: tuple[float, float] | None = None  # off, along
    for i in sorted(near):
        seg = geo.project_on_segment(here, path[i], path[i + 1])
        if best is None or seg.distance_km < best[0]:
            best = (seg.distance_km, walked[i] + seg.along_km)
    assert best is not None
    return max(0.0, total - best[1]), best[0]


def nearest_leg(legs: tuple[routing.ResolvedLeg, ...], p: geo.LatLon, first: int = 0) -> tuple[int, float, float]:
    """(leg from `first` on whose path is nearest to `p`, km left on it, km off it); an earlier leg
    wins unless a later one is more than a kilometre nearer, as in `routing.nearest_leg`."""
    best: tuple[int, float, float] | None = None
    for i in range(first, len(legs)):
        leg, a, b = legs[i]
        rem, off = remaining_km(leg, a, b, p)
        if best is None or off < best[2] - 1.0:
            best = (i, rem, off)
    assert best is not None
    return best
