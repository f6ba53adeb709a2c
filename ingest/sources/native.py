"""The trackd event JSON: one object or an array of them (see the README's "Native format")."""

from __future__ import annotations

from typing import Any

import orjson

from ingest import signatures
from ingest.adapter import Adapter
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
    derive_event_id,
)
from trackd.times import number, optional_number, parse_time

SOURCE = "native"
MAX_BATCH = 10_000
MAX_DEPTH = 64  # levels of JSON arrays and objects any source may send
_TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"
_LOCATION_FIELDS = ("name", "unlocode", "iata", "country")
_KINDS = tuple(EventKind)  # iterating an Enum class is slow


def loads(payload: bytes) -> Any:
    """JSON bytes to a value, or the one validation error; JSON nested deeper than MAX_DEPTH
    levels is refused (`ValidationError` on `body`), so no adapter, hash or column sees it."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        problem = _TOO_DEEP if str(exc).startswith("depth limit") else f"malformed JSON: {exc}"  # orjson stops at 1024
    else:
        # Fewer brackets than the limit cannot nest past it: two counts in C answer for a single
        # event (about 0.1 µs); the walk is for larger payloads (1-2 µs an event of a batch, where
        # reading the event costs some 50 µs).
        if payload.count(b"{") + payload.count(b"[") <= MAX_DEPTH or not _too_deep(value):
            return value
        problem = _TOO_DEEP
    # Raised here, not in the except clause: the decoder's error would be its context, and that
    # error's traceback holds the frames of every caller.
    raise ValidationError("body", problem)


def _too_deep(value: Any) -> bool:
    """Whether `value` nests arrays and objects more than MAX_DEPTH levels deep; level by level,
    without recursion."""
    if type(value) is not dict and type(value) is not list:
        return False
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        inner: list[Any] = []
        for v in level:
            inner.extend([x for x in (v.values() if type(v) is dict else v) if type(x) is dict or type(x) is list])
        if not inner:
            return False
        level = inner
    return True


def _text(item: dict[str, Any], key: str, where: str, *, max_len: int = 200) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise ValidationError(where + key, f"must be a non-empty string of at most {max_len} characters")
    return value.strip()


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(where, "must be an object")
    return value


def _location(value: Any, where: str) -> Location:
    obj = _object(value, where)
    texts = {k: _text(obj, k, where + ".") for k in _LOCATION_FIELDS}
    lat = optional_number(obj.get("lat"), where + ".lat")
    lon = optional_number(obj.get("lon"), where + ".lon")
    try:
        return Location(lat=lat, lon=lon, **texts)
    except ValidationError as exc:
        raise ValidationError(where + exc.field.removeprefix("location"), exc.reason) from None


def _position(value: Any, where: str) -> Position:
    obj = _object(value, where)
    if "lat" not in obj or "lon" not in obj:
        raise ValidationError(where, "needs lat and lon")
    try:
        return Position(
            lat=number(obj["lat"], where + ".lat"),
            lon=number(obj["lon"], where + ".lon"),
            speed_kmh=optional_number(obj.get("speed_kmh"), where + ".speed_kmh"),
            heading=optional_number(obj.get("heading"), where + ".heading"),
            accuracy_m=optional_number(obj.get("accuracy_m"), where + ".accuracy_m"),
            altitude_m=optional_number(obj.get("altitude_m"), where + ".altitude_m"),
        )
    except ValidationError as exc:
        if exc.field.startswith(where):
            raise
        raise ValidationError(where + exc.field.removeprefix("position"), exc.reason) from None


def _milestone(value: Any, where: str) -> MilestoneInfo:
    obj = _object(value, where)
    raw_code = obj.get("code")
    if not isinstance(raw_code, str):
        raise ValidationError(where + ".code", "is required, one of the canonical milestone codes")
    try:
        code = Milestone(raw_code)
    except ValueError:
        raise ValidationError(where + ".code", f"unknown milestone code {raw_code!r}") from None
    classifier_raw = obj.get("classifier", "actual")
    try:
        classifier = Classifier(classifier_raw)
    except ValueError:
        raise ValidationError(
            where + ".classifier", f"{classifier_raw!r} is not actual, estimated or planned"
        ) from None
    mode = None
    if obj.get("mode") is not None:
        try:
            mode = Mode(obj["mode"])
        except ValueError:
            raise ValidationError(where + ".mode", f"{obj['mode']!r} is not sea, air, road or rail") from None
    location = _location(obj["location"], where + ".location") if obj.get("location") is not None else None
    return MilestoneInfo(code=code, classifier=classifier, location=location, mode=mode)


def _sensor(value: Any, where: str) -> Sensor:
    obj = _object(value, where)
    readings = {
        k: optional_number(obj.get(k), f"{where}.{k}")
        for k in ("temperature_c", "humidity_pct", "battery_pct", "shock_g")
    }
    door = obj.get("door_open")
    if door is not None and not isinstance(door, bool):
        raise ValidationError(where + ".door_open", "must be a boolean (true: the doors are open)")
    try:
        return Sensor(**readings, door_open=door)
    except ValidationError as exc:
        raise ValidationError(where + exc.field.removeprefix("sensor"), exc.reason) from None


def parse_item(item: Any, ctx: SourceContext, where: str = "", source: str = SOURCE) -> Event:
    """One trackd event object to an `Event`; `where` prefixes field names in errors."""
    obj = _object(item, where or "body")
    prefix = where + "." if where else ""
    if "occurred_at" not in obj:
        raise ValidationError(prefix + "occurred_at", "is required")
    occurred_at = parse_time(obj["occurred_at"], prefix + "occurred_at")
    created_at = None
    if obj.get("created_at") is not None:
        created_at = parse_time(obj["created_at"], prefix + "created_at")
        check_not_future(prefix + "created_at", created_at, ctx)
    shipment = _text(obj, "shipment", prefix)
    device = _text(obj, "device", prefix, max_len=128) or ctx.device
    kinds = [k for k in _KINDS if obj.get(k.value) is not None]
    if len(kinds) != 1:
        where_ = prefix.rstrip(".") or "body"
        raise ValidationError(where_, "needs exactly one of position, milestone, sensor")
    kind = kinds[0]
    position = _position(obj["position"], prefix + "position") if kind is EventKind.POSITION else None
    milestone = _milestone(obj["milestone"], prefix + "milestone") if kind is EventKind.MILESTONE else None
    sensor = _sensor(obj["sensor"], prefix + "sensor") if kind is EventKind.SENSOR else None
    check_occurred_at(prefix + "occurred_at", occurred_at, milestone, ctx)  # estimates and plans look ahead
    event_id = _text(obj, "event_id", prefix) or derive_event_id(
        source, {k: v for k, v in obj.items() if k != "event_id"} | {"device": device}
    )
    if shipment is None and device is None:
        raise ValidationError(prefix + "shipment", "an event needs a shipment or a device")
    return Event(
        event_id=event_id,
        source=source,
        occurred_at=occurred_at,
        kind=kind,
        position=position,
        milestone=milestone,
        sensor=sensor,
        shipment=shipment,
        device=device,
        created_at=created_at,
        carrier=_text(obj, "carrier", prefix),
        raw=obj,
    )


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """Bytes of one event object or an array of them to events, or one `ValidationError`."""
    value = loads(payload)
    if isinstance(value, dict):
        return [parse_item(value, ctx)]
    if not isinstance(value, list):
        raise ValidationError("body", "must be an event object or an array of them")
    if not value:
        raise ValidationError("body", "is an empty array")
    if len(value) > MAX_BATCH:
        raise ValidationError("body", f"holds {len(value)} events; at most {MAX_BATCH} a request")
    return [parse_item(item, ctx, f"[{i}]") for i, item in enumerate(value)]


ADAPTER = Adapter(SOURCE, normalize, signature=signatures.NATIVE, status=202, whole=False, webhook=True)
