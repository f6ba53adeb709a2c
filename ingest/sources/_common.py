"""What the source adapters share: reading JSON values, code tables, times, locations, events.

Everything here is pure. Helpers raise only `ValidationError`, with the field named as the
caller's `where` prefix says (e.g. `[2].eventClassifierCode`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ingest.sources.native import MAX_BATCH, loads
from trackd.codes import Classifier, EventKind, Milestone, Mode
from trackd.errors import ValidationError
from trackd.model import (
    Event,
    Location,
    MilestoneInfo,
    Position,
    Sensor,
    SourceContext,
    check_not_future,
    check_occurred_at,
)
from trackd.times import parse_time

__all__ = ["MAX_BATCH", "loads"]

_HERE = Path(__file__).parent
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_TEXT = 200
MAX_REFS = 50  # identifiers of one shipment in a delivery: every one of its events carries them all


def load_codes(name: str) -> dict[str, Any]:
    """The mapping table `<name>_codes.json` kept next to the adapters (read once at import)."""
    with (_HERE / f"{name}_codes.json").open(encoding="utf-8") as fh:
        table: dict[str, Any] = json.load(fh)
    return table


def milestone(table: dict[str, Any], raw_code: str) -> Milestone | None:
    """The canonical milestone a source code maps to; None when unknown or deliberately unmapped."""
    value = table.get(raw_code)
    return Milestone(value) if isinstance(value, str) else None


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(where, "must be an object")
    return value


def opt_obj(value: Any, where: str) -> dict[str, Any] | None:
    return None if value is None else obj(value, where)


def items(value: Any, where: str) -> list[Any]:
    """A JSON array (a single object counts as an array of one), bounded in size."""
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ValidationError(where, "must be an object or an array of objects")
    if len(value) > MAX_BATCH:
        raise ValidationError(where, f"holds {len(value)} items; at most {MAX_BATCH} a request")
    return value


def array(value: Any, where: str, limit: int = MAX_BATCH) -> list[Any]:
    """An optional JSON array (absent or null: empty) of at most `limit` items."""
    value = [] if value is None else value
    if not isinstance(value, list):
        raise ValidationError(where, "must be an array")
    if len(value) > limit:
        raise ValidationError(where, f"holds more than {limit} items")
    return value


def within_batch(events: list[Event]) -> list[Event]:
    """`events`, unless one delivery gave more than `MAX_BATCH` of them (refused as `body`, as the
    native format refuses a longer array)."""
    if len(events) > MAX_BATCH:
        raise ValidationError("body", f"gives more than {MAX_BATCH} events; at most {MAX_BATCH} a request")
    return events


def text(value: Any, where: str, *, max_len: int = MAX_TEXT) -> str | None:
    """An optional identifier or label: strings (and integers, as some senders use) trimmed."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError(where, "must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise ValidationError(where, f"is longer than {max_len} characters")
    return value or None


def req_text(value: Any, where: str, *, max_len: int = MAX_TEXT) -> str:
    out = text(value, where, max_len=max_len)
    if out is None:
        raise ValidationError(where, "is required")
    return out


def refs(*values: str | None) -> tuple[str, ...]:
    """Identifiers without blanks or repeats, first occurrence first."""
    return tuple(dict.fromkeys(v for v in values if v))


def capped_refs(main: str, named: Iterable[tuple[str, str | None]], *, limit: int = MAX_REFS) -> tuple[str, ...]:
    """`main` and the other identifiers (each with the field it came from) without blanks or
    repeats, first occurrence first. The one that would make more than `limit` is refused, named by
    its field: every event of the shipment carries them all, so their number multiplies."""
    out = dict.fromkeys([main])
    for where, value in named:
        if value and value not in out:
            if len(out) >= limit:
                raise ValidationError(where, f"is one identifier more than the {limit} a shipment may carry")
            out[value] = None
    return tuple(out)


def time_at(value: Any, where: str, *, require_offset: bool = False) -> datetime:
    """A source time as UTC; times without an offset are UTC unless the caller says otherwise."""
    if value is None:
        raise ValidationError(where, "is required")
    return parse_time(value, where, require_offset=require_offset)


def estimate_time(value: Any, where: str) -> datetime:
    """An estimated time; a bare date (`2024-05-03`) means by the end of that day, UTC."""
    if isinstance(value, str) and _DATE_ONLY.match(value.strip()):
        try:
            day = datetime.fromisoformat(value.strip()).date()
        except ValueError:
            raise ValidationError(where, f"{value!r} is not a date") from None
        return datetime.combine(day, time(23, 59, 59), UTC)
    return time_at(value, where)


def local_time(day: datetime, zone: tzinfo) -> datetime:
    """A naive wall-clock time read in `zone`, as UTC."""
    try:
        return day.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError("time", "is out of range") from None


@cache
def _finder() -> Any:
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


def zone_at(lat: float, lon: float) -> tzinfo | None:
    """The time zone at a coordinate (timezonefinder), or None over open sea."""
    name = _finder().timezone_at(lng=lon, lat=lat)
    return ZoneInfo(name) if name else None


