"""Known places: resolve a `Location` to coordinates, and the geofences crossings are decided on.

Airports come from `airportsdata`; UN/LOCODEs from `trackd/data/unlocodes.csv`, a hand-kept
table of major seaports, air-freight cities, inland hubs and border crossings. A location with
neither coordinates nor a known code is a `ValidationError`: a leg without coordinates cannot be
routed. `Geofence` is a place a tenant defines (a GeoJSON Polygon, or a Point with a radius) or
one of the bundled ones (`builtin_fences`: every port of the table and every airport, each a
circle around its point).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import airportsdata
import numpy as np
import shapely

from trackd.codes import Milestone
from trackd.errors import ValidationError
from trackd.geo import LatLon
from trackd.model import Location


@dataclass(frozen=True, slots=True)
class Place:
    code: str
    name: str
    country: str
    lat: float
    lon: float
    kind: str  # port | inland | border | airport


@lru_cache(maxsize=1)
def _unlocodes() -> dict[str, Place]:
    text = resources.files("trackd").joinpath("data/unlocodes.csv").read_text(encoding="utf-8")
    out: dict[str, Place] = {}
    for row in csv.DictReader(text.splitlines()):
        code = row["unlocode"].strip().upper()
        lat, lon = float(row["lat"]), float(row["lon"])
        out[code] = Place(code, row["name"], row["country"], lat, lon, row["kind"])
    return out


@lru_cache(maxsize=1)
def _airports() -> dict[str, Place]:
    out: dict[str, Place] = {}
    for code, a in airportsdata.load("IATA").items():
        lat, lon = float(a["lat"]), float(a["lon"])
        out[code.upper()] = Place(code.upper(), a["name"], a["country"], lat, lon, "airport")
    return out


def _norm(code: str) -> str:
    return "".join(code.split()).upper()


def lookup_unlocode(code: str) -> Place | None:
    return _unlocodes().get(_norm(code))


def lookup_iata(code: str) -> Place | None:
    return _airports().get(_norm(code))


def find(loc: Location) -> Place | None:
    """The known place a location names by code (IATA first, then UN/LOCODE), if any."""
    if loc.iata:
        found = lookup_iata(loc.iata)
        if found is not None:
            return found
    if loc.unlocode:
        return lookup_unlocode(loc.unlocode)
    return None


def resolve(loc: Location) -> LatLon:
    """Coordinates of a location: its own lat/lon, else its IATA code, else its UN/LOCODE."""
    if loc.lat is not None and loc.lon is not None:
        return loc.lat, loc.lon
    place = find(loc)
    if place is None:
        named = loc.iata or loc.unlocode or loc.name or "location"
        raise ValidationError("location", f"cannot resolve {named!r} to coordinates")
    return place.lat, place.lon


def try_resolve(loc: Location | None) -> LatLon | None:
    if loc is None:
        return None
    try:
        return resolve(loc)
    except ValidationError:
        return None


def with_coordinates(loc: Location) -> Location:
    """The same location with lat/lon (and country when known) filled in."""
    if loc.lat is not None:
        return loc
    place = find(loc)
    lat, lon = resolve(loc)
    country = loc.country or (place.country if place else None)
    return Location(loc.name or (place.name if place else None), loc.unlocode, loc.iata, country, lat, lon)


def country_of(loc: Location) -> str | None:
    if loc.country:
        return loc.country.upper()
    if loc.unlocode and len(loc.unlocode) >= 2:
        return loc.unlocode[:2].upper()
    place = find(loc)
    return place.country.upper() if place else None


def place_key(loc: Location) -> str:
    """A stable key for learning per place: the code, else coordinates to ~1 km."""
    if loc.unlocode:
        return _norm(loc.unlocode)
    if loc.iata:
        return "IATA:" + _norm(loc.iata)
    if loc.lat is not None and loc.lon is not None:
        return f"{loc.lat:.2f},{loc.lon:.2f}"
    return (loc.name or "?").strip().lower()


def dwells(milestones: Iterable[tuple[datetime, Milestone, Location | None]]) -> list[tuple[str, float]]:
    """(place key, hours) for each run of two or more actual milestones at one place, except
    the delivery's own place: the time between arriving somewhere and leaving it."""
    runs: list[tuple[str, datetime, datetime, bool]] = []
    for at, code, loc in sorted(milestones, key=lambda m: m[0]):
        if loc is None:
            continue
        key = place_key(loc)
        final = code is Milestone.DELIVERED
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1], at, runs[-1][3] or final)
        else:
            runs.append((key, at, at, final))
    return [(k, (b - a).total_seconds() / 3600.0) for k, a, b, final in runs if b > a and not final]


