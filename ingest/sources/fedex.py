"""FedEx Advanced Integrated Visibility webhook: each push carries track results in the shape of the
FedEx Track API (`{"output": {"completeTrackResults": [{"trackingNumber", "trackResults": [...]}]}}`;
a flat `{"trackResults": [...]}` is accepted too).

A track result's tracking number (`trackingNumberInfo.trackingNumber`) is its reference, with the
`additionalTrackingInfo.packageIdentifiers[].values` (purchase order, customer reference...) as
further identifiers. Each of its `scanEvents` becomes a milestone of its `eventType` at `date`, at its
`scanLocation`; a delivery is described with who received it (`deliveryDetails.receivedByName`,
the proof of delivery). The estimated delivery time window (`estimatedDeliveryTimeWindow.window`,
else the `ESTIMATED_DELIVERY` of `dateAndTimes`) becomes an estimated `delivered` milestone at the
window's end, made when trackd received the push. A result that carries an `error` (FedEx has nothing
for that number) is skipped. FedEx times without an offset are read as UTC.
"""

from __future__ import annotations

import logging
from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from trackd.codes import Milestone
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext

SOURCE = "fedex"
CODES = c.load_codes(SOURCE)
_EVENT: dict[str, str | None] = CODES["eventType"]
log = logging.getLogger("trackd.ingest.fedex")


def _location(value: Any, where: str) -> Location | None:
    loc = c.opt_obj(value, where)
    if loc is None:
        return None
    city = c.text(loc.get("city"), where + ".city")
    state = c.text(loc.get("stateOrProvinceCode"), where + ".stateOrProvinceCode")
    country = c.text(loc.get("countryCode"), where + ".countryCode")
    if country is not None and len(country) != 2:
        raise ValidationError(where + ".countryCode", f"{country!r} is not an ISO 3166 alpha-2 code")
    name = ", ".join(p for p in (city, state) if p) or None
    return c.location(where, name=name, country=country.upper() if country else None)


def _refs(result: dict[str, Any], w: str, tracking: str) -> tuple[str, ...]:
    extra = c.opt_obj(result.get("additionalTrackingInfo"), w + "additionalTrackingInfo") or {}
    found: list[tuple[str, str | None]] = []
    where = w + "additionalTrackingInfo.packageIdentifiers"
    for i, ident in enumerate(c.array(extra.get("packageIdentifiers"), where, 50)):
        values = c.obj(ident, f"{where}[{i}]").get("values")
        found += [
            (f"{where}[{i}].values[{j}]", c.text(v, f"{where}[{i}].values[{j}]"))
            for j, v in enumerate(c.array(values, f"{where}[{i}].values", 50))
        ]
    return c.capped_refs(tracking, found)


def _scan(
    item: dict[str, Any], where: str, tracking: str, signer: str | None, common: dict[str, Any], ctx: SourceContext
) -> Event:
    code = c.req_text(item.get("eventType"), where + "eventType", max_len=8)
    occurred_at = c.time_at(item.get("date"), where + "date")
    description = c.text(item.get("eventDescription"), where + "eventDescription", max_len=1000)
    exception = c.text(item.get("exceptionDescription"), where + "exceptionDescription", max_len=1000)
    if exception:
        description = f"{description}: {exception}" if description else exception
    mapped = c.milestone(_EVENT, code.upper())
    raw = item
    if signer and mapped is Milestone.DELIVERED:
        description = f"{description or 'Delivered'}; received by {signer}"
        raw = {**item, "receivedByName": signer}
    info = c.info(
        mapped, code, location=_location(item.get("scanLocation"), where + "scanLocation"), description=description
    )
    event_id = f"{SOURCE}:{tracking}:{occurred_at.isoformat()}:{code}"[:190]
    return c.milestone_event(where, ctx, info=info, event_id=event_id, occurred_at=occurred_at, raw=raw, **common)


