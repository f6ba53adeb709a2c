"""DCSA Track & Trace 3.0.0 events: the `{"events": [...]}` body of `POST /events` and of `GET /events`.

An event's `eventID` (with its originating party, when given) names it; `eventUpdatedDateTime`
names the version, so a later version replaces an earlier one, and an `isRetracted` version leaves
none standing (`ledger.versioned_id`). TRANSPORT, EQUIPMENT and SHIPMENT events become milestones; an IoT
door event (`iotDetails.iotEventCode` DRO, DRC) a sensor reading `door_open` (true, false; its
coordinates, if any, stay in the raw event: one event, one kind, so that a version or a retraction
replaces all of it); another IoT event with coordinates (LOC) a position; a reefer measurement a
sensor reading (temperature in degrees Celsius, humidity). IoT and reefer events without any of
these stay milestones without a canonical code.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from ingest.sources import _common as c
from trackd.codes import EventKind
from trackd.errors import ValidationError
from trackd.ledger import VERSION_FIRST, VERSION_LAST, versioned_id
from trackd.model import Event, Location, SourceContext, derive_event_id
from trackd.times import optional_number

SOURCE = "dcsa"
CODES = c.load_codes(SOURCE)
TYPE_FIELDS = {
    "TRANSPORT": "transportEventTypeCode",
    "EQUIPMENT": "equipmentEventTypeCode",
    "SHIPMENT": "shipmentEventTypeCode",
    "IOT": "iotEventTypeCode",
    "REEFER": "reeferEventTypeCode",
}
# Which document types name the shipment best, best first.
MAIN_DOCUMENTS = ("TRD", "BKG", "CBR", "SHI")
_KEY_MAX = 150  # longer event keys are hashed, so that every stored id fits in 200 characters
DOOR = {"DRO": True, "DRC": False}  # iotDetails.iotEventCode: door opened, door closed


def is_v3_body(value: Any) -> bool:
    """Whether a decoded body is the 3.0.0 envelope (an object holding the `events` array)."""
    return isinstance(value, dict) and isinstance(value.get("events"), list)


def _event_key(item: dict[str, Any], where: str) -> str | None:
    """`dcsa:<party>/<eventID>` (the spec's composite key), or None without an `eventID`."""
    event_id = c.text(item.get("eventID"), where + "eventID", max_len=500)
    if event_id is None:
        return None
    routing = c.opt_obj(item.get("eventRouting"), where + "eventRouting") or {}
    party = c.opt_obj(routing.get("originatingParty"), where + "eventRouting.originatingParty") or {}
    code = c.text(party.get("partyCode"), where + "eventRouting.originatingParty.partyCode", max_len=150)
    key = f"{code}/{event_id}" if code else event_id
    if len(key) > _KEY_MAX:
        key = "h" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{SOURCE}:{key}"


def _references(item: dict[str, Any], where: str) -> tuple[str | None, tuple[str, ...]]:
    """(main shipment identifier, every identifier): document, shipment and equipment references."""
    details = c.opt_obj(item.get("shipmentDetails"), where + "shipmentDetails") or {}
    dwhere = where + "shipmentDetails."
    typed: list[tuple[str | None, str]] = []

    def add(entry: Any, at: str) -> None:
        ref = c.obj(entry, at)
        value = c.text(ref.get("reference"), at + ".reference")
        if value:
            kind = c.text(ref.get("typeCode"), at + ".typeCode")
            typed.append((kind.upper() if kind else None, value))

    if details.get("documentReference") is not None:
        add(details["documentReference"], dwhere + "documentReference")
    for key in ("additionalDocumentReferences", "shipmentReferences"):
        entries = details.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ValidationError(dwhere + key, "must be an array")
        for i, entry in enumerate(entries):
            add(entry, f"{dwhere}{key}[{i}]")
    equipment = c.opt_obj(item.get("equipmentDetails"), where + "equipmentDetails") or {}
    container = c.text(equipment.get("equipmentReference"), where + "equipmentDetails.equipmentReference")
    if container:
        typed.append(("EQ", container))
    by_type = {t: r for t, r in reversed(typed)}
    main = next((by_type[t] for t in (*MAIN_DOCUMENTS, "EQ") if t in by_type), None)
    all_refs = c.refs(*(r for _, r in typed))
    return main or (all_refs[0] if all_refs else None), all_refs


def _coordinates(loc: dict[str, Any], where: str) -> tuple[float | None, float | None]:
    geo = c.opt_obj(loc.get("geoCoordinate"), where + ".geoCoordinate") or {}
    lat = optional_number(geo.get("latitude"), where + ".geoCoordinate.latitude")
    lon = optional_number(geo.get("longitude"), where + ".geoCoordinate.longitude")
    return lat, lon


def _location(item: dict[str, Any], where: str) -> Location | None:
    loc = c.opt_obj(item.get("eventLocation"), where + "eventLocation")
    if loc is None:
        return None
    at = where + "eventLocation"
    unlocode = c.text(loc.get("UNLocationCode"), at + ".UNLocationCode")
    address = c.opt_obj(loc.get("address"), at + ".address") or {}
    country = c.text(address.get("countryCode"), at + ".address.countryCode")
    if unlocode and len(unlocode) == 5:
        country = unlocode[:2]
    lat, lon = _coordinates(loc, at)
    return c.location(
        at,
        name=c.text(loc.get("locationName"), at + ".locationName"),
        unlocode=unlocode,
        country=country.upper() if country else None,
        lat=lat,
        lon=lon,
    )


def _classification(item: dict[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    """(event type, its type code, the classification object)."""
    at = where + "eventClassification"
    cls = c.obj(item.get("eventClassification"), at)
    declared = c.req_text(cls.get("eventTypeCode"), at + ".eventTypeCode").upper()
    if declared not in TYPE_FIELDS:
        raise ValidationError(at + ".eventTypeCode", f"{declared!r} is not one of {', '.join(TYPE_FIELDS)}")
    code = c.req_text(cls.get(TYPE_FIELDS[declared]), f"{at}.{TYPE_FIELDS[declared]}").upper()
    return declared, code, cls


def _milestone_code(event_type: str, code: str, item: dict[str, Any], where: str) -> Any:
    """The canonical code; a shipment HOLD or RELS about another document than a customs clearance
    is not a customs milestone."""
    if event_type == "SHIPMENT" and code in CODES["SHIPMENT_NOT_CUSTOMS"]:
        details = c.opt_obj(item.get("shipmentDetails"), where + "shipmentDetails") or {}
        doc = c.opt_obj(details.get("documentReference"), where + "shipmentDetails.documentReference") or {}
        kind = c.text(doc.get("typeCode"), where + "shipmentDetails.documentReference.typeCode")
        reason = c.text(details.get("reason"), where + "shipmentDetails.reason", max_len=1000) or ""
        if kind and kind.upper() not in CODES["CUSTOMS_DOCUMENTS"] and "customs" not in reason.lower():
            return c.milestone(CODES["SHIPMENT_NOT_CUSTOMS"], code)
    return c.milestone(CODES[event_type], code)


def _celsius(value: Any, unit: str | None, where: str) -> float | None:
    reading = optional_number(value, where)
    if reading is None:
        return None
    return (reading - 32) * 5 / 9 if unit == "FAH" else reading


def _reefer_reading(item: dict[str, Any], where: str) -> dict[str, float] | None:
    """The cargo temperature (of the probes, the one farthest from the setpoint, else their mean)
    and the measured humidity; None when the event measured neither."""
    at = where + "reeferDetails"
    reefer = c.opt_obj(item.get("reeferDetails"), at) or {}
    unit = c.text(reefer.get("temperatureUnit"), at + ".temperatureUnit")
    unit = unit.upper() if unit else "CEL"
    if unit not in ("CEL", "FAH"):
        raise ValidationError(at + ".temperatureUnit", f"{unit!r} is not one of CEL, FAH")
    probes = reefer.get("temperatureProbeMeasurements") or []
    if not isinstance(probes, list):
        raise ValidationError(at + ".temperatureProbeMeasurements", "must be an array")
    readings = []
    for i, probe in enumerate(probes):
        pat = f"{at}.temperatureProbeMeasurements[{i}]"
        value = _celsius(c.obj(probe, pat).get("measuredTemperatureValue"), unit, pat + ".measuredTemperatureValue")
        if value is not None:
            readings.append(value)
    setpoint = _celsius(reefer.get("internalSetpointTemperature"), unit, at + ".internalSetpointTemperature")
    measured = c.opt_obj(reefer.get("measuredParameters"), at + ".measuredParameters") or {}
    out: dict[str, float] = {}
    if readings:
        if setpoint is None:
            out["temperature_c"] = sum(readings) / len(readings)
        else:
            out["temperature_c"] = max(readings, key=lambda r: abs(r - setpoint))
    humidity = optional_number(measured.get("humidityPercentage"), at + ".measuredParameters.humidityPercentage")
    if humidity is not None:
        out["humidity_pct"] = humidity
    return out or None


def _iot_code(item: dict[str, Any], where: str) -> str | None:
    details = c.opt_obj(item.get("iotDetails"), where + "iotDetails") or {}
    code = c.text(details.get("iotEventCode"), where + "iotDetails.iotEventCode")
    return code.upper() if code else None


def _time(value: Any, where: str) -> datetime:
    return c.time_at(value, where, require_offset=True)


def _retraction(key: str, updated: datetime | None, item: dict[str, Any], where: str, ctx: SourceContext) -> Event:
    # A retraction without its own time withdraws every version there will ever be.
    return c.milestone_event(
        where,
        ctx,
        info=c.info(None, "RETRACTED"),
        event_id=versioned_id(key, updated or VERSION_LAST),
        source=SOURCE,
        occurred_at=updated or ctx.received_at,
        created_at=updated,
        retracts=key,
        refs=(key,),  # the retraction names no shipment of its own: the event's key is its handle
        raw=item,
    )


def _parse(item: Any, where: str, ctx: SourceContext) -> Event:
    item = c.obj(item, where)
    where += "."
    key = _event_key(item, where)
    retracted = item.get("isRetracted")
    if retracted is not None and not isinstance(retracted, bool):
        raise ValidationError(where + "isRetracted", "must be a boolean")
    updated_raw = item.get("eventUpdatedDateTime")
    updated = None if updated_raw is None else _time(updated_raw, where + "eventUpdatedDateTime")
    if retracted:
        if key is None:
            raise ValidationError(where + "eventID", "is required to retract an event")
        return _retraction(key, updated, item, where, ctx)
    event_type, code, cls = _classification(item, where)
    occurred_at = _time(item.get("eventDateTime"), where + "eventDateTime")
    if key is None:
        event_id = derive_event_id(SOURCE, item)
    else:
        # Without an update time, any version that has one replaces this one.
        event_id = versioned_id(key, updated or VERSION_FIRST)
    shipment, refs = _references(item, where)
    routing = c.opt_obj(item.get("eventRouting"), where + "eventRouting") or {}
    party = c.opt_obj(routing.get("originatingParty"), where + "eventRouting.originatingParty") or {}
    common: dict[str, Any] = {
        "event_id": event_id,
        "source": SOURCE,
        "occurred_at": occurred_at,
        "created_at": updated,
        "shipment": shipment,
        "refs": refs,
        "carrier": c.text(party.get("partyCode"), where + "eventRouting.originatingParty.partyCode"),
        "raw": item,
    }
    location = _location(item, where)
    door = DOOR.get(_iot_code(item, where) or "") if event_type == "IOT" else None
    if door is not None:
        state = c.sensor(where + "iotDetails.iotEventCode", door_open=door)
        return c.event(where, ctx, kind=EventKind.SENSOR, sensor=state, **common)
    if event_type == "IOT" and location is not None and location.lat is not None and location.lon is not None:
        fix = c.position(where + "eventLocation.geoCoordinate.", lat=location.lat, lon=location.lon)
        return c.event(where, ctx, kind=EventKind.POSITION, position=fix, **common)
    if event_type == "REEFER":
        reading = _reefer_reading(item, where)
        if reading is not None:
            sensor = c.sensor(where + "reeferDetails", **reading)
            return c.event(where, ctx, kind=EventKind.SENSOR, sensor=sensor, **common)
    transport = c.opt_obj(item.get("transportDetails"), where + "transportDetails") or {}
    call = c.opt_obj(transport.get("transportCall"), where + "transportDetails.transportCall") or {}
    details = c.opt_obj(item.get("shipmentDetails"), where + "shipmentDetails") or {}
    description = c.text(
        details.get("reason") or transport.get("changeRemark"), where + "shipmentDetails.reason", max_len=1000
    )
    info = c.info(
        _milestone_code(event_type, code, item, where),
        code if event_type in ("TRANSPORT", "EQUIPMENT", "SHIPMENT") else f"{event_type}.{code}",
        classifier=c.classifier(
            cls.get("eventClassifierCode"), CODES["classifier"], where + "eventClassification.eventClassifierCode"
        ),
        location=location,
        mode=c.mode(call.get("modeOfTransport"), CODES["mode"], where + "transportDetails.transportCall"),
        description=description,
    )
    return c.milestone_event(where, ctx, info=info, **common)


def normalize_events(body: dict[str, Any], ctx: SourceContext) -> list[Event]:
    """The events of a 3.0.0 body (already decoded, `is_v3_body`)."""
    events = c.items(body["events"], "events")
    if not events:
        raise ValidationError("events", "is an empty array")
    return [_parse(item, f"events[{i}]", ctx) for i, item in enumerate(events)]