# -- geofences -----------------------------------------------------------------------------------

KINDS = ("port", "airport", "terminal", "warehouse", "customs", "border", "depot", "other")
MAX_VERTICES = 1000  # of a polygon, all rings together
MAX_RINGS = 20
RADIUS_M = (10.0, 100_000.0)
CIRCLE_VERTICES = 32
EARTH_RADIUS_M = 6_371_008.8
# Bundled places are circles around the table's or the airport's point. Only the table's ports: its
# inland rows are cities (a hub's point is its centre, not a depot) and its border crossings roads.
BUILTIN_RADIUS_M = {"port": 10_000.0, "airport": 3_000.0}
_TABLE_KINDS = {"port": "port"}
_UNLOCODE = re.compile(r"^[A-Z]{2}[A-Z2-9]{3}$")
_IATA = re.compile(r"^[A-Z]{3}$")
Ring = list[tuple[float, float]]  # (lon, lat), closed


def _number(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(field, "must be a finite number")
    return float(v)


def _position(field: str, p: Any) -> tuple[float, float]:
    if not isinstance(p, list | tuple) or len(p) not in (2, 3):
        raise ValidationError(field, "must be [lon, lat]")
    lon, lat = _number(field, p[0]), _number(field, p[1])
    if not -180 <= lon <= 180:
        raise ValidationError(field, f"longitude {lon} is outside [-180, 180]")
    if not -90 <= lat <= 90:
        raise ValidationError(field, f"latitude {lat} is outside [-90, 90]")
    return lon, lat


def _rings(coordinates: Any) -> list[Ring]:
    if not isinstance(coordinates, list) or not coordinates:
        raise ValidationError("geometry.coordinates", "a Polygon has a list of rings")
    if len(coordinates) > MAX_RINGS:
        raise ValidationError("geometry.coordinates", f"at most {MAX_RINGS} rings")
    rings: list[Ring] = []
    total = 0
    for i, raw in enumerate(coordinates):
        field = f"geometry.coordinates[{i}]"
        if not isinstance(raw, list) or len(raw) < 4:
            raise ValidationError(field, "a ring has at least 4 positions")
        total += len(raw)
        if total > MAX_VERTICES:
            raise ValidationError("geometry.coordinates", f"at most {MAX_VERTICES} positions in all")
        ring = [_position(f"{field}[{j}]", p) for j, p in enumerate(raw)]
        if ring[0] != ring[-1]:
            raise ValidationError(field, "a ring must be closed (its last position equal to its first)")
        lons = [p[0] for p in ring]
        if max(lons) - min(lons) > 180:
            raise ValidationError(field, "spans more than 180 degrees of longitude: split it at the antimeridian")
        rings.append(ring)
    return rings


def circles(lons: Any, lats: Any, radii_m: Any) -> Any:
    """Closed rings of `CIRCLE_VERTICES` points around each (lon, lat): an array (n, vertices + 1, 2)."""
    d = np.asarray(radii_m, dtype=float)[:, None] / EARTH_RADIUS_M
    la, lo = np.radians(np.asarray(lats, dtype=float))[:, None], np.radians(np.asarray(lons, dtype=float))[:, None]
    b = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES + 1)[None, :]
    b[0, -1] = 0.0  # the last point is the first, exactly
    lat2 = np.arcsin(np.sin(la) * np.cos(d) + np.cos(la) * np.sin(d) * np.cos(b))
    lon2 = lo + np.arctan2(np.sin(b) * np.sin(d) * np.cos(la), np.cos(d) - np.sin(la) * np.sin(lat2))
    return np.stack([np.degrees(lon2), np.degrees(lat2)], axis=-1)


