"""DCSA Track & Trace events: v2.2/v2.3 flat events, early v3 `{metadata, payload}` envelopes and
3.0.0 `{"events": [...]}` bodies (`dcsa3`, answered 200 as 3.0.0 asks; the others 204).

The older body is an array of events (a single event object is accepted too). TRANSPORT, EQUIPMENT,
SHIPMENT (and OPERATIONS) events become milestones; `eventClassifierCode` ACT/EST/PLN becomes
actual/estimated/planned, so an `EST ARRI` is the carrier's ETA. A v3 `retractedEventID` withdraws
`dcsa:<retractedEventID>`.
"""

from __future__ import annotations

from typing import Any

from ingest import signatures
from ingest.adapter import Adapter
from ingest.sources import _common as c
from ingest.sources import dcsa3
from trackd.errors import ValidationError
from trackd.model import Event, Location, SourceContext, derive_event_id
from trackd.times import optional_number

SOURCE = "dcsa"
CODES = c.load_codes(SOURCE)
_TYPE_FIELDS = {
    "TRANSPORT": "transportEventTypeCode",
    "EQUIPMENT": "equipmentEventTypeCode",
    "SHIPMENT": "shipmentEventTypeCode",
    "OPERATIONS": "operationsEventTypeCode",
}
# Which document types name the shipment best, best first.
_MAIN_DOCUMENTS = ("TRD", "BKG", "CBR", "SHI")


def _event_type(body: dict[str, Any], declared: str | None, where: str) -> tuple[str, str]:
    """The event type and its type code, from the declared type or from the code field present."""
    if declared is not None:
        if declared not in _TYPE_FIELDS:
            known = ", ".join(_TYPE_FIELDS)
            raise ValidationError(where + "eventType", f"{declared!r} is not one of {known}")
        candidates = [declared]
    else:
        candidates = [t for t, f in _TYPE_FIELDS.items() if body.get(f) is not None]
    for event_type in candidates:
        code = c.text(body.get(_TYPE_FIELDS[event_type]), where + _TYPE_FIELDS[event_type])
        code = code or c.text(body.get("eventTypeCode"), where + "eventTypeCode")  # deprecated in v2
        if code:
            return event_type, code.upper()
    field = _TYPE_FIELDS[declared] if declared else "eventType"
    raise ValidationError(where + field, "is required")


