"""DHL Shipment Tracking - Unified push: each push carries shipments in the shape of the Unified
tracking API (`{"shipments": [...]}`; a bare shipment object is accepted too).

A shipment's `id` (the tracking number) is its reference, with `details.references[].number` as
further identifiers. Each entry of `events` becomes a milestone of its `statusCode` (`pre-transit`,
`transit`, `delivered`, `failure`, `unknown`), at its `location.address`; a shipment without events
gives one milestone of its current `status`. `estimatedTimeOfDelivery` (else the end of
`estimatedDeliveryTimeFrame`) becomes an estimated `delivered` milestone, made when trackd received
the push. DHL times without an offset are read as UTC.
"""

from __future__ import annotations

from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext

SOURCE = "dhl"
CODES = c.load_codes(SOURCE)
_STATUS: dict[str, str | None] = CODES["statusCode"]


def _location(value: Any, where: str) -> Location | None:
    loc = c.opt_obj(value, where)
    if loc is None:
        return None
    address = c.opt_obj(loc.get("address"), where + ".address") or {}
    name = c.text(address.get("addressLocality"), where + ".address.addressLocality")
    country = c.text(address.get("countryCode"), where + ".address.countryCode")
    if country is not None and len(country) != 2:
        raise ValidationError(where + ".address.countryCode", f"{country!r} is not an ISO 3166 alpha-2 code")
    return c.location(where, name=name, country=country.upper() if country else None)


def _milestone(
    item: dict[str, Any], where: str, tracking: str, common: dict[str, Any], ctx: SourceContext
) -> tuple[str, Event]:
    code = c.req_text(item.get("statusCode"), where + "statusCode")
    raw_time = item.get("timestamp")
    occurred_at = c.time_at(raw_time, where + "timestamp")
    description = c.text(item.get("description") or item.get("status"), where + "description", max_len=1000)
    info = c.info(
        c.milestone(_STATUS, code.lower()),
        code,
        location=_location(item.get("location"), where + "location"),
        description=description,
    )
    event_id = f"{SOURCE}:{tracking}:{occurred_at.isoformat()}:{code}"[:190]
    return event_id, c.milestone_event(
        where, ctx, info=info, event_id=event_id, occurred_at=occurred_at, raw=item, **common
    )


def _estimate(shipment: dict[str, Any], w: str) -> tuple[str, Any] | None:
    if shipment.get("estimatedTimeOfDelivery"):
        return "estimatedTimeOfDelivery", shipment["estimatedTimeOfDelivery"]
    frame = c.opt_obj(shipment.get("estimatedDeliveryTimeFrame"), w + "estimatedDeliveryTimeFrame") or {}
    if frame.get("estimatedThrough"):
        return "estimatedDeliveryTimeFrame.estimatedThrough", frame["estimatedThrough"]
    return None


def _refs(shipment: dict[str, Any], w: str, tracking: str) -> tuple[str, ...]:
    details = c.opt_obj(shipment.get("details"), w + "details") or {}
    numbers: list[tuple[str, str | None]] = []
    for i, r in enumerate(c.array(details.get("references"), w + "details.references", 50)):
        where = f"{w}details.references[{i}]"
        numbers.append((where + ".number", c.text(c.obj(r, where).get("number"), where + ".number")))
    return c.capped_refs(tracking, numbers)


def _shipment(shipment: dict[str, Any], w: str, ctx: SourceContext) -> list[Event]:
    tracking = c.req_text(shipment.get("id"), w + "id")
    common: dict[str, Any] = {
        "source": SOURCE,
        "shipment": tracking,
        "refs": _refs(shipment, w, tracking),
        "carrier": "dhl",
    }
    entries = c.array(shipment.get("events"), w + "events")
    out = c.keep_repeats(
        _milestone(c.obj(entry, f"{w}events[{i}]"), f"{w}events[{i}].", tracking, common, ctx)[1]
        for i, entry in enumerate(entries)
    )
    status = c.opt_obj(shipment.get("status"), w + "status")
    if not entries and status is not None:
        event_id, event = _milestone(status, w + "status.", tracking, common, ctx)
        out[event_id] = event
    if not out and status is None:
        raise ValidationError(w + "status", "is required when a shipment has no events")
    estimate = _estimate(shipment, w)
    if estimate is not None:
        field, value = estimate
        event = c.estimate_event(w, ctx, common, tag="etd", field=field, value=value)
        out[event.event_id] = event
    return list(out.values())


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One push to the milestones and delivery estimates of every shipment it carries, at most
    `MAX_BATCH` events."""
    body = c.obj(c.loads(payload), "body")
    if "shipments" not in body:
        return c.within_batch(_shipment(body, "", ctx))
    shipments = c.array(body["shipments"], "shipments")
    if not shipments:
        raise ValidationError("shipments", "must be a non-empty array of shipments")
    out: list[Event] = []
    for i, shipment in enumerate(shipments):
        out += _shipment(c.obj(shipment, f"shipments[{i}]"), f"shipments[{i}].", ctx)
        c.within_batch(out)
    return out


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.HeaderSecret("DHL-API-Key"),
    status=202,
    whole=False,
    webhook=True,
)
