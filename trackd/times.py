"""Parsing of times and speeds as sources send them, into UTC datetimes and km/h."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from trackd.errors import ValidationError


def utcnow() -> datetime:
    """The wall clock, in UTC: the default `now` of everything that takes a clock."""
    return datetime.now(UTC)


KNOT_KMH = 1.852
MS_KMH = 3.6
# Epoch values above this are milliseconds (year 33658 in seconds is not a real event).
_MS_THRESHOLD = 1e12


def from_epoch(value: float, field: str) -> datetime:
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValidationError(field, "is not a valid epoch time")
    if value > _MS_THRESHOLD:
        value = value / 1000.0
    if not 0 <= value < 253402300800:
        raise ValidationError(field, "is out of range")
    return datetime.fromtimestamp(value, UTC)


def parse_time(value: object, field: str, *, require_offset: bool = True) -> datetime:
    """ISO 8601 (with an offset unless `require_offset` is false, then UTC), epoch s or ms."""
    if isinstance(value, bool) or value is None:
        raise ValidationError(field, "must be an ISO 8601 time or epoch seconds")
    if isinstance(value, int | float):
        return from_epoch(float(value), field)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValidationError(field, "must be an ISO 8601 time or epoch seconds")
    text = value.strip()
    try:
        return from_epoch(float(text), field)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValidationError(field, f"{value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        if require_offset:
            raise ValidationError(field, f"{value!r} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValidationError(field, "is out of range") from None


def number(value: object, field: str) -> float:
    """A finite JSON number (not a bool); numeric strings are accepted as sent by forms."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be a number")
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            raise ValidationError(field, f"{value!r} is not a number") from None
    else:
        raise ValidationError(field, "must be a number")
    if not math.isfinite(out):
        raise ValidationError(field, "must be a finite number")
    return out


def optional_number(value: object, field: str) -> float | None:
    return None if value is None or value == "" else number(value, field)


def knots_to_kmh(knots: float) -> float:
    return knots * KNOT_KMH


def ms_to_kmh(ms: float) -> float:
    return ms * MS_KMH
