"""Shipments, their legs and their current state, as frozen domain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trackd.codes import Mode, Status
from trackd.errors import ValidationError
from trackd.model import Location, ref_key


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a journey. Origin and destination carry coordinates once resolved."""

    mode: Mode
    origin: Location
    destination: Location

    def __post_init__(self) -> None:
        for name in ("origin", "destination"):
            loc: Location = getattr(self, name)
            if loc.lat is None and not (loc.unlocode or loc.iata):
                raise ValidationError(f"legs.{name}", "needs lat/lon or a resolvable unlocode or iata code")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "origin": self.origin.to_dict(),
            "destination": self.destination.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Leg:
        return cls(Mode(d["mode"]), Location(**d["origin"]), Location(**d["destination"]))


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
