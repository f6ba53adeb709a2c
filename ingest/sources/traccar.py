"""Traccar position and event forwarding: `POST` of `{"position", "device"}` (Traccar's `forward.url`
with `forward.type=json`) or `{"event", "position"?, "device", "geofence"?}` (`event.forward.url`).

The device is Traccar's `device.uniqueId` (the identifier the tracker reports), which a tenant
registers as a trackd device and attaches to shipments, as with OwnTracks and OsmAnd.

- A position (`valid` fix) becomes a position event: `fixTime` (else `deviceTime`), `latitude`,
  `longitude`, `speed` in knots, `course`, `altitude`, `accuracy` (0: unknown). Its attributes
  `batteryLevel` (%), `deviceTemp`/`temp1` (°C) and `humidity` (%) become one sensor reading. A
  position without a fix (`valid: false`) gives no position event (Traccar repeats the last fix).
- An event becomes a milestone where its meaning for a shipment is clear (`geofenceEnter` ->
  `arrived`, `geofenceExit` -> `departed`, at the geofence); an `alarm` is kept as a milestone
  without a code (raw code `alarm:<kind>`), as is a type trackd does not know. Device and driving
  events (online/offline, ignition, motion, overspeed...) give only the position they carry.

Both forwards may carry the same fix: its event id is derived from the device, the time and the
coordinates alone, so the second copy is a duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import EventKind
from trackd.errors import ValidationError
from trackd.model import Event, SourceContext, derive_event_id
from trackd.times import knots_to_kmh, number, optional_number, parse_time

SOURCE = "traccar"
CODES = c.load_codes(SOURCE)
_EVENTS: dict[str, str | None] = CODES["event"]
_POSITION_ONLY = frozenset(CODES["position_only"])
_SENSORS: dict[str, str] = CODES["sensor"]


def _time(value: Any, where: str) -> datetime:
    """Traccar writes ISO 8601 with an offset (`2024-06-01T10:15:30.000+00:00`); epoch ms also pass."""
    if value in (None, ""):
        raise ValidationError(where, "is required")
    return parse_time(value, where, require_offset=False)


def _fix_time(pos: dict[str, Any]) -> datetime:
    if pos.get("fixTime") not in (None, ""):
        return _time(pos["fixTime"], "position.fixTime")
    return _time(pos.get("deviceTime"), "position.fixTime")


def _attributes(item: dict[str, Any], where: str) -> dict[str, Any]:
    return c.opt_obj(item.get("attributes"), where + ".attributes") or {}


def _reading(attrs: dict[str, Any]) -> dict[str, float] | None:
    """The sensor fields of a position's attributes, each checked under its Traccar name."""
    fields: dict[str, float] = {}
    for key, name in _SENSORS.items():
        where = f"position.attributes.{key}"
        value = optional_number(attrs.get(key), where)
        if value is None or name in fields:
            continue
        c.sensor(where, **{name: value})
        fields[name] = value
    return fields or None


def _position(pos: dict[str, Any], device: str, ctx: SourceContext) -> list[Event]:
    occurred_at = _fix_time(pos)
    base = {"device": device, "at": occurred_at.isoformat()}
    out: list[Event] = []
    if pos.get("valid") is not False:
        if pos.get("latitude") is None or pos.get("longitude") is None:
            raise ValidationError("position.latitude", "latitude and longitude are required")
        lat = number(pos["latitude"], "position.latitude")
        lon = number(pos["longitude"], "position.longitude")
        knots = optional_number(pos.get("speed"), "position.speed")
        course = optional_number(pos.get("course"), "position.course")
        accuracy = optional_number(pos.get("accuracy"), "position.accuracy")
        fix = c.position(
            "position.",
            lat=lat,
            lon=lon,
            speed_kmh=None if knots is None or knots < 0 else knots_to_kmh(knots),
            heading=None if course is None or course < 0 else course % 360,
            accuracy_m=None if accuracy is None or accuracy <= 0 else accuracy,
            altitude_m=optional_number(pos.get("altitude"), "position.altitude"),
        )
        out.append(
            c.event(
                "position.",
                ctx,
                event_id=derive_event_id(SOURCE, base | {"kind": "position", "lat": lat, "lon": lon}),
                source=SOURCE,
                occurred_at=occurred_at,
                kind=EventKind.POSITION,
                position=fix,
                device=device,
                raw=pos,
            )
        )
    reading = _reading(_attributes(pos, "position"))
    if reading is not None:
        out.append(
            c.event(
                "position.",
                ctx,
                event_id=derive_event_id(SOURCE, base | {"kind": "sensor"}),
                source=SOURCE,
                occurred_at=occurred_at,
                kind=EventKind.SENSOR,
                sensor=c.sensor("position.attributes", **reading),
                device=device,
                raw=pos,
            )
        )
    return out


def _event(
    body: dict[str, Any], item: dict[str, Any], pos: dict[str, Any] | None, device: str, ctx: SourceContext
) -> list[Event]:
    kind = c.req_text(item.get("type"), "event.type")
    if kind in _POSITION_ONLY:
        return []
    occurred_at = _time(item.get("eventTime"), "event.eventTime")
    geofence = c.opt_obj(body.get("geofence"), "geofence") or {}
    place_name = c.text(geofence.get("name"), "geofence.name")
    alarm = c.text(_attributes(item, "event").get("alarm"), "event.attributes.alarm")
    raw_code = f"alarm:{alarm}" if kind == "alarm" and alarm else kind
    lat = lon = None
    if pos is not None and pos.get("valid") is not False and pos.get("latitude") is not None:
        lat = number(pos["latitude"], "position.latitude")
        lon = number(pos.get("longitude"), "position.longitude")
    code = c.milestone(_EVENTS, kind)
    info = c.info(
        code,
        raw_code,
        location=c.location("geofence", name=place_name, lat=lat, lon=lon),
        description=place_name or alarm,
    )
    identity = {"device": device, "type": kind, "at": occurred_at.isoformat(), "id": item.get("id")}
    identity |= {"geofence": item.get("geofenceId"), "alarm": alarm}
    return [
        c.milestone_event(
            "event.",
            ctx,
            info=info,
            event_id=derive_event_id(SOURCE, identity),
            source=SOURCE,
            occurred_at=occurred_at,
            device=device,
            raw=body,
        )
    ]


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One forwarded position or event to events of the Traccar device (`device.uniqueId`)."""
    body = c.obj(c.loads(payload), "body")
    device = c.obj(body.get("device"), "device")
    unique_id = c.req_text(device.get("uniqueId"), "device.uniqueId", max_len=128)
    pos = c.opt_obj(body.get("position"), "position")
    item = c.opt_obj(body.get("event"), "event")
    if pos is None and item is None:
        raise ValidationError("position", "is required: a position forward or an event forward")
    out = [] if pos is None else _position(pos, unique_id, ctx)
    if item is not None:
        out += _event(body, item, pos, unique_id, ctx)
    return out


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.HeaderSecret("Authorization", "Bearer "),
    status=202,
    whole=False,
    webhook=True,
)
