"""The canonical event model: frozen values that validate themselves.

Every source adapter produces `Event`s; the pipeline stores them; nothing downstream sees a
source's own format. Units are SI or km/h, times are timezone-aware UTC.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from trackd.codes import Classifier, EventKind, Milestone, Mode
from trackd.errors import ValidationError

MAX_FUTURE = timedelta(days=1)  # how far ahead of its receipt an actual event may be (clock skew)
MAX_ESTIMATE_AHEAD = timedelta(days=731)  # how far ahead an estimate or plan may look: two years


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValidationError(name, "must be a finite number")


def ref_key(identifier: str) -> str:
    """The matching key of an identifier: upper case, without spaces or hyphens."""
    return "".join(ch for ch in identifier.upper() if ch not in " -\t\n")


@dataclass(frozen=True, slots=True)
class Location:
    name: str | None = None
    unlocode: str | None = None
    iata: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None

    def __post_init__(self) -> None:
        _finite("location.lat", self.lat)
        _finite("location.lon", self.lon)
        if self.lat is not None and not -90 <= self.lat <= 90:
            raise ValidationError("location.lat", f"{self.lat} is outside [-90, 90]")
        if self.lon is not None and not -180 <= self.lon <= 180:
            raise ValidationError("location.lon", f"{self.lon} is outside [-180, 180]")
        if (self.lat is None) != (self.lon is None):
            raise ValidationError("location", "lat and lon come together")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lon: float
    speed_kmh: float | None = None
    heading: float | None = None
    accuracy_m: float | None = None
    altitude_m: float | None = None

    def __post_init__(self) -> None:
        for name in ("lat", "lon", "speed_kmh", "heading", "accuracy_m", "altitude_m"):
            _finite(f"position.{name}", getattr(self, name))
        if not -90 <= self.lat <= 90:
            raise ValidationError("position.lat", f"{self.lat} is outside [-90, 90]")
        if not -180 <= self.lon <= 180:
            raise ValidationError("position.lon", f"{self.lon} is outside [-180, 180]")
        if self.speed_kmh is not None and not 0 <= self.speed_kmh <= 5000:
            raise ValidationError("position.speed_kmh", f"{self.speed_kmh} is outside [0, 5000]")
        if self.heading is not None and not 0 <= self.heading <= 360:
            raise ValidationError("position.heading", f"{self.heading} is outside [0, 360]")
        if self.accuracy_m is not None and self.accuracy_m < 0:
            raise ValidationError("position.accuracy_m", "must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "speed_kmh": self.speed_kmh,
            "heading": self.heading,
            "accuracy_m": self.accuracy_m,
            "altitude_m": self.altitude_m,
        }


@dataclass(frozen=True, slots=True)
class MilestoneInfo:
    """A milestone. `code` is None when the source code is unknown; `raw_code` keeps it."""

    code: Milestone | None
    classifier: Classifier = Classifier.ACTUAL
    location: Location | None = None
    mode: Mode | None = None
    raw_code: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.code is None and not self.raw_code:
            raise ValidationError("milestone.code", "is required")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code.value if self.code else None,
            "classifier": self.classifier.value,
        }
        if self.location is not None:
            out["location"] = self.location.to_dict()
        if self.mode is not None:
            out["mode"] = self.mode.value
        if self.raw_code is not None:
            out["raw_code"] = self.raw_code
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Sensor:
    """One reading of a device's sensors; `door_open` is the state of a container's doors."""

    temperature_c: float | None = None
    humidity_pct: float | None = None
    battery_pct: float | None = None
    shock_g: float | None = None
    door_open: bool | None = None

    def __post_init__(self) -> None:
        for name in ("temperature_c", "humidity_pct", "battery_pct", "shock_g"):
            _finite(f"sensor.{name}", getattr(self, name))
        if all(getattr(self, n) is None for n in self.__slots__):
            raise ValidationError("sensor", "needs at least one reading")
        if self.door_open is not None and not isinstance(self.door_open, bool):
            raise ValidationError("sensor.door_open", "must be a boolean")
        if self.temperature_c is not None and not -100 <= self.temperature_c <= 150:
            raise ValidationError("sensor.temperature_c", "is outside [-100, 150]")
        for name in ("humidity_pct", "battery_pct"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 100:
                raise ValidationError(f"sensor.{name}", f"{v} is outside [0, 100]")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class Event:
    """One canonical event.

    `shipment` is the identifier the source gave (tracking number or reference); `refs` every
    identifier it carries, for matching; `device` the device id (MQTT topic, OsmAnd key lookup);
    `shipment_id` the shipment itself, when the source knows it by id (it wins over the others).
    Exactly one of `position`, `milestone`, `sensor` is set, as `kind` says. `retracts` names an
    earlier `event_id` this event withdraws (DCSA v3). `raw` is the source's own payload item.
    """

    event_id: str
    source: str
    occurred_at: datetime
    kind: EventKind
    position: Position | None = None
    milestone: MilestoneInfo | None = None
    sensor: Sensor | None = None
    shipment: str | None = None
    device: str | None = None
    refs: tuple[str, ...] = ()
    created_at: datetime | None = None
    carrier: str | None = None
    retracts: str | None = None
    shipment_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.event_id or len(self.event_id) > 200:
            raise ValidationError("event_id", "must be a non-empty string of at most 200 characters")
        if self.occurred_at.tzinfo is None:
            raise ValidationError("occurred_at", "must carry a time zone")
        if self.occurred_at.utcoffset() != timedelta(0):
            object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))
        if self.created_at is not None and self.created_at.tzinfo is None:
            raise ValidationError("created_at", "must carry a time zone")
        want = {
            EventKind.POSITION: self.position,
            EventKind.MILESTONE: self.milestone,
            EventKind.SENSOR: self.sensor,
        }
        if want[self.kind] is None:
            raise ValidationError(self.kind.value, f"is required for a {self.kind.value} event")
        if sum(v is not None for v in want.values()) != 1:
            raise ValidationError("event", "exactly one of position, milestone, sensor")
        unnamed = self.shipment is None and self.device is None and not self.refs and not self.shipment_id
        if unnamed and self.retracts is None:
            raise ValidationError("shipment", "an event needs a shipment or a device")

    def match_keys(self) -> tuple[str, ...]:
        keys = [ref_key(r) for r in self.refs]
        if self.shipment:
            keys.append(ref_key(self.shipment))
        return tuple(dict.fromkeys(k for k in keys if k))

    def data(self) -> dict[str, Any]:
        """The normalized part, as stored beside the raw payload."""
        if self.position is not None:
            return self.position.to_dict()
        if self.milestone is not None:
            return self.milestone.to_dict()
        assert self.sensor is not None
        return self.sensor.to_dict()


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What an adapter may know besides the bytes: no I/O, no clock reads.

    `received_at` is the receiving clock, used for "too far in the future" and as default
    `created_at`; `device` comes from the transport (MQTT topic); `params` from a query string.
    """

    tenant: str
    received_at: datetime
    device: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def derive_event_id(source: str, item: Any) -> str:
    """A deterministic id for an event that came without one: the hash of its content. Never
    fails: what orjson cannot encode (nesting past 255 levels, integers past 64 bits, lone
    surrogates) is hashed from an encoding of its own."""
    try:
        blob = orjson.dumps(item, option=orjson.OPT_SORT_KEYS, default=str)
    except orjson.JSONEncodeError:
        blob = b"\x00" + _content(item)  # a prefix no JSON text has: the two encodings never meet
    return f"{source}:{hashlib.sha256(blob).hexdigest()[:40]}"


