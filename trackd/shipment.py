"""Shipments, their legs and their current state, as frozen domain values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trackd.codes import Mode, Status
from trackd.errors import ValidationError
from trackd.model import Location, ref_key

MAX_ROUTE_POINTS = 5000  # of one leg's route
MAX_SHIPMENT_ROUTE_POINTS = 10_000  # of all its legs' routes together


def route_from_geojson(value: Any, where: str = "route") -> tuple[tuple[float, float], ...]:
    """A GeoJSON `LineString` (`[lon, lat]` positions, 2 to MAX_ROUTE_POINTS of them) as (lat, lon)
    points; `ValidationError` naming `where` otherwise."""
    if not isinstance(value, dict) or value.get("type") != "LineString":
        raise ValidationError(where, 'must be a GeoJSON LineString {"type": "LineString", "coordinates": [...]}')
    coords = value.get("coordinates")
    if not isinstance(coords, list) or not 2 <= len(coords) <= MAX_ROUTE_POINTS:
        raise ValidationError(f"{where}.coordinates", f"must be an array of 2 to {MAX_ROUTE_POINTS} positions")
    out = []
    for i, c in enumerate(coords):
        ok = isinstance(c, list) and 2 <= len(c) <= 3
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in c)
        if not ok or not (-180 <= c[0] <= 180 and -90 <= c[1] <= 90):
            raise ValidationError(f"{where}.coordinates[{i}]", "must be [lon, lat] within [-180, 180] and [-90, 90]")
        out.append((float(c[1]), float(c[0])))
    return tuple(out)


def route_geojson(route: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    return {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in route]}


def _digits(where: str, value: Any, n: int) -> int:
    """An identifier of `n` digits, given as a number or a string (an `IMO` prefix allowed)."""
    text = str(value).strip().upper().removeprefix("IMO").strip() if not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) == n and int(text) > 0):
        raise ValidationError(where, f"must be a number of {n} digits")
    return int(text)


def imo_valid(imo: int) -> bool:
    """Whether `imo` is an IMO ship number: 7 digits, the last the check digit of the six before."""
    digits = [int(c) for c in str(imo)]
    return len(digits) == 7 and sum(d * w for d, w in zip(digits, range(7, 1, -1), strict=False)) % 10 == digits[6]


@dataclass(frozen=True, slots=True)
class Vessel:
    """The vessel of a sea leg: its IMO number (7 digits, the last a check digit), its MMSI (the 9
    digits its AIS transponder sends) and a name. Its positions reach the leg's shipment through
    the MMSI, or the IMO once AIS static data has named the MMSI."""

    imo: int | None = None
    mmsi: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.imo is None and self.mmsi is None and not self.name:
            raise ValidationError("legs.vessel", "needs an imo, an mmsi or a name")
        if self.imo is not None and not imo_valid(self.imo):
            raise ValidationError("legs.vessel.imo", f"{self.imo} is not an IMO number (its last digit checks)")
        if self.mmsi is not None and not 100_000_000 <= self.mmsi <= 999_999_999:
            raise ValidationError("legs.vessel.mmsi", f"{self.mmsi} is not an MMSI (9 digits)")
        if self.name is not None and len(self.name) > 120:
            raise ValidationError("legs.vessel.name", "must be at most 120 characters")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vessel:
        """From input or storage: identifiers as numbers or strings."""
        imo = _digits("legs.vessel.imo", d["imo"], 7) if d.get("imo") is not None else None
        mmsi = _digits("legs.vessel.mmsi", d["mmsi"], 9) if d.get("mmsi") is not None else None
        name = str(d["name"]).strip() or None if d.get("name") is not None else None
        return cls(imo, mmsi, name)


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a journey. Origin and destination carry coordinates once resolved; `route` is the
    planned path as (lat, lon) points, when the booking gave one."""

    mode: Mode
    origin: Location
    destination: Location
    route: tuple[tuple[float, float], ...] | None = None
    vessel: Vessel | None = None

    def __post_init__(self) -> None:
        if self.vessel is not None and self.mode is not Mode.SEA:
            raise ValidationError("legs.vessel", "only a sea leg has a vessel")
        for name in ("origin", "destination"):
            loc: Location = getattr(self, name)
            if loc.lat is None and not (loc.unlocode or loc.iata):
                raise ValidationError(f"legs.{name}", "needs lat/lon or a resolvable unlocode or iata code")
        if self.route is not None and not 2 <= len(self.route) <= MAX_ROUTE_POINTS:
            raise ValidationError("legs.route", f"needs 2 to {MAX_ROUTE_POINTS} points")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "origin": self.origin.to_dict(),
            "destination": self.destination.to_dict(),
            **({"route": route_geojson(self.route)} if self.route else {}),
            **({"vessel": self.vessel.to_dict()} if self.vessel else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Leg:
        route = route_from_geojson(d["route"]) if d.get("route") else None
        vessel = Vessel.from_dict(d["vessel"]) if d.get("vessel") else None
        return cls(Mode(d["mode"]), Location(**d["origin"]), Location(**d["destination"]), route, vessel)


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    tracking_number: str
    carrier: str | None = None
    references: tuple[str, ...] = ()
    mode: Mode | None = None
    legs: tuple[Leg, ...] = ()
    promised_at: datetime | None = None
    weight_kg: float | None = None
    temperature_range_c: tuple[float, float] | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.tracking_number.strip():
            raise ValidationError("tracking_number", "must not be empty")
        if self.weight_kg is not None and self.weight_kg < 0:
            raise ValidationError("weight_kg", "must not be negative")
        if self.temperature_range_c is not None:
            lo, hi = self.temperature_range_c
            if lo > hi:
                raise ValidationError("temperature_range_c", "min must not exceed max")
        if sum(len(leg.route or ()) for leg in self.legs) > MAX_SHIPMENT_ROUTE_POINTS:
            raise ValidationError("legs", f"routes of at most {MAX_SHIPMENT_ROUTE_POINTS} points in all")

    def match_keys(self) -> tuple[str, ...]:
        keys = [ref_key(self.tracking_number), *(ref_key(r) for r in self.references)]
        return tuple(dict.fromkeys(k for k in keys if k))

    @property
    def main_mode(self) -> Mode | None:
        if self.legs:
            return self.legs[0].mode
        return self.mode


@dataclass(frozen=True, slots=True)
class StatusState:
    """What the status transition function reads and writes."""

    status: Status = Status.PENDING
    substatus: str | None = None
    status_at: datetime | None = None  # event time of the milestone that set the status


@dataclass(frozen=True, slots=True)
class PositionFix:
    lat: float
    lon: float
    at: datetime
    speed_kmh: float | None = None
    heading: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "at": self.at.isoformat(),
            "speed_kmh": self.speed_kmh,
            "heading": self.heading,
        }


@dataclass(frozen=True, slots=True)
class Eta:
    """A prediction: `earliest`..`latest` is the stated 80% interval."""

    predicted_at: datetime
    earliest: datetime
    latest: datetime
    method: str
    computed_at: datetime
    carrier_eta: datetime | None = None
    promised_at: datetime | None = None
    p_late: float | None = None  # probability of delivery after `promised_at`; None without one
    revision: int = 0  # material changes so far

    def to_dict(self) -> dict[str, Any]:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "predicted_at": iso(self.predicted_at),
            "earliest": iso(self.earliest),
            "latest": iso(self.latest),
            "carrier_eta": iso(self.carrier_eta),
            "promised_at": iso(self.promised_at),
            "method": self.method,
            "computed_at": iso(self.computed_at),
            "p_late": None if self.p_late is None else round(self.p_late, 3),
            "revision": self.revision,
        }


@dataclass(frozen=True, slots=True)
class OpenException:
    kind: str
    raised_at: datetime
    cleared_at: datetime | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "raised_at": self.raised_at.isoformat(),
            "cleared_at": self.cleared_at.isoformat() if self.cleared_at else None,
            "detail": self.detail,
        }