@dataclass(frozen=True, slots=True)
class Geofence:
    """A place shipments enter and leave. `geometry` is GeoJSON: a `Polygon` (lon/lat rings, the
    first the outline, any others holes) or a `Point` with `radius_m`. Built-in ones are read-only."""

    id: str
    name: str
    kind: str
    geometry: dict[str, Any]
    radius_m: float | None = None
    unlocode: str | None = None
    iata: str | None = None
    builtin: bool = False

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 200:
            raise ValidationError("name", "must be 1 to 200 characters")
        if self.kind not in KINDS:
            raise ValidationError("kind", f"must be one of {', '.join(KINDS)}")
        if self.unlocode is not None and not _UNLOCODE.match(self.unlocode):
            raise ValidationError("unlocode", "must be a UN/LOCODE: 2 letters of country and 3 of place")
        if self.iata is not None and not _IATA.match(self.iata):
            raise ValidationError("iata", "must be 3 capital letters")
        if self.center() is None:
            rings = self.rings()
            reason = shapely.is_valid_reason(shapely.Polygon(rings[0], rings[1:]))
            if reason != "Valid Geometry":  # e.g. "Self-intersection[10.5 50.5]"
                raise ValidationError("geometry.coordinates", f"is not a valid polygon: {reason}")

    def center(self) -> tuple[float, float] | None:
        """A Point's (lon, lat), validated with its radius; None for a Polygon."""
        g = self.geometry
        kind = g.get("type") if isinstance(g, dict) else None
        if kind == "Polygon":
            if self.radius_m is not None:
                raise ValidationError("radius_m", "only a Point takes a radius")
            return None
        if kind == "Point":
            lon, lat = _position("geometry.coordinates", g.get("coordinates"))
            if self.radius_m is None:
                raise ValidationError("radius_m", "a Point needs radius_m")
            r = _number("radius_m", self.radius_m)
            if not RADIUS_M[0] <= r <= RADIUS_M[1]:
                raise ValidationError("radius_m", f"must be between {RADIUS_M[0]:.0f} and {RADIUS_M[1]:.0f} metres")
            return lon, lat
        raise ValidationError("geometry.type", "must be Polygon, or Point with radius_m")

    def rings(self) -> list[Ring]:
        """The outline (and holes) as closed lon/lat rings; a Point's is its circle."""
        c = self.center()
        if c is not None:
            return [[(float(x), float(y)) for x, y in circles([c[0]], [c[1]], [self.radius_m])[0]]]
        return _rings(self.geometry.get("coordinates"))

    def bbox(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat) of the outline."""
        c = self.center()
        if c is not None and self.radius_m is not None:
            d = self.radius_m / EARTH_RADIUS_M
            dlat = math.degrees(d)
            dlon = math.degrees(math.asin(min(1.0, math.sin(d) / max(math.cos(math.radians(c[1])), 1e-9))))
            return c[0] - dlon, c[1] - dlat, c[0] + dlon, c[1] + dlat
        outline = self.rings()[0]
        lons, lats = [p[0] for p in outline], [p[1] for p in outline]
        return min(lons), min(lats), max(lons), max(lats)

    def summary(self) -> dict[str, Any]:
        """What a `place.*` message says of the place."""
        return {"id": self.id, "name": self.name, "kind": self.kind}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "geometry": self.geometry,
            "radius_m": self.radius_m,
            "unlocode": self.unlocode,
            "iata": self.iata,
            "builtin": self.builtin,
        }


def _builtin(pid: str, name: str, kind: str, lon: float, lat: float, **codes: str) -> Geofence:
    geometry = {"type": "Point", "coordinates": [lon, lat]}
    return Geofence(pid, name or pid, kind, geometry, BUILTIN_RADIUS_M[kind], builtin=True, **codes)


@lru_cache(maxsize=1)
def builtin_fences() -> tuple[Geofence, ...]:
    """The bundled places, sorted by id: `unlocode:<code>` for the table's ports, `iata:<code>`
    for every airport of `airportsdata`."""
    out = [
        _builtin(f"unlocode:{p.code}", p.name, _TABLE_KINDS[p.kind], p.lon, p.lat, unlocode=p.code)
        for p in _unlocodes().values()
        if p.kind in _TABLE_KINDS and _UNLOCODE.match(p.code)
    ]
    out += [
        _builtin(f"iata:{a.code}", a.name, "airport", a.lon, a.lat, iata=a.code)
        for a in _airports().values()
        if _IATA.match(a.code) and -180 <= a.lon <= 180 and -90 <= a.lat <= 90
    ]
    return tuple(sorted(out, key=lambda f: f.id))


@lru_cache(maxsize=1)
def _builtin_by_id() -> dict[str, Geofence]:
    return {f.id: f for f in builtin_fences()}


def builtin_fence(place_id: str) -> Geofence | None:
    return _builtin_by_id().get(place_id)
