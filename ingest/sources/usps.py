"""USPS Subscriptions - Tracking: each notification carries trackings in the shape of the USPS
Tracking 3 API (one tracking object, or an array of them), in the notification envelope
`{subscriptionId, subscriptionType, timestamp, payload, links}` whose `payload` holds the tracking
JSON as a string (or an object), or bare.

An envelope with a string `payload` is signed as USPS signs it: `X-HMAC` (else the older
`hmac-header`) holds the base64 HMAC-SHA256 of `timestamp + payload`, keyed with the subscription's
`secret` (`subscription_secret`: the first 32 characters of the ingest secret), and its `timestamp`
must lie within `REPLAY_WINDOW` of now. Any other body is signed as a whole with the ingest secret.

A tracking's `trackingNumber` is its reference. Each entry of `trackingEvents` becomes a milestone
of its `eventCode` (the USPS event codes, `usps_codes.json`) at `GMTTimestamp` (else `eventTimestamp`
read at its `GMTOffset`, else as UTC), at `eventCity`, `eventState`, `eventZIP` and `eventCountry`
(empty for domestic scans: US), described by `eventType`; a delivery's `name` is who received it.
`expectedDeliveryTimeStamp` (else `predictedDeliveryDate`) becomes an estimated `delivered`
milestone, made when trackd received the notification.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Milestone
from trackd.errors import Unauthorized, ValidationError
from trackd.model import Event, Location, SourceContext
from trackd.times import parse_time, utcnow

SOURCE = "usps"
CODES = c.load_codes(SOURCE)
_EVENT: dict[str, str | None] = CODES["eventCode"]
_ESTIMATES = ("expectedDeliveryTimeStamp", "predictedDeliveryDate")
_OFFSET = re.compile(r"^[+-](\d{2}):(\d{2})$")
_HAS_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
SECRET_LENGTH = 32  # the length of the `secret` a USPS subscription takes
REPLAY_WINDOW = timedelta(minutes=5)  # how far a signed envelope's `timestamp` may be from now, either way


def subscription_secret(ingest_secret: str) -> str:
    """The `secret` to give a USPS subscription, and the key its envelopes are checked with: the
    first 32 characters of the tenant's ingest secret."""
    return ingest_secret[:SECRET_LENGTH]


def _envelope(body: Any) -> dict[str, Any] | None:
    """The notification envelope, when `body` is one: an object with a `payload` and no `trackingNumber`."""
    if isinstance(body, dict) and "payload" in body and "trackingNumber" not in body:
        return body
    return None


def _signed(secret: str, body: bytes) -> tuple[bytes, bytes]:
    """The HMAC key and message of a delivery: `timestamp + payload` under the subscription secret
    for an envelope with a string `payload` (refused unless its timestamp is within
    `REPLAY_WINDOW`), else the raw body under the ingest secret."""
    try:
        envelope = _envelope(c.loads(body))
    except ValidationError:
        envelope = None
    if envelope is None or not isinstance(envelope["payload"], str):
        return secret.encode("utf-8"), body
    stamp = envelope.get("timestamp")
    try:
        signed_at = parse_time(stamp, "timestamp", require_offset=False) if isinstance(stamp, str) else None
    except ValidationError:
        signed_at = None
    if signed_at is None or not isinstance(stamp, str):
        raise Unauthorized("a signed USPS notification needs its ISO 8601 timestamp")
    if abs(utcnow() - signed_at) > REPLAY_WINDOW:
        minutes = REPLAY_WINDOW.seconds // 60
        raise Unauthorized(f"USPS notification timestamp {stamp!r} is more than {minutes} minutes from now")
    return subscription_secret(secret).encode("utf-8"), (stamp + envelope["payload"]).encode("utf-8")


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


def _document(body: Any) -> tuple[Any, str]:
    """The tracking document of a delivery and the field it is read under: an envelope's `payload`
    (a JSON string, read with the same bounds as a body, or an object), else the body itself."""
    envelope = _envelope(body)
    if envelope is None:
        return body, ""
    kind = c.text(envelope.get("subscriptionType"), "subscriptionType", max_len=64)
    if kind not in (None, "TRACKING"):
        raise ValidationError("subscriptionType", f"{kind!r} is not TRACKING, the one kind trackd reads")
    inner = envelope["payload"]
    if isinstance(inner, str):
        try:
            return c.loads(inner.encode("utf-8")), "payload"
        except ValidationError as exc:
            raise c.renamed(exc, "payload") from None
    if isinstance(inner, (dict, list)):
        return inner, "payload"
    raise ValidationError("payload", "must be the tracking JSON, as a string or an object")


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One notification to the milestones and delivery estimates of every tracking it carries, at
    most `MAX_BATCH` events."""
    body, base = _document(c.loads(payload))
    if isinstance(body, dict):
        return c.within_batch(_tracking(body, base + "." if base else "", ctx))
    out: list[Event] = []
    for i, item in enumerate(c.items(body, base or "body")):
        out += _tracking(c.obj(item, f"{base}[{i}]"), f"{base}[{i}].", ctx)
        c.within_batch(out)
    if not out:
        raise ValidationError(base or "body", "must hold at least one tracking")
    return out


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("X-HMAC", "", "base64", fallbacks=("hmac-header",), signed=_signed),
    status=202,
    whole=False,
    webhook=True,
)