def _pairs(value: Any, where: str, type_key: str, value_key: str) -> list[tuple[str | None, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(where, "must be an array")
    out = []
    for i, entry in enumerate(value):
        entry = c.obj(entry, f"{where}[{i}]")
        ref = c.text(entry.get(value_key), f"{where}[{i}].{value_key}")
        if ref:
            out.append((c.text(entry.get(type_key), f"{where}[{i}].{type_key}"), ref))
    return out


def _references(body: dict[str, Any], where: str) -> tuple[str | None, tuple[str, ...]]:
    """(main shipment identifier, every identifier) of an event, v2 and v3 field names alike."""
    typed: list[tuple[str | None, str]] = []
    doc_type = c.text(body.get("documentTypeCode"), where + "documentTypeCode")
    for key in ("documentReference", "documentID"):
        ref = c.text(body.get(key), where + key)
        if ref:
            typed.append((doc_type, ref))
    for key, kind in (
        ("transportDocumentReference", "TRD"),
        ("carrierBookingReference", "BKG"),
        ("carrierBookingRequestReference", "CBR"),
    ):
        ref = c.text(body.get(key), where + key)
        if ref:
            typed.append((kind, ref))
    typed += _pairs(
        body.get("documentReferences"), where + "documentReferences", "documentReferenceType", "documentReferenceValue"
    )
    related = where + "relatedDocumentReferences"
    typed += _pairs(body.get("relatedDocumentReferences"), related, "type", "value")
    equipment = c.text(body.get("equipmentReference"), where + "equipmentReference")
    if equipment:
        typed.append(("EQ", equipment))
    typed += _pairs(body.get("references"), where + "references", "referenceType", "referenceValue")
    v3_refs = _pairs(body.get("references"), where + "references", "type", "value")
    typed += [p for p in v3_refs if p not in typed]
    by_type = {t: r for t, r in reversed(typed)}
    main = next((by_type[t] for t in (*_MAIN_DOCUMENTS, "EQ") if t in by_type), None)
    all_refs = c.refs(*(r for _, r in typed))
    return main or (all_refs[0] if all_refs else None), all_refs


def _location(value: Any, where: str) -> Location | None:
    loc = c.opt_obj(value, where)
    if loc is None:
        return None
    unlocode = c.text(loc.get("UNLocationCode"), where + ".UNLocationCode")
    lat = optional_number(loc.get("latitude"), where + ".latitude")
    lon = optional_number(loc.get("longitude"), where + ".longitude")
    return c.location(
        where,
        name=c.text(loc.get("locationName"), where + ".locationName"),
        unlocode=unlocode,
        country=unlocode[:2].upper() if unlocode and len(unlocode) == 5 else None,
        lat=lat,
        lon=lon,
    )


def _place(body: dict[str, Any], call: dict[str, Any] | None, where: str) -> Location | None:
    for key in ("eventLocation", "location"):
        if body.get(key) is not None:
            return _location(body[key], where + key)
    if call is None:
        return None
    if call.get("location") is not None:
        return _location(call["location"], where + "transportCall.location")
    unlocode = c.text(call.get("UNLocationCode"), where + "transportCall.UNLocationCode")
    return c.location(
        where + "transportCall",
        unlocode=unlocode,
        country=unlocode[:2].upper() if unlocode and len(unlocode) == 5 else None,
    )


def _carrier(meta: dict[str, Any], call: dict[str, Any] | None, meta_where: str, where: str) -> str | None:
    """The publishing carrier (v3 metadata), else the vessel operator's code."""
    publisher = c.opt_obj(meta.get("publisher"), meta_where + "publisher") or {}
    found = c.text(publisher.get("carrierCode"), meta_where + "publisher.carrierCode")
    vessel = c.opt_obj((call or {}).get("vessel"), where + "transportCall.vessel") or {}
    for key in ("operatorCarrierCode", "vesselOperatorCarrierCode"):
        found = found or c.text(vessel.get(key), where + "transportCall.vessel." + key)
    return found


def _code(event_type: str, code: str, body: dict[str, Any], where: str) -> Any:
    """The canonical code; a HOLD or RELS that is not about customs is not a customs milestone."""
    if event_type == "SHIPMENT" and code in CODES["SHIPMENT_NOT_CUSTOMS"]:
        doc_type = c.text(body.get("documentTypeCode"), where + "documentTypeCode")
        reason = c.text(body.get("reason"), where + "reason", max_len=1000) or ""
        if doc_type and doc_type.upper() != "CUS" and "customs" not in reason.lower():
            return c.milestone(CODES["SHIPMENT_NOT_CUSTOMS"], code)
    return c.milestone(CODES[event_type], code)


def _retraction(meta: dict[str, Any], item: dict[str, Any], retracted: str, where: str, ctx: SourceContext) -> Event:
    event_id = c.text(meta.get("eventID"), where + "eventID")
    created = c.time_at(meta.get("eventCreatedDateTime"), where + "eventCreatedDateTime", require_offset=True)
    target = f"{SOURCE}:{retracted}"
    return c.milestone_event(
        where,
        ctx,
        info=c.info(None, "RETRACTED"),
        event_id=f"{SOURCE}:{event_id}" if event_id else derive_event_id(SOURCE, item),
        source=SOURCE,
        occurred_at=created,
        created_at=created,
        retracts=target,
        # The retraction names no shipment of its own; the retracted event's id is its only handle.
        refs=(target,),
        carrier=_carrier(meta, None, where, where),
        raw=item,
    )


def _parse(item: Any, where: str, ctx: SourceContext) -> Event:
    item = c.obj(item, where or "body")
    prefix = where + "." if where else ""
    if "metadata" in item or "payload" in item:
        meta = c.opt_obj(item.get("metadata"), prefix + "metadata") or {}
        meta_where = prefix + "metadata."
        retracted = c.text(meta.get("retractedEventID"), meta_where + "retractedEventID")
        if item.get("payload") is None:
            if retracted:
                return _retraction(meta, item, retracted, meta_where, ctx)
            raise ValidationError(prefix + "payload", "is required")
        body, body_where = c.obj(item["payload"], prefix + "payload"), prefix + "payload."
    else:
        meta, meta_where, retracted, body, body_where = item, prefix, None, item, prefix
    declared = c.text(meta.get("eventType") or body.get("eventType"), meta_where + "eventType")
    event_type, code = _event_type(body, declared.upper() if declared else None, body_where)
    classifier = c.classifier(body.get("eventClassifierCode"), CODES["classifier"], body_where + "eventClassifierCode")
    occurred_at = c.time_at(body.get("eventDateTime"), body_where + "eventDateTime", require_offset=True)
    created_raw = meta.get("eventCreatedDateTime")
    created_at = (
        None
        if created_raw is None
        else c.time_at(created_raw, meta_where + "eventCreatedDateTime", require_offset=True)
    )
    call = c.opt_obj(body.get("transportCall"), body_where + "transportCall")
    shipment, all_refs = _references(body, body_where)
    event_id = c.text(meta.get("eventID"), meta_where + "eventID")
    description = c.text(
        body.get("reason") or body.get("changeRemark") or body.get("remark"), body_where + "reason", max_len=1000
    )
    info = c.info(
        _code(event_type, code, body, body_where),
        code,
        classifier=classifier,
        location=_place(body, call, body_where),
        mode=c.mode((call or {}).get("modeOfTransport"), CODES["mode"], body_where + "transportCall"),
        description=description,
    )
    return c.milestone_event(
        prefix,
        ctx,
        info=info,
        event_id=f"{SOURCE}:{event_id}" if event_id else derive_event_id(SOURCE, item),
        source=SOURCE,
        occurred_at=occurred_at,
        created_at=created_at,
        shipment=shipment,
        refs=all_refs,
        carrier=_carrier(meta, call, meta_where, body_where),
        retracts=f"{SOURCE}:{retracted}" if retracted else None,
        raw=item,
    )


def normalize(payload: bytes, ctx: SourceContext) -> list[Event]:
    """A DCSA notification body (a 3.0.0 body; else an array of events, or one event) to events."""
    body = c.loads(payload)
    if dcsa3.is_v3_body(body):
        return dcsa3.normalize_events(body, ctx)
    events = c.items(body, "body")
    if not events:
        raise ValidationError("body", "is an empty array")
    return [_parse(item, f"[{i}]", ctx) for i, item in enumerate(events)]


def answer_status(payload: bytes) -> int:
    """What a stored delivery is answered: 200 for a 3.0.0 body (`POST /events`), else 204."""
    return 200 if payload.lstrip()[:1] == b"{" and dcsa3.is_v3_body(c.loads(payload)) else 204


ADAPTER = Adapter(
    SOURCE,
    normalize,
    signature=signatures.Scheme("Notification-Signature", "sha256=", "hex"),
    status=204,
    status_of=answer_status,
    whole=True,
    webhook=True,
)
