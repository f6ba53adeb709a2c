"""Resolve a `Location` to coordinates: given lat/lon, an IATA airport code, or a UN/LOCODE.

Airports come from `airportsdata`; UN/LOCODEs from `trackd/data/unlocodes.csv`, a hand-kept
table of major seaports, air-freight cities, inland hubs and border crossings. Anything else is
a `ValidationError`: a leg without coordinates cannot be routed.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources

import airportsdata

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