def _content(item: Any) -> bytes:
    """`item` as bytes, keys sorted, without recursion (any depth); a container met twice is
    written once."""
    out: list[str] = []
    todo: list[tuple[bool, Any]] = [(False, item)]
    seen: set[int] = set()
    while todo:
        literal, v = todo.pop()
        if literal:
            out.append(v)
        elif isinstance(v, dict | list | tuple) and id(v) in seen:
            out.append("...")
        elif isinstance(v, dict):
            seen.add(id(v))
            out.append("{")
            todo.append((True, "}"))
            for k in sorted(v, key=str, reverse=True):
                todo.append((False, v[k]))
                todo.append((True, repr(str(k)) + ":"))
        elif isinstance(v, list | tuple):
            seen.add(id(v))
            out.append("[")
            todo.append((True, "]"))
            todo.extend((False, x) for x in reversed(v))
        else:
            out.append(repr(v))
    return ",".join(out).encode("utf-8", "surrogatepass")


def check_not_future(field_name: str, at: datetime, ctx: SourceContext) -> None:
    if at - ctx.received_at > MAX_FUTURE:
        raise ValidationError(field_name, f"{at.isoformat()} is more than a day in the future")


def check_occurred_at(field_name: str, at: datetime, milestone: MilestoneInfo | None, ctx: SourceContext) -> None:
    """The time bounds of an event, against its receipt (`ctx.received_at`, not the wall clock): an
    actual event (position, reading, actual milestone) at most a day ahead, an estimate or plan at
    most two years ahead. `ValidationError` naming `field_name` otherwise."""
    if milestone is None or milestone.classifier is Classifier.ACTUAL:
        check_not_future(field_name, at, ctx)
    elif at - ctx.received_at > MAX_ESTIMATE_AHEAD:
        raise ValidationError(field_name, f"{at.isoformat()} is more than two years ahead of its receipt")