def _estimate(result: dict[str, Any], w: str) -> tuple[str, Any, str | None] | None:
    """The field, the end of the estimated delivery window and a description of the window."""
    edtw = c.opt_obj(result.get("estimatedDeliveryTimeWindow"), w + "estimatedDeliveryTimeWindow") or {}
    window = c.opt_obj(edtw.get("window"), w + "estimatedDeliveryTimeWindow.window") or {}
    if window.get("ends") not in (None, ""):
        begins = c.text(window.get("begins"), w + "estimatedDeliveryTimeWindow.window.begins", max_len=64)
        about = f"between {begins} and {window['ends']}" if begins else None
        return "estimatedDeliveryTimeWindow.window.ends", window["ends"], about
    for i, entry in enumerate(c.array(result.get("dateAndTimes"), w + "dateAndTimes", 50)):
        entry = c.obj(entry, f"{w}dateAndTimes[{i}]")
        if entry.get("type") == "ESTIMATED_DELIVERY" and entry.get("dateTime") not in (None, ""):
            return "dateAndTimes.ESTIMATED_DELIVERY", entry["dateTime"], None
    return None


def _result(result: dict[str, Any], w: str, enclosing: str | None, ctx: SourceContext) -> list[Event]:
    number = c.opt_obj(result.get("trackingNumberInfo"), w + "trackingNumberInfo") or {}
    tracking = (
        c.text(number.get("trackingNumber"), w + "trackingNumberInfo.trackingNumber", max_len=64)
        or c.text(result.get("trackingNumber"), w + "trackingNumber", max_len=64)
        or enclosing
    )
    if tracking is None:
        raise ValidationError(w + "trackingNumberInfo.trackingNumber", "is required")
    common: dict[str, Any] = {
        "source": SOURCE,
        "shipment": tracking,
        "refs": _refs(result, w, tracking),
        "carrier": "fedex",
    }
    details = c.opt_obj(result.get("deliveryDetails"), w + "deliveryDetails") or {}
    signer = c.text(details.get("receivedByName"), w + "deliveryDetails.receivedByName")
    scans = c.array(result.get("scanEvents"), w + "scanEvents")
    out = c.keep_repeats(
        _scan(c.obj(entry, f"{w}scanEvents[{i}]"), f"{w}scanEvents[{i}].", tracking, signer, common, ctx)
        for i, entry in enumerate(scans)
    )
    estimate = _estimate(result, w)
    if estimate is not None:
        field, value, about = estimate
        event = c.estimate_event(w, ctx, common, tag="edtw", field=field, value=value, about=about)
        out[event.event_id] = event
    if not out:
        raise ValidationError(w + "scanEvents", "is required when a track result has no delivery estimate")
    return list(out.values())


def _results(body: dict[str, Any]) -> list[tuple[dict[str, Any], str, str | None]]:
    """Every track result of a push: (result, where, the tracking number around it)."""
    if "output" not in body:
        results = c.array(body.get("trackResults"), "trackResults")
        if not results:
            raise ValidationError("output", "is required: {output: {completeTrackResults}} or {trackResults}")
        return [(c.obj(r, f"trackResults[{i}]"), f"trackResults[{i}].", None) for i, r in enumerate(results)]
    output = c.obj(body["output"], "output")
    complete = c.array(output.get("completeTrackResults"), "output.completeTrackResults")
    if not complete:
        raise ValidationError("output.completeTrackResults", "must be a non-empty array")
    out: list[tuple[dict[str, Any], str, str | None]] = []
    for i, entry in enumerate(complete):
        w = f"output.completeTrackResults[{i}]"
        entry = c.obj(entry, w)
        enclosing = c.text(entry.get("trackingNumber"), w + ".trackingNumber", max_len=64)
        results = c.array(entry.get("trackResults"), w + ".trackResults")
        out += [
            (c.obj(r, f"{w}.trackResults[{j}]"), f"{w}.trackResults[{j}].", enclosing) for j, r in enumerate(results)
        ]
        if len(out) > c.MAX_BATCH:
            raise ValidationError("output.completeTrackResults", f"holds more than {c.MAX_BATCH} track results")
    return out


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """One push to the milestones and delivery estimates of every track result it carries, at most
    `MAX_BATCH` events; results that carry an `error` give none (a push of only those, none at all)."""
    body = c.obj(c.loads(payload), "body")
    out: list[Event] = []
    skipped = 0
    for result, where, enclosing in _results(body):
        if result.get("error"):  # e.g. TRACKING.TRACKINGNUMBER.NOTFOUND: nothing to store for it
            skipped += 1
            continue
        out += _result(result, where, enclosing, ctx)
        c.within_batch(out)
    if skipped:
        log.debug("fedex push: %d track results skipped for their error", skipped)
    return out


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("fdx-signature", "", "base64"),
    status=202,
    whole=False,
    webhook=True,
)