def zone(name: str) -> tzinfo:
    """An IANA zone name or a fixed offset such as `-05:00`."""
    if name[:1] in "+-":
        hours, minutes = name[1:].split(":")
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-offset if name[0] == "-" else offset)
    return ZoneInfo(name)


def renamed(exc: ValidationError, field: str) -> ValidationError:
    """The same complaint under the field name the source used."""
    return ValidationError(field, exc.detail.removeprefix(f"{exc.field}: "))


def location(where: str, **fields: Any) -> Location | None:
    """A Location from whatever a source gave; None when it gave nothing."""
    if all(v is None for v in fields.values()):
        return None
    try:
        return Location(**fields)
    except ValidationError as exc:
        raise renamed(exc, where + exc.field.removeprefix("location")) from None


def mode(value: Any, table: dict[str, str], where: str) -> Mode | None:
    raw = text(value, where)
    if raw is None:
        return None
    found = table.get(raw.upper())
    return Mode(found) if found else None


def classifier(value: Any, table: dict[str, str], where: str) -> Classifier:
    raw = text(value, where)
    if raw is None:
        raise ValidationError(where, "is required")
    found = table.get(raw.upper())
    if found is None:
        raise ValidationError(where, f"{raw!r} is not one of {', '.join(sorted(table))}")
    return Classifier(found)


def check_time(
    where: str, occurred_at: datetime, info: MilestoneInfo | None, created_at: datetime | None, ctx: SourceContext
) -> None:
    """No event is from the future and no estimate or plan looks more than two years ahead (both
    against `ctx.received_at`); an estimate's creation is not in the future either."""
    if info is not None and info.classifier is not Classifier.ACTUAL and created_at is not None:
        check_not_future(where + "created_at", created_at, ctx)
    check_occurred_at(where + "occurred_at", occurred_at, info, ctx)


def event(where: str, ctx: SourceContext, **fields: Any) -> Event:
    """An Event, with the model's own validation errors renamed under `where`."""
    check_time(where, fields["occurred_at"], fields.get("milestone"), fields.get("created_at"), ctx)
    try:
        return Event(**fields)
    except ValidationError as exc:
        raise renamed(exc, where + exc.field) from None


def milestone_event(where: str, ctx: SourceContext, *, info: MilestoneInfo, **fields: Any) -> Event:
    return event(where, ctx, kind=EventKind.MILESTONE, milestone=info, **fields)


def estimate_event(
    where: str,
    ctx: SourceContext,
    common: dict[str, Any],
    *,
    tag: str,
    field: str,
    value: Any,
    about: str | None = None,
) -> Event:
    """A carrier's delivery estimate (its `field` holds `value`) as an estimated `delivered`
    milestone with the id `<source>:<shipment>:<tag>:<value>`, described by `about`; `common` holds
    the fields every event of the shipment has (`source`, `shipment`, `refs`, `carrier`)."""
    return milestone_event(
        where,
        ctx,
        info=info(Milestone.DELIVERED, field, classifier=Classifier.ESTIMATED, description=about),
        event_id=f"{common['source']}:{common['shipment']}:{tag}:{value}"[:200],
        occurred_at=estimate_time(value, where + field),
        # The fold keeps an estimate only if it was made no earlier than the one it holds, so every
        # estimate of a shipment must be dated on one clock. Carrier pushes say nothing of when an
        # estimate was made, and the latest scan is no stand-in: a push without scans has none, and
        # a revised estimate often comes with no new scan. Receipt is the one clock every push has,
        # so the estimate received last wins (a push that arrives late, overtaken or held in the
        # carrier's retry queue, counts as made when it arrives).
        created_at=ctx.received_at,
        raw={field: value},
        **common,
    )


def position(where: str, **fields: Any) -> Position:
    try:
        return Position(**fields)
    except ValidationError as exc:
        raise renamed(exc, where + exc.field.removeprefix("position.")) from None


def sensor(field: str, **fields: Any) -> Sensor:
    """A reading; a complaint about it names `field`, the source's own name for it."""
    try:
        return Sensor(**fields)
    except ValidationError as exc:
        raise renamed(exc, field) from None


def info(
    code: Milestone | None,
    raw_code: str,
    *,
    classifier: Classifier = Classifier.ACTUAL,
    location: Location | None = None,
    mode: Mode | None = None,
    description: str | None = None,
) -> MilestoneInfo:
    return MilestoneInfo(
        code=code, classifier=classifier, location=location, mode=mode, raw_code=raw_code, description=description
    )


def keep_repeats(events: Iterable[Event]) -> dict[str, Event]:
    """Events by id, a repeated id (two scans of one code at one time) kept as `id:2`, `id:3`...

    Stable for a redelivery of the same scans, and linear however many repeats a delivery holds."""
    out: dict[str, Event] = {}
    repeats: dict[str, int] = {}
    for event in events:
        event_id, n = event.event_id, repeats.get(event.event_id, 1)
        while event_id in out:
            n += 1
            event_id = f"{event.event_id}:{n}"
        repeats[event.event_id] = n
        out[event_id] = event if event_id == event.event_id else replace(event, event_id=event_id)
    return out
