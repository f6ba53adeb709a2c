"""OwnTracks JSON over MQTT (`owntracks/{tenant}/{device}` and `/event`).

`_type: location` becomes a position (and a battery reading when `batt` is sent);
`_type: transition` becomes an `arrived` (enter) or `departed` (leave) milestone at the region.
Every other `_type` (lwt, card, waypoint, status, cmd, ...) carries no tracking data: [].
"""

from __future__ import annotations

from typing import Any

from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import EventKind
from trackd.errors import ValidationError
from trackd.model import Event, SourceContext, derive_event_id
from trackd.times import from_epoch, number, optional_number

SOURCE = "owntracks"
CODES = c.load_codes(SOURCE)
_TRANSITIONS: dict[str, str] = CODES["transition"]


def _device(item: dict[str, Any], ctx: SourceContext) -> str:
    if ctx.device:
        return ctx.device
    topic = c.text(item.get("topic"), "topic", max_len=300)
    parts = topic.split("/") if topic else []
    if len(parts) >= 3 and parts[0] == "owntracks" and parts[2]:
        return parts[2]
    raise ValidationError("device", "no device: publish to owntracks/{tenant}/{device}")


def _when(item: dict[str, Any], key: str = "tst") -> Any:
    if item.get(key) is None:
        raise ValidationError(key, "is required (epoch seconds)")
    value = number(item[key], key)
    return from_epoch(value, key)


def _non_negative(item: dict[str, Any], key: str) -> float | None:
    """OwnTracks sends -1 (or omits the key) when the phone does not know a value."""
    value = optional_number(item.get(key), key)
    return None if value is None or value < 0 else value


def _location(item: dict[str, Any], device: str, ctx: SourceContext) -> list[Event]:
    occurred_at = _when(item)
    if item.get("lat") is None or item.get("lon") is None:
        raise ValidationError("lat", "lat and lon are required")
    pos = c.position(
        "",
        lat=number(item["lat"], "lat"),
        lon=number(item["lon"], "lon"),
        speed_kmh=_non_negative(item, "vel"),  # OwnTracks reports km/h already
        heading=_non_negative(item, "cog"),
        accuracy_m=_non_negative(item, "acc"),
        altitude_m=optional_number(item.get("alt"), "alt"),
    )
    base = {"device": device, "item": item}
    out = [
        c.event(
            "",
            ctx,
            event_id=derive_event_id(SOURCE, base | {"kind": "position"}),
            source=SOURCE,
            occurred_at=occurred_at,
            kind=EventKind.POSITION,
            position=pos,
            device=device,
            raw=item,
        )
    ]
    battery = _non_negative(item, "batt")
    if battery is not None:
        reading = c.sensor("batt", battery_pct=battery)
        out.append(
            c.event(
                "",
                ctx,
                event_id=derive_event_id(SOURCE, base | {"kind": "sensor"}),
                source=SOURCE,
                occurred_at=occurred_at,
                kind=EventKind.SENSOR,
                sensor=reading,
                device=device,
                raw=item,
            )
        )
    return out


def _transition(item: dict[str, Any], device: str, ctx: SourceContext) -> list[Event]:
    occurred_at = _when(item)
    raw_event = c.req_text(item.get("event"), "event")
    lat = optional_number(item.get("lat"), "lat")
    lon = optional_number(item.get("lon"), "lon")
    place = c.location("", name=c.text(item.get("desc"), "desc"), lat=lat, lon=lon)
    info = c.info(
        c.milestone(_TRANSITIONS, raw_event.lower()),
        raw_event,
        location=place,
        description=c.text(item.get("desc"), "desc"),
    )
    event_id = derive_event_id(SOURCE, {"device": device, "item": item})
    return [
        c.milestone_event(
            "", ctx, info=info, event_id=event_id, source=SOURCE, occurred_at=occurred_at, device=device, raw=item
        )
    ]


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One OwnTracks message to events (possibly none); the device comes from the MQTT topic."""
    item = c.obj(c.loads(payload), "body")
    kind = item.get("_type")
    if not isinstance(kind, str):
        raise ValidationError("_type", "is required")
    if kind == "location":
        return _location(item, _device(item, ctx), ctx)
    if kind == "transition":
        return _transition(item, _device(item, ctx), ctx)
    return []


ADAPTER = Adapter(SOURCE, normalize, signature=None, status=202, whole=False, webhook=False)
