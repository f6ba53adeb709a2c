"""USPS Subscriptions - Tracking: each notification carries trackings in the shape of the USPS
Tracking 3 API (one tracking object, or an array of them).

A tracking's `trackingNumber` is its reference. Each entry of `trackingEvents` becomes a milestone
of its `eventCode` (the USPS event codes, `usps_codes.json`) at `GMTTimestamp` (else `eventTimestamp`
read at its `GMTOffset`, else as UTC), at `eventCity`, `eventState`, `eventZIP` and `eventCountry`
(empty for domestic scans: US), described by `eventType`; a delivery's `name` is who received it.
`expectedDeliveryTimeStamp` (else `predictedDeliveryDate`) becomes an estimated `delivered`
milestone, made when trackd received the notification.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Milestone
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext

SOURCE = "usps"
CODES = c.load_codes(SOURCE)
_EVENT: dict[str, str | None] = CODES["eventCode"]
_ESTIMATES = ("expectedDeliveryTimeStamp", "predictedDeliveryDate")
_OFFSET = re.compile(r"^[+-](\d{2}):(\d{2})$")
_HAS_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def _time(item: dict[str, Any], where: str) -> datetime:
    """The scan's time: `GMTTimestamp`, else the local `eventTimestamp` at `GMTOffset`."""
    if item.get("GMTTimestamp") not in (None, ""):
        return c.time_at(item["GMTTimestamp"], where + "GMTTimestamp")
    local = item.get("eventTimestamp")
    at = c.time_at(local, where + "eventTimestamp")
    offset = c.text(item.get("GMTOffset"), where + "GMTOffset", max_len=6)
    if offset is None or not isinstance(local, str) or _HAS_OFFSET.search(local.strip()):
        return at
    found = _OFFSET.match(offset)
    if found is None or int(found.group(1)) > 14 or int(found.group(2)) > 59:
        raise ValidationError(where + "GMTOffset", f"{offset!r} is not an offset such as -05:00")
    return c.local_time(at.replace(tzinfo=None), c.zone(offset))


def _location(item: dict[str, Any], where: str) -> Location | None:
    city = c.text(item.get("eventCity"), where + "eventCity")
    state = c.text(item.get("eventState"), where + "eventState")
    zip_code = c.text(item.get("eventZIP"), where + "eventZIP")
    country = c.text(item.get("eventCountry"), where + "eventCountry")
    parts = [", ".join(p for p in (city, state) if p), zip_code or ""]
    if country is not None and len(country) != 2:  # international scans name the country
        parts.append(country)
        country = None
    elif country is None and (city or state or zip_code):
        country = "US"
    name = " ".join(p for p in parts if p) or None
    return c.location(where.rstrip("."), name=name, country=country.upper() if country else None)


def _milestone(item: dict[str, Any], where: str, tracking: str, common: dict[str, Any], ctx: SourceContext) -> Event:
    code = c.req_text(item.get("eventCode"), where + "eventCode", max_len=8)
    occurred_at = _time(item, where)
    description = c.text(item.get("eventType"), where + "eventType", max_len=1000)
    mapped = c.milestone(_EVENT, code.upper())
    signer = c.text(item.get("name"), where + "name")
    if signer and mapped is Milestone.DELIVERED:
        description = f"{description or 'Delivered'}; received by {signer}"
    info = c.info(mapped, code, location=_location(item, where), description=description)
    event_id = f"{SOURCE}:{tracking}:{occurred_at.isoformat()}:{code}"[:190]
    return c.milestone_event(where, ctx, info=info, event_id=event_id, occurred_at=occurred_at, raw=item, **common)


def _tracking(body: dict[str, Any], w: str, ctx: SourceContext) -> list[Event]:
    tracking = c.req_text(body.get("trackingNumber"), w + "trackingNumber", max_len=64)
    common: dict[str, Any] = {"source": SOURCE, "shipment": tracking, "refs": (tracking,), "carrier": "usps"}
    entries = c.array(body.get("trackingEvents"), w + "trackingEvents")
    out = c.keep_repeats(
        _milestone(c.obj(entry, f"{w}trackingEvents[{i}]"), f"{w}trackingEvents[{i}].", tracking, common, ctx)
        for i, entry in enumerate(entries)
    )
    field = next((f for f in _ESTIMATES if body.get(f) not in (None, "")), None)
    if field is not None:
        event = c.estimate_event(w, ctx, common, tag="edd", field=field, value=body[field])
        out[event.event_id] = event
    if not out:
        raise ValidationError(w + "trackingEvents", "is required when a tracking has no delivery estimate")
    return list(out.values())


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One notification to the milestones and delivery estimates of every tracking it carries, at
    most `MAX_BATCH` events."""
    body = c.loads(payload)
    if isinstance(body, dict):
        return c.within_batch(_tracking(body, "", ctx))
    out: list[Event] = []
    for i, item in enumerate(c.items(body, "body")):
        out += _tracking(c.obj(item, f"[{i}]"), f"[{i}].", ctx)
        c.within_batch(out)
    if not out:
        raise ValidationError("body", "must hold at least one tracking")
    return out


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("X-HMAC", "", "base64"),
    status=202,
    whole=False,
    webhook=True,
)
