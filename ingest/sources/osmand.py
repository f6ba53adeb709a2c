"""Traccar Client / OsmAnd over HTTP: `GET` or `POST /v1/osmand?id=...`.

Two forms: the classic query (or form-encoded body) with `lat`, `lon`, `timestamp`, `speed` in
knots, `bearing`/`heading`, `altitude`, `accuracy`, `batt` (percent); and the JSON form of Traccar
Client 9+ (`{"location": {"timestamp", "coords": {...}, "battery": {"level"}}, "device_id"}`),
whose speed is m/s and battery a fraction of 1. Keys trackd does not use stay in `raw`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import EventKind
from trackd.errors import ValidationError
from trackd.model import Event, SourceContext, derive_event_id
from trackd.times import knots_to_kmh, ms_to_kmh, number, optional_number, parse_time

SOURCE = "osmand"
MAX_FORM = 64 * 1024


def _is_json(payload: bytes) -> bool:
    return payload.lstrip()[:1] in (b"{", b"[")


def _form(payload: bytes) -> dict[str, str]:
    if len(payload) > MAX_FORM:
        raise ValidationError("body", f"form bodies are at most {MAX_FORM} bytes")
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "is not UTF-8 form data") from None
    try:
        pairs = parse_qsl(body.strip(), keep_blank_values=True, max_num_fields=200)
    except ValueError:
        raise ValidationError("body", "holds more than 200 form fields") from None
    return dict(pairs)


def _fields(payload: bytes, params: dict[str, str]) -> tuple[dict[str, Any], bool]:
    """The request's fields (query first, body over it) and whether the body is the JSON form."""
    if payload.strip() and _is_json(payload):
        return c.obj(c.loads(payload), "body"), True
    return dict(params) | _form(payload), False


def device_key(payload: bytes, params: dict[str, str]) -> str:
    """The device key the request names (`id`/`deviceid`, or JSON `device_id`), for the HTTP layer."""
    for name in ("id", "deviceid"):
        if params.get(name):
            return c.req_text(params[name], "id", max_len=128)
    fields, is_json = _fields(payload, {})
    for name in ("device_id", "id", "deviceid") if is_json else ("id", "deviceid"):
        if fields.get(name) not in (None, ""):
            return c.req_text(fields[name], "id", max_len=128)
    raise ValidationError("id", "is required: the device key (?id=...)")


def _timestamp(value: Any, where: str) -> datetime:
    """Epoch seconds or milliseconds, ISO 8601, or `yyyy-MM-dd HH:mm:ss` (UTC)."""
    if value in (None, ""):
        raise ValidationError(where, "is required")
    return parse_time(value, where, require_offset=False)


def _events(
    where: str,
    ctx: SourceContext,
    fields: dict[str, Any],
    device: str,
    occurred_at: datetime,
    lat: float,
    lon: float,
    speed_kmh: float | None,
    heading: float | None,
    accuracy: float | None,
    altitude: float | None,
    battery: float | None,
    battery_field: str = "batt",
) -> list[Event]:
    pos = c.position(
        where, lat=lat, lon=lon, speed_kmh=speed_kmh, heading=heading, accuracy_m=accuracy, altitude_m=altitude
    )
    base = {"device": device, "item": fields}
    out = [
        c.event(
            where,
            ctx,
            event_id=derive_event_id(SOURCE, base | {"kind": "position"}),
            source=SOURCE,
            occurred_at=occurred_at,
            kind=EventKind.POSITION,
            position=pos,
            device=device,
            raw=fields,
        )
    ]
    if battery is not None:
        reading = c.sensor(battery_field, battery_pct=battery)
        out.append(
            c.event(
                where,
                ctx,
                event_id=derive_event_id(SOURCE, base | {"kind": "sensor"}),
                source=SOURCE,
                occurred_at=occurred_at,
                kind=EventKind.SENSOR,
                sensor=reading,
                device=device,
                raw=fields,
            )
        )
    return out


def _query_form(fields: dict[str, Any], device: str, ctx: SourceContext) -> list[Event]:
    if fields.get("location") and not (fields.get("lat") and fields.get("lon")):
        parts = str(fields["location"]).split(",")
        if len(parts) != 2:
            raise ValidationError("location", "must be 'lat,lon'")
        lat, lon = number(parts[0], "location"), number(parts[1], "location")
    elif fields.get("lat") not in (None, "") and fields.get("lon") not in (None, ""):
        lat, lon = number(fields["lat"], "lat"), number(fields["lon"], "lon")
    else:
        raise ValidationError("lat", "lat and lon (or location) are required")
    knots = optional_number(fields.get("speed"), "speed")
    heading = optional_number(fields.get("bearing", fields.get("heading")), "bearing")
    return _events(
        "",
        ctx,
        fields,
        device,
        _timestamp(fields.get("timestamp"), "timestamp"),
        lat,
        lon,
        speed_kmh=None if knots is None or knots < 0 else knots_to_kmh(knots),
        heading=None if heading is None or heading < 0 else heading,
        accuracy=optional_number(fields.get("accuracy"), "accuracy"),
        altitude=optional_number(fields.get("altitude"), "altitude"),
        battery=optional_number(fields.get("batt"), "batt"),
    )


def _json_form(body: dict[str, Any], device: str, ctx: SourceContext) -> list[Event]:
    loc = c.obj(body.get("location"), "location")
    coords = c.obj(loc.get("coords"), "location.coords")
    if coords.get("latitude") is None or coords.get("longitude") is None:
        raise ValidationError("location.coords", "latitude and longitude are required")
    speed_ms = optional_number(coords.get("speed"), "location.coords.speed")
    heading = optional_number(coords.get("heading"), "location.coords.heading")
    accuracy = optional_number(coords.get("accuracy"), "location.coords.accuracy")
    battery = c.opt_obj(loc.get("battery"), "location.battery") or {}
    level = optional_number(battery.get("level"), "location.battery.level")
    return _events(
        "location.",
        ctx,
        body,
        device,
        _timestamp(loc.get("timestamp"), "location.timestamp"),
        number(coords["latitude"], "location.coords.latitude"),
        number(coords["longitude"], "location.coords.longitude"),
        speed_kmh=None if speed_ms is None or speed_ms < 0 else ms_to_kmh(speed_ms),
        heading=None if heading is None or heading < 0 else heading,
        accuracy=None if accuracy is None or accuracy < 0 else accuracy,
        altitude=optional_number(coords.get("altitude"), "location.coords.altitude"),
        battery=None if level is None or level < 0 else level * 100,
        battery_field="location.battery.level",
    )


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One report (query, form or JSON) to a position, plus a battery reading when one is sent.

    `ctx.device` is the device the HTTP layer resolved from `device_key`; without it the event
    has nothing to attach to and is refused.
    """
    if not ctx.device:
        raise ValidationError("id", "names no registered device")
    fields, is_json = _fields(payload, ctx.params)
    if is_json:
        return _json_form(fields, ctx.device, ctx)
    return _query_form(fields, ctx.device, ctx)


ADAPTER = Adapter(SOURCE, normalize, signature=None, status=200, whole=False, webhook=False)
